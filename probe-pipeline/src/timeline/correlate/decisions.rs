//! Routing decisions: the table lookups of one decision folded into one row, and each
//! decision joined to the packet it was made for.

use std::net::IpAddr;

use super::{Correlator, DECISION_GAP_NS, SCAN_WINDOW};
use crate::{
    event::{Event, EventBody},
    timeline::{Hop, Tuple, is_exit},
};

impl Correlator {
    /// A lookup known to have run in a namespace other than the traced one.
    pub(super) fn foreign(&self, lookup: &Event) -> bool {
        match &lookup.body {
            EventBody::Fib(f) => {
                f.netns != 0 && self.traced_netns != 0 && f.netns != self.traced_netns
            }
            _ => false,
        }
    }

    /// Moves the waiting lookups for `t` made between journey `i`'s first sighting and `now`
    /// into it.
    pub(super) fn take_lookups_for(&mut self, i: usize, t: Tuple, now: u64) {
        let Some(since) = self.live[i].hops.iter().map(|h| h.ts_ns).min() else {
            return;
        };
        let mut k = 0;
        while k < self.lookups.len() {
            let l = &self.lookups[k];
            // The decision after a rewrite here is this namespace's.
            if lookup_matches(l, &t) && l.ts_ns >= since && l.ts_ns <= now && !self.foreign(l) {
                let l = self.lookups.remove(k).expect("index in range");
                self.live[i].hops.push(Hop::lookup(l));
            } else {
                k += 1;
            }
        }
    }

    /// A table lookup: the next step of the decision being made on its CPU, or the first of a
    /// new one.
    pub(super) fn push_fib(&mut self, event: Event) {
        let cpu = event.cpu;
        if let Some(k) = self.deciding.iter().position(|d| d.cpu == cpu) {
            let continues = match (&self.deciding[k].body, &event.body) {
                (EventBody::Fib(prev), EventBody::Fib(next)) => {
                    event.ts_ns.saturating_sub(self.deciding[k].ts_ns) <= DECISION_GAP_NS
                        && prev.continues_with(next)
                }
                _ => false,
            };
            let prev = self.deciding.swap_remove(k);
            if continues {
                let mut event = event;
                if let (EventBody::Fib(mut p), EventBody::Fib(n)) = (prev.body, &mut event.body) {
                    let mut tried = std::mem::take(&mut p.tried);
                    tried.push(p.as_try(prev.ts_ns));
                    n.tried = tried;
                    n.rule_pref = n.rule_pref.or(p.rule_pref);
                }
                self.deciding.push(event);
                return;
            }
            self.push_lookup(prev);
        }
        self.deciding.push(event);
    }

    /// The policy rule that chose the table: reported when the rules lookup returns, after the
    /// table lookups it made. It completes the decision on its CPU; without one it is a row.
    pub(super) fn push_fib_rule(&mut self, event: Event) {
        let EventBody::FibRule(r) = &event.body else {
            return;
        };
        let k = self.deciding.iter().position(|d| {
            d.cpu == event.cpu
                && matches!(&d.body, EventBody::Fib(f) if f.dst == r.dst)
                && event.ts_ns.saturating_sub(d.ts_ns) <= DECISION_GAP_NS
        });
        match k {
            Some(k) => {
                let mut d = self.deciding.swap_remove(k);
                if let EventBody::Fib(f) = &mut d.body {
                    f.rule_pref = Some(r.pref);
                }
                self.push_lookup(d);
            }
            None => {
                self.close_decisions(|d| d.cpu == event.cpu);
                self.push_lookup(event);
            }
        }
    }

    /// Decisions that are complete (`done`) go where lookups go: to their packet's journey,
    /// or to wait for it.
    pub(super) fn close_decisions(&mut self, done: impl Fn(&Event) -> bool) {
        if !self.deciding.iter().any(&done) {
            return;
        }
        let (closed, open): (Vec<Event>, Vec<Event>) = std::mem::take(&mut self.deciding)
            .into_iter()
            .partition(|d| done(d));
        self.deciding = open;
        for d in closed {
            self.push_lookup(d);
        }
    }

    pub(super) fn push_lookup(&mut self, event: Event) {
        // A lookup right after a packet's last sighting (forwarding, reply routing) belongs to
        // that packet, unless it has left already (then it is the next packet's); otherwise it
        // waits for the packet it was made for.
        let now = event.ts_ns;
        let window = self.limits.lookup_window_ns;
        let target = lookup_dst(&event);
        let skip = self.live.len().saturating_sub(SCAN_WINDOW);
        // Another namespace's lookup after a packet was seen here is not that packet's: the
        // packet is here, not there (a namespace with the same addresses routes its own).
        let foreign = self.foreign(&event);
        let found = self.live.iter().skip(skip).rposition(|j| {
            !foreign
                && !j.ended
                && now.saturating_sub(j.last_ns) <= window
                && j.current
                    .is_some_and(|t| Some((t.dst, t.dport)) == target || Some((t.dst, 0)) == target)
                && !j.hops.iter().any(|h| is_exit(&h.event))
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
    pub(super) fn standalone(&mut self, lookup: Event) {
        let failed = match &lookup.body {
            EventBody::Fib(f) => f.failed(),
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
}

fn lookup_dst(e: &Event) -> Option<(IpAddr, u16)> {
    match &e.body {
        EventBody::Fib(f) => Some((f.dst, f.dport)),
        EventBody::FibRule(r) => Some((r.dst, 0)),
        _ => None,
    }
}

pub(super) fn lookup_matches(lookup: &Event, t: &Tuple) -> bool {
    match &lookup.body {
        EventBody::Fib(f) => f.dst == t.dst && (f.dport == 0 || f.dport == t.dport),
        EventBody::FibRule(r) => r.dst == t.dst,
        _ => false,
    }
}
