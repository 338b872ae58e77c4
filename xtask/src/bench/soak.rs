//! `cargo xtask soak`: probe left running for a while under steady traffic and interface churn
//! (containers starting and stopping), its resident memory and open descriptors sampled after
//! every round; both must stay flat. Memory that creeps or descriptors that pile up are what
//! makes a tool unsafe to leave on a production host.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use probe_lab::BridgeLab;

use super::{
    iperf,
    process::{Ready, Running},
};

const PREFIX: &str = "probe-soak-";
/// Veth pairs created and deleted in the traced namespace every round.
const CHURN_PAIRS: usize = 20;
/// Seconds of iperf3 traffic per round.
const ROUND_SECONDS: u32 = 10;
/// How much RSS and descriptors may grow past the first round's sample.
const FLAT: f64 = 1.10;

/// One sample of probe's footprint.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    fds: usize,
    gbps: f64,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn churn(lab: &BridgeLab, round: usize) -> anyhow::Result<()> {
    let names: Vec<(String, String)> = (0..CHURN_PAIRS)
        .map(|i| (format!("s{round}x{i}"), format!("s{round}y{i}")))
        .collect();
    for (a, b) in &names {
        lab.host
            .exec("ip", &["link", "add", a, "type", "veth", "peer", "name", b])?;
    }
    for (a, _) in &names {
        lab.host.exec("ip", &["link", "del", a])?;
    }
    Ok(())
}

pub fn run(bin: &std::path::Path, minutes: f64) -> anyhow::Result<()> {
    let lab = BridgeLab::new(PREFIX, &["c1", "c2"])?;
    let server = lab.container("c2").addr.to_string();
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["trace", "--netns", lab.host.name()]);
    let probe = Running::start(cmd, false, Ready::Line("probe: tracing "))?;
    let pid = probe.pid();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    let mut round = 0;
    while Instant::now() < deadline {
        anyhow::ensure!(
            !crate::interrupt::happened(),
            "interrupted; the lab has been removed"
        );
        churn(&lab, round)?;
        let gbps = iperf(&lab, &server, ROUND_SECONDS)?;
        let s = Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_kib: rss_kib(pid)?,
            fds: fds(pid)?,
            gbps,
        };
        eprintln!(
            "soak {:>6.0}s: rss {} KiB, {} fds, {:.1} Gbit/s",
            s.at_s, s.rss_kib, s.fds, s.gbps
        );
        samples.push(s);
        round += 1;
    }
    let stopped = probe.stop()?;
    drop(lab);
    report(&samples, &stopped.output, minutes)
}

fn report(samples: &[Sample], probe_said: &[String], minutes: f64) -> anyhow::Result<()> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        bail!("the soak ended before its first round");
    };
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let rss_ratio = max_rss as f64 / first.rss_kib.max(1) as f64;
    let fds_ratio = max_fds as f64 / first.fds.max(1) as f64;
    let mut md = format!(
        "# Soak: {minutes} min of iperf3 across the lab bridge, {CHURN_PAIRS} veth pairs created \
         and deleted per {ROUND_SECONDS} s round\n\n| at (s) | RSS KiB | fds | Gbit/s |\n|---|---|---|---|\n"
    );
    for s in samples {
        md.push_str(&format!(
            "| {:.0} | {} | {} | {:.1} |\n",
            s.at_s, s.rss_kib, s.fds, s.gbps
        ));
    }
    md.push_str(&format!(
        "\nAfter the first round: RSS {} → max {} KiB ({rss_ratio:.2}×), fds {} → max {} \
         ({fds_ratio:.2}×); last round {} KiB, {} fds. Flat means within {FLAT:.2}×.\n",
        first.rss_kib, max_rss, first.fds, max_fds, last.rss_kib, last.fds
    ));
    if let Some(summary) = probe_said.iter().rev().find(|l| l.contains(" events")) {
        md.push_str(&format!("\nprobe's summary: `{summary}`\n"));
    }
    let dir = crate::tasks::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("soak.md"), &md)?;
    print!("{md}");
    if rss_ratio > FLAT || fds_ratio > FLAT {
        bail!("probe's footprint grew: RSS {rss_ratio:.2}×, fds {fds_ratio:.2}×");
    }
    Ok(())
}
