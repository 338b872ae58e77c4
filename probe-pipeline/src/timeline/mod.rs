//! Hop timelines: sightings of one packet, from every observation point, joined into one
//! journey with the time spent between hops, the address rewrites on the way, and an outcome.
//!
//! Identity. tc programs see packet bytes but no kernel pointer, so a packet is recognised by
//! what NAT does not change: protocol, IPv4 id, TCP sequence number, ICMP id/sequence. A
//! sighting with the same signature but a different tuple is the same packet after a rewrite
//! (DNAT, SNAT, MASQUERADE), recorded as before → after. Sightings that carry the kernel's skb
//! address (drops, hook and chain verdicts) are also joined by that address. Routing lookups
//! carry neither: they are attached by destination and time, and marked as inferred.
//!
//! Memory is bounded: a journey ends when it has been quiet for `linger`, when it is dropped,
//! or when the live set is full (the oldest is then flushed, marked incomplete).

mod correlate;
mod diagnose;
mod evidence;
mod hash;
mod icmp;
mod tally;
mod untimed;

use schemars::JsonSchema;
use serde::Serialize;

pub use correlate::{Correlator, Limits};
pub use diagnose::{Diagnosis, Outcome, diagnose};
pub use evidence::{FactValue, Source};
pub use icmp::IcmpError;
pub(crate) use icmp::error_name as icmp_error_name;
pub use tally::Tally;

use crate::event::{Direction, Event, EventBody};
pub use crate::tuple::Tuple;

/// One sighting within a journey.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Hop {
    /// CLOCK_MONOTONIC time of the sighting. For an untimed hop, the time of the timestamped
    /// sighting it was placed after: an ordering key only, never shown as its time.
    pub ts_ns: u64,
    /// The packet's tuple as seen here (absent for routing lookups and chain verdicts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuple: Option<Tuple>,
    /// Joined by destination and time rather than by the packet itself.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inferred: bool,
    /// The kernel gave no time for this sighting (nftables trace verdicts): it is placed by its
    /// hook between the timestamped sightings, and no time is shown for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untimed: bool,
    pub event: Event,
}

impl Hop {
    /// A routing lookup joined to its packet by destination and time.
    pub(crate) fn lookup(event: Event) -> Self {
        Hop {
            ts_ns: event.ts_ns,
            tuple: None,
            inferred: true,
            untimed: false,
            event,
        }
    }
}

/// A tuple rewrite between two hops.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Rewrite {
    pub before: Tuple,
    pub after: Tuple,
    /// Index of the first hop that saw the rewritten tuple.
    pub at_hop: usize,
}

/// A packet's way through the host.
#[derive(Clone, Debug, Serialize)]
pub struct Journey {
    pub id: u64,
    /// Packets of one connection (request and reply directions, across NAT) share a flow.
    pub flow: u64,
    /// The tuple at the first sighting.
    pub first: Option<Tuple>,
    pub hops: Vec<Hop>,
    pub rewrites: Vec<Rewrite>,
    /// Set when the live set was full and this journey was flushed early.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub evicted: bool,
    /// The kernel lost events (ring buffer full) while this packet was in flight: some of its
    /// sightings may be missing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub events_lost: bool,
    /// ICMP errors the host sent about this packet, in the order they were seen.
    #[serde(skip)]
    pub icmp_errors: Vec<IcmpError>,
    /// For an ICMP error: the journey of the packet it quotes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<u64>,
    /// The tuple at the last sighting (after every rewrite so far).
    #[serde(skip)]
    pub current: Option<Tuple>,
    #[serde(skip)]
    sig: Option<correlate::Signature>,
    #[serde(skip)]
    last_ns: u64,
    #[serde(skip)]
    ended: bool,
    /// skb addresses indexed for this journey (to unindex them when it ends).
    #[serde(skip)]
    skbs: Vec<u64>,
}

impl Journey {
    /// Whether a tc hook (interface and direction) saw this journey's packet already.
    fn seen_at(&self, (ifindex, direction): (u32, Direction)) -> bool {
        self.hops.iter().any(|h| {
            matches!(&h.event.body, EventBody::Tc(t) if t.ifindex == ifindex && t.direction == direction)
        })
    }

    /// Routed out of the host's stack (a successful, non-local routing decision) and not yet
    /// seen leaving or dropped: possibly queued until its next hop's address resolves.
    fn routed_out_not_left(&self) -> bool {
        !self.ended
            && self.hops.iter().any(|h| {
                matches!(&h.event.body, EventBody::Fib(f)
                    if !f.failed() && f.table != crate::event::RT_TABLE_LOCAL
                        && f.dev.as_deref().is_some_and(|d| d != "lo"))
            })
            && !self.hops.iter().any(|h| is_exit(&h.event))
    }

    /// Whether any sighting of the journey matches `filter` (before or after rewrites). An ICMP
    /// error matches where the packet it quotes does: it belongs with that packet.
    pub fn matches(&self, filter: &crate::filter::Filter) -> bool {
        self.hops.iter().any(|h| {
            let quoted = match &h.event.body {
                EventBody::Tc(t) => t.quoted.as_ref().and_then(Tuple::of),
                _ => None,
            };
            Tuple::of_event(&h.event)
                .into_iter()
                .chain(quoted)
                .any(|t| filter.matches(&t))
        })
    }
}

/// A sighting at the end of a packet's way through the host's stack.
pub fn is_exit(e: &Event) -> bool {
    match &e.body {
        EventBody::Tc(t) => t.direction == Direction::Egress,
        EventBody::Drop(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests;

impl Rewrite {
    /// `DNAT 203.0.113.1:8080 → 172.17.0.2:80`, or `SNAT ...` when the source changed.
    pub fn note(&self) -> String {
        let (b, a) = (&self.before, &self.after);
        if b.dst != a.dst || b.dport != a.dport {
            format!("DNAT {}:{} → {}:{}", b.dst, b.dport, a.dst, a.dport)
        } else {
            format!("SNAT {}:{} → {}:{}", b.src, b.sport, a.src, a.sport)
        }
    }
}
