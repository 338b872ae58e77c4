//! `probe trace`: attach, stream sightings until stopped, detach, summarise.

use std::{
    io::{self, Write},
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    btf::Btf,
    decode,
    discover::Selector,
    docker, ebpf,
    event::{Event, EventBody},
    filter::{Filter, Follower},
    kfunc,
    names::Names,
    nftrace::{self, TraceSocket, TraceTable},
    poll::{pollable, readable},
    record::{Metadata, RecordWriter},
    render::{Clock, Format, IfNames, Renderer},
    rtnl,
    signals::HeldSignals,
    tc::{BackendChoice, TcAttacher},
    timeline::{Correlator, Journey, Limits, Topology, render_finished},
    tracefs::Tracefs,
    tracepoints,
    watch::TcWatch,
};

#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// tc observation points on interfaces.
    pub tc: bool,
    /// Interface names or globs for tc; empty: discover bridges, veths, tunnels and the uplink.
    pub ifaces: Vec<String>,
    /// Drops (`skb:kfree_skb`) and routing decisions (fib tracepoints).
    pub tracepoints: tracepoints::Selection,
    /// Show drops from every network namespace, not only the one being traced.
    pub all_netns: bool,
    /// Rule-level netfilter verdicts through nftables tracing (adds a table while running).
    pub rules: bool,
    /// Netfilter hook and chain verdicts through kernel functions, where the kernel allows.
    pub netfilter: bool,
    /// One line per event instead of hop timelines.
    pub events: bool,
    /// Write the events to this file for `probe replay`.
    pub record: Option<PathBuf>,
    /// Only packets matching this (and what follows from them).
    pub filter: Option<Filter>,
    pub format: Format,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Written ("ready") once every program is attached.
    pub ready_file: Option<PathBuf>,
    pub backend: BackendChoice,
    pub ringbuf_bytes: u32,
}

/// What a trace saw, reported on exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events received and shown (in timelines or as lines).
    pub events: u64,
    /// Timelines printed (timeline mode).
    pub timelines: u64,
    pub malformed: u64,
    /// Events the kernel programs could not submit (ring buffer full).
    pub lost: u64,
    /// nftables trace messages the kernel could not deliver (socket buffer full).
    pub rules_lost: u64,
    /// `lost`, per CPU.
    pub lost_per_cpu: Vec<u64>,
    /// Sightings the filter turned away in the kernel (no event was written for them).
    pub filtered: u64,
    /// Timelines printed, by how they ended.
    pub outcomes: crate::timeline::Tally,
}

/// Runs a trace to completion. Must be called before any other thread exists if the caller
/// entered a network namespace (the runtime's threads inherit it).
pub fn run(opts: &TraceOptions) -> anyhow::Result<Summary> {
    crate::privileges::check()?;
    // Ctrl-C while attaching must not kill us half-way (leaving a qdisc or nft table): hold the
    // stop signals until the event loop listens for them.
    let _held = HeldSignals::hold();
    ebpf::check_ringbuf_size(opts.ringbuf_bytes)?;
    let selector = Selector::parse(&opts.ifaces)?;
    let wants_tracepoints = opts.tracepoints.drops || opts.tracepoints.routes;
    if !opts.tc && !wants_tracepoints && !opts.rules && !opts.netfilter {
        bail!("nothing to trace: tc, drops, routes and netfilter are all turned off");
    }

    // Kernel facts first: they shape what the programs read.
    let tracefs = if wants_tracepoints {
        match Tracefs::open() {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("{e}; drops and routing decisions will not be shown");
                None
            }
        }
    } else {
        None
    };
    let btf = match Btf::from_sys() {
        Ok(b) => Some(b),
        Err(e) => {
            log::warn!("{e}; drop events will lack interface and packet details");
            None
        }
    };
    let (layout, names, missing) = tracepoints::prepare(tracefs.as_ref(), btf.as_ref());
    drop(btf);
    for m in &missing.0 {
        log::debug!("not available on this kernel: {m}");
    }

    let config = ebpf::config(probe_common::mode::EVENTS, opts.filter.as_ref());
    let mut bpf = ebpf::load(opts.ringbuf_bytes, &layout, &config)?;
    let logger = match aya_log::EbpfLogger::init(&mut bpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::debug!("eBPF program logging unavailable: {e}");
            None
        }
    };
    // This namespace's interfaces, for events that carry only an index.
    let links = rtnl::Socket::request_socket()
        .and_then(|mut s| s.links())
        .unwrap_or_default();
    let mut ifnames: IfNames = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let mut topology = topology_of(&links);
    // Docker's names for containers' veths, namespaces and addresses (none without Docker).
    let docker = docker::Watcher::start();
    topology.containers = docker.containers().clone();
    let watch = if opts.tc {
        Some(TcWatch::start(
            &mut bpf,
            selector,
            TcAttacher::new(opts.backend),
            &mut ifnames,
        )?)
    } else {
        None
    };
    let mut used = watch.as_ref().map(TcWatch::describe).unwrap_or_default();
    if tracefs.is_some() {
        used.extend(tracepoints::attach(&mut bpf, opts.tracepoints));
    }
    let kfuncs = kfunc::attach(
        &mut bpf,
        kfunc::Selection {
            netfilter: opts.netfilter,
            routing_rules: opts.tracepoints.routes,
        },
        &layout,
    );
    used.extend(kfuncs.attached());
    if let kfunc::Outcome::Unavailable(why) = &kfuncs.hook_verdicts {
        log::warn!(
            "netfilter hook verdicts are not available here ({why}); netfilter drops still \
             show as drops with reason NETFILTER_DROP, and --rules names the rule"
        );
    }
    let ring = ebpf::take_events(&mut bpf)?;
    let counters = ebpf::Counters::take(&mut bpf)?;
    // Subscribe before adding the table, so no trace message is missed.
    let rules = if opts.rules {
        let socket = TraceSocket::open()?;
        let table = TraceTable::install()?;
        used.push(format!("nftables rules (table inet {})", table.name()));
        Some(RuleTracing {
            tracer: nftrace::Tracer::new(table.name()),
            socket,
            table,
        })
    } else {
        None
    };
    if used.is_empty() && watch.is_none() {
        bail!("no observation point could be attached");
    }

    let announce = || -> anyhow::Result<()> {
        log::info!("tracing {}; press Ctrl-C to stop", used.join(", "));
        if let Some(path) = &opts.ready_file {
            std::fs::write(path, "ready\n")
                .with_context(|| format!("cannot write ready file {}", path.display()))?;
        }
        Ok(())
    };

    let recorder = match &opts.record {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let meta = Metadata {
                probe_version: env!("CARGO_PKG_VERSION").to_owned(),
                drop_reasons: names.drop_reasons.clone(),
                route_tables: names.route_tables.clone(),
                topology: topology.clone(),
            };
            Some(RecordWriter::new(io::BufWriter::new(file), &meta)?)
        }
        None => None,
    };
    let timelines = (!opts.events).then(|| Timelines {
        correlator: Correlator::new(Limits::default()),
        topology,
        json: opts.format == Format::Json,
        color: opts.format == Format::Text && {
            use std::io::IsTerminal as _;
            io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        },
    });
    let mut renderer = Renderer::new(opts.format, Clock::now(), ifnames);
    renderer.set_containers(docker.containers().clone());
    let mut view = View {
        renderer,
        names,
        docker,
        netns: if opts.all_netns {
            None
        } else {
            crate::netns::own().and_then(|i| u32::try_from(i).ok())
        },
        timelines,
        recorder,
        filter: opts.filter.clone().map(Follower::new),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the event loop")?;
    let mut session = Session { bpf, watch, rules };
    let mut summary = runtime.block_on(stream(
        ring,
        logger,
        &mut session,
        &mut view,
        &counters,
        opts.count,
        announce,
    ))?;
    let kernel = counters.read();
    summary.lost = kernel.ringbuf_full;
    summary.filtered = kernel.filtered;
    summary.lost_per_cpu = counters.lost_per_cpu();

    // Links go with the programs; then the qdiscs probe created, if any; tracefs last.
    let Session { bpf, watch, rules } = session;
    if let Some(r) = rules {
        summary.rules_lost = r.socket.lost;
        drop(r.table);
    }
    drop(bpf);
    if let Some(w) = watch {
        w.finish();
    }
    drop(tracefs);
    Ok(summary)
}

/// The kernel side of a running trace.
struct Session {
    bpf: aya::Ebpf,
    watch: Option<TcWatch>,
    rules: Option<RuleTracing>,
}

/// `--rules`: probe's nftables table and the socket its trace messages arrive on.
struct RuleTracing {
    socket: TraceSocket,
    tracer: nftrace::Tracer,
    /// Deleted when dropped.
    table: TraceTable,
}

/// Everything between a decoded event and the output.
struct View {
    renderer: Renderer,
    names: Names,
    /// Container names, refreshed when interfaces appear.
    docker: docker::Watcher,
    /// Show drops only from this namespace (None: from all).
    netns: Option<u32>,
    /// Timeline mode; None: one line per event.
    timelines: Option<Timelines>,
    /// `--record`: every event shown, as the kernel wrote it.
    recorder: Option<RecordWriter<io::BufWriter<std::fs::File>>>,
    /// `--filter`, for events (timelines are filtered whole).
    filter: Option<Follower>,
}

struct Timelines {
    correlator: Correlator,
    topology: Topology,
    json: bool,
    color: bool,
}

/// Interfaces by role, bridge subnets and uplinks, for diagnoses.
fn topology_of(links: &[rtnl::Link]) -> Topology {
    let mut t = Topology {
        own_netns: crate::netns::own().unwrap_or(0),
        netns_names: crate::netns::named(),
        ..Topology::default()
    };
    for l in links {
        t.links.insert(
            l.index,
            (l.name.clone(), l.kind.clone().unwrap_or_default()),
        );
    }
    let bridges: Vec<&str> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|l| l.name.as_str())
        .collect();
    // Connected IPv4 routes of bridges (/proc/net/route shows this thread's namespace).
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !bridges.contains(&f[0]) {
                continue;
            }
            let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
            if let (Some(dst), Some(mask)) = (hex(f[1]), hex(f[7])) {
                t.bridge_subnets.push((
                    std::net::IpAddr::V4(std::net::Ipv4Addr::from(dst)),
                    mask.count_ones() as u8,
                    f[0].to_owned(),
                ));
            }
        }
    }
    t.uplinks = crate::discover::default_route_devices();
    log::debug!(
        "uplinks {:?}, bridge subnets {:?}",
        t.uplinks,
        t.bridge_subnets
    );
    t
}

impl View {
    /// Interfaces came or went: diagnoses need their names and kinds, and containers may have
    /// started.
    fn links_changed(&mut self) {
        if let Some(t) = self.timelines.as_mut()
            && let Ok(links) = rtnl::Socket::request_socket().and_then(|mut s| s.links())
        {
            let containers = std::mem::take(&mut t.topology.containers);
            t.topology = topology_of(&links);
            t.topology.containers = containers;
        }
        self.docker.links_changed();
    }

    /// Takes container names the Docker watcher has found since the last look.
    fn poll_docker(&mut self) {
        if let Some(c) = self.docker.poll() {
            if let Some(t) = self.timelines.as_mut() {
                t.topology.containers = c.clone();
            }
            self.renderer.set_containers(c.clone());
        }
    }

    /// How many units (timelines, or events) were shown: what --count counts.
    fn shown(&self, summary: &Summary) -> u64 {
        if self.timelines.is_some() {
            summary.timelines
        } else {
            summary.events
        }
    }

    /// Writes journeys that ended; Ok(true) once the output is gone.
    fn write_finished(
        &mut self,
        out: &mut impl Write,
        summary: &mut Summary,
        journeys: Vec<Journey>,
        limit: u64,
    ) -> anyhow::Result<bool> {
        let Some(t) = self.timelines.as_ref() else {
            return Ok(false);
        };
        for j in journeys {
            if summary.timelines >= limit {
                break;
            }
            if self.filter.as_ref().is_some_and(|f| !j.matches(f.filter())) {
                continue;
            }
            summary.timelines += 1;
            let text = render_finished(&j, &t.topology, t.json, t.color, &mut summary.outcomes);
            if let Err(e) = out.write_all(text.as_bytes()) {
                return output_gone(e);
            }
        }
        Ok(false)
    }

    fn wants(&self, body: &EventBody) -> bool {
        match (body, self.netns) {
            // Drops without a device (netns 0) cannot be placed: keep them.
            (EventBody::Drop(d), Some(ns)) => d.netns == 0 || d.netns == ns,
            _ => true,
        }
    }
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

async fn stream(
    ring: RingBuf<MapData>,
    logger: Option<Logger>,
    session: &mut Session,
    view: &mut View,
    counters: &ebpf::Counters,
    count: Option<u64>,
    announce: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    let mut ring = pollable(ring).context("cannot poll the event ring buffer")?;
    let mut logger = match logger {
        Some(l) => Some(pollable(l).context("cannot poll the eBPF log buffer")?),
        None => None,
    };
    let mut rule_fd = match session.rules.as_ref() {
        // The socket lives in `session.rules` for the whole loop.
        Some(r) => Some(
            pollable::<RawFd>(r.socket.as_raw_fd())
                .context("cannot poll nftables trace messages")?,
        ),
        None => None,
    };
    let mut links = match session.watch.as_ref() {
        // The socket lives in `session.watch` for the whole loop, so its descriptor stays open
        // while the AsyncFd watches it.
        Some(w) => Some(
            pollable::<RawFd>(w.monitor().as_raw_fd()).context("cannot poll link notifications")?,
        ),
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Listening now: a stop signal held since start-up (or sent after "tracing") ends the loop.
    HeldSignals::release();
    announce()?;
    // Timelines end when their packet has been quiet for a while, and losses are reported:
    // look every 100 ms.
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut seen_lost = 0u64;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut summary = Summary::default();
    let limit = count.unwrap_or(u64::MAX);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let done = drain(guard.get_inner_mut(), view, &mut out, &mut summary, limit)?;
                guard.clear_ready();
                if done {
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
                if let Some(w) = session.watch.as_mut() {
                    w.on_link_events(&mut session.bpf, view.renderer.names_mut());
                }
                view.links_changed();
                guard.clear_ready();
            }
            guard = readable(&mut rule_fd) => {
                let mut guard = guard?;
                // Sightings already in the ring buffer happened before these verdicts were
                // reported: take them first, so verdicts join the packets they are about.
                let mut done = drain(ring.get_mut(), view, &mut out, &mut summary, limit)?;
                if !done && let Some(r) = session.rules.as_mut() {
                    done = drain_rules(r, view, &mut out, &mut summary, limit)?;
                }
                guard.clear_ready();
                if done {
                    break;
                }
            }
            _ = ticker.tick() => {
                view.poll_docker();
                // Loss is never silent: said as it happens, and marked on the packets in flight.
                let lost = counters.read().ringbuf_full;
                if lost > seen_lost {
                    log::warn!(
                        "{} events lost: the ring buffer was full (a larger --ringbuf-kib or a \
                         --filter helps)",
                        lost - seen_lost
                    );
                    seen_lost = lost;
                    if let Some(t) = view.timelines.as_mut() {
                        t.correlator.mark_loss();
                    }
                }
                // Only journeys quiet *after* everything already submitted was read may end:
                // when probe falls behind, a packet's later sightings still wait in the ring,
                // and its rule verdicts in the trace socket (the kernel queues them there as
                // the rules run).
                let now = crate::render::monotonic_now_ns();
                if drain(ring.get_mut(), view, &mut out, &mut summary, limit)? {
                    break;
                }
                if let Some(r) = session.rules.as_mut()
                    && drain_rules(r, view, &mut out, &mut summary, limit)?
                {
                    break;
                }
                let done = match view.timelines.as_mut() {
                    Some(t) => {
                        t.correlator.expire(now);
                        t.correlator.take_finished()
                    }
                    None => Vec::new(),
                };
                if view.write_finished(&mut out, &mut summary, done, limit)?
                    || flush(&mut out, view.shown(&summary) >= limit)?
                {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
        }
    }
    // Whatever the kernel submitted before we stopped is still shown.
    if view.shown(&summary) < limit {
        drain(ring.get_mut(), view, &mut out, &mut summary, limit)?;
    }
    if view.shown(&summary) < limit
        && let Some(r) = session.rules.as_mut()
    {
        drain_rules(r, view, &mut out, &mut summary, limit)?;
    }
    if let Some(w) = view.recorder.as_mut() {
        w.flush().context("cannot write the recording")?;
    }
    // Losses since the last look concern the packets still in flight.
    if counters.read().ringbuf_full > seen_lost
        && let Some(t) = view.timelines.as_mut()
    {
        t.correlator.mark_loss();
    }
    // Whatever is still in flight is shown as it stands.
    let rest = match view.timelines.as_mut() {
        Some(t) => t.correlator.flush(),
        None => Vec::new(),
    };
    if !view.write_finished(&mut out, &mut summary, rest, limit)? {
        flush(&mut out, true)?;
    }
    if let Some(l) = logger.as_mut() {
        l.get_mut().flush();
    }
    Ok(summary)
}

/// Renders everything in the ring buffer; returns true once `limit` events were shown or the
/// output is gone.
fn drain(
    ring: &mut RingBuf<MapData>,
    view: &mut View,
    out: &mut impl Write,
    summary: &mut Summary,
    limit: u64,
) -> anyhow::Result<bool> {
    while view.shown(summary) < limit {
        let Some(item) = ring.next() else { break };
        match decode::decode(&item) {
            Ok(event) => {
                if emit(view, out, summary, event, Some(&item), limit)? {
                    return Ok(true);
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
    let done = view.shown(summary) >= limit;
    flush(out, done)
}

/// Filters, names and writes one event; true when the output is gone.
fn emit(
    view: &mut View,
    out: &mut impl Write,
    summary: &mut Summary,
    mut event: Event,
    raw: Option<&[u8]>,
    limit: u64,
) -> anyhow::Result<bool> {
    if !view.wants(&event.body) {
        return Ok(false);
    }
    view.names.enrich(&mut event);
    summary.events += 1;
    if let Some(w) = view.recorder.as_mut() {
        // Names first, so a replay knows them when it reaches the event.
        w.extra(&event)
            .and_then(|()| raw.map_or(Ok(()), |bytes| w.raw(bytes)))
            .context("cannot write the recording")?;
    }
    if let Some(t) = view.timelines.as_mut() {
        t.correlator.push(event);
        let done = t.correlator.take_finished();
        return view.write_finished(out, summary, done, limit);
    }
    if let Some(filter) = &mut view.filter
        && !filter.admits(&event)
    {
        return Ok(false);
    }
    match view.renderer.write(out, &event) {
        Ok(()) => Ok(false),
        Err(e) => output_gone(e),
    }
}

fn flush(out: &mut impl Write, done: bool) -> anyhow::Result<bool> {
    match out.flush() {
        Ok(()) => Ok(done),
        Err(e) => output_gone(e),
    }
}

/// Turns pending nftables trace messages into events.
fn drain_rules(
    rules: &mut RuleTracing,
    view: &mut View,
    out: &mut impl Write,
    summary: &mut Summary,
    limit: u64,
) -> anyhow::Result<bool> {
    let now = crate::render::monotonic_now_ns();
    for raw in rules.socket.receive() {
        if view.shown(summary) >= limit {
            break;
        }
        if let Some(event) = rules.tracer.event(raw, now)
            && emit(view, out, summary, event, None, limit)?
        {
            return Ok(true);
        }
    }
    summary.rules_lost = rules.socket.lost;
    let done = view.shown(summary) >= limit;
    flush(out, done)
}

/// A closed pipe (`probe trace | head`) ends the trace quietly; other write errors are errors.
fn output_gone(e: io::Error) -> anyhow::Result<bool> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(true)
    } else {
        Err(e).context("cannot write to standard output")
    }
}
