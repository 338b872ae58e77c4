//! Booting a kernel under qemu in software emulation and reading the job's status from the
//! serial console.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::{
    apt::Kernel,
    image::{self, MARKER},
};
use crate::setup::which;

/// Longest a guest may run, boot included. The guest tests take 6–12 minutes under software
/// emulation (more on a busy machine); this only stops a guest that hangs.
const TIMEOUT: Duration = Duration::from_secs(1500);

/// What a guest did.
pub struct Outcome {
    /// The job's exit status.
    pub code: i32,
    /// The console from the kernel's first line on, without the marker.
    pub output: String,
    /// Wall time of the boot, job and power-off.
    pub elapsed: Duration,
}

/// A scratch directory removed however the boot ends.
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots `kernel` with `command` as the guest's job and `probe` as its /usr/bin/probe. `extra`
/// binaries are packed as /usr/bin/NAME. A panic, an oops or a timeout is an error carrying
/// the whole console.
pub fn boot(
    kernel: &Kernel,
    probe: &Path,
    command: &[String],
    env: &[(String, String)],
    extra: &[PathBuf],
) -> anyhow::Result<Outcome> {
    ensure!(
        which("qemu-system-x86_64").is_some(),
        "qemu is needed: run `cargo xtask setup` as root (package qemu-system-x86)"
    );
    let work = Work(std::env::temp_dir().join(format!("probe-vm-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    std::fs::create_dir_all(&work.0)?;
    let initrd = image::initramfs(kernel, &work.0, probe, command, env, extra)?;
    let started = Instant::now();
    // `timeout` ends qemu (and kills it if it lingers) when the guest hangs.
    let mut qemu = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(TIMEOUT.as_secs().to_string())
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "1"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic",
            "-nographic",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // A file, not a pipe: nothing blocks qemu while the console is being read.
        .stderr(std::fs::File::create(work.0.join("qemu.err"))?)
        .spawn()
        .context("cannot start qemu")?;
    let mut console = String::new();
    if let Some(mut out) = qemu.stdout.take() {
        out.read_to_string(&mut console)?;
    }
    let status = qemu.wait()?;
    let errors = std::fs::read_to_string(work.0.join("qemu.err")).unwrap_or_default();
    let elapsed = started.elapsed();
    let code = console
        .lines()
        // Anywhere in the line: a terminal reset may precede it.
        .find_map(|l| l.split_once(MARKER).map(|(_, code)| code))
        .and_then(|c| c.trim().parse::<i32>().ok());
    match code {
        Some(code) => Ok(Outcome {
            code,
            output: guest_output(&console),
            elapsed,
        }),
        None if status.code() == Some(124) => {
            bail!("the VM timed out after {TIMEOUT:?}; console:\n{console}")
        }
        None => bail!("the VM ended without reporting ({status}); console:\n{console}{errors}"),
    }
}

/// The console without firmware noise and the marker line.
fn guest_output(console: &str) -> String {
    console
        .lines()
        .skip_while(|l| !l.contains("Booting from ROM"))
        .skip(1)
        .filter(|l| !l.contains(MARKER) && !l.contains("reboot: Power down"))
        .map(|l| l.trim_start_matches("\u{1b}c\u{1b}[?7l\u{1b}[2J"))
        .collect::<Vec<_>>()
        .join("\n")
}
