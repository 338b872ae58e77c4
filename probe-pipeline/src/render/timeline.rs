//! Timelines for people (a block per packet, a row per hop, a diagnosis) and for programs
//! (JSON Lines, schema `probe.timeline/1`, documented in docs/timeline-schema.md). Both are
//! written from the same facts: the place, the container and what happened at each hop, the
//! rewrites and the diagnosis.

use std::fmt::Write as _;

use schemars::JsonSchema;

use crate::knowledge::Cause;
use serde::Serialize;

use super::{
    Clock,
    facts::{self, container, place, what, write_place, write_what},
};
use crate::{
    event::{Event, EventBody},
    timeline::{
        Diagnosis, FactValue, Hop, IcmpError, Journey, Outcome, Rewrite, Source, Tally, Tuple,
        diagnose,
    },
    topology::Topology,
};

pub const SCHEMA: &str = "probe.timeline/1";

const RED: &str = "\x1b[31m";
const CYAN: &str = "\x1b[36m";
const BOLD_RED: &str = "\x1b[1;31m";
const BOLD_GREEN: &str = "\x1b[1;32m";
const BOLD_YELLOW: &str = "\x1b[1;33m";
const RESET: &str = "\x1b[0m";

/// How finished journeys are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub json: bool,
    /// ANSI colours on the diagnosis (text only).
    pub color: bool,
    /// For the wall-clock time of each journey (JSON).
    pub clock: Clock,
}

/// A finished journey as printed: a text block, or one JSON line with its newline. Counts its
/// outcome in `tally`, from the same diagnosis the output shows.
pub fn render_finished(j: &Journey, topo: &Topology, style: Style, tally: &mut Tally) -> String {
    let diagnosis = diagnose(j, topo);
    tally.add(j, diagnosis.outcome, diagnosis.cause.map(|c| c.id));
    if style.json {
        json(j, topo, diagnosis, &style.clock) + "\n"
    } else {
        text(j, topo, style.color, diagnosis)
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

/// The time of the journey's first timestamped hop: what its other times are measured from.
fn start_of(j: &Journey) -> u64 {
    j.hops
        .iter()
        .find(|h| !h.untimed)
        .or(j.hops.first())
        .map_or(0, |h| h.ts_ns)
}

/// Width of the time columns of a text row (`   +0.041ms   Δ40µs    `).
const TIME_COLUMNS: usize = 23;

fn text(j: &Journey, topo: &Topology, color: bool, diagnosis: Diagnosis) -> String {
    let start = start_of(j);
    let head = j.first.map(|t: Tuple| t.to_string()).unwrap_or_else(|| {
        // No tuple: a frame without IP (ARP, LLDP) or a lone routing decision.
        match j.hops.first().map(|h| &h.event.body) {
            Some(EventBody::Tc(t)) => facts::non_ip_kind(t.packet.ethertype),
            Some(EventBody::Drop(d)) => facts::non_ip_kind(d.packet.ethertype),
            _ => "routing lookup".to_owned(),
        }
    });
    let mut s = String::with_capacity(128 * (j.hops.len() + 2));
    let _ = write!(s, "packet {} (flow {}) {head}", j.id, j.flow);
    if let Some(a) = j.answers {
        let _ = write!(s, " (ICMP error about packet {a})");
    }
    s.push('\n');
    let mut prev = start;
    // One scratch string for the padded columns, reused across hops.
    let mut cell = String::with_capacity(64);
    // ICMP errors sent about the packet are rows among its hops, at their own times.
    let mut errors = j.icmp_errors.iter().peekable();
    for (i, h) in j.hops.iter().enumerate() {
        while let Some(e) = errors.next_if(|e| !h.untimed && e.sighting.ts_ns < h.ts_ns) {
            error_row(&mut s, &mut cell, e, start, prev, topo);
        }
        if h.untimed {
            // The kernel gave no time: none is shown, and Δ skips the row.
            push_padded(&mut s, "   (untimed)", TIME_COLUMNS);
        } else {
            time_columns(
                &mut s,
                &mut cell,
                h.inferred,
                h.ts_ns.saturating_sub(start),
                h.ts_ns.saturating_sub(prev),
            );
            prev = h.ts_ns;
        }
        s.push(' ');
        cell.clear();
        write_place(&mut cell, &h.event, topo);
        push_padded(&mut s, &cell, 30);
        s.push(' ');
        // Colour where the eye should go: drops in red, rewrites in cyan.
        let dropped = color && matches!(h.event.body, crate::event::EventBody::Drop(_));
        if dropped {
            s.push_str(RED);
        }
        write_what(&mut s, &h.event);
        if dropped {
            s.push_str(RESET);
        }
        if let Some(r) = j.rewrites.iter().find(|r| r.at_hop == i) {
            let (on, off) = if color { (CYAN, RESET) } else { ("", "") };
            let _ = write!(s, "   ({on}{}{off})", r.note());
        }
        s.push('\n');
    }
    for e in errors {
        error_row(&mut s, &mut cell, e, start, prev, topo);
    }
    let (on, off) = if color {
        let c = match diagnosis.outcome {
            Outcome::Dropped | Outcome::Unroutable => BOLD_RED,
            Outcome::Delivered => BOLD_GREEN,
            Outcome::Left | Outcome::Incomplete => BOLD_YELLOW,
        };
        (c, RESET)
    } else {
        ("", "")
    };
    let evicted = if j.evicted {
        " (cut short: too many packets in flight)"
    } else {
        ""
    };
    let lost = if j.events_lost {
        " (events were lost while this packet was in flight: sightings may be missing)"
    } else {
        ""
    };
    let _ = writeln!(s, "  => {on}{}{off}{evicted}{lost}", diagnosis.text);
    // What the rows above already show (the route, the rule) is not repeated: the host's
    // readings are.
    for f in diagnosis.facts.iter().filter(|f| f.from == Source::Host) {
        let _ = writeln!(s, "     {}: {}", f.fact.label(), f.value);
    }
    if let Some(cause) = diagnosis.cause {
        let _ = writeln!(s, "     next: {} (probe explain {})", cause.next, cause.id);
    }
    s
}

/// A timed row's time columns: `   +0.041ms   Δ40µs    ` (`~+` for a hop joined by inference).
fn time_columns(s: &mut String, cell: &mut String, inferred: bool, since_start: u64, delta: u64) {
    s.push_str(if inferred { "  ~+" } else { "   +" });
    cell.clear();
    fmt_ns(cell, since_start);
    push_padded(s, cell, 9);
    s.push_str(" Δ");
    cell.clear();
    fmt_delta(cell, delta);
    push_padded(s, cell, 8);
}

/// A row for an ICMP error the host sent about the packet: its time is the error's first
/// sighting; the packet's own Δ goes on from its previous hop, as the error is another packet.
fn error_row(
    s: &mut String,
    cell: &mut String,
    e: &IcmpError,
    start: u64,
    prev: u64,
    topo: &Topology,
) {
    let ts = e.sighting.ts_ns;
    time_columns(
        s,
        cell,
        false,
        ts.saturating_sub(start),
        ts.saturating_sub(prev),
    );
    s.push(' ');
    cell.clear();
    write_place(cell, &e.sighting, topo);
    push_padded(s, cell, 30);
    let _ = writeln!(s, " answered with {}", e.sentence());
}

/// An ICMP error the host sent about the packet (`icmp_errors`).
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonIcmpError {
    /// The error's own timeline (its `id`).
    timeline: u64,
    /// Nanoseconds since the packet's first timestamped hop.
    t_ns: u64,
    /// CLOCK_MONOTONIC time of the error's first sighting.
    ts_ns: u64,
    /// Where the error was first seen.
    #[serde(rename = "where")]
    place: String,
    /// `port unreachable`, `fragmentation needed (mtu 1280)`, ...
    what: String,
    icmp_type: u8,
    icmp_code: u8,
    /// The next-hop MTU of a "fragmentation needed" or "packet too big" error.
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    /// Where the error was sent (the packet's sender).
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<std::net::IpAddr>,
}

impl JsonIcmpError {
    fn of(e: &IcmpError, start: u64, topo: &Topology) -> Self {
        let (icmp_type, icmp_code) = e.type_code().unwrap_or_default();
        JsonIcmpError {
            timeline: e.journey,
            t_ns: e.sighting.ts_ns.saturating_sub(start),
            ts_ns: e.sighting.ts_ns,
            place: place(&e.sighting, topo),
            what: e.describe(),
            icmp_type,
            icmp_code,
            mtu: e.mtu(),
            to: e.to(),
        }
    }
}

#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonHop<'a> {
    /// Nanoseconds since the journey's first timestamped hop, and since the previous
    /// timestamped hop; null for an untimed hop.
    t_ns: Option<u64>,
    dt_ns: Option<u64>,
    #[serde(rename = "where")]
    place: String,
    what: String,
    /// The Docker container whose interface or namespace this hop is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    /// CLOCK_MONOTONIC time of the sighting; null for an untimed hop.
    ts_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tuple: Option<Tuple>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    inferred: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    untimed: bool,
    /// The older name of `untimed`, kept for consumers that read it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    approx_time: bool,
    event: HopEvent<'a>,
}

/// A hop's sighting as `--events` prints it; an untimed one with `ts_ns` null.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
enum HopEvent<'a> {
    Timed(&'a Event),
    Untimed(UntimedEvent<'a>),
}

/// A sighting the kernel gave no time for: as [`Event`], with `ts_ns` null.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct UntimedEvent<'a> {
    #[schemars(with = "()")]
    ts_ns: Option<u64>,
    cpu: u32,
    #[serde(flatten)]
    body: &'a crate::event::EventBody,
}

impl<'a> HopEvent<'a> {
    fn of(h: &'a Hop) -> Self {
        if !h.untimed {
            return HopEvent::Timed(&h.event);
        }
        HopEvent::Untimed(UntimedEvent {
            ts_ns: None,
            cpu: h.event.cpu,
            body: &h.event.body,
        })
    }
}

/// One journey (`probe trace --json`, `probe replay --json`).
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonJourney<'a> {
    #[schemars(schema_with = "line_name")]
    schema: &'static str,
    /// When the first hop happened, RFC 3339 in UTC.
    #[schemars(extend("format" = "date-time"))]
    time: String,
    id: u64,
    flow: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<Tuple>,
    outcome: Outcome,
    diagnosis: String,
    /// For a drop: its cause (`probe explain ID` says more).
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'static Cause>,
    /// The evidence for the cause probe could read: from the timeline, or from the live host
    /// when the diagnosis was made (never in a replay).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    facts: Vec<FactValue>,
    /// What to look at or change next (the cause's next step).
    #[serde(skip_serializing_if = "Option::is_none")]
    advice: Option<&'static str>,
    rewrites: &'a [Rewrite],
    hops: Vec<JsonHop<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    evicted: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    events_lost: bool,
    /// ICMP errors the host sent about this packet, each with its own timeline's id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    icmp_errors: Vec<JsonIcmpError>,
    /// For an ICMP error: the id of the timeline of the packet it quotes.
    #[serde(skip_serializing_if = "Option::is_none")]
    answers: Option<u64>,
}

fn line_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    crate::schema::const_name(SCHEMA)
}

/// The JSON Schema of a timeline line.
pub fn line_schema() -> schemars::Schema {
    crate::schema::line::<JsonJourney>(SCHEMA)
}

/// One JSON Lines record for one journey.
pub fn render_json(j: &Journey, topo: &Topology) -> String {
    json(j, topo, diagnose(j, topo), &Clock::default())
}

fn json(j: &Journey, topo: &Topology, diagnosis: Diagnosis, clock: &Clock) -> String {
    let start = start_of(j);
    let mut prev = start;
    let hops = j
        .hops
        .iter()
        .map(|h| {
            let ts = (!h.untimed).then_some(h.ts_ns);
            let hop = JsonHop {
                t_ns: ts.map(|ts| ts.saturating_sub(start)),
                dt_ns: ts.map(|ts| ts.saturating_sub(prev)),
                place: place(&h.event, topo),
                what: what(&h.event),
                container: container(&h.event, topo),
                ts_ns: ts,
                tuple: h.tuple,
                inferred: h.inferred,
                untimed: h.untimed,
                approx_time: h.untimed,
                event: HopEvent::of(h),
            };
            if let Some(ts) = ts {
                prev = ts;
            }
            hop
        })
        .collect();
    serde_json::to_string(&JsonJourney {
        schema: SCHEMA,
        time: clock.rfc3339(start),
        id: j.id,
        flow: j.flow,
        first: j.first,
        outcome: diagnosis.outcome,
        diagnosis: diagnosis.text,
        cause: diagnosis.cause,
        facts: diagnosis.facts,
        advice: diagnosis.cause.map(|c| c.next),
        rewrites: &j.rewrites,
        hops,
        evicted: j.evicted,
        events_lost: j.events_lost,
        icmp_errors: j
            .icmp_errors
            .iter()
            .map(|e| JsonIcmpError::of(e, start, topo))
            .collect(),
        answers: j.answers,
    })
    .unwrap_or_else(|e| format!("{{\"schema\":\"{SCHEMA}\",\"error\":\"{e}\"}}"))
}
