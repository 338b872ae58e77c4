//! The correlator: events in arrival order in, finished journeys out.

mod decisions;
mod icmp_link;

use std::{collections::VecDeque, hash::BuildHasherDefault};

use decisions::lookup_matches;
use probe_common::PacketKey;

use super::{
    Hop, Journey, Rewrite, Tuple,
    hash::{FastHasher, FastMap},
    is_exit,
    untimed::order_untimed,
};
use crate::{
    bounded::BoundedMap,
    event::{Direction, Event, EventBody, L4Header, Packet},
    identity,
};

/// Tuples whose flow is remembered.
const MAX_FLOWS: usize = 65536;

/// What NAT leaves alone ([`PacketKey`]), and the TCP flags: enough to recognise a packet after
/// a rewrite, and to keep apart a connection's segments that share a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Signature {
    key: PacketKey,
    tcp_flags: u8,
}

impl Signature {
    fn of(p: &Packet) -> Option<Self> {
        let tcp_flags = match p.ip.as_ref()?.l4 {
            Some(L4Header::Tcp { tcp_flags, .. }) => tcp_flags.0,
            _ => 0,
        };
        Some(Signature {
            key: identity::key(p)?,
            tcp_flags,
        })
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
    /// Flow ids by tuple (both directions, before and after rewrites); the oldest are
    /// forgotten first past the bound.
    flows: BoundedMap<Tuple, u64, BuildHasherDefault<FastHasher>>,
    /// Journey id by skb address.
    by_skb: FastMap<u64, u64>,
    /// Ids of live journeys by signature, oldest first (at most [`SIG_CANDIDATES`]).
    by_sig: FastMap<Signature, SigIds>,
    /// Routing lookups not yet matched to a packet.
    lookups: VecDeque<Event>,
    /// Chain verdicts (skb, no headers) whose skb no journey has yet: the hook's verdict or
    /// the drop it made, which carry the headers, come after them.
    unnamed: VecDeque<Event>,
    /// The latest kernel time of an event read (0: none yet).
    latest_ns: u64,
    /// A hook verdict (nf_hook_slow) was seen: chain verdicts are named by them.
    hooks_seen: bool,
    /// Routing decisions still being assembled, at most one per CPU: the kernel probes table
    /// after table for one decision, back to back on one CPU. Each is the latest lookup, with
    /// the earlier ones in its `tried`.
    deciding: Vec<Event>,
    finished: Vec<Journey>,
    next_expire_ns: u64,
    /// Inode of the traced namespace (0: unknown). Its packets' sightings are what journeys
    /// are made of.
    traced_netns: u32,
}

/// Most time between two lookups of one routing decision (they follow each other within
/// microseconds on one CPU).
const DECISION_GAP_NS: u64 = 1_000_000;

/// How long a packet routed out may wait for its neighbour to resolve: the kernel's default
/// is three solicitations a second apart (mcast_solicit 3, retrans_time 1 s), then the packet
/// is dropped (NEIGH_FAILED).
const NEIGHBOUR_WAIT_NS: u64 = 3_500_000_000;

/// Most chain verdicts waiting for the hook verdict that names their packet.
const MAX_UNNAMED: usize = 1024;

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
            flows: BoundedMap::new(MAX_FLOWS),
            by_skb: FastMap::default(),
            by_sig: FastMap::default(),
            lookups: VecDeque::new(),
            unnamed: VecDeque::new(),
            latest_ns: 0,
            hooks_seen: false,
            deciding: Vec::new(),
            finished: Vec::new(),
            next_expire_ns: 0,
            traced_netns: 0,
        }
    }

    /// The namespace being traced: another namespace's lookups (shown with `--all-netns`) join
    /// a packet only as the decision that sent it, made before it reached this one.
    pub fn traced_in(mut self, netns: u32) -> Self {
        self.traced_netns = netns;
        self
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Adds one event.
    pub fn push(&mut self, mut event: Event) {
        if matches!(event.body, EventBody::Rule(_)) {
            // A verdict carries the time it was read, not the kernel's: it happened no later
            // than the newest sighting read before it, and is judged by that clock, so that
            // reading late neither ends journeys early nor misses its own packet.
            if self.latest_ns > 0 {
                event.ts_ns = event.ts_ns.min(self.latest_ns);
            }
        } else {
            self.latest_ns = self.latest_ns.max(event.ts_ns);
            self.hooks_seen |= matches!(event.body, EventBody::Netfilter(_));
        }
        let now = event.ts_ns;
        match &event.body {
            // An address-type check is no step of this packet's way: left to --events.
            EventBody::Fib(f) if f.is_address_check() => {}
            EventBody::Fib(_) => self.push_fib(event),
            EventBody::FibRule(_) => self.push_fib_rule(event),
            EventBody::Chain(c) => {
                let skb = c.skb;
                // A packet passes each hook once: a journey whose hook already gave its
                // verdict is an earlier packet that had this skb address.
                let (hook, bridge) = (c.hook, c.family == crate::event::Family::Bridge);
                let found = self.find_by_skb(skb, false).filter(|&i| {
                    !self.live[i].hops.iter().any(|h| {
                        matches!(&h.event.body, EventBody::Netfilter(n)
                            if n.hook == hook && (n.family == crate::event::Family::Bridge) == bridge)
                    })
                });
                match found {
                    Some(i) => self.attach(i, event, None, false),
                    // nft_do_chain returns inside nf_hook_slow: the hook's verdict (or the
                    // drop it made), which names the packet, follows.
                    None => {
                        self.unnamed.push_back(event);
                        while self.unnamed.len() > MAX_UNNAMED {
                            let e = self.unnamed.pop_front().expect("non-empty");
                            self.start(e, None, None);
                        }
                    }
                }
            }
            _ => {
                // A packet's sighting comes after the routing decisions made for it.
                self.close_decisions(|_| true);
                let packet = identity::packet_of(&event);
                let skb = match &event.body {
                    EventBody::Drop(d) => Some(d.skb),
                    EventBody::Netfilter(n) => Some(n.skb),
                    _ => None,
                };
                let tuple = packet.and_then(Tuple::of);
                let sig = packet.and_then(Signature::of);
                // Rule verdicts arrive late, possibly after the drop that ended the journey.
                let late = matches!(event.body, EventBody::Rule(_));
                let at = match &event.body {
                    EventBody::Tc(t) => Some((t.ifindex, t.direction)),
                    _ => None,
                };
                // A hook that drops frees the packet before it returns: its verdict follows the
                // drop that ended the journey.
                let after_drop = matches!(&event.body, EventBody::Netfilter(n) if n.verdict == crate::event::Verdict::Drop);
                // The kernel reuses a freed skb's address for the next packet (a reply, often):
                // an skb match whose packet is another one (NAT leaves the signature alone)
                // names a new packet.
                let found = skb
                    .and_then(|s| self.find_by_skb(s, after_drop))
                    .filter(|&i| match (self.live[i].sig, sig) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    })
                    .or_else(|| sig.and_then(|s| self.find_by_signature(s, tuple, at, now, late)));
                // A socket purging its queue frees packets it already received: part of a
                // journey if we saw it, not a journey of its own.
                let purge = matches!(&event.body, EventBody::Drop(d) if d.reason.as_deref() == Some("QUEUE_PURGE"));
                let quoted = match &event.body {
                    EventBody::Tc(t) => t.quoted.clone(),
                    _ => None,
                };
                match found {
                    Some(i) => self.attach(i, event, tuple, false),
                    None if purge => return,
                    None => self.start(event, tuple, sig),
                }
                if let Some(q) = quoted {
                    let i = found.unwrap_or(self.live.len() - 1);
                    self.link_icmp_error(i, &q);
                }
                if let Some(s) = skb.filter(|&s| s != 0) {
                    let i = found.or(self.live.len().checked_sub(1));
                    if let Some(j) = i.and_then(|i| self.live.get_mut(i)) {
                        self.by_skb.insert(s, j.id);
                        j.skbs.push(s);
                    }
                    if let Some(i) = i {
                        self.name_chains(i, s);
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

    fn find_by_skb(&self, skb: u64, include_ended: bool) -> Option<usize> {
        let id = *self.by_skb.get(&skb)?;
        self.index_of(id)
            .filter(|&i| include_ended || !self.live[i].ended)
    }

    /// The chain verdicts on `skb` that waited for their packet join journey `i`.
    fn name_chains(&mut self, i: usize, skb: u64) {
        if self.unnamed.is_empty() {
            return;
        }
        let mut k = 0;
        while k < self.unnamed.len() {
            if matches!(&self.unnamed[k].body, EventBody::Chain(c) if c.skb == skb) {
                let e = self.unnamed.remove(k).expect("index in range");
                self.attach(i, e, None, false);
            } else {
                k += 1;
            }
        }
    }

    /// Chain verdicts whose packet was never named by `now - window`. Where hook verdicts are
    /// seen, each packet's verdicts name it: these are packets not shown (another namespace's,
    /// or filtered out) and go. Where none are (nf_hook_slow not probed), each is a journey.
    fn expire_unnamed(&mut self, now: u64) {
        while let Some(e) = self.unnamed.front() {
            if now.saturating_sub(e.ts_ns) <= self.limits.lookup_window_ns {
                break;
            }
            let e = self.unnamed.pop_front().expect("non-empty");
            if !self.hooks_seen {
                self.start(e, None, None);
            }
        }
    }

    fn find_by_signature(
        &self,
        sig: Signature,
        tuple: Option<Tuple>,
        at: Option<(u32, Direction)>,
        now: u64,
        include_ended: bool,
    ) -> Option<usize> {
        let mut best = None;
        // Candidates are indexed by signature, so each event costs O(1) whatever is in flight.
        for &id in self.by_sig.get(&sig)?.as_slice().iter().rev() {
            let Some(i) = self.index_of(id) else { continue };
            let j = &self.live[i];
            if (j.ended && !include_ended) || self.is_over(j, now) {
                continue;
            }
            // Where the signature cannot tell packets apart (IPv6 and id-0 datagrams of one
            // socket), a journey already seen at this tc hook is an earlier packet: one packet
            // passes a hook once.
            if !sig.key.is_distinct() && at.is_some_and(|at| j.seen_at(at)) {
                continue;
            }
            if j.current == tuple {
                return Some(i);
            }
            // A different tuple is taken for the same packet after a rewrite, but not where
            // the signature cannot tell packets apart and either side is multicast: neighbour
            // solicitations all share one, and NAT does not rewrite to or from multicast.
            let multicast = |t: Option<Tuple>| t.is_some_and(|t| t.dst.is_multicast());
            if sig.key.is_distinct() || !(multicast(tuple) || multicast(j.current)) {
                best.get_or_insert(i);
            }
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
            icmp_errors: Vec::new(),
            answers: None,
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
                    j.hops.push(Hop::lookup(l));
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
        self.flows.insert(t, f);
        f
    }

    fn attach(&mut self, i: usize, mut event: Event, tuple: Option<Tuple>, inferred: bool) {
        // nftables trace messages carry no timestamp and arrive after the fact: they are placed
        // by their hook when the journey ends (see `order_untimed`).
        let untimed = matches!(event.body, EventBody::Rule(_));
        if let (false, Some(t), 0) = (untimed, tuple, self.live[i].flow) {
            self.live[i].flow = self.flow_of(t);
        }
        let j = &mut self.live[i];
        if untimed {
            event.ts_ns = j.last_ns;
        }
        // The tuple a rule saw belongs to its hook's moment, not to now: only sightings with
        // their own timestamps tell a rewrite.
        if let (false, Some(t), Some(cur)) = (untimed, tuple, j.current)
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
            // The routing decision made after the rewrite (a DNAT in prerouting) was for the
            // new destination, which no journey showed yet: it waited for its packet.
            self.take_lookups_for(i, t, event.ts_ns);
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
        if !untimed {
            j.last_ns = j.last_ns.max(event.ts_ns);
        }
        j.hops.push(Hop {
            ts_ns: event.ts_ns,
            tuple,
            inferred,
            untimed,
            event,
        });
    }

    /// Events were lost: every journey in flight may miss sightings.
    pub fn mark_loss(&mut self) {
        for j in self.live.iter_mut() {
            j.events_lost = true;
        }
    }

    /// Whether journey `j` has been quiet for too long to go on at `now`. While few packets
    /// are in flight, one routed out and not yet seen leaving may be waiting for its
    /// neighbour: it goes on after the address resolves (or fails), up to seconds later, and
    /// must not become two timelines. Under load the plain linger holds, so memory stays
    /// bounded as before.
    fn is_over(&self, j: &Journey, now: u64) -> bool {
        let quiet = now.saturating_sub(j.last_ns);
        quiet > self.limits.linger_ns
            && !(quiet <= NEIGHBOUR_WAIT_NS
                && self.live.len() <= self.limits.max_live / 8
                && j.routed_out_not_left())
    }

    /// Ends journeys quiet since before `now - linger`. Cheap to call often: it looks at most
    /// every few milliseconds of event time.
    pub fn expire(&mut self, now: u64) {
        if now < self.next_expire_ns {
            return;
        }
        self.next_expire_ns = now + EXPIRE_EVERY_NS;
        self.close_decisions(|d| now.saturating_sub(d.ts_ns) > DECISION_GAP_NS);
        self.expire_unnamed(now);
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
            if self.is_over(&self.live[i], now) {
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
        // journey is complete, place them by their hook among the timestamped sightings.
        j.hops = order_untimed(std::mem::take(&mut j.hops));
        // Rewrites point at the first hop that saw the new tuple, in the final order.
        for r in j.rewrites.iter_mut() {
            if let Some(i) = j
                .hops
                .iter()
                .position(|h| !h.untimed && h.tuple == Some(r.after))
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
        self.close_decisions(|_| true);
        self.expire_unnamed(u64::MAX);
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
