//! What `probe doctor --json` says about the running kernel, for tests whose expectations
//! depend on it.

use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// A parsed `probe doctor --json` report.
pub struct Doctor(pub Value);

impl Doctor {
    /// Runs `probe doctor --json` (as root it attaches and detaches to find the backends).
    pub fn run() -> anyhow::Result<Self> {
        let out = Command::new(crate::probe_binary())
            .args(["doctor", "--json"])
            .output()
            .context("cannot run probe doctor")?;
        let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "probe doctor --json printed no JSON; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok(Self(report))
    }

    /// Whether the kernel feature `name` ("tcx", "kprobes", ...) is available.
    pub fn feature(&self, name: &str) -> bool {
        self.0["features"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .and_then(|f| f["available"].as_bool())
            .unwrap_or_else(|| panic!("doctor has no feature {name}: {}", self.0))
    }

    /// The backend of observation point `name`, or None when it is unavailable.
    pub fn backend(&self, name: &str) -> Option<String> {
        let point = self.0["points"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("doctor has no point {name}: {}", self.0));
        point["backend"].as_str().map(str::to_owned)
    }

    /// The kernel's version (major, minor), from the release doctor reports.
    pub fn kernel_version(&self) -> anyhow::Result<(u32, u32)> {
        let release = self.0["kernel"].as_str().unwrap_or("");
        parse_version(release).with_context(|| format!("kernel release {release:?}"))
    }
}

/// "6.12.95+deb12-amd64 (x86_64)" → (6, 12).
pub fn parse_version(release: &str) -> anyhow::Result<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) if !major.is_empty() && !minor.is_empty() => {
            Ok((major.parse()?, minor.parse()?))
        }
        _ => bail!("not a kernel release"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_are_read_from_releases() {
        assert_eq!(
            parse_version("6.12.95+deb12-amd64 (x86_64)").unwrap(),
            (6, 12)
        );
        assert_eq!(parse_version("5.10.0-46-amd64").unwrap(), (5, 10));
        assert_eq!(parse_version("6.18.44-fc-v782 (x86_64)").unwrap(), (6, 18));
        assert!(parse_version("unknown").is_err());
    }
}
