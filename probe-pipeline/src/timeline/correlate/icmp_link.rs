//! Linking an ICMP error to the packet it quotes (see `timeline::icmp`).

use super::{Correlator, Signature};
use crate::{
    event::Packet,
    timeline::{IcmpError, Tuple},
};

impl Correlator {
    /// Journey `i`, an ICMP error just seen, answers the packet its payload quotes: the two
    /// are linked, once, at the error's first sighting.
    pub(super) fn link_icmp_error(&mut self, i: usize, quoted: &Packet) {
        if self.live[i].answers.is_some() {
            return;
        }
        let error_id = self.live[i].id;
        let (Some(sig), Some(tuple)) = (Signature::of(quoted), Tuple::of(quoted)) else {
            return;
        };
        // The quote is the packet as the host received it, or as its sender sent it where
        // NAT translated the error back: any tuple the journey had. The latest such journey
        // is the one the error followed.
        let Some(k) = self.by_sig.get(&sig).and_then(|ids| {
            ids.as_slice().iter().rev().find_map(|&id| {
                let k = self.index_of(id).filter(|_| id != error_id)?;
                let j = &self.live[k];
                let had = j.first == Some(tuple)
                    || j.current == Some(tuple)
                    || j.rewrites
                        .iter()
                        .any(|r| r.before == tuple || r.after == tuple);
                had.then_some(k)
            })
        }) else {
            return;
        };
        let Some(sighting) = self.live[i].hops.last().map(|h| h.event.clone()) else {
            return;
        };
        let answered = self.live[k].id;
        self.live[i].answers = Some(answered);
        self.live[k].icmp_errors.push(IcmpError {
            journey: error_id,
            sighting,
        });
    }
}
