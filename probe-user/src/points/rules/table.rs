//! probe's own nftables table, which marks packets for tracing, and the `nft` command that
//! adds and deletes it.

use std::process::{Command, Stdio};

use super::{NftraceError, TABLE_PREFIX};

/// probe's own table: sets nftrace on every packet entering (prerouting) or leaving (output)
/// this namespace's stack, before anything else (priority -350, ahead of raw and conntrack).
pub struct TraceTable {
    name: String,
}

impl TraceTable {
    pub fn install() -> Result<Self, NftraceError> {
        for line in sweep_stale() {
            log::info!("{line}");
        }
        let table = Self {
            name: format!("{TABLE_PREFIX}{}", std::process::id()),
        };
        table.add()?;
        Ok(table)
    }

    /// Adds the table again, after something (`nft flush ruleset`, a firewall reload) removed
    /// it.
    pub fn reinstall(&self) -> Result<(), NftraceError> {
        self.add()
    }

    fn add(&self) -> Result<(), NftraceError> {
        let name = &self.name;
        let script = format!(
            "table inet {name} {{\n\
               chain prerouting {{ type filter hook prerouting priority -350; meta nftrace set 1; }}\n\
               chain output {{ type filter hook output priority -350; meta nftrace set 1; }}\n\
             }}\n"
        );
        nft_stdin(&script).map_err(NftraceError::AddTable)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "inet", &self.name]) {
            log::warn!("could not delete nftables table inet {}: {e}", self.name);
        }
    }
}

/// Deletes trace tables whose probe process is gone (killed before it could clean up);
/// returns what it removed, one line each.
pub fn sweep_stale() -> Vec<String> {
    let Ok(out) = nft(&["list", "tables", "inet"]) else {
        return Vec::new();
    };
    let mut said = Vec::new();
    for line in out.lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = name.strip_prefix(TABLE_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && nft(&["delete", "table", "inet", name]).is_ok()
        {
            said.push(format!(
                "removed nftables table inet {name} left by probe {pid}, which is gone"
            ));
        }
    }
    said
}

pub(super) fn nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NftraceError::NoNft(e).to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn nft_stdin(script: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftraceError::NoNft(e).to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
