//! Builds probe-ebpf for the BPF target and leaves the object in OUT_DIR, where `src/ebpf.rs`
//! embeds it. Two toolchain routes are supported, chosen automatically:
//! - the standard one: a rustup nightly with rust-src (`-Z build-std=core`);
//! - Debian's: rustc-web with its prebuilt `bpfel-unknown-none` core, linked into rustup as the
//!   toolchain `probe-bpf` by `cargo xtask setup` (no build-std; RUSTC_BOOTSTRAP scoped to aya_ebpf).
//!
//! `PROBE_EBPF_TOOLCHAIN` overrides the choice. bpf-linker is taken from PATH, else from the cache
//! directory `cargo xtask setup` installs it into.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

/// rustup toolchain name `cargo xtask setup` links Debian's rustc-web under.
const DEBIAN_TOOLCHAIN: &str = "probe-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PROBE_EBPF_TOOLCHAIN");
    let toolchain = match env::var("PROBE_EBPF_TOOLCHAIN") {
        Ok(name) if !name.is_empty() => name,
        _ => detect_toolchain()?,
    };
    if toolchain == DEBIAN_TOOLCHAIN {
        // aya-ebpf uses a few unstable features; allow them for that crate only.
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    }
    if which("bpf-linker").is_none() {
        let cached = linker_cache_dir();
        if !cached.join("bpf-linker").is_file() {
            bail!(
                "bpf-linker not found in PATH nor in {}; run `cargo xtask setup`",
                cached.display()
            );
        }
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![cached];
        dirs.extend(env::split_paths(&path));
        // SAFETY: as above.
        unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("probe-user has no parent directory")?
        .join("probe-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "probe-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}

fn detect_toolchain() -> anyhow::Result<String> {
    if nightly_has_rust_src() {
        return Ok("nightly".into());
    }
    let linked = Command::new("rustup")
        .args(["run", DEBIAN_TOOLCHAIN, "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if linked {
        return Ok(DEBIAN_TOOLCHAIN.into());
    }
    bail!(
        "no toolchain can build the eBPF programs: need a rustup nightly with rust-src, or \
         Debian's rustc-web linked as `{DEBIAN_TOOLCHAIN}`; run `cargo xtask setup`"
    )
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot.join("lib/rustlib/src/rust/library/core").is_dir()
}

fn linker_cache_dir() -> PathBuf {
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("probe/bpf-linker/bin")
}

fn which(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
