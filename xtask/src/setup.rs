//! Getting a machine able to build the eBPF programs, with no manual steps.
//!
//! Two routes, detected in this order:
//! 1. the standard aya route: a rustup nightly with rust-src (`-Z build-std=core`);
//! 2. Debian's packaged route: rustc-web ships a prebuilt `core` for bpfel-unknown-none and
//!    llvm-22-dev lets bpf-linker be built; rustc-web is linked into rustup as `probe-bpf`.
//!
//! Either way bpf-linker is taken from PATH or built into a cache directory. Missing pieces are
//! installed when we are root; otherwise the exact commands are printed.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::privilege::is_root;

/// The rustup toolchain name probe-user's build script looks for (keep in sync with build.rs).
pub const DEBIAN_TOOLCHAIN: &str = "probe-bpf";
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Commands the tests, the demo, the lab and the bench call, and the Debian packages that
/// provide them.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("iperf3", "iperf3"),
    // What `cargo xtask bench` compares probe with.
    ("tcpdump", "tcpdump"),
    ("bpftrace", "bpftrace"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    // 6.12 and later kernels ship their modules as .ko.xz; the VM guests need them plain.
    ("xz", "xz-utils"),
    // The man-page test renders probe's pages with man(1).
    ("man", "man-db"),
    // The pcapng test reads probe's files with Wireshark's reader (apt runs it
    // non-interactively: wireshark-common's setuid question takes its default, no).
    ("tshark", "tshark"),
    // The watch test's real Prometheus server (started by the test in a lab namespace; the
    // package's own service is kept from starting, see `Apt::install`).
    ("prometheus", "prometheus"),
    // The deployment test checks deploy/docker-compose.yaml with `docker-compose config`.
    ("docker-compose", "docker-compose"),
];

/// Packages whose service must not run after installation: the tests start their own.
const NO_SERVICE: &[(&str, &str)] = &[("prometheus", "prometheus.service")];

/// What the build needs to know about the set-up machine.
pub struct Toolchain {
    /// Passed to the build script as PROBE_EBPF_TOOLCHAIN.
    pub rustup_toolchain: String,
}

pub fn run() -> anyhow::Result<Toolchain> {
    let mut apt = Apt::default();
    let missing_tools: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    apt.need(&missing_tools);

    if which("rustup").is_none() {
        bail!(
            "rustup is required (https://rustup.rs); install it and run `cargo xtask setup` again"
        );
    }
    let (toolchain, debian) = if nightly_has_rust_src() {
        ("nightly".to_owned(), false)
    } else {
        let missing: Vec<&str> = DEBIAN_PACKAGES
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect();
        apt.need(&missing);
        (DEBIAN_TOOLCHAIN.to_owned(), true)
    };
    apt.install()?;

    if debian && !rustup_has_toolchain(DEBIAN_TOOLCHAIN) {
        status(&format!(
            "linking Debian's rustc-web into rustup as `{DEBIAN_TOOLCHAIN}`"
        ));
        run_cmd(Command::new("rustup").args(["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"]))?;
    }
    ensure_bpf_linker(debian)?;
    crate::deploy_check::ensure();
    Ok(Toolchain {
        rustup_toolchain: toolchain,
    })
}

/// Collects Debian packages to install, then installs them in one go (or says how).
#[derive(Default)]
struct Apt {
    packages: Vec<String>,
}

impl Apt {
    fn need(&mut self, packages: &[&str]) {
        for p in packages {
            if !self.packages.iter().any(|q| q == p) {
                self.packages.push((*p).to_owned());
            }
        }
    }

    fn install(&self) -> anyhow::Result<()> {
        if self.packages.is_empty() {
            return Ok(());
        }
        let list = self.packages.join(" ");
        if which("apt-get").is_none() {
            bail!("missing packages ({list}) and no apt-get here: install their equivalents");
        }
        if !is_root() {
            bail!(
                "missing packages; as root run:\n  apt-get update && apt-get install -y {list}\n\
                 then `cargo xtask setup` again"
            );
        }
        status(&format!("installing Debian packages: {list}"));
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        let mut args: Vec<String> = self.packages.clone();
        // prometheus recommends prometheus-node-exporter, a second service nothing here
        // needs: a trailing '-' tells apt not to install it (only when it is not there
        // already, since it would remove it).
        if self.packages.iter().any(|p| p == "prometheus")
            && !dpkg_installed("prometheus-node-exporter")
        {
            args.push("prometheus-node-exporter-".to_owned());
        }
        let held = ServicesHeld::hold()?;
        let installed = run_cmd(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q"])
                .args(&args),
        );
        drop(held);
        installed?;
        self.stop_services();
        Ok(())
    }

    /// Under systemd the packages' postinst enabled their services for the next boot: those
    /// the tests start themselves are disabled (and stopped, should one have started).
    fn stop_services(&self) {
        if !std::path::Path::new("/run/systemd/system").exists() {
            return;
        }
        for (package, unit) in NO_SERVICE {
            if self.packages.iter().any(|p| p == package) {
                status(&format!(
                    "disabling {unit}: the tests start their own {package} when they need one"
                ));
                let _ = Command::new("systemctl")
                    .args(["disable", "--now", unit])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// `/usr/sbin/policy-rc.d` answering 101 ("not allowed") while packages are installed, so
/// their maintainer scripts start no service; removed afterwards if it was ours. Where one
/// exists already (container images have one) it is left as it is.
struct ServicesHeld(Option<PathBuf>);

impl ServicesHeld {
    fn hold() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(
            &path,
            "#!/bin/sh\n# written by cargo xtask setup while installing\nexit 101\n",
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for ServicesHeld {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn ensure_bpf_linker(debian: bool) -> anyhow::Result<()> {
    if which("bpf-linker").is_some() {
        return Ok(());
    }
    let root = cache_dir().join("bpf-linker");
    let bin = root.join("bin/bpf-linker");
    let works = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    status(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} into {} (about a minute)",
        root.display()
    ));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
    ])
    .arg("--root")
    .arg(&root);
    if debian {
        cmd.env("LLVM_PREFIX", LLVM_PREFIX).args([
            "--no-default-features",
            "--features",
            "llvm-22",
        ]);
    }
    run_cmd(&mut cmd).context("cannot build bpf-linker")
}

/// Where tools built for probe are kept (the build script looks in the same place).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("probe")
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    out.status.success()
        && PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

fn rustup_has_toolchain(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn status(msg: &str) {
    eprintln!("xtask: {msg}");
}

pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
