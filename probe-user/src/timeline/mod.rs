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

mod diagnose;
mod render;
mod tally;

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    net::IpAddr,
};

use serde::Serialize;

pub use diagnose::Topology;
pub use render::{render_json, render_text};
pub use tally::Tally;

/// A finished journey as printed: a text block, or one JSON line with its newline. Counts its
/// outcome in `tally`, from the same diagnosis the output shows.
pub fn render_finished(
    j: &Journey,
    topo: &Topology,
    json: bool,
    color: bool,
    tally: &mut Tally,
) -> String {
    let diagnosis = diagnose::diagnose(j, topo);
    tally.add(j, diagnosis.0);
    if json {
        render::json(j, topo, diagnosis) + "\n"
    } else {
        render::text(j, topo, color, diagnosis)
    }
}

use crate::event::{Event, EventBody, L4Header, Packet, Transport};

/// Source and destination of a packet at one point of its journey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Tuple {
    pub proto: Transport,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    pub fn of(p: &Packet) -> Option<Self> {
        let ip = p.ip.as_ref()?;
        let (sport, dport) = match ip.l4 {
            Some(L4Header::Tcp { sport, dport, .. }) | Some(L4Header::Udp { sport, dport }) => {
                (sport, dport)
            }
            _ => (0, 0),
        };
        Some(Tuple {
            proto: ip.proto,
            src: ip.src,
            dst: ip.dst,
            sport,
            dport,
        })
    }

    fn reversed(&self) -> Self {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.proto {
            Transport::Tcp | Transport::Udp => {
                // Written piece by piece: no string per endpoint.
                let ep = |f: &mut std::fmt::Formatter<'_>, a: IpAddr, p: u16| match a {
                    IpAddr::V6(v6) => write!(f, "[{v6}]:{p}"),
                    v4 => write!(f, "{v4}:{p}"),
                };
                write!(f, "{} ", self.proto)?;
                ep(f, self.src, self.sport)?;
                f.write_str(" > ")?;
                ep(f, self.dst, self.dport)
            }
            p => write!(f, "{p} {} > {}", self.src, self.dst),
        }
    }
}

/// What NAT leaves alone: enough to recognise a packet after a rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Signature {
    proto: Transport,
    ip_id: u16,
    /// TCP sequence, or ICMP id << 16 | seq.
    seq: u32,
    tcp_flags: u8,
}

impl Signature {
    fn of(p: &Packet) -> Option<Self> {
        let ip = p.ip.as_ref()?;
        let (seq, tcp_flags) = match ip.l4 {
            Some(L4Header::Tcp { seq, tcp_flags, .. }) => (seq, tcp_flags.0),
            Some(L4Header::Icmp {
                icmp_id, icmp_seq, ..
            }) => ((icmp_id as u32) << 16 | icmp_seq as u32, 0),
            _ => (0, 0),
        };
        Some(Signature {
            proto: ip.proto,
            ip_id: ip.ip_id,
            seq,
            tcp_flags,
        })
    }
}

/// One sighting within a journey.
#[derive(Clone, Debug, Serialize)]
pub struct Hop {
    pub ts_ns: u64,
    /// The packet's tuple as seen here (absent for routing lookups and chain verdicts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuple: Option<Tuple>,
    /// Joined by destination and time rather than by the packet itself.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inferred: bool,
    /// The time is when probe received the sighting (nftables trace), not when it happened.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub approx_time: bool,
    pub event: Event,
}

/// A tuple rewrite between two hops.
#[derive(Clone, Debug, Serialize)]
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
    #[serde(skip)]
    sig: Option<Signature>,
    #[serde(skip)]
    current: Option<Tuple>,
    #[serde(skip)]
    last_ns: u64,
    #[serde(skip)]
    ended: bool,
    /// skb addresses indexed for this journey (to unindex them when it ends).
    #[serde(skip)]
    skbs: Vec<u64>,
}

impl Journey {
    /// Whether any sighting of the journey matches `filter` (before or after rewrites).
    pub fn matches(&self, filter: &crate::filter::Filter) -> bool {
        self.hops
            .iter()
            .any(|h| crate::filter::fields_of(&h.event).is_some_and(|f| filter.matches(&f)))
    }
}

/// How many of the most recent journeys a routing lookup is compared with.
const SCAN_WINDOW: usize = 512;
/// How many live journeys with one signature are remembered (the most recent): packets that
/// carry no identity (UDP with IP id 0) share one signature, and only the latest can be next.
const SIG_CANDIDATES: usize = 4;

/// Ids of the live journeys with one signature, oldest first, stored inline (no allocation per
/// journey).
#[derive(Default, Clone, Copy)]
struct SigIds {
    len: u8,
    ids: [u64; SIG_CANDIDATES],
}

impl SigIds {
    fn as_slice(&self) -> &[u64] {
        &self.ids[..self.len as usize]
    }

    fn push(&mut self, id: u64) {
        if self.len as usize == SIG_CANDIDATES {
            self.ids.copy_within(1.., 0);
            self.len -= 1;
        }
        self.ids[self.len as usize] = id;
        self.len += 1;
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.as_slice().iter().position(|&x| x == id) {
            self.ids.copy_within(i + 1..self.len as usize, i);
            self.len -= 1;
        }
    }
}

/// A fast hash for the correlator's small fixed-size keys (SipHash's resistance to chosen keys
/// is not needed for packet headers it only groups, and costs a large share of each event).
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // Final avalanche (from splitmix64) so low bits depend on every input bit.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
}

impl FastHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Tuning of the correlator.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A journey quiet for this long is over.
    pub linger_ns: u64,
    /// Most journeys alive at once.
    pub max_live: usize,
    /// How long a routing lookup waits for the packet it decided about.
    pub lookup_window_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            linger_ns: 300_000_000,
            max_live: 4096,
            lookup_window_ns: 20_000_000,
        }
    }
}

/// Joins events into journeys. Feed events in arrival order; collect finished journeys.
pub struct Correlator {
    limits: Limits,
    live: VecDeque<Journey>,
    /// The ids of `live`, in the same order: searched without touching the journeys.
    live_ids: VecDeque<u64>,
    next_id: u64,
    next_flow: u64,
    /// Flow ids by tuple (both directions, before and after rewrites).
    flows: FastMap<Tuple, u64>,
    /// Journey id by skb address.
    by_skb: FastMap<u64, u64>,
    /// Ids of live journeys by signature, oldest first (at most [`SIG_CANDIDATES`]).
    by_sig: FastMap<Signature, SigIds>,
    /// Routing lookups not yet matched to a packet.
    lookups: VecDeque<Event>,
    finished: Vec<Journey>,
    next_expire_ns: u64,
}

/// Event time between two looks for journeys that ended.
const EXPIRE_EVERY_NS: u64 = 5_000_000;

impl Correlator {
    pub fn new(limits: Limits) -> Self {
        Correlator {
            limits,
            live: VecDeque::new(),
            live_ids: VecDeque::new(),
            next_id: 1,
            next_flow: 1,
            flows: FastMap::default(),
            by_skb: FastMap::default(),
            by_sig: FastMap::default(),
            lookups: VecDeque::new(),
            finished: Vec::new(),
            next_expire_ns: 0,
        }
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Adds one event.
    pub fn push(&mut self, event: Event) {
        let now = event.ts_ns;
        match &event.body {
            EventBody::Fib(_) | EventBody::FibRule(_) => self.push_lookup(event),
            EventBody::Chain(c) => {
                let skb = c.skb;
                match self.find_by_skb(skb) {
                    Some(i) => self.attach(i, event, None, false),
                    None => self.start(event, None, None),
                }
            }
            _ => {
                let (packet, skb) = match &event.body {
                    EventBody::Tc(t) => (Some(&t.packet), None),
                    EventBody::Drop(d) => (Some(&d.packet), Some(d.skb)),
                    EventBody::Netfilter(n) => (Some(&n.packet), Some(n.skb)),
                    EventBody::Rule(r) => (r.packet.as_ref(), None),
                    _ => (None, None),
                };
                let tuple = packet.and_then(Tuple::of);
                let sig = packet.and_then(Signature::of);
                // Rule verdicts arrive late, possibly after the drop that ended the journey.
                let late = matches!(event.body, EventBody::Rule(_));
                let found = skb
                    .and_then(|s| self.find_by_skb(s))
                    .or_else(|| sig.and_then(|s| self.find_by_signature(s, tuple, now, late)));
                // A socket purging its queue frees packets it already received: part of a
                // journey if we saw it, not a journey of its own.
                let purge = matches!(&event.body, EventBody::Drop(d) if d.reason.as_deref() == Some("QUEUE_PURGE"));
                match found {
                    Some(i) => self.attach(i, event, tuple, false),
                    None if purge => return,
                    None => self.start(event, tuple, sig),
                }
                if let Some(s) = skb.filter(|&s| s != 0) {
                    let i = found.or(self.live.len().checked_sub(1));
                    if let Some(j) = i.and_then(|i| self.live.get_mut(i)) {
                        self.by_skb.insert(s, j.id);
                        j.skbs.push(s);
                    }
                }
            }
        }
        self.expire(now);
    }

    /// Where journey `id` is in the live set (kept in id order: journeys are appended as they
    /// start and only ever removed).
    fn index_of(&self, id: u64) -> Option<usize> {
        self.live_ids.binary_search(&id).ok()
    }

    fn find_by_skb(&self, skb: u64) -> Option<usize> {
        let id = *self.by_skb.get(&skb)?;
        self.index_of(id).filter(|&i| !self.live[i].ended)
    }

    fn find_by_signature(
        &self,
        sig: Signature,
        tuple: Option<Tuple>,
        now: u64,
        include_ended: bool,
    ) -> Option<usize> {
        let mut best = None;
        // Candidates are indexed by signature, so each event costs O(1) whatever is in flight.
        for &id in self.by_sig.get(&sig)?.as_slice().iter().rev() {
            let Some(i) = self.index_of(id) else { continue };
            let j = &self.live[i];
            if (j.ended && !include_ended) || now.saturating_sub(j.last_ns) > self.limits.linger_ns
            {
                continue;
            }
            if j.current == tuple {
                return Some(i);
            }
            best.get_or_insert(i);
        }
        best
    }

    fn start(&mut self, event: Event, tuple: Option<Tuple>, sig: Option<Signature>) {
        if self.live.len() >= self.limits.max_live
            && let Some(mut oldest) = self.live.pop_front()
            && self.live_ids.pop_front().is_some()
        {
            oldest.evicted = true;
            self.finish(oldest);
        }
        // A rule verdict arrives over netlink, out of step with the ring buffer: the request
        // whose rewrite would link this packet to its flow may not have been read yet. Such a
        // journey takes its flow from its first sighting that has a timestamp (or at the end).
        let late = matches!(event.body, EventBody::Rule(_));
        let flow = match tuple {
            Some(t) if !late => self.flow_of(t),
            _ => 0,
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut j = Journey {
            id,
            flow,
            first: tuple,
            hops: Vec::new(),
            rewrites: Vec::new(),
            evicted: false,
            events_lost: false,
            sig,
            current: tuple,
            last_ns: event.ts_ns,
            ended: false,
            skbs: Vec::new(),
        };
        // Routing lookups made for this packet just before it was seen.
        if let Some(t) = tuple {
            let window = self.limits.lookup_window_ns;
            let mut i = 0;
            while i < self.lookups.len() {
                let l = &self.lookups[i];
                if lookup_matches(l, &t) && event.ts_ns.saturating_sub(l.ts_ns) <= window {
                    let l = self.lookups.remove(i).expect("index in range");
                    j.hops.push(Hop {
                        ts_ns: l.ts_ns,
                        tuple: None,
                        inferred: true,
                        approx_time: false,
                        event: l,
                    });
                } else {
                    i += 1;
                }
            }
        }
        if let Some(sig) = sig {
            self.by_sig.entry(sig).or_default().push(id);
        }
        self.live.push_back(j);
        self.live_ids.push_back(id);
        let i = self.live.len() - 1;
        self.attach(i, event, tuple, false);
    }

    fn flow_of(&mut self, t: Tuple) -> u64 {
        if let Some(&f) = self.flows.get(&t).or_else(|| self.flows.get(&t.reversed())) {
            return f;
        }
        let f = self.next_flow;
        self.next_flow += 1;
        if self.flows.len() > 65536 {
            self.flows.clear();
        }
        self.flows.insert(t, f);
        f
    }

    fn attach(&mut self, i: usize, mut event: Event, tuple: Option<Tuple>, inferred: bool) {
        let approx_time = matches!(event.body, EventBody::Rule(_));
        if let (false, Some(t), 0) = (approx_time, tuple, self.live[i].flow) {
            self.live[i].flow = self.flow_of(t);
        }
        let j = &mut self.live[i];
        if approx_time {
            // nftables trace messages carry no timestamp, and arrive after the fact. Rules run
            // between a packet's arrival and its exit, so place them after the last arrival-side
            // hop (not after an egress or a drop); ties keep their order.
            event.ts_ns = j
                .hops
                .iter()
                .filter(|h| !is_exit(&h.event))
                .map(|h| h.ts_ns)
                .max()
                .unwrap_or(j.last_ns);
        }
        // The tuple a rule saw belongs to its hook's moment, not to now: only sightings with
        // their own timestamps tell a rewrite.
        if let (false, Some(t), Some(cur)) = (approx_time, tuple, j.current)
            && t != cur
        {
            j.rewrites.push(Rewrite {
                before: cur,
                after: t,
                at_hop: j.hops.len(),
            });
            j.current = Some(t);
            let flow = j.flow;
            // Replies to the rewritten tuple belong to the same flow.
            self.flows.insert(t, flow);
        }
        let j = &mut self.live[i];
        if j.current.is_none() {
            j.current = tuple;
            j.first = j.first.or(tuple);
        }
        // A drop ends the journey, unless the packet had already left (then it is a socket
        // freeing its copy later on, not a drop on the way).
        if matches!(event.body, EventBody::Drop(_))
            && !j
                .hops
                .iter()
                .any(|h| is_exit(&h.event) && !matches!(h.event.body, EventBody::Drop(_)))
        {
            j.ended = true;
        }
        if !approx_time {
            j.last_ns = j.last_ns.max(event.ts_ns);
        }
        j.hops.push(Hop {
            ts_ns: event.ts_ns,
            tuple,
            inferred,
            approx_time,
            event,
        });
    }

    fn push_lookup(&mut self, event: Event) {
        // A lookup right after a packet's last sighting (forwarding, reply routing) belongs to
        // that packet; otherwise it waits for the packet it was made for.
        let now = event.ts_ns;
        let window = self.limits.lookup_window_ns;
        let target = lookup_dst(&event);
        let skip = self.live.len().saturating_sub(SCAN_WINDOW);
        let found = self.live.iter().skip(skip).rposition(|j| {
            !j.ended
                && now.saturating_sub(j.last_ns) <= window
                && j.current
                    .is_some_and(|t| Some((t.dst, t.dport)) == target || Some((t.dst, 0)) == target)
        });
        match found.map(|i| i + skip) {
            Some(i) => self.attach(i, event, None, true),
            None => {
                self.lookups.push_back(event);
                while self.lookups.len() > 1024 {
                    let l = self.lookups.pop_front().expect("non-empty");
                    self.standalone(l);
                }
            }
        }
    }

    /// A lookup no packet followed: worth its own timeline only when it failed (nothing was
    /// sent because there was no route).
    fn standalone(&mut self, lookup: Event) {
        let failed = match &lookup.body {
            EventBody::Fib(f) => f.err != 0 && f.err != -libc::EAGAIN,
            _ => false,
        };
        if failed {
            self.start(lookup, None, None);
            if let Some(j) = self.live.back_mut() {
                j.ended = true;
                j.hops[0].inferred = false;
            }
        }
    }

    /// Events were lost: every journey in flight may miss sightings.
    pub fn mark_loss(&mut self) {
        for j in self.live.iter_mut() {
            j.events_lost = true;
        }
    }

    /// Ends journeys quiet since before `now - linger`. Cheap to call often: it looks at most
    /// every few milliseconds of event time.
    pub fn expire(&mut self, now: u64) {
        if now < self.next_expire_ns {
            return;
        }
        self.next_expire_ns = now + EXPIRE_EVERY_NS;
        let linger = self.limits.linger_ns;
        while let Some(l) = self.lookups.front() {
            if now.saturating_sub(l.ts_ns) > self.limits.lookup_window_ns {
                let l = self.lookups.pop_front().expect("non-empty");
                self.standalone(l);
            } else {
                break;
            }
        }
        let mut i = 0;
        while i < self.live.len() {
            if now.saturating_sub(self.live[i].last_ns) > linger {
                let j = self.live.remove(i).expect("index in range");
                self.live_ids.remove(i);
                self.finish(j);
            } else {
                i += 1;
            }
        }
    }

    fn finish(&mut self, mut j: Journey) {
        if j.flow == 0
            && let Some(t) = j.first
        {
            j.flow = self.flow_of(t);
        }
        for skb in &j.skbs {
            if self.by_skb.get(skb) == Some(&j.id) {
                self.by_skb.remove(skb);
            }
        }
        if let Some(sig) = j.sig
            && let Some(ids) = self.by_sig.get_mut(&sig)
        {
            ids.remove(j.id);
            if ids.len == 0 {
                self.by_sig.remove(&sig);
            }
        }
        // Rule verdicts may have come before the sightings around them were read: now that the
        // journey is complete, put them after its last arrival-side sighting.
        let anchor = j
            .hops
            .iter()
            .filter(|h| !h.approx_time && !h.inferred && !is_exit(&h.event))
            .map(|h| h.ts_ns)
            .max();
        if let Some(anchor) = anchor {
            for h in j.hops.iter_mut().filter(|h| h.approx_time) {
                h.ts_ns = anchor + 1;
                h.event.ts_ns = anchor + 1;
            }
        }
        j.hops.sort_by_key(|h| h.ts_ns);
        // Rewrites point at the first hop that saw the new tuple, in the final order.
        for r in j.rewrites.iter_mut() {
            if let Some(i) = j
                .hops
                .iter()
                .position(|h| !h.approx_time && h.tuple == Some(r.after))
            {
                r.at_hop = i;
            }
        }
        self.finished.push(j);
    }

    /// Journeys that ended since the last call, oldest first.
    pub fn take_finished(&mut self) -> Vec<Journey> {
        let mut out = std::mem::take(&mut self.finished);
        out.sort_by_key(|j| j.hops.first().map_or(0, |h| h.ts_ns));
        out
    }

    /// Ends everything (the trace stops).
    pub fn flush(&mut self) -> Vec<Journey> {
        while let Some(l) = self.lookups.pop_front() {
            self.standalone(l);
        }
        self.live_ids.clear();
        while let Some(j) = self.live.pop_front() {
            self.finish(j);
        }
        self.take_finished()
    }
}

/// A sighting at the end of a packet's way through the host's stack.
pub(crate) fn is_exit(e: &Event) -> bool {
    match &e.body {
        EventBody::Tc(t) => t.direction == crate::event::Direction::Egress,
        EventBody::Drop(_) => true,
        _ => false,
    }
}

fn lookup_dst(e: &Event) -> Option<(IpAddr, u16)> {
    match &e.body {
        EventBody::Fib(f) => Some((f.dst, f.dport)),
        EventBody::FibRule(r) => Some((r.dst, 0)),
        _ => None,
    }
}

fn lookup_matches(lookup: &Event, t: &Tuple) -> bool {
    match &lookup.body {
        EventBody::Fib(f) => f.dst == t.dst && (f.dport == 0 || f.dport == t.dport),
        EventBody::FibRule(r) => r.dst == t.dst,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
