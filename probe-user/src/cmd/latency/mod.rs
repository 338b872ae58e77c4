//! `probe latency`: how long packets take along the path between observation points (veth
//! ingress → bridge → egress device → its queue → the peer's backlog), measured in the kernel
//! into log2 histograms per stage, so no event per packet crosses to userspace. Every packet
//! is followed by its skb (IPv6 and IPv4 id 0 included); samples are grouped by flow,
//! container or interface; each report names the slowest samples and the measured fraction.

mod kernel;
pub mod model;
mod render;

use std::{io, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use probe_common::{group_by, mode};
use probe_pipeline::filter::Filter;

pub use kernel::Stages;
pub use model::{Histogram, Point, Snapshot};
pub use render::{By, SCHEMA, line_schema};

use crate::{
    host::{self, docker},
    points::tc::{BackendChoice, Selector},
    session::{
        self, Session, StartOptions, Stops, clock,
        poll::{pollable, readable},
    },
};

#[derive(Clone, Debug)]
pub struct LatencyOptions {
    /// Interface names or globs; empty: discover bridges, veths, tunnels and the uplink.
    pub ifaces: Vec<String>,
    pub filter: Option<Filter>,
    pub interval: Duration,
    /// Stop after this many intervals.
    pub count: Option<u64>,
    pub json: bool,
    pub ready_file: Option<PathBuf>,
    pub backend: BackendChoice,
    /// How samples are grouped.
    pub by: By,
}

/// Runs until stopped or `count` intervals; returns the totals.
pub fn run(opts: &LatencyOptions) -> anyhow::Result<Snapshot> {
    if opts.interval.is_zero() {
        bail!("the interval must be longer than zero");
    }
    let selector = Selector::parse(&opts.ifaces)?;
    let stages = kernel::Stages::default();
    let mut session = Session::start(StartOptions {
        mode: mode::LATENCY,
        filter: opts.filter.as_ref(),
        ringbuf_bytes: probe_common::DEFAULT_RINGBUF_BYTES,
        snaplen: 0,
        tc: Some((selector, opts.backend)),
        points: vec![Box::new(stages.clone())],
    })?;
    let grouping = match opts.by {
        By::None => group_by::NONE,
        By::Flow => group_by::FLOW,
        By::Container | By::Interface => group_by::INTERFACE,
    };
    let mut maps = kernel::Maps::take(&mut session.bpf, grouping)?;
    let unavailable = stages.missing.lock().map(|m| m.clone()).unwrap_or_default();
    let counters = session::ebpf::Counters::take(&mut session.bpf)?;
    let what = format!(
        "tracing {} for per-stage latency",
        session.describe().join(", ")
    );
    session::announce(&what, opts.ready_file.as_deref())?;
    let totals =
        session::runtime()?.block_on(measure(&mut session, &mut maps, opts, &unavailable))?;
    let missed = counters.read().latency_map_full;
    if missed > 0 {
        log::warn!(
            "{missed} latency samples were not counted: the kernel's histogram map was full \
             (too many distinct stages and groups; --iface, --filter or --by narrow them)"
        );
    }
    session.finish();
    Ok(totals)
}

async fn measure(
    session: &mut Session,
    maps: &mut kernel::Maps,
    opts: &LatencyOptions,
    unavailable: &[String],
) -> anyhow::Result<Snapshot> {
    let mut links = match session.link_events() {
        Some(fd) => Some(pollable(fd).context("cannot poll link notifications")?),
        None => None,
    };
    let mut stops = Stops::listen()?;
    // Docker's names for the containers' veths (--by container); none without Docker.
    let mut docker = if opts.by == By::Container {
        docker::Watcher::start()
    } else {
        docker::Watcher::disabled()
    };
    session.topology.containers = docker.containers().clone();
    let start = tokio::time::Instant::now() + opts.interval;
    let mut ticker = tokio::time::interval_at(start, opts.interval);
    let mut last = model::Reading::default();
    let mut intervals = 0u64;
    let mut out = io::stdout().lock();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if session::namespace_gone() {
                    break;
                }
                if let Some(c) = docker.poll() {
                    session.topology.containers = c.clone();
                }
                let now = maps.read(render::SLOWEST);
                let fresh = now.since(&last);
                intervals += 1;
                if report(&mut out, &fresh, session, opts, false, unavailable).is_err() {
                    break;
                }
                last = now;
                if opts.count.is_some_and(|c| intervals >= c) {
                    break;
                }
            }
            guard = readable(&mut links) => {
                let mut guard = guard?;
                let changes = session.on_link_events();
                host::apply(&mut session.topology, &changes);
                docker.links_changed();
                guard.clear_ready();
            }
            _ = stops.recv() => break,
        }
    }
    if let Some(c) = docker.poll() {
        session.topology.containers = c.clone();
    }
    let mut totals = maps.read(render::SLOWEST);
    // The slowest since the last report, or the last report's when none came since.
    if totals.slowest.is_empty() {
        totals.slowest = last.slowest.clone();
    }
    let _ = report(&mut out, &totals, session, opts, true, unavailable);
    Ok(totals.stages)
}

fn report(
    out: &mut impl io::Write,
    r: &model::Reading,
    session: &Session,
    opts: &LatencyOptions,
    total: bool,
    unavailable: &[String],
) -> io::Result<()> {
    let topo = &session.topology;
    let v = render::view(r, opts.by, topo);
    if opts.json {
        return render::write_json(out, &v, opts.by, topo, total, unavailable);
    }
    let when = if total {
        "total since start".to_owned()
    } else {
        clock::now().time_of_day(clock::monotonic_now_ns())
    };
    render::write_text(out, &v, topo, &when, total)
}
