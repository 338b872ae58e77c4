//! The `probe` command line: parse arguments, set up logging, run a subcommand, and turn any
//! error into one line on stderr and a non-zero exit status.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};
use probe::{netns, render::Format, tc::BackendChoice, trace};

#[derive(Parser)]
#[command(
    name = "probe",
    version,
    about = "Where did my packet go on this host, and why? An eBPF datapath observer.",
    long_about = "probe watches packets at the places that decide their fate on a container host \
                  (tc on bridges, veths, tunnels and the uplink) and prints what it sees.",
    after_help = "Examples:\n  \
        sudo probe trace --iface docker0\n  \
        sudo probe trace --iface veth1a2b3c,docker0 --json\n  \
        sudo probe trace --netns lab-host --iface br0 --count 20"
)]
struct Cli {
    /// More diagnostics on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print packets on the datapath, drops and routing decisions, until Ctrl-C.
    #[command(after_help = "Examples:\n  \
        sudo probe trace                        # bridges, veths, tunnels, uplink; drops; routes\n  \
        sudo probe trace --iface docker0\n  \
        sudo probe trace --iface 'veth*,docker0' --json > sightings.jsonl\n  \
        sudo probe trace --no-tc --no-routes    # only drops, with reasons\n  \
        sudo probe trace --rules --no-tc        # which nftables/iptables rule decided\n  \
        sudo probe trace -f 'host 172.17.0.2 and tcp port 80'\n  \
        sudo probe trace --netns /proc/1234/ns/net --iface eth0 --count 10\n  \
        sudo probe trace --iface veth0 --tc-backend clsact")]
    Trace(TraceArgs),
    /// Measure how long packets take between observation points (per-hop latency), in the
    /// kernel, as log2 histograms printed every interval and in total at exit.
    #[command(after_help = "Examples:\n  \
        sudo probe latency --iface 'veth*'                  # every veth, both directions\n  \
        sudo probe latency --iface veth-a,veth-b -f 'tcp port 5201' --interval 5\n  \
        sudo probe latency --netns lab-host --json --count 3\n\n\
        Packets are told apart by IP protocol, IPv4 id and TCP sequence number, which NAT \
        leaves alone; IPv6 and datagrams with IPv4 id 0 (unconnected UDP sockets) are not \
        followed.")]
    Latency(LatencyArgs),
    /// Print the timelines of a recording made with `probe trace --record` (no root needed).
    #[command(after_help = "Examples:\n  \
        sudo probe trace --record incident.probe --count 50\n  \
        probe replay incident.probe\n  \
        probe replay incident.probe --json | jq 'select(.outcome == \"dropped\")'")]
    Replay {
        /// The recording.
        file: PathBuf,
        /// JSON Lines: one timeline per line (or one event per line with --events).
        #[arg(long)]
        json: bool,
        /// One line per event instead of timelines.
        #[arg(long)]
        events: bool,
        /// Only packets matching a pcap-style expression.
        #[arg(short = 'f', long, value_name = "EXPR")]
        filter: Option<String>,
    },
    /// Show what this kernel supports and which backend each observation point uses.
    #[command(after_help = "Examples:\n  \
        sudo probe doctor\n  \
        sudo probe doctor --json | jq .points")]
    Doctor {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct TraceArgs {
    /// Interfaces to watch with tc, comma-separated or repeated.
    #[arg(
        short,
        long = "iface",
        value_name = "IF[,IF...]",
        value_delimiter = ','
    )]
    ifaces: Vec<String>,
    /// Do not attach tc programs to interfaces.
    #[arg(long, conflicts_with = "ifaces")]
    no_tc: bool,
    /// Do not report dropped packets (tracepoint skb:kfree_skb).
    #[arg(long)]
    no_drops: bool,
    /// Do not report routing decisions (fib lookups and policy routing rules).
    #[arg(long)]
    no_routes: bool,
    /// Do not report netfilter hook and chain verdicts (nf_hook_slow, nft_do_chain,
    /// ipt_do_table; needs fentry or kprobes).
    #[arg(long)]
    no_netfilter: bool,
    /// Report drops from every network namespace, not only the one being traced.
    #[arg(long)]
    all_netns: bool,
    /// Show which nftables/iptables-nft table, chain and rule decided each packet. Adds a small
    /// nftables table (inet probe_trace_PID) that marks packets for tracing; removed on exit.
    #[arg(long)]
    rules: bool,
    /// Network namespace to trace in: a name from `ip netns list`, or a path such as
    /// /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|PATH")]
    netns: Option<String>,
    /// JSON Lines on stdout: one timeline per line (schema probe.timeline/1), or one event
    /// per line with --events.
    #[arg(long)]
    json: bool,
    /// One line per event as it happens, instead of a timeline per packet.
    #[arg(long)]
    events: bool,
    /// Only packets matching a pcap-style expression, e.g. 'host 172.17.0.2 and tcp port 80',
    /// 'src net 10.0.0.0/8 and not udp'. Evaluated in the kernel: other packets cost no event.
    /// A packet admitted once is followed through NAT, and its connection's replies with it.
    #[arg(short = 'f', long, value_name = "EXPR")]
    filter: Option<String>,
    /// Also write every event shown to FILE, for `probe replay FILE` later or elsewhere.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Stop after this many timelines (or events, with --events).
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Write "ready" to this file once every program is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// How to attach tc programs: tcx links (Linux 6.6+), a clsact qdisc, or the best available.
    #[arg(long, value_enum, default_value_t = TcBackendArg::Auto)]
    tc_backend: TcBackendArg,
    /// Size of the event ring buffer in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = probe_common::DEFAULT_RINGBUF_BYTES / 1024)]
    ringbuf_kib: u32,
}

#[derive(Args)]
struct LatencyArgs {
    /// Interfaces to measure between, comma-separated or repeated (names or globs); default:
    /// every bridge, veth, tunnel and the uplink.
    #[arg(
        short,
        long = "iface",
        value_name = "IF[,IF...]",
        value_delimiter = ','
    )]
    ifaces: Vec<String>,
    /// Only packets matching a pcap-style expression (evaluated in the kernel).
    #[arg(short = 'f', long, value_name = "EXPR")]
    filter: Option<String>,
    /// Seconds between reports.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// Stop after this many reports.
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// JSON Lines: one line per hop pair and report (schema probe.latency/1).
    #[arg(long)]
    json: bool,
    /// Network namespace to measure in: a name from `ip netns list`, or a path.
    #[arg(long, value_name = "NAME|PATH")]
    netns: Option<String>,
    /// Write "ready" to this file once every program is attached.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// How to attach tc programs.
    #[arg(long, value_enum, default_value_t = TcBackendArg::Auto)]
    tc_backend: TcBackendArg,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=86400.0).contains(&v) => Ok(v),
        Ok(_) => Err("between 0.01 and 86400 seconds".to_owned()),
        Err(_) => Err(format!("'{s}' is not a number of seconds")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum TcBackendArg {
    Auto,
    Tcx,
    Clsact,
}

impl From<TcBackendArg> for BackendChoice {
    fn from(a: TcBackendArg) -> Self {
        match a {
            TcBackendArg::Auto => BackendChoice::Auto,
            TcBackendArg::Tcx => BackendChoice::Tcx,
            TcBackendArg::Clsact => BackendChoice::Clsact,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Replay {
            file,
            json,
            events,
            filter,
        } => {
            let format = if json { Format::Json } else { Format::Text };
            let filter = filter
                .as_deref()
                .map(probe::filter::Filter::parse)
                .transpose()?;
            let n = probe::replay::run(&file, format, events, filter.as_ref())?;
            let mut line = format!(
                "replayed {} events into {} timelines",
                n.events, n.timelines
            );
            if let Some(outcomes) = n.outcomes.describe() {
                line.push_str(&format!(": {outcomes}"));
            }
            log::info!("{line}");
            Ok(())
        }
        Command::Doctor { json } => {
            let report = probe::doctor::examine();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", probe::doctor::render(&report));
            }
            if report.can_trace {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Latency(args) => {
            let filter = prepare(args.filter.as_deref(), args.netns.as_deref())?;
            let totals = probe::latency::run(&probe::latency::LatencyOptions {
                ifaces: args.ifaces,
                filter,
                interval: std::time::Duration::from_secs_f64(args.interval),
                count: args.count,
                json: args.json,
                ready_file: args.ready_file,
                backend: args.tc_backend.into(),
            })?;
            let packets: u64 = totals.values().map(|h| h.count()).sum();
            log::info!(
                "{packets} packet hops measured over {} hop pair(s)",
                totals.len()
            );
            Ok(())
        }
        Command::Trace(args) => {
            let filter = prepare(args.filter.as_deref(), args.netns.as_deref())?;
            let ringbuf_bytes = args.ringbuf_kib.checked_mul(1024).ok_or_else(|| {
                anyhow::anyhow!("--ringbuf-kib {} is too large", args.ringbuf_kib)
            })?;
            let opts = trace::TraceOptions {
                tc: !args.no_tc,
                ifaces: args.ifaces,
                tracepoints: probe::tracepoints::Selection {
                    drops: !args.no_drops,
                    routes: !args.no_routes,
                },
                all_netns: args.all_netns,
                rules: args.rules,
                netfilter: !args.no_netfilter,
                events: args.events,
                record: args.record,
                filter,
                format: if args.json {
                    Format::Json
                } else {
                    Format::Text
                },
                count: args.count,
                ready_file: args.ready_file,
                backend: args.tc_backend.into(),
                ringbuf_bytes,
            };
            let args_events = opts.events;
            let summary = trace::run(&opts)?;
            let mut line = if args_events {
                format!("{} events", summary.events)
            } else {
                let mut line = format!(
                    "{} timelines from {} events",
                    summary.timelines, summary.events
                );
                if let Some(outcomes) = summary.outcomes.describe() {
                    line.push_str(&format!(" ({outcomes})"));
                }
                line
            };
            if summary.lost > 0 {
                let per_cpu: Vec<String> = summary
                    .lost_per_cpu
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(cpu, n)| format!("cpu{cpu} {n}"))
                    .collect();
                line.push_str(&format!(
                    "; {} LOST because the ring buffer was full ({}; try a larger --ringbuf-kib \
                     or a --filter)",
                    summary.lost,
                    per_cpu.join(", ")
                ));
            } else {
                line.push_str(", none lost");
            }
            if summary.filtered > 0 {
                line.push_str(&format!(
                    "; {} sightings filtered out in the kernel",
                    summary.filtered
                ));
            }
            if summary.rules_lost > 0 {
                line.push_str(&format!(
                    "; nftables trace messages were lost {} time(s) (socket buffer full)",
                    summary.rules_lost
                ));
            }
            if summary.malformed > 0 {
                line.push_str(&format!("; {} malformed events skipped", summary.malformed));
            }
            log::info!("{line}");
            Ok(())
        }
    }
}

/// What `trace` and `latency` do before loading anything: parse the filter (a typo is
/// reported first, without needing root), check privileges, and enter the namespace (before
/// the event loop starts any thread: threads inherit the namespace).
fn prepare(
    filter: Option<&str>,
    ns: Option<&str>,
) -> anyhow::Result<Option<probe::filter::Filter>> {
    let filter = filter.map(probe::filter::Filter::parse).transpose()?;
    probe::privileges::check()?;
    if let Some(ns) = ns {
        netns::enter(ns)?;
    }
    Ok(filter)
}

/// Diagnostics go to stderr as `probe: ...` lines; RUST_LOG still overrides the level.
fn init_logging(verbose: u8) {
    use std::io::Write as _;
    let level = match verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, record| match record.level() {
            log::Level::Info => writeln!(buf, "probe: {}", record.args()),
            log::Level::Warn => writeln!(buf, "probe: warning: {}", record.args()),
            other => writeln!(
                buf,
                "probe: {}: {}",
                other.as_str().to_lowercase(),
                record.args()
            ),
        })
        .init();
}
