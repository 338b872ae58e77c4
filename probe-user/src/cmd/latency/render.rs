//! How a latency report reads: per group, the path as a breakdown of stages (each one's share
//! of the total, p50/p99/max), the measured fraction, and the slowest samples; as text or as
//! one JSON line per report (schema `probe.latency/2`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use probe_common::{FlowKey, GROUP_OTHER, Outlier};
use probe_pipeline::topology::Topology;
use schemars::JsonSchema;
use serde::Serialize;

use super::model::{Histogram, Point, Reading, lower_ns, stage_word, upper_ns};

/// How samples are grouped (`--by`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum By {
    #[default]
    None,
    Flow,
    Container,
    Interface,
}

impl By {
    pub fn word(self) -> &'static str {
        match self {
            By::None => "none",
            By::Flow => "flow",
            By::Container => "container",
            By::Interface => "interface",
        }
    }
}

/// Most groups a report names; the rest are merged as `other`.
pub const MAX_GROUPS: usize = 8;
/// Slowest samples a report names.
pub const SLOWEST: usize = 5;

/// One group's path.
pub struct GroupView {
    pub name: String,
    /// In path order.
    pub stages: Vec<(Point, Point, Histogram)>,
}

impl GroupView {
    fn packets(&self) -> u64 {
        self.stages.iter().map(|s| s.2.count()).max().unwrap_or(0)
    }
}

/// A report, named and ordered.
pub struct View {
    pub groups: Vec<GroupView>,
    /// (found, sightings), see `Reading::measured`.
    pub measured: (u64, u64),
    pub slowest: Vec<Outlier>,
}

fn ip(b: &[u8; 16], v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// `udp 10.0.0.1:4000 → 10.0.0.2:7300`.
pub fn tuple(t: &FlowKey) -> String {
    let v4 = t.saddr[4..].iter().chain(&t.daddr[4..]).all(|&b| b == 0);
    let proto = match t.l4_proto {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        1 => "icmp".to_owned(),
        58 => "icmp6".to_owned(),
        n => format!("proto {n}"),
    };
    let (s, d) = (ip(&t.saddr, v4), ip(&t.daddr, v4));
    match (t.l4_proto, v4) {
        (6 | 17, true) => format!("{proto} {s}:{} → {d}:{}", t.sport, t.dport),
        (6 | 17, false) => format!("{proto} [{s}]:{} → [{d}]:{}", t.sport, t.dport),
        _ => format!("{proto} {s} → {d}"),
    }
}

pub fn point_name(p: Point, topo: &Topology) -> String {
    format!("{} {}", topo.name(p.ifindex), p.word())
}

fn group_name(group: u32, by: By, r: &Reading, topo: &Topology) -> String {
    match by {
        By::None => "all packets".to_owned(),
        By::Interface => topo.iface_label(group),
        // An interface no Docker container owns (a plain namespace's veth) by its label.
        By::Container => topo
            .container_of(group)
            .map(|c| format!("container {c}"))
            .unwrap_or_else(|| topo.iface_label(group)),
        By::Flow if group == GROUP_OTHER => "other".to_owned(),
        By::Flow => r
            .flows
            .get(&group)
            .map(tuple)
            .unwrap_or_else(|| format!("flow {group:08x}")),
    }
}

/// Names and merges the groups (at most MAX_GROUPS, the rest as `other`), orders each
/// group's stages along the path.
pub fn view(r: &Reading, by: By, topo: &Topology) -> View {
    let mut named: BTreeMap<String, BTreeMap<(Point, Point), Histogram>> = BTreeMap::new();
    for (s, h) in &r.stages {
        named
            .entry(group_name(s.group, by, r, topo))
            .or_default()
            .entry((s.from, s.to))
            .or_default()
            .merge(h);
    }
    let mut groups: Vec<GroupView> = named
        .into_iter()
        .map(|(name, stages)| GroupView {
            name,
            stages: in_path_order(stages),
        })
        .collect();
    groups.sort_by(|a, b| b.packets().cmp(&a.packets()).then(a.name.cmp(&b.name)));
    if groups.len() > MAX_GROUPS {
        let rest = groups.split_off(MAX_GROUPS - 1);
        let mut other: BTreeMap<(Point, Point), Histogram> = BTreeMap::new();
        for g in rest {
            for (f, t, h) in g.stages {
                other.entry((f, t)).or_default().merge(&h);
            }
        }
        groups.push(GroupView {
            name: "other".to_owned(),
            stages: in_path_order(other),
        });
    }
    View {
        groups,
        measured: r.measured(),
        slowest: r.slowest.clone(),
    }
}

/// Stages sorted by how far along the path their first point is (points no stage leads to
/// come first), then by name.
fn in_path_order(stages: BTreeMap<(Point, Point), Histogram>) -> Vec<(Point, Point, Histogram)> {
    let points: BTreeSet<Point> = stages.keys().flat_map(|(f, t)| [*f, *t]).collect();
    let mut depth: BTreeMap<Point, usize> = points.iter().map(|p| (*p, 0)).collect();
    // Longest distance from a start, bounded by the number of stages (cycles stop there).
    for _ in 0..stages.len() {
        let mut changed = false;
        for (f, t) in stages.keys() {
            let d = depth[f] + 1;
            if d > depth[t] && d <= stages.len() {
                depth.insert(*t, d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut v: Vec<_> = stages.into_iter().map(|((f, t), h)| (f, t, h)).collect();
    v.sort_by_key(|(f, t, _)| (depth[f], *f, *t));
    v
}

/// A duration in ns, short: 900ns, 16µs, 2.1ms.
pub fn short(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.1}s", ns as f64 / 1e9),
    }
}

/// A duration in µs with three decimals' worth of ns: 4123.456µs reads as 4.123ms.
fn precise(ns: u64) -> String {
    match ns {
        0..1_000_000 => format!("{:.3}µs", ns as f64 / 1e3),
        _ => format!("{:.3}ms", ns as f64 / 1e6),
    }
}

fn percent(found: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| found as f64 * 100.0 / of as f64)
}

fn share(h: &Histogram, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        h.sum_ns as f64 * 100.0 / total as f64
    }
}

pub const SCHEMA: &str = "probe.latency/2";

/// One report (`probe latency --json`): every interval, and the totals at exit.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonReport<'a> {
    #[schemars(schema_with = "line_name")]
    schema: &'static str,
    /// false: what this interval added; true: totals since start.
    total: bool,
    /// How the groups are formed: none, flow, container or interface.
    by: &'static str,
    /// Sightings at points a packet reaches from another watched point (every point that
    /// ends a stage, every tc egress), and how many of them found the packet's previous
    /// sighting; `fraction` is null when there were none.
    measured: JsonMeasured,
    groups: Vec<JsonGroup>,
    /// The slowest samples of the interval (of the last interval in totals), slowest first.
    slowest: Vec<JsonSlow>,
    /// Stages this kernel does not show, and what that leaves out.
    unavailable: &'a [String],
}

#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonMeasured {
    found: u64,
    sightings: u64,
    fraction: Option<f64>,
}

#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonGroup {
    /// Interface label, container name, flow tuple, `other` or `all packets`.
    name: String,
    /// In path order.
    stages: Vec<JsonStage>,
}

#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonStage {
    from: String,
    to: String,
    /// What the time between them is spent on: forwarding, queueing, transmit to the peer,
    /// backlog (softirq hand-off), ...
    stage: &'static str,
    count: u64,
    sum_ns: u64,
    /// This stage's share of the group's summed time, in percent.
    share_pct: f64,
    p50_le_ns: u64,
    p99_le_ns: u64,
    /// The largest sample (totals); null in an interval, where `max_le_ns` bounds it.
    max_ns: Option<u64>,
    max_le_ns: u64,
    buckets: Vec<JsonBucket>,
}

#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonBucket {
    ge_ns: u64,
    lt_ns: u64,
    count: u64,
}

#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonSlow {
    ns: u64,
    /// The packet's tuple at its first sighting.
    tuple: String,
    stage: &'static str,
    from: String,
    to: String,
}

fn line_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    probe_pipeline::schema::const_name(SCHEMA)
}

/// The JSON Schema of a latency line.
pub fn line_schema() -> schemars::Schema {
    probe_pipeline::schema::line::<JsonReport>(SCHEMA)
}

pub fn write_json(
    out: &mut impl Write,
    v: &View,
    by: By,
    topo: &Topology,
    total: bool,
    unavailable: &[String],
) -> io::Result<()> {
    let groups = v
        .groups
        .iter()
        .map(|g| {
            let sum: u64 = g.stages.iter().map(|s| s.2.sum_ns).sum();
            JsonGroup {
                name: g.name.clone(),
                stages: g
                    .stages
                    .iter()
                    .map(|(f, t, h)| JsonStage {
                        from: point_name(*f, topo),
                        to: point_name(*t, topo),
                        stage: stage_word(*f, *t),
                        count: h.count(),
                        sum_ns: h.sum_ns,
                        share_pct: share(h, sum),
                        p50_le_ns: h.quantile_bound_ns(0.5),
                        p99_le_ns: h.quantile_bound_ns(0.99),
                        max_ns: h.max_ns,
                        max_le_ns: h.max_bound_ns(),
                        buckets: h
                            .buckets
                            .iter()
                            .map(|(&b, &n)| JsonBucket {
                                ge_ns: lower_ns(b),
                                lt_ns: upper_ns(b),
                                count: n,
                            })
                            .collect(),
                    })
                    .collect(),
            }
        })
        .collect();
    let line = JsonReport {
        schema: SCHEMA,
        total,
        by: by.word(),
        measured: JsonMeasured {
            found: v.measured.0,
            sightings: v.measured.1,
            fraction: percent(v.measured.0, v.measured.1).map(|p| p / 100.0),
        },
        groups,
        slowest: v
            .slowest
            .iter()
            .map(|o| JsonSlow {
                ns: o.gap_ns,
                tuple: tuple(&o.tuple),
                stage: stage_word(o.from.into(), o.to.into()),
                from: point_name(o.from.into(), topo),
                to: point_name(o.to.into(), topo),
            })
            .collect(),
        unavailable,
    };
    writeln!(
        out,
        "{}",
        serde_json::to_string(&line).map_err(io::Error::other)?
    )?;
    out.flush()
}

/// `histograms`: also the buckets of each group's dominant stage (the largest share).
pub fn write_text(
    out: &mut impl Write,
    v: &View,
    topo: &Topology,
    when: &str,
    histograms: bool,
) -> io::Result<()> {
    let names =
        |f: &Point, t: &Point| format!("{} → {}", point_name(*f, topo), point_name(*t, topo));
    let width = v
        .groups
        .iter()
        .flat_map(|g| g.stages.iter().map(|(f, t, _)| names(f, t).chars().count()))
        .max()
        .unwrap_or(0);
    let measured = match percent(v.measured.0, v.measured.1) {
        Some(p) => format!(
            "measured {p:.1}% ({} of {} sightings found the packet's previous one)",
            v.measured.0, v.measured.1
        ),
        None => "no packet was seen at two points".to_owned(),
    };
    writeln!(out, "--- {when}: {measured}")?;
    for g in &v.groups {
        let sum: u64 = g.stages.iter().map(|s| s.2.sum_ns).sum();
        let per_packet: f64 = g
            .stages
            .iter()
            .map(|s| s.2.sum_ns as f64 / s.2.count().max(1) as f64)
            .sum();
        writeln!(
            out,
            "{}: {} packets, {} per packet along the path",
            g.name,
            g.packets(),
            short(per_packet as u64)
        )?;
        let dominant = g.stages.iter().map(|s| s.2.sum_ns).max().unwrap_or(0);
        for (f, t, h) in &g.stages {
            let max = match h.max_ns {
                Some(m) => format!("max {}", short(m)),
                None => format!("max < {}", short(h.max_bound_ns())),
            };
            writeln!(
                out,
                "  {:<width$}  {:<26} {:>8} {:>5.1}%  p50 < {:<7} p99 < {:<7} {max}",
                names(f, t),
                stage_word(*f, *t),
                h.count(),
                share(h, sum),
                short(h.quantile_bound_ns(0.5)),
                short(h.quantile_bound_ns(0.99)),
            )?;
            if histograms && h.sum_ns == dominant && dominant > 0 {
                let widest = h.buckets.values().copied().max().unwrap_or(1).max(1);
                for (&b, &n) in &h.buckets {
                    let bar = "#".repeat(((n * 40).div_ceil(widest)) as usize);
                    writeln!(
                        out,
                        "      {:>7} .. {:<7} {:>9} {bar}",
                        short(lower_ns(b)),
                        short(upper_ns(b)),
                        n
                    )?;
                }
            }
        }
    }
    for o in &v.slowest {
        let (f, t) = (Point::from(o.from), Point::from(o.to));
        writeln!(
            out,
            "slowest: {:>9}  {} ({} → {})  {}",
            precise(o.gap_ns),
            stage_word(f, t),
            point_name(f, topo),
            point_name(t, topo),
            tuple(&o.tuple)
        )?;
    }
    out.flush()
}
