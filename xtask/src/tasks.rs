//! build, run and test: thin wrappers that set up first and hand the right environment on.

use std::{path::PathBuf, process::Command};

use anyhow::bail;

use crate::{
    privilege::as_root,
    setup::{self, run_cmd, status},
};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Sets up and builds probe; returns the path of the binary.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    build_with(&setup::run()?, release)
}

fn build_with(toolchain: &setup::Toolchain, release: bool) -> anyhow::Result<PathBuf> {
    status("building probe");
    let mut cmd = cargo();
    cmd.args(["build", "--package", "probe-user"])
        .env("PROBE_EBPF_TOOLCHAIN", &toolchain.rustup_toolchain);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("probe");
    if !bin.is_file() {
        bail!("the build did not produce {}", bin.display());
    }
    Ok(bin)
}

pub fn run(release: bool, args: &[String]) -> anyhow::Result<()> {
    let bin = build(release)?;
    let status = as_root(&bin).args(args).status()?;
    // probe has already said what went wrong; pass its exit status on.
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    let toolchain = setup::run()?;
    let bin = build_with(&toolchain, false)?;
    // Compile as the invoking user, so the target directory stays theirs; only running needs root.
    run_cmd(
        cargo()
            .args(["test", "--no-run"])
            .env("PROBE_EBPF_TOOLCHAIN", &toolchain.rustup_toolchain),
    )?;
    status("running the tests (as root: they create namespaces and load eBPF programs)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = as_root(cargo)
        .current_dir(workspace_root())
        .arg("test")
        .args(extra)
        .env("PROBE_BIN", &bin)
        .env("PROBE_EBPF_TOOLCHAIN", &toolchain.rustup_toolchain)
        .status()?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    // The kernel-function backends need kprobes/fentry, which the host may lack: the same tests
    // run again in a stock Debian kernel under qemu, where they must find them.
    setup::status("running the kernel-function tests on a stock Debian kernel (qemu)");
    let exe = std::env::current_exe()?;
    let vm = as_root(exe)
        .args(["vm", "--test", "kernel_functions"])
        .env("PROBE_BIN", &bin)
        .status()?;
    if !vm.success() {
        bail!("kernel-function tests failed in the VM ({vm})");
    }
    Ok(())
}
