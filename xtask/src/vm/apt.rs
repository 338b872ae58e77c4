//! Debian kernels, looked up and downloaded through a private apt configuration.
//!
//! The machine's own apt configuration is never changed: each kernel line gets a sources list
//! of its own under ~/.cache/probe/vm/apt/SUITE, with its own package lists and download cache,
//! pointing at the Debian archives this machine already uses (taken from its apt sources).
//! The newest kernel of a line is whatever `linux-image-amd64` depends on in that line's suites,
//! so nothing names a version that a security update will retire.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::setup::{cache_dir, status};

/// Which of Debian's two archives a suite lives in.
#[derive(Clone, Copy)]
enum Archive {
    Main,
    Security,
}

/// A kernel line and the Debian suites that carry it, tried in order: each alternative is a
/// set of suites whose newest `linux-image-amd64` is one kernel.
struct Line {
    name: &'static str,
    alternatives: &'static [&'static [(Archive, &'static str)]],
}

use Archive::{Main, Security};

const LINES: &[Line] = &[
    Line {
        name: "6.1",
        alternatives: &[&[
            (Main, "bookworm"),
            (Main, "bookworm-updates"),
            (Security, "bookworm-security"),
        ]],
    },
    Line {
        name: "6.12",
        alternatives: &[
            // Built for Debian 12, so it matches the tools packed next to it.
            &[(Main, "bookworm-backports")],
            &[
                (Main, "trixie"),
                (Main, "trixie-updates"),
                (Security, "trixie-security"),
            ],
        ],
    },
    Line {
        name: "5.10",
        alternatives: &[&[
            (Main, "bullseye"),
            (Main, "bullseye-updates"),
            (Security, "bullseye-security"),
        ]],
    },
];

/// The kernel lines of the test matrix, in the order they run.
pub const MATRIX: &[&str] = &["6.1", "6.12", "5.10"];
/// The line `cargo xtask vm` boots when none is named.
pub const DEFAULT_LINE: &str = "6.1";
/// Package lists older than this are refreshed (a failed refresh falls back to them).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A kernel ready to boot.
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. 6.1.0-37-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The unpacked package (boot/, lib/modules/).
    pub root: PathBuf,
    /// Cache directory of this kernel (derived files live here too).
    pub dir: PathBuf,
}

/// The Debian archives this machine's apt sources use.
#[derive(Debug, Default, PartialEq)]
pub struct Archives {
    pub main: Option<String>,
    pub security: Option<String>,
    pub signed_by: Option<String>,
}

/// One `deb` entry of an apt sources file.
#[derive(Debug, Default)]
struct Entry {
    uris: Vec<String>,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// Parses one-line sources (`deb [opts] URI SUITE COMPONENT...`).
fn parse_one_line(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            signed_by = opts
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = after.trim();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            entries.push(Entry {
                uris: vec![uri.to_owned()],
                suites: vec![suite.to_owned()],
                signed_by,
            });
        }
    }
    entries
}

/// Parses deb822 sources (stanzas of `Field: value`, separated by blank lines).
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // Continuation (an inline key): belongs to the previous field.
                if let Some(last) = fields.last_mut() {
                    last.1.push('\n');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let words = |name: &str| -> Vec<String> {
            get(name)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        if !words("types").iter().any(|t| t == "deb") || get("enabled") == Some("no") {
            continue;
        }
        entries.push(Entry {
            uris: words("uris"),
            suites: words("suites"),
            // A path; an inline key cannot be handed on as an option.
            signed_by: get("signed-by")
                .filter(|v| !v.contains('\n'))
                .map(str::to_owned),
        });
    }
    entries
}

/// Picks Debian's archives out of sources entries: the security archive serves `*-security`
/// suites; the main archive is the one that serves the other suites of the same entries'
/// keyring, or whose path ends in `/debian` (every Debian mirror's layout).
fn archives_from(entries: &[Entry]) -> Archives {
    let mut found = Archives::default();
    for e in entries {
        let security = e.suites.iter().any(|s| s.ends_with("-security"));
        for uri in &e.uris {
            let path_end = uri.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            let debian_keyring = e
                .signed_by
                .as_deref()
                .is_some_and(|k| k.contains("debian-archive-keyring"));
            if security || path_end == "debian-security" {
                found.security.get_or_insert_with(|| uri.clone());
            } else if path_end == "debian" || debian_keyring {
                found.main.get_or_insert_with(|| uri.clone());
            } else {
                continue;
            }
            if found.signed_by.is_none() {
                found.signed_by = e.signed_by.clone();
            }
        }
    }
    found
}

/// The Debian archives of this machine's apt sources.
pub fn machine_archives() -> anyhow::Result<Archives> {
    let mut entries = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        entries.extend(parse_one_line(&text));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            match f.extension().and_then(|e| e.to_str()) {
                Some("list") => entries.extend(parse_one_line(&text)),
                Some("sources") => entries.extend(parse_deb822(&text)),
                _ => {}
            }
        }
    }
    let mut archives = archives_from(&entries);
    if archives.main.is_none() {
        bail!("no Debian archive in this machine's apt sources (/etc/apt/sources.list[.d])");
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    if archives.signed_by.is_none() && Path::new(keyring).is_file() {
        archives.signed_by = Some(keyring.to_owned());
    }
    Ok(archives)
}

/// A private apt configuration serving one set of suites.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(archives: &Archives, suites: &[(Archive, &str)]) -> anyhow::Result<Self> {
        let dir = cache_dir().join("vm/apt").join(suites[0].1);
        for sub in [
            "sources.list.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let opts = archives
            .signed_by
            .as_deref()
            .map(|k| format!("[signed-by={k}] "))
            .unwrap_or_default();
        let mut list = String::new();
        for (archive, suite) in suites {
            let uri = match archive {
                Archive::Main => archives.main.as_deref(),
                Archive::Security => archives.security.as_deref(),
            };
            // No security archive configured: the line still resolves from the main one.
            if let Some(uri) = uri {
                list.push_str(&format!("deb {opts}{uri} {suite} main\n"));
            }
        }
        std::fs::write(dir.join("sources.list"), list)?;
        Ok(Self { dir })
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            format!("-oDir::Etc::SourceParts={d}/sources.list.d"),
            format!("-oDir::State={d}/state"),
            format!("-oDir::Cache={d}/cache"),
            // The system's installed packages are irrelevant; only lookups and downloads here.
            "-oDir::State::status=/dev/null".to_owned(),
            "-oDebug::NoLocking=1".to_owned(),
            "-oAcquire::Languages=none".to_owned(),
            "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "-oAcquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "-oAcquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
            "-oAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".to_owned(),
            // Root downloads into our cache, which the _apt sandbox user may not write.
            "-oAPT::Sandbox::User=root".to_owned(),
        ]
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.options());
        cmd
    }

    fn lists_age(&self) -> Option<Duration> {
        let lists = std::fs::read_dir(self.dir.join("state/lists")).ok()?;
        lists
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
    }

    /// Refreshes the package lists when they are old; keeps the old ones if that fails.
    fn update(&self) -> anyhow::Result<()> {
        if self.lists_age().is_some_and(|age| age < LISTS_MAX_AGE) {
            return Ok(());
        }
        let out = self
            .command("apt-get")
            .args(["update", "-q"])
            .output()
            .context("apt-get is needed to find Debian kernels")?;
        let errors = String::from_utf8_lossy(&out.stderr);
        if out.status.success() && !errors.contains("E: ") {
            return Ok(());
        }
        if self.lists_age().is_some() {
            status(&format!(
                "cannot refresh {} (using the lists from before): {}",
                self.dir.display(),
                errors.trim()
            ));
            return Ok(());
        }
        bail!("apt-get update failed: {}", errors.trim())
    }

    /// `linux-image-amd64`'s kernel package in these suites, e.g. linux-image-6.1.0-37-amd64.
    fn kernel_package(&self) -> anyhow::Result<String> {
        let out = self
            .command("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_owned)
            .context("no linux-image-amd64 here")
    }

    fn has_package(&self, name: &str) -> bool {
        self.command("apt-cache")
            .args(["show", "--no-all-versions", name])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    }
}

/// Finds (and downloads once) the newest Debian kernel of `line`, e.g. "6.12".
pub fn kernel(line: &str) -> anyhow::Result<Kernel> {
    let spec = LINES.iter().find(|l| l.name == line).with_context(|| {
        format!(
            "unknown kernel line {line}; known: {}",
            LINES.iter().map(|l| l.name).collect::<Vec<_>>().join(", ")
        )
    })?;
    let archives = machine_archives()?;
    let mut tried = Vec::new();
    for suites in spec.alternatives {
        let apt = PrivateApt::new(&archives, suites)?;
        let found = apt.update().and_then(|()| apt.kernel_package());
        let package = match found {
            Ok(p) => p,
            Err(e) => {
                tried.push(format!("{}: {e:#}", suites[0].1));
                continue;
            }
        };
        let release = package.trim_start_matches("linux-image-").to_owned();
        if !release.starts_with(&format!("{line}.")) {
            tried.push(format!("{}: offers {release}", suites[0].1));
            continue;
        }
        let kernel = fetch(&apt, &package, &release)?;
        prune(line, &release);
        return Ok(kernel);
    }
    // Offline: a kernel of this line downloaded before still serves.
    if let Some(kernel) = cached(line) {
        status(&format!(
            "kernel line {line} not found online ({}); using cached {}",
            tried.join("; "),
            kernel.release
        ));
        return Ok(kernel);
    }
    bail!(
        "no Debian kernel of line {line} in {} ({})",
        archives.main.as_deref().unwrap_or("?"),
        tried.join("; ")
    )
}

fn kernel_at(dir: PathBuf, release: &str) -> Kernel {
    let root = dir.join("root");
    Kernel {
        release: release.to_owned(),
        vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
        root,
        dir,
    }
}

fn cached(line: &str) -> Option<Kernel> {
    let mut found: Vec<Kernel> = std::fs::read_dir(cache_dir().join("vm"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let release = e.file_name().to_string_lossy().into_owned();
            release
                .starts_with(&format!("{line}."))
                .then(|| kernel_at(e.path(), &release))
        })
        .filter(|k| k.vmlinuz.is_file())
        .collect();
    found.sort_by(|a, b| a.release.cmp(&b.release));
    found.pop()
}

/// Removes cached kernels of `line` older than `current` (a security update replaced them).
fn prune(line: &str, current: &str) {
    let Ok(dir) = std::fs::read_dir(cache_dir().join("vm")) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{line}.")) && name != current {
            status(&format!("removing {name}, replaced by {current}"));
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Downloads and unpacks the kernel package once; an interrupted unpack is redone.
fn fetch(apt: &PrivateApt, package: &str, release: &str) -> anyhow::Result<Kernel> {
    let kernel = kernel_at(cache_dir().join("vm").join(release), release);
    if kernel.vmlinuz.is_file() {
        return Ok(kernel);
    }
    // The -unsigned package is the plain kernel; where it is missing, the signed one boots too.
    let unsigned = format!("{package}-unsigned");
    let name = if apt.has_package(&unsigned) {
        unsigned
    } else if apt.has_package(package) {
        package.to_owned()
    } else {
        bail!("neither {unsigned} nor {package} can be downloaded");
    };
    let download = kernel.dir.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    status(&format!(
        "downloading {name} (cached in {})",
        kernel.dir.display()
    ));
    crate::setup::run_cmd(
        apt.command("apt-get")
            .current_dir(&download)
            .args(["download", "-q", &name]),
    )?;
    let deb = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("the download left no .deb")?;
    let unpacking = kernel.dir.join("root.partial");
    let _ = std::fs::remove_dir_all(&unpacking);
    crate::setup::run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacking))?;
    std::fs::rename(&unpacking, &kernel.root)?;
    std::fs::remove_dir_all(&download)?;
    if !kernel.vmlinuz.is_file() {
        bail!("{name} has no {}", kernel.vmlinuz.display());
    }
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_and_one_line_sources_give_the_debian_archives() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm \
                      bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n\n\
                      Types: deb\nURIs: https://vendor.example/apt\nSuites: nodistro\n\
                      Components: main\n";
        let found = archives_from(&parse_deb822(deb822));
        assert_eq!(
            found,
            Archives {
                main: Some("http://mirror.example/debian".into()),
                security: Some("http://mirror.example/debian-security".into()),
                signed_by: Some("/k.gpg".into()),
            }
        );
        let one_line = "# comment\ndeb https://vendor.example/apt stable main\n\
                        deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main\n\
                        deb http://m.example/debian-security bookworm-security main\n";
        let found = archives_from(&parse_one_line(one_line));
        assert_eq!(found.main.as_deref(), Some("http://m.example/debian/"));
        assert_eq!(
            found.security.as_deref(),
            Some("http://m.example/debian-security")
        );
        assert_eq!(found.signed_by.as_deref(), Some("/k.gpg"));
    }

    #[test]
    fn disabled_and_source_only_stanzas_are_ignored() {
        let text = "Types: deb-src\nURIs: http://a.example/debian\nSuites: bookworm\n\n\
                    Enabled: no\nTypes: deb\nURIs: http://b.example/debian\nSuites: bookworm\n";
        assert_eq!(archives_from(&parse_deb822(text)), Archives::default());
    }
}
