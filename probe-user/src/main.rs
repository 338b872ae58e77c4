//! The `probe` command line: parse arguments, set up logging, run a subcommand, and turn any
//! error into one line on stderr and a non-zero exit status.

mod cli;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use cli::{Cli, Command, LatencyArgs, TraceArgs, WatchArgs};
use probe::{cmd, points};
use probe_pipeline::{filter::Filter, render::Format};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe: error: {e:#}");
            if probe::kernel_lacks(&e) {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn format(json: bool) -> Format {
    if json { Format::Json } else { Format::Text }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Replay {
            file,
            json,
            events,
            filter,
            color,
            pcapng,
            otlp,
        } => {
            let filter = filter.as_deref().map(Filter::parse).transpose()?;
            let otlp = otlp
                .as_deref()
                .map(|url| {
                    let mut o =
                        probe::export::OtlpOptions::parse(url, probe::export::otlp::DEFAULT_QUEUE)?;
                    o.wait_when_full = true;
                    probe::export::Exporter::start(&o, otlp_origin())
                })
                .transpose()?;
            let stats = cmd::replay::run(cmd::replay::ReplayOptions {
                path: &file,
                format: format(json),
                events,
                filter,
                color: color.enabled(),
                pcapng: pcapng.as_deref(),
                otlp: otlp.clone(),
            })?;
            log::info!("{}", cmd::replay_summary(&stats));
            if let Some(report) = otlp.map(|e| e.finish()) {
                log::info!("{}", report.describe());
            }
            if let Some(out) = &pcapng {
                log::info!(
                    "{} packet blocks written to {}",
                    stats.pcapng_packets,
                    out.display()
                );
            }
            if json {
                print_all(cmd::replay_summary_json(&stats).as_bytes())?;
            }
            Ok(())
        }
        Command::Explain { terms, all, json } => cmd::explain::run(&terms, all, json),
        Command::Doctor { json } => {
            let report = cmd::doctor::examine();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", cmd::doctor::render(&report));
            }
            match (report.can_trace, report.privileged) {
                (true, _) => Ok(()),
                // Said in the report: run as root to find out.
                (false, false) => std::process::exit(1),
                // Said in the report: this kernel cannot run probe trace.
                (false, true) => std::process::exit(3),
            }
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "probe", &mut out);
            print_all(&out)
        }
        Command::Man { subcommand } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let page = match subcommand {
                None => cmd,
                Some(name) => cmd
                    .find_subcommand(&name)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("probe has no subcommand '{name}'"))?
                    // clap names take static strings; one page per run, so one small leak.
                    .name(Box::leak(format!("probe-{name}").into_boxed_str()) as &str),
            };
            let mut out = Vec::new();
            clap_mangen::Man::new(page).render(&mut out)?;
            print_all(&out)
        }
        Command::Schema { kind, out } => {
            if let Some(dir) = out {
                for path in probe::schema::write_all(&dir)
                    .with_context(|| format!("writing schemas into {}", dir.display()))?
                {
                    log::info!("wrote {}", path.display());
                }
                return Ok(());
            }
            let name = kind.unwrap_or_default();
            let kind = probe::schema::Kind::find(&name).ok_or_else(|| {
                let names: Vec<&str> = probe::schema::KINDS.iter().map(|k| k.name).collect();
                anyhow::anyhow!("no line kind '{name}'; one of: {}", names.join(", "))
            })?;
            print_all(kind.text().as_bytes())
        }
        Command::Cleanup { netns } => {
            cmd::prepare(None, netns.as_deref())?;
            let removed = cmd::cleanup();
            if removed.is_empty() {
                log::info!("nothing left behind by a killed probe here");
            }
            for line in removed {
                println!("{line}");
            }
            Ok(())
        }
        Command::Latency(args) => latency(args),
        Command::Watch(args) => watch(args),
        Command::Trace(args) => trace(args),
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is no error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn watch(args: WatchArgs) -> anyhow::Result<()> {
    cmd::prepare(None, args.netns.as_deref())?;
    cmd::watch::run(&cmd::watch::WatchOptions {
        ifaces: args.ifaces,
        metrics: args.metrics,
        label_limit: args.label_limit as usize,
        ready_file: args.ready_file,
        backend: args.tc_backend.into(),
    })
}

fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let a = args.attach;
    let filter = cmd::prepare(a.filter_expr().as_deref(), a.netns.as_deref())?;
    let totals = cmd::latency::run(&cmd::latency::LatencyOptions {
        ifaces: a.ifaces,
        filter,
        interval: std::time::Duration::from_secs_f64(args.interval),
        count: args.count,
        json: args.json,
        ready_file: a.ready_file,
        backend: a.tc_backend.into(),
        by: cli::ByArg::grouping(args.by),
    })?;
    let packets: u64 = totals.values().map(|h| h.count()).sum();
    log::info!("{packets} samples measured over {} stage(s)", totals.len());
    Ok(())
}

fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let a = args.attach;
    if args.snaplen.is_some() && args.pcapng.is_none() && args.record.is_none() {
        anyhow::bail!("--snaplen copies packet bytes for --pcapng or --record; give one of them");
    }
    // Started before entering --netns: the collector is reached from the host's network.
    let otlp = args
        .otlp
        .as_deref()
        .map(|url| {
            let queue = usize::try_from(args.otlp_queue).unwrap_or(usize::MAX);
            let o = probe::export::OtlpOptions::parse(url, queue)?;
            probe::export::Exporter::start(&o, otlp_origin())
        })
        .transpose()?;
    let filter = cmd::prepare(a.filter_expr().as_deref(), a.netns.as_deref())?;
    let ringbuf_bytes = args
        .ringbuf_kib
        .checked_mul(1024)
        .ok_or_else(|| anyhow::anyhow!("--ringbuf-kib {} is too large", args.ringbuf_kib))?;
    let opts = cmd::trace::TraceOptions {
        tc: !args.no_tc,
        ifaces: a.ifaces,
        points: points::Selection {
            drops: !args.no_drops,
            routes: !args.no_routes,
            netfilter: !args.no_netfilter,
        },
        all_netns: args.all_netns,
        rules: args.rules,
        events: args.events,
        color: args.color.enabled(),
        record: args.record,
        pcapng: args.pcapng.clone(),
        snaplen: args.snaplen.unwrap_or(0),
        filter,
        format: format(args.json),
        count: args.count,
        ready_file: a.ready_file,
        backend: a.tc_backend.into(),
        ringbuf_bytes,
        otlp,
    };
    let summary = cmd::trace::run(&opts)?;
    log::info!("{}", cmd::trace_summary(&summary, opts.events));
    if let Some(out) = &args.pcapng {
        log::info!(
            "{} packet blocks written to {}",
            summary.stats.pcapng_packets,
            out.display()
        );
    }
    if opts.format == Format::Json {
        print_all(cmd::trace_summary_json(&summary).as_bytes())?;
    }
    Ok(())
}

/// Who exported the spans: this host, its kernel, this probe.
fn otlp_origin() -> probe_pipeline::otlp::Origin {
    probe_pipeline::otlp::Origin {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        kernel: probe::kernel::release(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
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
