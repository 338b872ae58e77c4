//! `cargo xtask bench`: what probe costs, measured as ratios in one run on the lab (machines
//! are shared and noisy, so never as absolute times): TCP throughput between two "containers"
//! across a bridge with probe tracing versus without, rounds interleaved, medians and spread;
//! the kernel's own per-program accounting (run time per run, from bpf_stats); and userspace
//! decode + correlate throughput and peak memory replaying a recording of the same traffic.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use probe_lab::{BridgeLab, ProbeRun};

use crate::privilege::{as_root, is_root};

const PREFIX: &str = "probe-bench-";
const ROUNDS: usize = 5;
const SECONDS: u32 = 3;

struct Config {
    name: &'static str,
    /// probe arguments after `trace --netns <host>`; None: no probe (baseline).
    probe: Option<&'static [&'static str]>,
}

const CONFIGS: &[Config] = &[
    Config {
        name: "baseline (no tracing)",
        probe: None,
    },
    Config {
        name: "probe: tc on both veths, drops, routes (timelines)",
        probe: Some(&["--iface", "veth-c1,veth-c2"]),
    },
    Config {
        name: "probe: same, --events to /dev/null",
        probe: Some(&["--iface", "veth-c1,veth-c2", "--events"]),
    },
];

pub fn run(no_build: bool) -> anyhow::Result<()> {
    let bin = if no_build {
        probe_lab::probe_binary()
    } else {
        crate::tasks::build(true)?
    };
    if !is_root() {
        let exe = std::env::current_exe()?;
        let status = as_root(exe)
            .args(["bench", "--no-build"])
            .env("PROBE_BIN", &bin)
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    crate::interrupt::install();
    // SAFETY: single-threaded here; probe_lab finds the binary through PROBE_BIN.
    unsafe { std::env::set_var("PROBE_BIN", &bin) };
    ensure!(
        crate::setup::which("iperf3").is_some(),
        "iperf3 is needed: run `cargo xtask setup` as root"
    );

    let lab = BridgeLab::new(PREFIX, &["c1", "c2"])?;
    let server_addr = lab.container("c2").addr.to_string();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    let stats_were = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut kernel_cost: Vec<(String, u64, u64)> = Vec::new();
    for round in 0..ROUNDS {
        for (i, config) in CONFIGS.iter().enumerate() {
            ensure!(
                !crate::interrupt::happened(),
                "interrupted; the lab has been removed"
            );
            let probe = match config.probe {
                Some(args) => {
                    let mut full = vec!["trace", "--netns", lab.host.name()];
                    full.extend_from_slice(args);
                    Some(ProbeRun::start(&full)?)
                }
                None => None,
            };
            // Count the kernel's per-program cost in the last round of the first probe config.
            let account = i == 1 && round == ROUNDS - 1;
            if account {
                std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
            }
            let gbps = iperf(&lab, &server_addr)?;
            if account {
                if let Some(p) = &probe {
                    kernel_cost = program_costs(p.pid());
                }
                std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &stats_were)?;
            }
            if let Some(p) = probe {
                p.stop()?;
            }
            results[i].push(gbps);
            eprintln!(
                "round {}/{ROUNDS}: {:<52} {gbps:.2} Gbit/s",
                round + 1,
                config.name
            );
        }
    }

    let (replay_rate, replay_rss_kib, replay_events) = replay_throughput(&lab, &server_addr)?;
    drop(lab);

    let base = median(&results[0]);
    let mut md = String::new();
    writeln!(
        md,
        "| configuration | median Gbit/s | spread | ratio to baseline |"
    )?;
    writeln!(md, "|---|---|---|---|")?;
    let mut json_rows = Vec::new();
    for (i, config) in CONFIGS.iter().enumerate() {
        let m = median(&results[i]);
        let (lo, hi) = spread(&results[i]);
        writeln!(
            md,
            "| {} | {m:.2} | {lo:.2}–{hi:.2} | {:.3} |",
            config.name,
            m / base
        )?;
        json_rows.push(format!(
            "{{\"config\":{:?},\"median_gbps\":{m:.3},\"min_gbps\":{lo:.3},\"max_gbps\":{hi:.3},\"ratio\":{:.4}}}",
            config.name,
            m / base
        ));
    }
    writeln!(md)?;
    writeln!(
        md,
        "| eBPF program (kernel accounting) | runs | ns per run |"
    )?;
    writeln!(md, "|---|---|---|")?;
    let mut json_progs = Vec::new();
    for (name, runs, ns) in &kernel_cost {
        let per = if *runs > 0 {
            *ns as f64 / *runs as f64
        } else {
            0.0
        };
        writeln!(md, "| {name} | {runs} | {per:.0} |")?;
        json_progs.push(format!(
            "{{\"program\":{name:?},\"runs\":{runs},\"ns_per_run\":{per:.1}}}"
        ));
    }
    writeln!(md)?;
    writeln!(
        md,
        "Userspace: replaying {replay_events} recorded events (decode + correlate + render to \
         /dev/null): {:.2} M events/s on one core, peak RSS {:.1} MiB.",
        replay_rate / 1e6,
        replay_rss_kib as f64 / 1024.0
    )?;
    let machine = format!(
        "{} cores, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    writeln!(
        md,
        "\nMachine: {machine}; {ROUNDS} rounds of {SECONDS} s iperf3 TCP, interleaved."
    )?;

    let dir = crate::tasks::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.md"), &md)?;
    std::fs::write(
        dir.join("results.json"),
        format!(
            "{{\"machine\":{machine:?},\"throughput\":[{}],\"programs\":[{}],\"replay_events_per_s\":{replay_rate:.0},\"replay_peak_rss_kib\":{replay_rss_kib}}}\n",
            json_rows.join(","),
            json_progs.join(",")
        ),
    )?;
    println!("{md}");
    println!("written to {}", dir.display());
    Ok(())
}

/// One iperf3 run from c1 to c2; Gbit/s received.
fn iperf(lab: &BridgeLab, server: &str) -> anyhow::Result<f64> {
    use std::io::{BufRead as _, BufReader};
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.container("c2").ns.name(),
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // Wait until the server says it listens.
    let stdout = srv.stdout.take().context("no iperf3 stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Server listening"));
    if !listening {
        let _ = srv.kill();
        bail!("the iperf3 server did not start");
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.container("c1").ns.name(),
            "iperf3",
            "-c",
            server,
        ])
        .args(["-t", &SECONDS.to_string(), "-J"])
        .output()?;
    let _ = srv.wait();
    ensure!(out.status.success(), "the iperf3 client failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 gave no throughput")
}

/// Per-program run counts and times of a process's BPF programs (from /proc/PID/fdinfo, filled
/// while kernel.bpf_stats_enabled is 1), keyed by program type and tag.
fn program_costs(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        let (Some(ty), Some(tag), Some(ns), Some(runs)) = (
            field("prog_type:"),
            field("prog_tag:"),
            field("run_time_ns:"),
            field("run_cnt:"),
        ) else {
            continue;
        };
        let kind = match ty.as_str() {
            "3" => "tc classifier",
            "5" => "tracepoint",
            "2" => "kprobe",
            "26" => "tracing (fentry/fexit)",
            other => other,
        };
        let (Ok(ns), Ok(runs)) = (ns.parse::<u64>(), runs.parse::<u64>()) else {
            continue;
        };
        if runs > 0 {
            out.push((format!("{kind} {tag}"), runs, ns));
        }
    }
    out.sort();
    out
}

/// Records the bench traffic once, then replays it to /dev/null: events per second and the
/// replay's peak resident memory.
fn replay_throughput(lab: &BridgeLab, server: &str) -> anyhow::Result<(f64, u64, u64)> {
    let file = std::env::temp_dir().join(format!("probe-bench-{}.rec", std::process::id()));
    let file_s = file.to_str().context("temp path")?.to_owned();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.host.name(),
        "--iface",
        "veth-c1,veth-c2",
        "--events",
        "--record",
        &file_s,
    ])?;
    iperf(lab, server)?;
    let (stdout, _) = run.stop()?;
    let events = stdout.lines().count() as u64;
    let result = time_replay(&probe_lab::probe_binary(), &file);
    let _ = std::fs::remove_file(&file);
    let (secs, rss) = result?;
    Ok((events as f64 / secs, rss, events))
}

fn time_replay(bin: &Path, file: &PathBuf) -> anyhow::Result<(f64, u64)> {
    let start = Instant::now();
    let child = Command::new(bin)
        .arg("replay")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(rc == pid, "waiting for the replay failed");
    ensure!(status == 0, "the replay failed (status {status})");
    Ok((start.elapsed().as_secs_f64(), usage.ru_maxrss as u64))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    (lo, hi)
}
