//! Start-up: the time from launching `probe trace` to its ready line with 100 veths to attach,
//! and the rate at which it attaches to veths created while it traces (each says "attached to
//! ... as it appeared"). The veths live in a namespace of their own, removed afterwards.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use probe_lab::{BridgeLab, Netns};

use super::process::{Ready, Running};

/// veth interfaces (50 pairs) present at launch, and as many created while tracing.
pub const VETHS: usize = 100;

pub struct Startup {
    /// Launch to "probe: tracing", with [`VETHS`] interfaces to attach.
    pub ready_s: f64,
    /// Interfaces attached while tracing, per second (from the `ip` batch that created them to
    /// the last "as it appeared").
    pub attach_per_s: f64,
    /// Whether every new interface was attached within the timeout.
    pub all_attached: bool,
}

/// Creates `pairs` veth pairs named `{stem}a{i}` / `{stem}b{i}` in `ns`, up, in one `ip` batch.
fn add_pairs(ns: &Netns, stem: &str, pairs: usize) -> anyhow::Result<()> {
    let mut batch = String::new();
    for i in 0..pairs {
        batch.push_str(&format!(
            "link add {stem}a{i} type veth peer name {stem}b{i}\n\
             link set {stem}a{i} up\nlink set {stem}b{i} up\n"
        ));
    }
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run ip")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(batch.as_bytes())?;
    ensure!(child.wait()?.success(), "ip -batch failed");
    Ok(())
}

pub fn measure(bin: &std::path::Path, _lab: &BridgeLab) -> anyhow::Result<Startup> {
    let ns = Netns::named(&format!("{}many", super::PREFIX))?;
    add_pairs(&ns, "s", VETHS / 2)?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "trace",
        "--netns",
        ns.name(),
        "--events",
        "--no-routes",
        "--no-drops",
    ]);
    let launched = Instant::now();
    let mut run = Running::start(cmd, false, Ready::Line("probe: tracing "))?;
    let ready_s = launched.elapsed().as_secs_f64();
    let created = Instant::now();
    add_pairs(&ns, "h", VETHS / 2)?;
    let all_attached = run.wait_for("as it appeared", VETHS, Duration::from_secs(60));
    let attach_s = created.elapsed().as_secs_f64();
    let stopped = run.stop()?;
    ensure!(
        stopped.success,
        "probe failed:\n{}",
        stopped.output.join("\n")
    );
    let startup = Startup {
        ready_s,
        attach_per_s: VETHS as f64 / attach_s,
        all_attached,
    };
    eprintln!(
        "startup: ready in {:.3} s with {VETHS} veths; {VETHS} new veths attached at {:.0}/s{}",
        startup.ready_s,
        startup.attach_per_s,
        if all_attached {
            ""
        } else {
            " (not all within 60 s)"
        }
    );
    Ok(startup)
}
