//! `probe latency`: how long packets take between consecutive observation points (veth ingress
//! → bridge → egress device, ...), measured in the kernel into log2 histograms, so no event per
//! packet crosses to userspace. Printed per pair of points every interval and in total at exit.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuHashMap};
use probe_common::{HopBucket, HopPoint, direction, mode, names};
use probe_pipeline::{filter::Filter, topology::Topology};
use schemars::JsonSchema;
use serde::Serialize;

use crate::{
    host,
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
}

/// Packets between two points, by log2 bucket of the time between them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Bucket b holds gaps in [2^b, 2^(b+1)) ns (bucket 0 also holds 0).
    pub buckets: BTreeMap<u32, u64>,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// Upper bound of the bucket that holds the q-quantile (0 < q ≤ 1), in ns.
    pub fn quantile_bound_ns(&self, q: f64) -> u64 {
        let total = self.count();
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= want {
                return upper_ns(b);
            }
        }
        0
    }

    /// What this histogram gained since `before`.
    fn since(&self, before: Option<&Histogram>) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .filter_map(|(&b, &n)| {
                let old = before.and_then(|h| h.buckets.get(&b)).copied().unwrap_or(0);
                (n > old).then(|| (b, n - old))
            })
            .collect();
        Histogram { buckets }
    }
}

fn lower_ns(bucket: u32) -> u64 {
    if bucket == 0 { 0 } else { 1u64 << bucket }
}

fn upper_ns(bucket: u32) -> u64 {
    1u64 << (bucket + 1)
}

/// Histograms by (from, to) point.
pub type Snapshot = BTreeMap<(Point, Point), Histogram>;

/// An observation point as userspace names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Point {
    pub ifindex: u32,
    pub egress: bool,
}

impl From<HopPoint> for Point {
    fn from(p: HopPoint) -> Self {
        Point {
            ifindex: p.ifindex,
            egress: p.direction == direction::EGRESS,
        }
    }
}

/// Reads the kernel's histograms, summed over CPUs.
fn read(map: &PerCpuHashMap<MapData, HopBucket, u64>) -> Snapshot {
    let mut snap = Snapshot::new();
    for item in map.iter() {
        let Ok((key, per_cpu)) = item else { continue };
        let n: u64 = per_cpu.iter().sum();
        *snap
            .entry((key.from.into(), key.to.into()))
            .or_default()
            .buckets
            .entry(key.bucket)
            .or_default() += n;
    }
    snap
}

/// Runs until stopped or `count` intervals; returns the totals.
pub fn run(opts: &LatencyOptions) -> anyhow::Result<Snapshot> {
    if opts.interval.is_zero() {
        bail!("the interval must be longer than zero");
    }
    let selector = Selector::parse(&opts.ifaces)?;
    let mut session = Session::start(StartOptions {
        mode: mode::LATENCY,
        filter: opts.filter.as_ref(),
        ringbuf_bytes: probe_common::DEFAULT_RINGBUF_BYTES,
        snaplen: 0,
        tc: Some((selector, opts.backend)),
        points: Vec::new(),
    })?;
    let map = session
        .bpf
        .take_map(names::LATENCY_MAP)
        .context("the eBPF object has no latency map")?;
    let map: PerCpuHashMap<MapData, HopBucket, u64> =
        PerCpuHashMap::try_from(map).context("the latency map has an unexpected shape")?;
    let counters = session::ebpf::Counters::take(&mut session.bpf)?;
    let what = format!(
        "tracing {} for per-hop latency",
        session.describe().join(", ")
    );
    session::announce(&what, opts.ready_file.as_deref())?;
    let totals = session::runtime()?.block_on(measure(&mut session, &map, opts))?;
    let missed = counters.read().latency_map_full;
    if missed > 0 {
        log::warn!(
            "{missed} latency samples were not counted: the kernel's histogram map was full \
             (too many distinct hop pairs; --iface or --filter narrows them)"
        );
    }
    session.finish();
    Ok(totals)
}

async fn measure(
    session: &mut Session,
    map: &PerCpuHashMap<MapData, HopBucket, u64>,
    opts: &LatencyOptions,
) -> anyhow::Result<Snapshot> {
    let mut links = match session.link_events() {
        Some(fd) => Some(pollable(fd).context("cannot poll link notifications")?),
        None => None,
    };
    let mut stops = Stops::listen()?;
    let start = tokio::time::Instant::now() + opts.interval;
    let mut ticker = tokio::time::interval_at(start, opts.interval);
    let mut last = Snapshot::new();
    let mut intervals = 0u64;
    let mut out = io::stdout().lock();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if session::namespace_gone() {
                    break;
                }
                let now = read(map);
                let fresh: Snapshot = now
                    .iter()
                    .map(|(k, h)| (*k, h.since(last.get(k))))
                    .filter(|(_, h)| h.count() > 0)
                    .collect();
                intervals += 1;
                if write(&mut out, &fresh, &session.topology, opts.json, false).is_err() {
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
                guard.clear_ready();
            }
            _ = stops.recv() => break,
        }
    }
    let totals = read(map);
    let _ = write(&mut out, &totals, &session.topology, opts.json, true);
    Ok(totals)
}

fn point_name(p: Point, topo: &Topology) -> String {
    let name = topo.name(p.ifindex);
    format!("{name} {}", if p.egress { "egress" } else { "ingress" })
}

/// A duration in ns, short: 900ns, 16µs, 2.1ms.
fn short(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{}µs", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.1}s", ns as f64 / 1e9),
    }
}

pub const SCHEMA: &str = "probe.latency/1";

/// One hop pair's histogram (`probe latency --json`).
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonPair<'a> {
    #[schemars(schema_with = "line_name")]
    schema: &'static str,
    /// false: what this interval added; true: totals since start.
    total: bool,
    from: &'a str,
    to: &'a str,
    count: u64,
    p50_le_ns: u64,
    p99_le_ns: u64,
    buckets: Vec<JsonBucket>,
}

#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonBucket {
    ge_ns: u64,
    lt_ns: u64,
    count: u64,
}

fn line_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    probe_pipeline::schema::const_name(SCHEMA)
}

/// The JSON Schema of a latency line.
pub fn line_schema() -> schemars::Schema {
    probe_pipeline::schema::line::<JsonPair>(SCHEMA)
}

fn write(
    out: &mut impl Write,
    snap: &Snapshot,
    topo: &Topology,
    json: bool,
    total: bool,
) -> io::Result<()> {
    if !json {
        let when = if total {
            "total since start".to_owned()
        } else {
            clock::now().time_of_day(clock::monotonic_now_ns())
        };
        writeln!(out, "--- {when}: {} hop pair(s)", snap.len())?;
    }
    for ((from, to), h) in snap {
        let (from, to) = (point_name(*from, topo), point_name(*to, topo));
        if json {
            let line = JsonPair {
                schema: SCHEMA,
                total,
                from: &from,
                to: &to,
                count: h.count(),
                p50_le_ns: h.quantile_bound_ns(0.5),
                p99_le_ns: h.quantile_bound_ns(0.99),
                buckets: h
                    .buckets
                    .iter()
                    .map(|(&b, &n)| JsonBucket {
                        ge_ns: lower_ns(b),
                        lt_ns: upper_ns(b),
                        count: n,
                    })
                    .collect(),
            };
            writeln!(
                out,
                "{}",
                serde_json::to_string(&line).map_err(io::Error::other)?
            )?;
            continue;
        }
        writeln!(
            out,
            "{from} → {to}: {} packets, p50 < {}, p99 < {}",
            h.count(),
            short(h.quantile_bound_ns(0.5)),
            short(h.quantile_bound_ns(0.99)),
        )?;
        let widest = h.buckets.values().copied().max().unwrap_or(1).max(1);
        for (&b, &n) in &h.buckets {
            let bar = "#".repeat(((n * 40).div_ceil(widest)) as usize);
            writeln!(
                out,
                "    {:>7} .. {:<7} {:>9} {bar}",
                short(lower_ns(b)),
                short(upper_ns(b)),
                n
            )?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_name_the_bucket_that_holds_them() {
        let h = Histogram {
            buckets: [(10, 50), (12, 49), (20, 1)].into_iter().collect(),
        };
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_bound_ns(0.5), 2048);
        assert_eq!(h.quantile_bound_ns(0.99), 8192);
        assert_eq!(h.quantile_bound_ns(1.0), 2 << 20);
        let before = Histogram {
            buckets: [(10, 40)].into_iter().collect(),
        };
        assert_eq!(h.since(Some(&before)).count(), 60);
    }
}
