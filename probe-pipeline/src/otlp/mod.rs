//! Timelines as OpenTelemetry traces: each finished journey becomes one trace, its root span
//! the packet (with the diagnosis), one child span per timestamped hop. Pure conversion into
//! the official OTLP protobuf messages (`opentelemetry-proto`, prost); sending them is the
//! caller's (probe-user's exporter), so a replay exports exactly what a trace would.
//!
//! Times are the kernel's: a hop's span runs from its sighting to the next timestamped
//! sighting of the packet (the last hop's span has no length), the root from the first to the
//! last. Sightings the kernel gave no time (nftables trace verdicts) get no span and no time
//! of their own: they are span events of the hop interval they were placed in by their hook,
//! at that interval's start, marked `probe.untimed`.

mod attrs;
#[cfg(test)]
mod tests;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::InstrumentationScope,
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status::StatusCode},
};
use prost::Message as _;

pub use attrs::Attrs;

use crate::{
    event::EventBody,
    render::Clock,
    timeline::{Diagnosis, Hop, Journey, Outcome},
    topology::Topology,
};

/// Where finished timelines go as spans (probe-user's bounded queue). Must not block.
pub trait SpanExport {
    /// The spans of one timeline (its trace).
    fn export(&mut self, spans: Vec<Span>);
}

/// What the spans of one run share: the run's identity (in every trace id) and its clock.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub id: u64,
    /// Kernel (CLOCK_MONOTONIC) times to Unix times.
    pub clock: Clock,
}

impl Run {
    /// A run identified by `seed` (for a trace: host, pid and start time; for a replay: the
    /// recording's host and clock, so replaying one file twice gives the same trace ids).
    pub fn new(seed: &[u8], clock: Clock) -> Self {
        // FNV-1a, then mixed: ids need to differ, not to be secret.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Run { id: mix(h), clock }
    }

    /// The trace id of packet `packet`: the run's id, then the packet's number.
    pub fn trace_id(&self, packet: u64) -> [u8; 16] {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.id.to_be_bytes());
        id[8..].copy_from_slice(&packet.to_be_bytes());
        if id == [0; 16] {
            id[15] = 1;
        }
        id
    }

    /// The id of span `n` of packet `packet` (0: the root), never zero (an invalid id).
    pub fn span_id(&self, packet: u64, n: usize) -> [u8; 8] {
        let id = mix(self.id ^ mix(packet) ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        id.max(1).to_be_bytes()
    }

    fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(self.clock.unix_ns(monotonic_ns).max(0)).unwrap_or(u64::MAX)
    }
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One span per timestamped hop and the root, in that order: root first.
pub fn spans(j: &Journey, topo: &Topology, diagnosis: &Diagnosis, run: &Run) -> Vec<Span> {
    let trace_id = run.trace_id(j.id).to_vec();
    let root_id = run.span_id(j.id, 0);
    let timed: Vec<&Hop> = j.hops.iter().filter(|h| !h.untimed).collect();
    // A journey of untimed verdicts alone (`--rules` without tc or drops) has only the times
    // probe received them: used for its root, and said.
    let times: Vec<u64> = if timed.is_empty() {
        j.hops.iter().map(|h| h.ts_ns).collect()
    } else {
        timed.iter().map(|h| h.ts_ns).collect()
    };
    let first = times.iter().copied().min().unwrap_or(0);
    let last = times.iter().copied().max().unwrap_or(first);

    let mut root = Span {
        trace_id: trace_id.clone(),
        span_id: root_id.to_vec(),
        name: match j.first {
            Some(t) => format!("packet {t}"),
            None => "routing lookup".to_owned(),
        },
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: run.unix_ns(first),
        end_time_unix_nano: run.unix_ns(last),
        attributes: root_attributes(j, topo, diagnosis, timed.is_empty()).0,
        status: Some(match diagnosis.outcome {
            Outcome::Dropped | Outcome::Unroutable => Status {
                code: StatusCode::Error as i32,
                message: diagnosis.text.clone(),
            },
            _ => Status::default(),
        }),
        ..Default::default()
    };

    let mut out = Vec::with_capacity(timed.len() + 1);
    // Which span the untimed rows between timestamped ones belong to (None: the root).
    let mut current: Option<usize> = None;
    let mut n = 0;
    for (i, h) in j.hops.iter().enumerate() {
        if h.untimed {
            let (span, at) = match current {
                Some(k) => {
                    let s: &mut Span = &mut out[k];
                    let at = s.start_time_unix_nano;
                    (s, at)
                }
                None => {
                    let at = root.start_time_unix_nano;
                    (&mut root, at)
                }
            };
            span.events.push(untimed_event(h, topo, at));
            continue;
        }
        n += 1;
        let end = timed.get(n).map_or(h.ts_ns, |next| next.ts_ns.max(h.ts_ns));
        out.push(hop_span(j, i, h, topo, diagnosis, run, (n, end)));
        current = Some(out.len() - 1);
    }
    for s in &mut out {
        s.trace_id.clone_from(&trace_id);
        s.parent_span_id = root_id.to_vec();
    }
    out.insert(0, root);
    out
}

fn root_attributes(j: &Journey, topo: &Topology, d: &Diagnosis, untimed: bool) -> Attrs {
    let mut a = Attrs::default();
    a.uint("probe.packet.id", j.id);
    a.uint("probe.flow.id", j.flow);
    a.str("probe.outcome", outcome_name(d.outcome));
    a.str("probe.diagnosis", d.text.clone());
    if let Some(cause) = d.cause {
        a.str("probe.cause.id", cause.id);
        a.str("probe.cause.next", cause.next);
    }
    if let Some(t) = &j.first {
        a.tuple(t);
    }
    if !j.rewrites.is_empty() {
        a.str(
            "probe.nat",
            j.rewrites
                .iter()
                .map(|r| r.note())
                .collect::<Vec<_>>()
                .join(", "),
        );
        if let Some(before) = j.rewrites.first().map(|r| r.before) {
            a.str("probe.tuple.before_nat", before.to_string());
        }
        if let Some(after) = j.rewrites.last().map(|r| r.after) {
            a.str("probe.tuple.after_nat", after.to_string());
        }
    }
    let mut containers: Vec<String> = Vec::new();
    for h in &j.hops {
        if let Some(c) = crate::render::facts::container(&h.event, topo)
            && !containers.iter().any(|x| x == c)
        {
            containers.push(c.to_owned());
        }
    }
    if !containers.is_empty() {
        a.strs("probe.containers", containers);
    }
    if !j.icmp_errors.is_empty() {
        // The errors the host sent about the packet, and which timelines (traces) they are.
        a.strs(
            "probe.icmp_errors",
            j.icmp_errors.iter().map(|e| e.sentence()).collect(),
        );
    }
    if let Some(id) = j.answers {
        a.int("probe.answers", id as i64);
    }
    if j.events_lost {
        a.bool("probe.events_lost", true);
    }
    if j.evicted {
        a.bool("probe.evicted", true);
    }
    if untimed {
        // No sighting had a kernel time: the root's times are when probe received them.
        a.bool("probe.untimed", true);
    }
    a
}

fn hop_span(
    j: &Journey,
    index: usize,
    h: &Hop,
    topo: &Topology,
    d: &Diagnosis,
    run: &Run,
    (n, end_ns): (usize, u64),
) -> Span {
    let mut a = Attrs::default();
    a.event(&h.event, topo);
    if let Some(t) = &h.tuple {
        a.tuple(t);
    }
    if h.inferred {
        // Joined by destination and time, not by the packet itself.
        a.bool("probe.inferred", true);
    }
    if let Some(r) = j.rewrites.iter().find(|r| r.at_hop == index) {
        a.str("probe.nat", r.note());
        a.str("probe.tuple.before_nat", r.before.to_string());
        a.str("probe.tuple.after_nat", r.after.to_string());
    }
    let dropped = matches!(h.event.body, EventBody::Drop(_));
    if dropped && let Some(cause) = d.cause {
        a.str("probe.cause.id", cause.id);
    }
    let failed_route = matches!(&h.event.body, EventBody::Fib(f) if f.error.is_some());
    Span {
        span_id: run.span_id(j.id, n).to_vec(),
        name: crate::render::facts::place(&h.event, topo),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: run.unix_ns(h.ts_ns),
        end_time_unix_nano: run.unix_ns(end_ns),
        attributes: a.0,
        status: Some(if dropped || failed_route {
            Status {
                code: StatusCode::Error as i32,
                message: crate::render::facts::what(&h.event),
            }
        } else {
            Status::default()
        }),
        ..Default::default()
    }
}

/// A sighting without a kernel time, as an event of the span it was placed in.
fn untimed_event(h: &Hop, topo: &Topology, at_unix_ns: u64) -> span::Event {
    let mut a = Attrs::default();
    a.event(&h.event, topo);
    a.bool("probe.untimed", true);
    span::Event {
        time_unix_nano: at_unix_ns,
        name: crate::render::facts::place(&h.event, topo),
        attributes: a.0,
        dropped_attributes_count: 0,
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Dropped => "dropped",
        Outcome::Delivered => "delivered",
        Outcome::Left => "left",
        Outcome::Unroutable => "unroutable",
        Outcome::Incomplete => "incomplete",
    }
}

/// Who sent the spans: the OTLP resource.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// `host.name`.
    pub host: String,
    /// The kernel release (`os.version`).
    pub kernel: String,
    pub version: String,
}

/// One export request holding the traces of several timelines.
pub fn request(origin: &Origin, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut a = Attrs::default();
    a.str("service.name", "probe");
    a.str("service.version", origin.version.clone());
    if !origin.host.is_empty() {
        a.str("host.name", origin.host.clone());
    }
    a.str("os.type", "linux");
    if !origin.kernel.is_empty() {
        a.str("os.version", origin.kernel.clone());
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: a.0,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "probe".to_owned(),
                    version: origin.version.clone(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The request as OTLP/HTTP's protobuf body.
pub fn encode(request: &ExportTraceServiceRequest) -> Vec<u8> {
    request.encode_to_vec()
}
