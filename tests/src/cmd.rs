//! Running the system tools the lab is built with (iproute2, tc), with errors that say what
//! failed.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `program args...`; fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS args...`
pub fn ip(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs `program args...` inside namespace `ns` (for tools that act on the current namespace,
/// such as tc or iptables; never for probe itself, which enters namespaces on its own).
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}
