//! `cargo xtask image`: a static probe and the container image that carries it.
//!
//! probe has no C dependencies, so the musl target gives a binary that runs in an empty image
//! and on any x86_64 host, whatever its libc. The image is built from the Dockerfile at the
//! workspace root with a context of that binary and this machine's nft (which `--rules` runs)
//! with its libraries: nothing is pulled, which is also what a host without a registry allows.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    privilege::as_root,
    setup::{self, run_cmd, status},
    tasks::{cargo, target_dir, workspace_root},
};

pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The tag `cargo xtask image` gives unless told otherwise.
pub const DEFAULT_TAG: &str = "probe:latest";
/// The tag of the image `cargo xtask test` builds for the image test.
pub const TEST_TAG: &str = "probe:test";

/// Builds probe for [`TARGET`] (release) and returns the binary's path.
pub fn static_binary(toolchain: &setup::Toolchain) -> anyhow::Result<PathBuf> {
    ensure_target()?;
    status(&format!("building a static probe ({TARGET})"));
    run_cmd(
        cargo()
            .args([
                "build",
                "--release",
                "--package",
                "probe-user",
                "--target",
                TARGET,
            ])
            .env("PROBE_EBPF_TOOLCHAIN", &toolchain.rustup_toolchain),
    )?;
    let bin = target_dir().join(TARGET).join("release/probe");
    let data =
        std::fs::read(&bin).with_context(|| format!("the build left no {}", bin.display()))?;
    if has_interpreter(&data)? {
        bail!(
            "{} is dynamically linked: the image needs a static binary",
            bin.display()
        );
    }
    Ok(bin)
}

/// The musl standard library, from rustup (the only place it comes from).
fn ensure_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("a static build needs rustup (to add the x86_64-unknown-linux-musl target)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    status(&format!("adding the Rust target {TARGET}"));
    run_cmd(Command::new("rustup").args(["target", "add", TARGET]))
        .with_context(|| format!("cannot add the Rust target {TARGET}"))
}

/// Whether an ELF file asks for a program interpreter (PT_INTERP), i.e. is dynamically linked.
fn has_interpreter(data: &[u8]) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    if data.get(..4) != Some(b"\x7fELF".as_slice()) || data.get(4) != Some(&2) {
        bail!("not a 64-bit ELF file");
    }
    let u64_at = |at: usize| Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?));
    let u16_at = |at: usize| Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("truncated ELF header");
    };
    Ok((0..usize::from(phnum)).any(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        data.get(at..at + 4) == Some(PT_INTERP.to_le_bytes().as_slice())
    }))
}

/// `cargo xtask image`: sets up, then builds the static binary and the image `tag`.
pub fn build(tag: &str) -> anyhow::Result<()> {
    build_with(&setup::run()?, tag)?;
    status(&format!(
        "built {tag}; run it with:\n  docker run --rm --pid=host --net=host \
         --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add SYSLOG -v /sys/kernel:/sys/kernel \
         -v /run/probe:/run/probe -v /run/netns:/run/netns {tag} trace"
    ));
    Ok(())
}

/// Why no image can be built here (no Docker engine answering), or None.
pub fn docker_unavailable() -> Option<String> {
    match as_root("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "the Docker engine does not answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run docker: {e}")),
    }
}

/// Builds the static binary and the image `tag` from it; returns the tag.
pub fn build_with(toolchain: &setup::Toolchain, tag: &str) -> anyhow::Result<String> {
    let bin = static_binary(toolchain)?;
    let context = target_dir().join("image");
    let _ = std::fs::remove_dir_all(&context);
    let root = context.join("rootfs");
    let probe = root.join("usr/local/bin/probe");
    std::fs::create_dir_all(probe.parent().context("path without parent")?)
        .with_context(|| format!("cannot create {}", context.display()))?;
    std::fs::copy(&bin, &probe)
        .with_context(|| format!("cannot copy {} into the image context", bin.display()))?;
    // `--rules` adds its trace table and reads rule texts with nft; it comes from this machine,
    // with the libraries it links.
    let nft = setup::which("nft").context("the image carries nft for --rules: install nftables")?;
    crate::vm::image::pack_binary(&nft, &root, "/usr/sbin/nft")?;
    for file in ["etc/protocols", "etc/services"] {
        let from = std::path::Path::new("/").join(file);
        if from.is_file() {
            std::fs::create_dir_all(root.join("etc"))?;
            std::fs::copy(&from, root.join(file))?;
        }
    }
    status(&format!("building the image {tag}"));
    run_cmd(
        as_root("docker")
            .args(["build", "--quiet", "--tag", tag, "--file"])
            .arg(workspace_root().join("Dockerfile"))
            .arg(&context),
    )
    .context("cannot build the image (is the Docker engine running?)")?;
    Ok(tag.to_owned())
}
