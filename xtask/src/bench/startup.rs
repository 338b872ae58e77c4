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
    /// `--tc-backend` (auto: what this kernel prefers, tcx where it has it).
    pub backend: &'static str,
    /// Launch to "probe: tracing", with [`VETHS`] interfaces to attach.
    pub ready_s: f64,
    /// Launch to "probe: tracing" in a namespace with no interface to attach: loading the
    /// programs, without attaching any.
    pub ready_empty_s: f64,
    /// Interfaces attached while tracing, per second (from the `ip` batch that created them to
    /// the last "as it appeared").
    pub attach_per_s: f64,
    /// Whether every new interface was attached within the timeout.
    pub all_attached: bool,
    /// Seconds the `ip` batch took to create [`VETHS`] interfaces, without probe and while it
    /// traces the namespace (probe's attaching holds the kernel's rtnl lock, which creating
    /// interfaces needs too).
    pub create_alone_s: f64,
    pub create_traced_s: f64,
}

impl Startup {
    /// Milliseconds per tc program attached at start-up (two per interface), beyond loading.
    pub fn attach_ms(&self) -> f64 {
        (self.ready_s - self.ready_empty_s).max(0.0) * 1e3 / (2 * VETHS) as f64
    }
}

/// The backends measured: the kernel's preferred one, then clsact (every kernel has it).
pub const BACKENDS: [&str; 2] = ["auto", "clsact"];

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

/// Launch to ready of `probe trace` in `ns` with `backend`.
fn launch(bin: &std::path::Path, ns: &Netns, backend: &str) -> anyhow::Result<(Running, f64)> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "trace",
        "--netns",
        ns.name(),
        "--events",
        "--no-routes",
        "--no-drops",
        "--tc-backend",
        backend,
    ]);
    let launched = Instant::now();
    let run = Running::start(cmd, false, Ready::Line("probe: tracing "))?;
    Ok((run, launched.elapsed().as_secs_f64()))
}

fn stop(run: Running) -> anyhow::Result<()> {
    let stopped = run.stop()?;
    ensure!(
        stopped.success,
        "probe failed:\n{}",
        stopped.output.join("\n")
    );
    Ok(())
}

pub fn measure(bin: &std::path::Path, _lab: &BridgeLab) -> anyhow::Result<Vec<Startup>> {
    let mut out = Vec::new();
    for backend in BACKENDS {
        let empty = Netns::named(&format!("{}none", super::PREFIX))?;
        let (run, ready_empty_s) = launch(bin, &empty, backend)?;
        stop(run)?;
        drop(empty);
        let ns = Netns::named(&format!("{}many", super::PREFIX))?;
        let created = Instant::now();
        add_pairs(&ns, "s", VETHS / 2)?;
        let create_alone_s = created.elapsed().as_secs_f64();
        let (mut run, ready_s) = launch(bin, &ns, backend)?;
        let created = Instant::now();
        add_pairs(&ns, "h", VETHS / 2)?;
        let create_traced_s = created.elapsed().as_secs_f64();
        let all_attached = run.wait_for("as it appeared", VETHS, Duration::from_secs(60));
        let attach_s = created.elapsed().as_secs_f64();
        stop(run)?;
        let startup = Startup {
            backend,
            ready_s,
            ready_empty_s,
            attach_per_s: VETHS as f64 / attach_s,
            all_attached,
            create_alone_s,
            create_traced_s,
        };
        eprintln!(
            "startup ({backend}): ready in {:.3} s with {VETHS} veths ({:.3} s with none); \
             {VETHS} new veths attached at {:.0}/s{}; creating {VETHS} took {:.3} s, {:.3} s \
             while traced",
            startup.ready_s,
            startup.ready_empty_s,
            startup.attach_per_s,
            if all_attached {
                ""
            } else {
                " (not all within 60 s)"
            },
            startup.create_alone_s,
            startup.create_traced_s,
        );
        out.push(startup);
    }
    Ok(out)
}
