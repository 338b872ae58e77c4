//! Timelines for people (a block per packet, a row per hop, a diagnosis) and for programs
//! (JSON Lines, schema `probe.timeline/1`, documented in docs/timeline-schema.md).

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    Hop, Journey, Rewrite, Tuple,
    diagnose::{Outcome, Topology, diagnose},
};
use crate::{
    event::{Event, EventBody},
    render::{fib_text, packet_text},
};

pub const SCHEMA: &str = "probe.timeline/1";

/// Where a hop happened, written into `out` (the common cases without allocating).
fn write_place(out: &mut String, e: &Event, topo: &Topology) {
    let name = |out: &mut String, i: u32| match topo.links.get(&i) {
        Some((n, _)) => out.push_str(n),
        None if i == 0 => out.push('-'),
        None => {
            let _ = write!(out, "if{i}");
        }
    };
    match &e.body {
        EventBody::Tc(t) => {
            name(out, t.ifindex);
            out.push(' ');
            out.push_str(t.direction.as_str());
        }
        EventBody::Drop(d) => {
            out.push_str("drop on ");
            name(out, d.ifindex);
        }
        EventBody::Fib(f) => {
            out.push_str("route table ");
            match &f.table_name {
                Some(n) => out.push_str(n),
                None => {
                    let _ = write!(out, "{}", f.table);
                }
            }
        }
        _ => out.push_str(&place(e, topo)),
    }
}

/// Where a hop happened, in the namespace's own terms.
pub fn place(e: &Event, topo: &Topology) -> String {
    let name = |i: u32| {
        topo.links
            .get(&i)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| if i == 0 { "-".into() } else { format!("if{i}") })
    };
    match &e.body {
        EventBody::Tc(t) => format!("{} {}", topo.iface_label(t.ifindex), t.direction.as_str()),
        EventBody::Drop(d) => match topo.containers.by_netns(u64::from(d.netns)) {
            // Dropped inside a container's own namespace: its interface index means nothing here.
            Some(c) if topo.container_of(d.ifindex) != Some(c) => format!("drop in container {c}"),
            _ if topo.container_of(d.ifindex).is_some() => {
                format!("drop on {}", topo.iface_label(d.ifindex))
            }
            // Dropped in another namespace (--all-netns): name it, not its interface index.
            _ if d.netns != 0 && topo.own_netns != 0 && u64::from(d.netns) != topo.own_netns => {
                match topo.netns_names.get(&u64::from(d.netns)) {
                    Some(name) => format!("drop in netns {name}"),
                    None => format!("drop in netns {}", d.netns),
                }
            }
            _ => format!("drop on {}", name(d.ifindex)),
        },
        EventBody::Fib(f) => format!(
            "route table {}",
            f.table_name.clone().unwrap_or_else(|| f.table.to_string())
        ),
        EventBody::FibRule(r) => format!("ip rule pref {}", r.pref),
        EventBody::Rule(r) => format!(
            "{} {}/{}{}",
            r.family,
            r.table,
            r.chain,
            r.hook
                .as_deref()
                .map(|h| format!(" ({h})"))
                .unwrap_or_default()
        ),
        EventBody::Netfilter(n) => format!("netfilter {}", n.hook),
        EventBody::Chain(c) => format!("{} {}/{} ({})", c.engine, c.table, c.chain, c.hook),
    }
}

/// The container a hop's interface (or namespace) belongs to, if Docker named one.
pub fn container<'a>(e: &Event, topo: &'a Topology) -> Option<&'a str> {
    match &e.body {
        EventBody::Tc(t) => topo.container_of(t.ifindex),
        EventBody::Drop(d) => topo
            .containers
            .by_netns(u64::from(d.netns))
            .or_else(|| topo.container_of(d.ifindex)),
        _ => None,
    }
}

/// What happened at a hop.
pub fn what(e: &Event) -> String {
    match &e.body {
        EventBody::Tc(t) => packet_text(&t.packet),
        EventBody::Drop(d) => format!(
            "DROP reason {}{}",
            d.reason
                .clone()
                .unwrap_or_else(|| d.reason_code.to_string()),
            d.location_sym
                .as_ref()
                .map(|l| format!(" in {l}"))
                .unwrap_or_default()
        ),
        EventBody::Fib(f) => fib_text(f)
            .split_once(": ")
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default(),
        EventBody::FibRule(r) => format!(
            "{} table {}",
            r.action,
            r.table_name.clone().unwrap_or_else(|| r.table.to_string())
        ),
        EventBody::Rule(r) => r.decision(),
        EventBody::Netfilter(n) => format!(
            "{}{} ({}µs in the hook)",
            n.verdict.to_uppercase(),
            n.errno.map(|e| format!(" errno {e}")).unwrap_or_default(),
            n.duration_ns / 1000
        ),
        EventBody::Chain(c) => format!("-> {}", c.verdict.to_uppercase()),
    }
}

pub(super) fn rewrite_note(r: &Rewrite) -> String {
    if r.before.dst != r.after.dst || r.before.dport != r.after.dport {
        format!(
            "DNAT {}:{} → {}:{}",
            r.before.dst, r.before.dport, r.after.dst, r.after.dport
        )
    } else {
        format!(
            "SNAT {}:{} → {}:{}",
            r.before.src, r.before.sport, r.after.src, r.after.sport
        )
    }
}

fn fmt_ns(out: &mut String, ns: u64) {
    let _ = if ns >= 10_000_000 {
        write!(out, "{:.1}ms", ns as f64 / 1e6)
    } else {
        write!(out, "{:.3}ms", ns as f64 / 1e6)
    };
}

fn fmt_delta(out: &mut String, ns: u64) {
    let _ = if ns >= 1_000_000 {
        write!(out, "{:.1}ms", ns as f64 / 1e6)
    } else {
        write!(out, "{}µs", ns / 1000)
    };
}

/// Appends `text` to `out`, then spaces up to `width` characters.
fn push_padded(out: &mut String, text: &str, width: usize) {
    out.push_str(text);
    for _ in text.chars().count()..width {
        out.push(' ');
    }
}

/// A human-readable block for one journey.
pub fn render_text(j: &Journey, topo: &Topology, color: bool) -> String {
    text(j, topo, color, diagnose(j, topo))
}

/// [`render_text`] with the journey's diagnosis already made.
pub(super) fn text(
    j: &Journey,
    topo: &Topology,
    color: bool,
    (outcome, diagnosis): (Outcome, String),
) -> String {
    let start = j.hops.first().map_or(0, |h| h.ts_ns);
    let head = j
        .first
        .map(|t: Tuple| t.to_string())
        .unwrap_or_else(|| "routing lookup".to_owned());
    let mut s = String::with_capacity(128 * (j.hops.len() + 2));
    let _ = writeln!(s, "packet {} (flow {}) {head}", j.id, j.flow);
    let mut prev = start;
    // One scratch string for the padded columns, reused across hops.
    let mut cell = String::with_capacity(64);
    for (i, h) in j.hops.iter().enumerate() {
        s.push_str(if h.inferred { "  ~+" } else { "   +" });
        cell.clear();
        fmt_ns(&mut cell, h.ts_ns.saturating_sub(start));
        push_padded(&mut s, &cell, 9);
        s.push_str(" Δ");
        cell.clear();
        fmt_delta(&mut cell, h.ts_ns.saturating_sub(prev));
        push_padded(&mut s, &cell, 8);
        s.push(' ');
        cell.clear();
        write_place(&mut cell, &h.event, topo);
        push_padded(&mut s, &cell, 30);
        s.push(' ');
        s.push_str(&what(&h.event));
        if let Some(r) = j.rewrites.iter().find(|r| r.at_hop == i) {
            let _ = write!(s, "   ({})", rewrite_note(r));
        }
        s.push('\n');
        prev = h.ts_ns;
    }
    let (on, off) = if color {
        let c = match outcome {
            Outcome::Dropped | Outcome::Unroutable => "\x1b[1;31m",
            Outcome::Delivered => "\x1b[1;32m",
            Outcome::Left | Outcome::Incomplete => "\x1b[1;33m",
        };
        (c, "\x1b[0m")
    } else {
        ("", "")
    };
    let evicted = if j.evicted {
        " (cut short: too many packets in flight)"
    } else {
        ""
    };
    let _ = writeln!(s, "  => {on}{diagnosis}{off}{evicted}");
    s
}

#[derive(Serialize)]
struct JsonHop<'a> {
    /// Nanoseconds since the journey's first sighting, and since the previous hop.
    t_ns: u64,
    dt_ns: u64,
    #[serde(rename = "where")]
    place: String,
    what: String,
    /// The Docker container whose interface or namespace this hop is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(flatten)]
    hop: &'a Hop,
}

#[derive(Serialize)]
struct JsonJourney<'a> {
    schema: &'static str,
    id: u64,
    flow: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<Tuple>,
    outcome: Outcome,
    diagnosis: String,
    rewrites: &'a [Rewrite],
    hops: Vec<JsonHop<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    evicted: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    events_lost: bool,
}

/// One JSON Lines record for one journey.
pub fn render_json(j: &Journey, topo: &Topology) -> String {
    json(j, topo, diagnose(j, topo))
}

/// [`render_json`] with the journey's diagnosis already made.
pub(super) fn json(
    j: &Journey,
    topo: &Topology,
    (outcome, diagnosis): (Outcome, String),
) -> String {
    let start = j.hops.first().map_or(0, |h| h.ts_ns);
    let mut prev = start;
    let hops = j
        .hops
        .iter()
        .map(|h| {
            let hop = JsonHop {
                t_ns: h.ts_ns.saturating_sub(start),
                dt_ns: h.ts_ns.saturating_sub(prev),
                place: place(&h.event, topo),
                what: what(&h.event),
                container: container(&h.event, topo),
                hop: h,
            };
            prev = h.ts_ns;
            hop
        })
        .collect();
    serde_json::to_string(&JsonJourney {
        schema: SCHEMA,
        id: j.id,
        flow: j.flow,
        first: j.first,
        outcome,
        diagnosis,
        rewrites: &j.rewrites,
        hops,
        evicted: j.evicted,
        events_lost: j.events_lost,
    })
    .unwrap_or_else(|e| format!("{{\"schema\":\"{SCHEMA}\",\"error\":\"{e}\"}}"))
}
