//! `probe trace`: attach, stream sightings through the pipeline until stopped, detach,
//! summarise.

use std::{
    io::{self, Write},
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use probe_pipeline::{
    decode,
    filter::Filter,
    names::Names,
    record::{Metadata, RecordWriter},
    render::Format,
    sink::{Sink, SinkOptions},
};

use crate::{
    host::{self, docker},
    kernel::Kernel,
    points::{self, drops, netfilter, rules, tc},
    session::{
        self, Session, StartOptions, Stops, clock, ebpf,
        poll::{poll_timer, pollable, readable},
    },
};

#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// tc observation points on interfaces.
    pub tc: bool,
    /// Interface names or globs for tc; empty: discover bridges, veths, tunnels and the uplink.
    pub ifaces: Vec<String>,
    /// Drops, routes and netfilter verdicts.
    pub points: points::Selection,
    /// Show drops from every network namespace, not only the one being traced.
    pub all_netns: bool,
    /// Rule-level netfilter verdicts through nftables tracing (adds a table while running).
    pub rules: bool,
    /// One line per event instead of hop timelines.
    pub events: bool,
    /// ANSI colours in text timelines.
    pub color: bool,
    /// Write the events to this file for `probe replay`.
    pub record: Option<PathBuf>,
    /// Write the timelines to this file as pcapng, for Wireshark and tcpdump.
    pub pcapng: Option<PathBuf>,
    /// Bytes of each packet tc copies into its event (0: none; headers are rebuilt).
    pub snaplen: u16,
    /// Only packets matching this (and what follows from them).
    pub filter: Option<Filter>,
    pub format: Format,
    /// Stop after this many timelines (or events).
    pub count: Option<u64>,
    /// Written ("ready") once every program is attached.
    pub ready_file: Option<PathBuf>,
    pub backend: tc::BackendChoice,
    pub ringbuf_bytes: u32,
    /// Also export every timeline as an OpenTelemetry trace (`--otlp`), started before the
    /// namespace was entered.
    pub otlp: Option<crate::export::Exporter>,
}

/// What a trace saw, reported on exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub stats: probe_pipeline::sink::Stats,
    pub malformed: u64,
    /// Events the kernel programs could not submit (ring buffer full).
    pub lost: u64,
    /// nftables trace messages the kernel could not deliver (socket buffer full).
    pub rules_lost: u64,
    /// `lost`, per CPU.
    pub lost_per_cpu: Vec<u64>,
    /// Sightings the filter turned away in the kernel (no event was written for them).
    pub filtered: u64,
    /// What the OTLP export did (`--otlp`).
    pub otlp: Option<crate::export::Report>,
}

/// `--rules`: probe's nftables table and the socket its trace messages arrive on.
struct RuleTracing {
    socket: rules::TraceSocket,
    tracer: rules::Tracer,
    /// Deleted when dropped.
    table: rules::TraceTable,
    /// Trace-message losses already reported.
    lost_said: u64,
}

/// Runs a trace to completion. Must be called before any other thread exists if the caller
/// entered a network namespace (the runtime's threads inherit it).
pub fn run(opts: &TraceOptions) -> anyhow::Result<Summary> {
    let selector = tc::Selector::parse(&opts.ifaces)?;
    let p = opts.points;
    if !opts.tc && !p.drops && !p.routes && !opts.rules && !p.netfilter {
        bail!("nothing to trace: tc, drops, routes and netfilter are all turned off");
    }
    // Claimed before anything is loaded: another probe recording there is said at once.
    let record = opts
        .record
        .as_deref()
        .map(|path| recording_file(path).map(|file| (path, file)))
        .transpose()?;
    // Created before anything is loaded too: a path that cannot be written is said at once.
    let pcapng = opts
        .pcapng
        .as_deref()
        .map(|path| super::pcapng_file(path).map(|file| (path, file)))
        .transpose()?;
    let mut session = Session::start(StartOptions {
        mode: probe_common::mode::EVENTS,
        filter: opts.filter.as_ref(),
        ringbuf_bytes: opts.ringbuf_bytes,
        snaplen: opts.snaplen,
        tc: opts.tc.then_some((selector, opts.backend)),
        points: points::selected(p),
    })?;
    if let Some(points::Outcome::Unavailable(why)) = session.outcome(netfilter::HOOK_VERDICTS) {
        log::warn!(
            "netfilter hook verdicts are not available here ({why}); netfilter drops still \
             show as drops with reason NETFILTER_DROP, and --rules names the rule"
        );
    }
    let logger = match aya_log::EbpfLogger::init(&mut session.bpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::debug!("eBPF program logging unavailable: {e}");
            None
        }
    };
    let ring = ebpf::take_events(&mut session.bpf)?;
    let counters = ebpf::Counters::take(&mut session.bpf)?;
    let mut used = session.describe();
    // Subscribe before adding the table, so no trace message is missed.
    let mut rule_tracing = if opts.rules {
        let socket = rules::TraceSocket::open()?;
        let table = rules::TraceTable::install(opts.filter.as_ref())?;
        used.push(format!("nftables rules (table inet {})", table.name()));
        Some(RuleTracing {
            tracer: rules::Tracer::new(table.name(), rules::Ruleset::read()),
            socket,
            table,
            lost_said: 0,
        })
    } else {
        None
    };
    if used.is_empty() && session.watch.is_none() {
        return Err(crate::KernelLacks(
            "no observation point could be attached on this kernel (see `probe doctor`)".into(),
        )
        .into());
    }
    // Docker's names for containers' veths, namespaces and addresses (none without Docker).
    let docker = docker::Watcher::start();
    session.topology.containers = docker.containers().clone();
    let mut sink = sink(opts, &session, record, pcapng)?;
    let mut summary = session::runtime()?.block_on(stream(
        (ring, logger),
        Loop {
            session: &mut session,
            rules: rule_tracing.as_mut(),
            docker,
            counters: &counters,
        },
        &mut sink,
        || {
            session::announce(
                &format!("tracing {}", used.join(", ")),
                opts.ready_file.as_deref(),
            )
        },
    ))?;
    summary.stats = sink.finish()?;
    // The sink's queue is gone with it: what is left is sent now.
    summary.otlp = opts.otlp.as_ref().map(|e| e.finish());
    let kernel = counters.read();
    summary.lost = kernel.ringbuf_full;
    summary.filtered = kernel.filtered;
    summary.lost_per_cpu = counters.lost_per_cpu();
    if let Some(r) = rule_tracing {
        summary.rules_lost = r.socket.lost;
        drop(r.table);
    }
    session.finish();
    Ok(summary)
}

/// The pipeline for this trace: names from this kernel and host, the recording if asked for.
fn sink(
    opts: &TraceOptions,
    session: &Session,
    record: Option<(&std::path::Path, std::fs::File)>,
    pcapng: Option<(&std::path::Path, std::fs::File)>,
) -> anyhow::Result<Sink<io::BufWriter<io::Stdout>>> {
    let names = names(&session.kernel);
    let clock = clock::now();
    let meta = Metadata {
        probe_version: env!("CARGO_PKG_VERSION").to_owned(),
        drop_reasons: names.drop_reasons.clone(),
        route_tables: names.route_tables.clone(),
        topology: session.topology.clone(),
        sightings_besides_verdicts: opts.tc || opts.points.drops,
        clock: Some(clock),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        kernel: crate::kernel::release(),
    };

    let mut sink = Sink::new(
        io::BufWriter::new(io::stdout()),
        SinkOptions {
            format: opts.format,
            events: opts.events,
            color: opts.color,
            filter: opts.filter.clone(),
            limit: opts.count,
            netns: if opts.all_netns {
                None
            } else {
                host::netns::own().and_then(|i| u32::try_from(i).ok())
            },
            verdicts_join_sightings: opts.tc || opts.points.drops,
            clock,
        },
        session.topology.clone(),
        Some(names),
    );
    // Diagnoses read the live host (sysctls, MTU, neighbours, sockets) when they are made.
    sink.topology_mut().host =
        probe_pipeline::host::Host::new(std::sync::Arc::new(host::facts::LiveHost::new()));
    if let Some((path, file)) = record {
        let out: Box<dyn Write> = Box::new(io::BufWriter::new(file));
        let mut writer = RecordWriter::new(out, &meta)?;
        // The header reaches the disk now: a full disk is said before tracing starts.
        writer
            .flush()
            .with_context(|| format!("cannot write the recording {}", path.display()))?;
        sink.record_to(writer);
    }
    if let Some((path, file)) = pcapng {
        sink.pcapng_to(super::pcapng_writer(path, file, &meta)?);
    }
    if let Some(exporter) = &opts.otlp {
        // Trace ids of this run: the host, this process and when it started.
        let seed = format!(
            "{} {} {} {}",
            meta.host,
            std::process::id(),
            clock.realtime_minus_monotonic_ns,
            clock::monotonic_now_ns()
        );
        let run = probe_pipeline::otlp::Run::new(seed.as_bytes(), clock);
        sink.otlp_to(exporter.queue(), run);
    }
    Ok(sink)
}

/// The recording's file, locked for this probe: two probes recording to one path would
/// truncate each other's. Emptied only once the lock is held.
fn recording_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "{} is being recorded to by another probe; choose another file",
            path.display()
        );
    }
    file.set_len(0)
        .with_context(|| format!("cannot empty {}", path.display()))?;
    Ok(file)
}

/// Everything needed to put names on this kernel's numbers.
fn names(kernel: &Kernel) -> Names {
    Names {
        drop_reasons: drops::reasons(kernel),
        symbols: kernel.symbols.clone(),
        route_tables: host::route_tables(),
    }
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// What the event loop reads from.
struct Loop<'a> {
    session: &'a mut Session,
    rules: Option<&'a mut RuleTracing>,
    docker: docker::Watcher,
    counters: &'a ebpf::Counters,
}

type Out = Sink<io::BufWriter<io::Stdout>>;

async fn stream(
    (ring, logger): (RingBuf<MapData>, Option<Logger>),
    mut l: Loop<'_>,
    sink: &mut Out,
    announce: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    let mut ring = pollable(ring).context("cannot poll the event ring buffer")?;
    let mut logger = match logger {
        Some(lg) => Some(pollable(lg).context("cannot poll the eBPF log buffer")?),
        None => None,
    };
    // Both sockets live in the session and the rule tracing for the whole loop, so their
    // descriptors stay open while the AsyncFds watch them.
    let mut rule_fd = match l.rules.as_ref() {
        Some(r) => Some(
            pollable::<RawFd>(r.socket.as_raw_fd())
                .context("cannot poll nftables trace messages")?,
        ),
        None => None,
    };
    let mut links = match l.session.link_events() {
        Some(fd) => Some(pollable::<RawFd>(fd).context("cannot poll link notifications")?),
        None => None,
    };
    // Listening now: a stop signal held since start-up (or sent after "tracing") ends the loop.
    let mut stops = Stops::listen()?;
    announce()?;
    // Timelines end when their packet has been quiet for a while, and losses are reported:
    // look every 100 ms.
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut seen_lost = 0u64;
    // Events below the programs' wakeup mark wake nobody: collect them within the bound.
    let mut poll = poll_timer();
    let mut summary = Summary::default();
    // Interfaces changed since the last tick: bridges' subnets and uplinks may have too.
    let mut routes_stale = false;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let done = drain(guard.get_inner_mut(), l.rules.as_deref_mut(), sink, &mut summary)?;
                guard.clear_ready();
                if done {
                    break;
                }
            }
            _ = poll.tick() => {
                if drain(ring.get_mut(), l.rules.as_deref_mut(), sink, &mut summary)? {
                    break;
                }
            }
            guard = readable(&mut logger) => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = readable(&mut links) => {
                let mut guard = guard?;
                let changes = l.session.on_link_events();
                host::apply(sink.topology_mut(), &changes);
                routes_stale = true;
                l.docker.links_changed();
                guard.clear_ready();
            }
            guard = readable(&mut rule_fd) => {
                let mut guard = guard?;
                // Sightings already in the ring buffer happened before these verdicts were
                // reported: take them first, so verdicts join the packets they are about.
                let mut done = drain(ring.get_mut(), l.rules.as_deref_mut(), sink, &mut summary)?;
                if !done && let Some(r) = l.rules.as_deref_mut() {
                    done = drain_rules(r, sink, false)?;
                }
                guard.clear_ready();
                if done {
                    break;
                }
            }
            _ = ticker.tick() => {
                if session::namespace_gone() {
                    break;
                }
                if std::mem::take(&mut routes_stale) {
                    host::refresh_routes(sink.topology_mut());
                }
                if tick(&mut l, ring.get_mut(), sink, &mut summary, &mut seen_lost)? {
                    break;
                }
            }
            _ = stops.recv() => break,
        }
    }
    // Whatever the kernel submitted before we stopped is still shown.
    if !sink.done() {
        drain(ring.get_mut(), l.rules.as_deref_mut(), sink, &mut summary)?;
    }
    if !sink.done()
        && let Some(r) = l.rules.as_deref_mut()
    {
        drain_rules(r, sink, true)?;
    }
    // Losses since the last look concern the packets still in flight.
    if l.counters.read().ringbuf_full > seen_lost {
        sink.mark_loss();
    }
    if let Some(lg) = logger.as_mut() {
        lg.get_mut().flush();
    }
    Ok(summary)
}

/// Every 100 ms: container names, losses, and the timelines that ended. True once done.
fn tick(
    l: &mut Loop<'_>,
    ring: &mut RingBuf<MapData>,
    sink: &mut Out,
    summary: &mut Summary,
    seen_lost: &mut u64,
) -> anyhow::Result<bool> {
    if let Some(c) = l.docker.poll() {
        sink.topology_mut().containers = c.clone();
    }
    // Loss is never silent: said as it happens, and marked on the packets in flight.
    let lost = l.counters.read().ringbuf_full;
    if lost > *seen_lost {
        log::warn!(
            "{} events lost: the ring buffer was full (a larger --ringbuf-kib or a --filter \
             helps)",
            lost - *seen_lost
        );
        *seen_lost = lost;
        sink.mark_loss();
    }
    // Only journeys quiet *after* everything already submitted was read may end: when probe
    // falls behind, a packet's later sightings still wait in the ring, and its rule verdicts in
    // the trace socket (the kernel queues them there as the rules run).
    let now = clock::monotonic_now_ns();
    if drain(ring, l.rules.as_deref_mut(), sink, summary)? {
        return Ok(true);
    }
    if let Some(r) = l.rules.as_deref_mut() {
        if drain_rules(r, sink, false)? {
            return Ok(true);
        }
        // Like the ring buffer's: said as it happens.
        if r.socket.lost > r.lost_said {
            log::warn!(
                "the kernel could not deliver nftables trace messages {} time(s): rule verdicts \
                 are missing (a --filter narrows what is traced)",
                r.socket.lost - r.lost_said
            );
            r.lost_said = r.socket.lost;
        }
    }
    Ok(sink.expire(now)? || sink.flush()?)
}

/// Sightings read between two looks at the nftables trace socket while the ring buffer is
/// being emptied.
const RULES_EVERY: usize = 256;

/// Sends everything in the ring buffer through the sink; true once the sink is done. Under a
/// flood the ring refills as it is read: the trace messages of the packets read so far are
/// taken in between, so that they find their packets before those end.
fn drain(
    ring: &mut RingBuf<MapData>,
    mut rules: Option<&mut RuleTracing>,
    sink: &mut Out,
    summary: &mut Summary,
) -> anyhow::Result<bool> {
    let mut read = 0usize;
    while !sink.done() {
        read += 1;
        if read.is_multiple_of(RULES_EVERY)
            && let Some(r) = rules.as_deref_mut()
            && drain_rules(r, sink, false)?
        {
            break;
        }
        let Some(item) = ring.next() else { break };
        match decode::decode(&item) {
            Ok(event) => {
                if sink.push(event, Some(&item))? {
                    break;
                }
            }
            Err(e) => {
                if summary.malformed == 0 {
                    log::warn!("skipping malformed event: {e}");
                }
                summary.malformed += 1;
            }
        }
    }
    Ok(sink.flush()?)
}

/// Turns pending nftables trace messages into events (`ending`: the last time, nothing waits).
fn drain_rules(rules: &mut RuleTracing, sink: &mut Out, ending: bool) -> anyhow::Result<bool> {
    let now = clock::monotonic_now_ns();
    let received = rules.socket.receive();
    for change in rules.socket.take_changed_chains() {
        rules.tracer.ruleset_changed(change);
    }
    if rules.socket.table_deleted(rules.table.name()) {
        // A ruleset reload (`nft flush ruleset`, a firewall service restart) took probe's
        // table with it: without it no packet is traced, so put it back.
        match rules.table.reinstall() {
            Ok(()) => log::warn!(
                "the nftables ruleset was replaced and took probe's trace table with it; \
                 re-created table inet {}",
                rules.table.name()
            ),
            Err(e) => log::warn!(
                "the nftables ruleset was replaced and took probe's trace table with it, and it \
                 cannot be re-created ({e}): rule verdicts are no longer shown"
            ),
        }
    }
    for raw in received {
        if sink.done() {
            break;
        }
        if let Some(event) = rules.tracer.event(raw, now)
            && sink.push(event, None)?
        {
            break;
        }
    }
    for event in rules.tracer.released(ending) {
        if sink.done() || sink.push(event, None)? {
            break;
        }
    }
    Ok(sink.flush()?)
}
