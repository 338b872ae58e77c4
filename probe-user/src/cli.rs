//! The command line: every subcommand's arguments, with help text and examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use probe::points::tc::BackendChoice;

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
        sudo probe trace --netns lab-host --iface br0 --count 20\n\n\
        Exit status: 0 done; 1 a runtime error; 2 a usage error; 3 this kernel lacks what was \
        asked for (see `probe doctor`)."
)]
pub struct Cli {
    /// More diagnostics on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print packets on the datapath, drops and routing decisions, until Ctrl-C.
    #[command(after_help = "Examples:\n  \
        sudo probe trace                        # bridges, veths, tunnels, uplink; drops; routes\n  \
        sudo probe trace --iface docker0\n  \
        sudo probe trace --iface 'veth*,docker0' --json > sightings.jsonl\n  \
        sudo probe trace --no-tc --no-routes    # only drops, with reasons\n  \
        sudo probe trace --rules --no-tc        # which nftables/iptables rule decided\n  \
        sudo probe trace -f 'host 172.17.0.2 and tcp port 80'\n  \
        sudo probe trace tcp port 80 and host 172.17.0.2   # the filter as trailing words\n  \
        sudo probe trace --netns /proc/1234/ns/net --iface eth0 --count 10\n  \
        sudo probe trace --iface veth0 --tc-backend clsact\n  \
        sudo probe trace --pcapng trace.pcapng --count 20   # then: wireshark trace.pcapng\n  \
        sudo probe trace --pcapng trace.pcapng --snaplen 128 host 172.17.0.2\n  \
        sudo probe trace --otlp http://127.0.0.1:4318   # each timeline as an OTLP trace")]
    Trace(TraceArgs),
    /// Measure how long packets take between observation points (per-hop latency), in the
    /// kernel, as log2 histograms printed every interval and in total at exit.
    #[command(after_help = "Examples:\n  \
        sudo probe latency --iface 'veth*'                  # every veth, both directions\n  \
        sudo probe latency --iface veth-a,veth-b -f 'tcp port 5201' --interval 5\n  \
        sudo probe latency --netns lab-host --json --count 3\n  \
        sudo probe latency --iface 'veth*' --by container   # which container's traffic is slow\n\n\
        Every packet is followed by its kernel buffer (skb), IPv6 and IPv4 id 0 included, \
        through tc and the stages inside the path (qdisc queueing, the peer's backlog); each \
        report says the fraction measured and names the slowest samples.")]
    Latency(LatencyArgs),
    /// Count drops, failed routing lookups and per-hop latency in the kernel (no event per
    /// packet) and serve them as Prometheus/OpenMetrics metrics on /metrics, until stopped.
    #[command(after_help = "Examples:\n  \
        sudo probe watch                                   # http://127.0.0.1:9464/metrics\n  \
        sudo probe watch --metrics 0.0.0.0:9464            # for a Prometheus elsewhere\n  \
        sudo probe watch --iface 'veth*,docker0' --label-limit 32\n  \
        sudo probe watch --netns lab-host --metrics 10.0.0.1:9464\n\n\
        Series: probe_drops_total{reason,location,interface,netns}, \
        probe_route_lookup_failures_total{family,table,errno}, \
        probe_hop_latency_seconds{from_iface,from_dir,to_iface,to_dir} (histogram), \
        probe_events_lost_total, probe_latency_samples_lost_total, probe_counts_lost_total.\n\
        PromQL: sum by (reason) (rate(probe_drops_total[5m])); histogram_quantile(0.99, sum by \
        (le, from_iface, to_iface) (rate(probe_hop_latency_seconds_bucket[5m]))).")]
    Watch(WatchArgs),
    /// Print the timelines of a recording made with `probe trace --record` (no root needed).
    #[command(after_help = "Examples:\n  \
        sudo probe trace --record incident.probe --count 50\n  \
        probe replay incident.probe\n  \
        probe replay incident.probe --json | jq 'select(.outcome == \"dropped\")'\n  \
        probe replay incident.probe --pcapng incident.pcapng && tshark -r incident.pcapng")]
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
        /// Colour in text timelines: auto (a terminal, unless NO_COLOR; CLICOLOR_FORCE forces
        /// it), always or never.
        #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
        color: ColorArg,
        /// Also write the timelines to FILE as pcapng (for Wireshark, tshark, tcpdump -r):
        /// one packet block per sighting, the packet's number as its packet id. Real bytes
        /// where the trace copied them (--snaplen), else headers rebuilt from the fields.
        #[arg(long, value_name = "FILE", conflicts_with = "events")]
        pcapng: Option<PathBuf>,
        /// Also export every timeline as an OpenTelemetry trace over OTLP/HTTP protobuf to URL
        /// (http://HOST:PORT[/PATH]; the path /v1/traces when none is given). A replay waits
        /// for the collector rather than leave timelines out.
        #[arg(long, value_name = "URL", conflicts_with = "events")]
        otlp: Option<String>,
    },
    /// Remove what killed probes left in a network namespace: their tc filters and the clsact
    /// qdiscs they created (from their ledgers in /run/probe), and their nftables trace
    /// tables. A running probe's attachments and other tools' filters are never touched.
    #[command(after_help = "Examples:\n  \
        sudo probe cleanup\n  \
        sudo probe cleanup --netns lab-host\n\n\
        probe trace and probe latency do the same when they start.")]
    Cleanup {
        /// Network namespace to clean: a name from `ip netns list`, or a path.
        #[arg(long, value_name = "NAME|PATH")]
        netns: Option<String>,
    },
    /// Print a shell completion script for bash, zsh or fish.
    #[command(after_help = "Examples:\n  \
        probe completions bash > /etc/bash_completion.d/probe\n  \
        probe completions zsh > \"${fpath[1]}/_probe\"\n  \
        probe completions fish > ~/.config/fish/completions/probe.fish")]
    Completions { shell: clap_complete::Shell },
    /// Print probe's man page (roff), or a subcommand's, as `cargo xtask man` writes them.
    #[command(hide = true)]
    Man {
        /// `trace`, `latency`, ...; none: the page of probe itself.
        subcommand: Option<String>,
    },
    /// Print the JSON Schema of one kind of line (timeline, event, latency, doctor, explain,
    /// summary),
    /// or write them all into a directory, as `cargo xtask schema` does into docs/schema.
    #[command(hide = true)]
    Schema {
        /// `timeline`, `event`, `latency`, `doctor`, `explain` or `summary` (or
        /// `probe.timeline/1`, ...).
        #[arg(required_unless_present = "out")]
        kind: Option<String>,
        /// Write every schema into this directory (`probe.timeline.json`, ...).
        #[arg(long, value_name = "DIR", conflicts_with = "kind")]
        out: Option<std::path::PathBuf>,
    },
    /// Explain a drop: what a drop reason means (or the function that dropped, on kernels
    /// without reasons), what probe shows as evidence, and what to look at next.
    #[command(after_help = "Examples:\n  \
        probe explain NO_SOCKET\n  \
        probe explain PKT_TOO_BIG IP_RPFILTER\n  \
        probe explain ip_error            # a drop location, on kernels before 5.17\n  \
        probe explain --all               # every drop reason of this kernel\n  \
        probe explain --all --json | jq 'select(.cause == null)'")]
    Explain {
        /// Drop reasons (NO_SOCKET), cause ids (no-socket) or kernel functions (ip_error).
        #[arg(value_name = "REASON", required_unless_present = "all")]
        terms: Vec<String>,
        /// Every drop reason of the running kernel, with its cause or none.
        #[arg(long, conflicts_with = "terms")]
        all: bool,
        /// JSON Lines, one per reason (schema probe.explain/1).
        #[arg(long)]
        json: bool,
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

/// What `trace` and `latency` both take: where to attach, what to follow, how to start.
#[derive(Args)]
pub struct AttachArgs {
    /// Interfaces to watch with tc, comma-separated or repeated (names or globs); default:
    /// every bridge, veth, tunnel and the uplink, including those that appear later.
    #[arg(
        short,
        long = "iface",
        value_name = "IF[,IF...]",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,
    /// Only packets matching a pcap-style expression, e.g. 'host 172.17.0.2 and tcp port 80',
    /// 'src net 10.0.0.0/8 and not udp'. Evaluated in the kernel: other packets cost nothing.
    /// A packet admitted once is followed through NAT, and its connection's replies with it.
    #[arg(short = 'f', long, value_name = "EXPR", conflicts_with = "expression")]
    pub filter: Option<String>,
    /// The filter as trailing words, as tcpdump takes it: `probe trace tcp port 80` (options
    /// may come after it too: `probe trace udp port 53 --json`).
    #[arg(value_name = "EXPRESSION")]
    pub expression: Vec<String>,
    /// Network namespace to work in: a name from `ip netns list`, or a path such as
    /// /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Write "ready" to this file once every program is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// How to attach tc programs: tcx links (Linux 6.6+), a clsact qdisc, or the best available.
    #[arg(long, value_enum, default_value_t = TcBackendArg::Auto)]
    pub tc_backend: TcBackendArg,
}

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Do not attach tc programs to interfaces.
    #[arg(long, conflicts_with = "ifaces")]
    pub no_tc: bool,
    /// Do not report dropped packets (tracepoint skb:kfree_skb).
    #[arg(long)]
    pub no_drops: bool,
    /// Do not report routing decisions (fib lookups and policy routing rules).
    #[arg(long)]
    pub no_routes: bool,
    /// Do not report netfilter hook and chain verdicts (nf_hook_slow, nft_do_chain,
    /// ipt_do_table; needs fentry or kprobes).
    #[arg(long)]
    pub no_netfilter: bool,
    /// Report drops, hook verdicts and routing lookups from every network namespace, not only
    /// the one being traced (another namespace's route row is labelled with it).
    #[arg(long)]
    pub all_netns: bool,
    /// Show which nftables/iptables-nft table, chain and rule decided each packet. Adds a small
    /// nftables table (inet probe_trace_PID) that marks packets for tracing; removed on exit.
    #[arg(long)]
    pub rules: bool,
    /// JSON Lines on stdout: one timeline per line (schema probe.timeline/1), or one event
    /// per line with --events.
    #[arg(long)]
    pub json: bool,
    /// One line per event as it happens, instead of a timeline per packet.
    #[arg(long)]
    pub events: bool,
    /// Colour in text timelines: auto (a terminal, unless NO_COLOR; CLICOLOR_FORCE forces it),
    /// always or never.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
    /// Also write every event shown to FILE, for `probe replay FILE` later or elsewhere.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Also write the timelines to FILE as pcapng (for Wireshark, tshark, tcpdump -r): an
    /// interface per observation point, a packet block per sighting with the packet's number
    /// as its packet id, verdicts, drop reasons and the diagnosis as comments.
    #[arg(long, value_name = "FILE", conflicts_with = "events")]
    pub pcapng: Option<PathBuf>,
    /// Copy the first BYTES of every packet tc sees into its event (at most 256), for
    /// --pcapng and --record; off by default: headers are then rebuilt from decoded fields.
    #[arg(
        long,
        value_name = "BYTES",
        conflicts_with = "no_tc",
        value_parser = clap::value_parser!(u16).range(1..=probe_common::MAX_SNAPLEN as i64)
    )]
    pub snaplen: Option<u16>,
    /// Also export every timeline as an OpenTelemetry trace over OTLP/HTTP protobuf to URL
    /// (http://HOST:PORT[/PATH]; the path /v1/traces when none is given): a root span with the
    /// diagnosis, one span per hop with the kernel's times. Never slows tracing: timelines the
    /// collector cannot take in time are left out and counted.
    #[arg(long, value_name = "URL", conflicts_with = "events")]
    pub otlp: Option<String>,
    /// Timelines the OTLP export queues at most while the collector is slow.
    #[arg(
        long,
        value_name = "N",
        requires = "otlp",
        default_value_t = probe::export::otlp::DEFAULT_QUEUE as u64,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub otlp_queue: u64,
    /// Stop after this many timelines (or events, with --events).
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Size of the event ring buffer in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = probe_common::DEFAULT_RINGBUF_BYTES / 1024)]
    pub ringbuf_kib: u32,
}

#[derive(Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Seconds between reports.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Stop after this many reports.
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// JSON Lines: one line per report (schema probe.latency/2).
    #[arg(long)]
    pub json: bool,
    /// Group the histograms: by flow (tuple at the first sighting), container (Docker name of
    /// the interface the packet entered by) or interface (where probe first saw it); at most
    /// 8 groups, the rest as `other`.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub by: Option<ByArg>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ByArg {
    Flow,
    Container,
    Interface,
}

impl ByArg {
    /// The grouping `--by` asks for (none without it).
    pub fn grouping(b: Option<ByArg>) -> crate::cmd::latency::By {
        use crate::cmd::latency::By;
        match b {
            None => By::None,
            Some(ByArg::Flow) => By::Flow,
            Some(ByArg::Container) => By::Container,
            Some(ByArg::Interface) => By::Interface,
        }
    }
}

#[derive(Args)]
pub struct WatchArgs {
    /// Interfaces to watch with tc for hop latency, comma-separated or repeated (names or
    /// globs); default: every bridge, veth, tunnel and the uplink, including later ones.
    #[arg(
        short,
        long = "iface",
        value_name = "IF[,IF...]",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,
    /// Address and port to serve /metrics on (in the namespace of --netns, if given).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub metrics: std::net::SocketAddr,
    /// Distinct values each label may take (interfaces, reasons, functions, namespaces,
    /// tables); past it, counts go to the value `other`.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub label_limit: u32,
    /// Network namespace to work in: a name from `ip netns list`, or a path such as
    /// /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Write "ready" to this file once every program is attached and /metrics is served.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// How to attach tc programs: tcx links (Linux 6.6+), a clsact qdisc, or the best available.
    #[arg(long, value_enum, default_value_t = TcBackendArg::Auto)]
    pub tc_backend: TcBackendArg,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=86400.0).contains(&v) => Ok(v),
        Ok(_) => Err("between 0.01 and 86400 seconds".to_owned()),
        Err(_) => Err(format!("'{s}' is not a number of seconds")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    Auto,
    Always,
    Never,
}

impl ColorArg {
    /// Whether to colour standard output, as the NO_COLOR and CLICOLOR_FORCE conventions say.
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal as _;
        let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty() && x != "0");
        match self {
            ColorArg::Always => true,
            ColorArg::Never => false,
            ColorArg::Auto if set("CLICOLOR_FORCE") => true,
            ColorArg::Auto => {
                std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
            }
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TcBackendArg {
    Auto,
    Tcx,
    Clsact,
}

impl AttachArgs {
    /// The filter, from `-f EXPR` or the trailing words.
    pub fn filter_expr(&self) -> Option<String> {
        match (&self.filter, self.expression.is_empty()) {
            (Some(f), _) => Some(f.clone()),
            (None, false) => Some(self.expression.join(" ")),
            (None, true) => None,
        }
    }
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
