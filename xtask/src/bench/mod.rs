//! `cargo xtask bench`: what probe costs, measured as ratios in one run on the lab (machines
//! are shared and noisy, so never as absolute times): TCP throughput between two "containers"
//! across a bridge with each observer (probe's modes and the tools users reach for instead)
//! versus none, rounds interleaved, medians and spread; the kernel's own per-program
//! accounting (run time per run, from bpf_stats); the highest packet rate probe follows without
//! loss; and userspace decode + correlate throughput and peak memory replaying a long recording.

mod fuzz;
mod loss;
mod observers;
mod parts;
mod process;
mod progs;
mod replay;
mod report;
mod sender;
mod soak;
mod startup;
mod udp;

pub use replay::rusage;

use std::{io::BufRead as _, path::Path, process::Stdio};

use anyhow::{Context as _, bail, ensure};
use probe_lab::BridgeLab;

use crate::privilege::{as_root, is_root};
use observers::{CONFIGS, Observer};
pub use parts::Part;
use process::{Ready, Running};
use progs::{ProgramCost, StatsEnabled};

const PREFIX: &str = "probe-bench-";

/// How much to measure: the full bench, or a short run to check the bench itself.
#[derive(Clone, Copy)]
pub struct Plan {
    pub rounds: usize,
    pub seconds: u32,
    pub loss_seconds: f64,
    pub bisections: usize,
    pub replay_events: u64,
    /// Seconds of mutation fuzz on the bench's recording.
    pub fuzz_seconds: f64,
}

const FULL: Plan = Plan {
    rounds: 5,
    seconds: 3,
    loss_seconds: 2.0,
    bisections: 3,
    replay_events: 4_000_000,
    fuzz_seconds: 30.0,
};
const QUICK: Plan = Plan {
    rounds: 1,
    seconds: 1,
    loss_seconds: 1.0,
    bisections: 1,
    replay_events: 400_000,
    fuzz_seconds: 5.0,
};

/// One configuration's results over the rounds.
pub struct Measured {
    pub name: &'static str,
    /// Per round, in the set's unit (Gbit/s for TCP, packets/s for small UDP).
    pub values: Vec<f64>,
    /// Observed / baseline of the same round.
    pub ratios: Vec<f64>,
    /// Why it did not run, if it could not.
    pub unavailable: Option<String>,
    pub notes: Vec<String>,
    pub programs: Vec<ProgramCost>,
}

/// The release probe (built unless `no_build`), with this task running as root: if it is not,
/// the task is run again as root (with `args`, which must include `--no-build`) and this
/// process exits with its status.
fn as_root_with_probe(no_build: bool, args: &[&str]) -> anyhow::Result<std::path::PathBuf> {
    let bin = if no_build {
        probe_lab::probe_binary()
    } else {
        crate::tasks::build(true)?
    };
    if !is_root() {
        let exe = std::env::current_exe()?;
        let status = as_root(exe).args(args).env("PROBE_BIN", &bin).status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    crate::interrupt::install();
    // SAFETY: single-threaded here; probe_lab finds the binary through PROBE_BIN.
    unsafe { std::env::set_var("PROBE_BIN", &bin) };
    ensure!(
        crate::setup::which("iperf3").is_some(),
        "iperf3 is needed: run `cargo xtask setup` as root"
    );
    Ok(bin)
}

/// What one `cargo xtask bench` measures: which parts, how long.
pub struct Options {
    pub quick: bool,
    /// `--only`: a comma-separated list of parts; None: all.
    pub only: Option<String>,
    /// Overrides the plan's seconds of mutation fuzz.
    pub fuzz_seconds: Option<f64>,
}

/// Everything one run measured (parts left out are empty or None).
pub struct Results {
    pub tcp: Vec<Measured>,
    pub udp64: Vec<Measured>,
    pub losses: Vec<loss::LossResult>,
    pub startup: Vec<startup::Startup>,
    pub replays: Option<Replays>,
}

pub fn run(no_build: bool, opts: Options) -> anyhow::Result<()> {
    let parts = parts::parse(opts.only.as_deref())?;
    let only = parts::arg(&parts);
    let fuzz = opts.fuzz_seconds.map(|s| s.to_string());
    let mut args = vec!["bench", "--no-build"];
    if opts.quick {
        args.push("--quick");
    }
    if let Some(list) = &only {
        args.extend(["--only", list]);
    }
    if let Some(secs) = &fuzz {
        args.extend(["--fuzz-seconds", secs]);
    }
    let bin = as_root_with_probe(no_build, &args)?;
    let mut plan = if opts.quick { QUICK } else { FULL };
    if let Some(secs) = opts.fuzz_seconds {
        plan.fuzz_seconds = secs;
    }
    let wants = |p: Part| parts.contains(&p);
    let _tracefs = TracefsMount::ensure();
    let busy_before = load_average();

    let lab = BridgeLab::new(PREFIX, &["c1", "c2"])?;
    let server = lab.container("c2").addr.to_string();
    let mut results = Results {
        tcp: Vec::new(),
        udp64: Vec::new(),
        losses: Vec::new(),
        startup: Vec::new(),
        replays: None,
    };
    if wants(Part::Tcp) {
        results.tcp = throughput_rounds(&bin, &lab, plan, "Gbit/s", || {
            iperf(&lab, &server, plan.seconds)
        })?;
    }
    if wants(Part::Udp64) {
        let sink = udp::Sink::new(&lab)?;
        results.udp64 = throughput_rounds(&bin, &lab, plan, "packets/s", || {
            sink.measure(&lab, plan.seconds)
        })?;
    }
    if wants(Part::Loss) {
        let routed = loss::RoutedOut::new(&lab, PREFIX)?;
        for (mode, args) in [("timelines", &[][..]), ("--events", &["--events"][..])] {
            results.losses.push(loss::search(
                &bin,
                &lab,
                mode,
                args,
                plan.loss_seconds,
                plan.bisections,
            )?);
        }
        drop(routed);
    }
    if wants(Part::Startup) {
        results.startup = startup::measure(&bin, &lab)?;
    }
    if wants(Part::Replay) || wants(Part::Fuzz) {
        results.replays = Some(replay_throughput(
            &bin,
            &lab,
            &server,
            plan,
            wants(Part::Replay),
            wants(Part::Fuzz),
        )?);
    }
    drop(lab);
    let busy_after = load_average();

    let machine = report::Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpu: cpu_model(),
        load_before: busy_before,
        load_after: busy_after,
    };
    report::write(&machine, plan, &results)?;
    let panics = results
        .replays
        .as_ref()
        .and_then(|r| r.fuzz.as_ref())
        .map_or(0, |f| f.panics);
    ensure!(
        panics == 0,
        "the replay path panicked on {panics} damaged recordings"
    );
    Ok(())
}

/// `cargo xtask soak`: probe under traffic and churn for `minutes`; RSS and fds must stay flat.
pub fn soak(no_build: bool, minutes: f64) -> anyhow::Result<()> {
    let minutes_arg = minutes.to_string();
    let bin = as_root_with_probe(no_build, &["soak", "--no-build", "--minutes", &minutes_arg])?;
    let _tracefs = TracefsMount::ensure();
    soak::run(&bin, minutes)
}

/// Every configuration measured with `measure` (a figure in `unit`, higher is better), rounds
/// interleaved, each round's ratios against that round's baseline.
fn throughput_rounds(
    bin: &Path,
    lab: &BridgeLab,
    plan: Plan,
    unit: &str,
    measure: impl Fn() -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<Measured>> {
    let mut measured: Vec<Measured> = CONFIGS
        .iter()
        .map(|c| Measured {
            name: c.name,
            values: Vec::new(),
            ratios: Vec::new(),
            unavailable: observers::unavailable(c.observer),
            notes: Vec::new(),
            programs: Vec::new(),
        })
        .collect();
    for round in 0..plan.rounds {
        let mut baseline = None;
        for (i, config) in CONFIGS.iter().enumerate() {
            ensure!(
                !crate::interrupt::happened(),
                "interrupted; the lab has been removed"
            );
            let m = &mut measured[i];
            if m.unavailable.is_some() {
                continue;
            }
            let started = match observers::start(config.observer, bin, lab.host.name()) {
                Ok(s) => s,
                Err(e) if matches!(config.observer, Observer::Probe(_) | Observer::None) => {
                    return Err(e.context(format!("cannot start {}", config.name)));
                }
                Err(e) => {
                    let first = format!("{e:#}");
                    let reason = first.lines().take(3).collect::<Vec<_>>().join(" / ");
                    m.unavailable = Some(format!("failed to start: {reason}"));
                    continue;
                }
            };
            let account = config.account && round + 1 == plan.rounds;
            let stats = account.then(StatsEnabled::new).transpose()?;
            let value = measure()?;
            if let (Some(_), Some(pid)) = (&stats, started.pid()) {
                m.programs = progs::of_process(pid);
            }
            drop(stats);
            let stopped = started.stop()?;
            if let Some(s) = &stopped {
                note_outcome(config.observer, s, round, m);
            }
            m.values.push(value);
            if i == 0 {
                baseline = Some(value);
            }
            if let Some(b) = baseline {
                m.ratios.push(value / b);
            }
            eprintln!(
                "round {}/{}: {:<60} {value:.2} {unit}",
                round + 1,
                plan.rounds,
                config.name
            );
        }
    }
    Ok(measured)
}

/// What an observer said when it stopped, worth keeping next to its figures.
fn note_outcome(observer: Observer, s: &process::Stopped, round: usize, m: &mut Measured) {
    let last_round_only = |m: &mut Measured, line: &str| {
        m.notes.retain(|n| !n.starts_with("last round: "));
        m.notes.push(format!("last round: {line}"));
    };
    if s.died_early {
        let why = s.output.last().cloned().unwrap_or_default();
        m.notes.push(format!(
            "round {}: exited before it was stopped: {why}",
            round + 1
        ));
    } else if !s.success && matches!(observer, Observer::Probe(_)) {
        m.notes.push(format!(
            "round {}: probe failed: {}",
            round + 1,
            s.output.join(" / ")
        ));
    }
    match observer {
        Observer::Probe(_) => {
            if let Some(line) = s.output.iter().rev().find(|l| {
                l.starts_with("probe: ") && (l.contains("none lost") || l.contains(" LOST because"))
            }) {
                last_round_only(m, line.trim_start_matches("probe: "));
            }
        }
        Observer::Tcpdump => {
            let dropped = s
                .output
                .iter()
                .filter(|l| l.contains("packets captured") || l.contains("dropped by kernel"))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if !dropped.is_empty() {
                last_round_only(m, &dropped);
            }
        }
        Observer::NftTrace | Observer::Bpftrace | Observer::None => {}
    }
}

/// One iperf3 run from c1 to c2; Gbit/s received.
fn iperf(lab: &BridgeLab, server: &str, seconds: u32) -> anyhow::Result<f64> {
    let mut srv = process::in_ns(
        lab.container("c2").ns.name(),
        "iperf3",
        &["-s", "-1", "--forceflush"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()?;
    // Wait until the server says it listens.
    let stdout = srv.stdout.take().context("no iperf3 stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
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
    let out = process::in_ns(
        lab.container("c1").ns.name(),
        "iperf3",
        &["-c", server, "-t", &seconds.to_string(), "-J"],
    )
    .output()?;
    let _ = srv.wait();
    ensure!(out.status.success(), "the iperf3 client failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 gave no throughput")
}

/// The replays measured: decode + correlate on two file lengths (memory must not grow with
/// the file), then with rendering, then events only.
pub struct Replays {
    pub recorded_events: u64,
    /// A replay of a recording with no events: start-up, subtracted from the others.
    pub startup: replay::ReplayRun,
    pub runs: Vec<(&'static str, replay::ReplayRun)>,
    pub fuzz: Option<fuzz::Fuzzed>,
}

fn replay_throughput(
    bin: &Path,
    lab: &BridgeLab,
    server: &str,
    plan: Plan,
    replay: bool,
    fuzz: bool,
) -> anyhow::Result<Replays> {
    let dir = std::env::temp_dir();
    let small = dir.join(format!("probe-bench-{}.rec", std::process::id()));
    let big = dir.join(format!("probe-bench-{}-long.rec", std::process::id()));
    let quarter = dir.join(format!("probe-bench-{}-quarter.rec", std::process::id()));
    let empty = dir.join(format!("probe-bench-{}-empty.rec", std::process::id()));
    let _cleanup = RemoveOnDrop(vec![
        small.clone(),
        big.clone(),
        quarter.clone(),
        empty.clone(),
    ]);
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["trace", "--netns", lab.host.name()])
        .args(["--iface", "veth-c1,veth-c2", "--events", "--record"])
        .arg(&small);
    let run = Running::start(cmd, false, Ready::Line("probe: tracing "))?;
    iperf(lab, server, plan.seconds)?;
    run.stop()?;
    let fuzz = if fuzz {
        let f = fuzz::run(&small, plan.fuzz_seconds)?;
        eprintln!(
            "fuzz: {} mutations of the recording in {:.0} s, {} refused with an error, {} panics",
            f.mutations, f.seconds, f.errors, f.panics
        );
        Some(f)
    } else {
        None
    };
    if !replay {
        return Ok(Replays {
            recorded_events: 0,
            startup: replay::ReplayRun::default(),
            runs: Vec::new(),
            fuzz,
        });
    }
    let (n_quarter, recorded_events) = replay::enlarge(&small, &quarter, plan.replay_events / 4)?;
    let (n_big, _) = replay::enlarge(&small, &big, plan.replay_events)?;
    replay::enlarge(&small, &empty, 0)?;
    let filter = ["--filter", observers::MATCHES_NOTHING];
    let startup = replay::time(bin, &empty, &filter, 0)?;
    let runs = vec![
        (
            "decode + correlate (timelines built, none rendered), quarter length",
            replay::time(bin, &quarter, &filter, n_quarter)?,
        ),
        (
            "decode + correlate (timelines built, none rendered)",
            replay::time(bin, &big, &filter, n_big)?,
        ),
        (
            "decode + correlate + render text timelines",
            replay::time(bin, &big, &[], n_big)?,
        ),
        (
            "decode + render each event (--events)",
            replay::time(bin, &big, &["--events"], n_big)?,
        ),
    ];
    Ok(Replays {
        recorded_events,
        startup,
        runs,
        fuzz,
    })
}

struct RemoveOnDrop(Vec<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Mounts tracefs at /sys/kernel/tracing for bpftrace if nothing has, and unmounts it after.
struct TracefsMount {
    mounted_by_us: bool,
}

impl TracefsMount {
    const PATH: &str = "/sys/kernel/tracing";

    fn ensure() -> Self {
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("tracefs"));
        let mounted_by_us = !mounted
            && std::process::Command::new("mount")
                .args(["-t", "tracefs", "nodev", Self::PATH])
                .status()
                .is_ok_and(|s| s.success());
        Self { mounted_by_us }
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if self.mounted_by_us {
            let _ = std::process::Command::new("umount")
                .arg(Self::PATH)
                .status();
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default()
}
