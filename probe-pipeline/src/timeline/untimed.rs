//! Where the rows the kernel gave no time (nftables trace verdicts) go in a journey: by
//! their hook, between the timestamped sightings.

use super::{Hop, is_exit};
use crate::event::{EventBody, Hook};

/// The hops in their final order: the timestamped ones by time, and each untimed one (an
/// nftables verdict) where its hook runs between them. Prerouting (and netdev ingress) runs
/// after the packet arrived (its last tc ingress before it left), before routing; input,
/// forward and output run after routing, and postrouting last, all before the packet's exit
/// (its first tc egress or drop). Untimed hops take the time of the hop they follow as their
/// ordering key; ties keep the order the kernel reported them in.
pub(super) fn order_untimed(hops: Vec<Hop>) -> Vec<Hop> {
    if !hops.iter().any(|h| h.untimed) {
        // The common case, in place: the same stable sort, without moving every hop twice.
        let mut hops = hops;
        hops.sort_by_key(|h| h.ts_ns);
        return hops;
    }
    let (mut timed, untimed): (Vec<Hop>, Vec<Hop>) = hops.into_iter().partition(|h| !h.untimed);
    timed.sort_by_key(|h| h.ts_ns);
    if untimed.is_empty() {
        return timed;
    }
    let exit = timed
        .iter()
        .position(|h| is_exit(&h.event))
        .unwrap_or(timed.len());
    let arrival = timed[..exit].iter().rposition(|h| {
        matches!(&h.event.body, EventBody::Tc(t) if t.direction == crate::event::Direction::Ingress)
    });
    // The slot is the number of timestamped hops before the untimed one.
    let mut placed: Vec<(usize, u8, Hop)> = untimed
        .into_iter()
        .map(|h| {
            let hook = match &h.event.body {
                EventBody::Rule(r) => r.hook,
                _ => None,
            };
            let (slot, rank) = match hook {
                Some(Hook::Prerouting | Hook::Ingress) => (arrival.map_or(0, |a| a + 1), 0),
                Some(Hook::Postrouting) => (exit, 2),
                _ => (exit, 1),
            };
            (slot, rank, h)
        })
        .collect();
    placed.sort_by_key(|(slot, rank, _)| (*slot, *rank));
    let mut out = Vec::with_capacity(timed.len() + placed.len());
    let mut untimed = placed.into_iter().peekable();
    for (i, h) in timed.into_iter().enumerate() {
        while let Some((_, _, mut u)) = untimed.next_if(|(slot, _, _)| *slot <= i) {
            // Before the first timestamped hop, the ordering key is that hop's time.
            u.ts_ns = out.last().map_or(h.ts_ns, |p: &Hop| p.ts_ns);
            u.event.ts_ns = u.ts_ns;
            out.push(u);
        }
        out.push(h);
    }
    for (_, _, mut u) in untimed {
        if let Some(p) = out.last() {
            u.ts_ns = p.ts_ns;
            u.event.ts_ns = p.ts_ns;
        }
        out.push(u);
    }
    out
}
