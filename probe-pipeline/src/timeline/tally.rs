//! What a trace or a replay saw, in a line: timelines by outcome, and drops by cause, reason
//! and the kernel function that dropped them.

use std::collections::BTreeMap;

use super::{Journey, Outcome};
use crate::event::EventBody;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Tally {
    pub delivered: u64,
    pub left: u64,
    pub dropped: u64,
    pub unroutable: u64,
    pub incomplete: u64,
    /// "cause-id: REASON in function" → count (without the id when the cause is unknown).
    #[serde(rename = "drops_by_cause")]
    pub drops: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts a finished journey; `cause`: the id of its drop's cause, if known.
    pub fn add(&mut self, j: &Journey, outcome: Outcome, cause: Option<&str>) {
        match outcome {
            Outcome::Delivered => self.delivered += 1,
            Outcome::Left => self.left += 1,
            Outcome::Unroutable => self.unroutable += 1,
            Outcome::Incomplete => self.incomplete += 1,
            Outcome::Dropped => {
                self.dropped += 1;
                let place = j.hops.iter().rev().find_map(|h| match &h.event.body {
                    EventBody::Drop(d) => {
                        let reason = d.reason.as_deref().unwrap_or("reason unknown");
                        let function = d
                            .location_sym
                            .as_deref()
                            .map(|s| s.split('+').next().unwrap_or(s));
                        Some(match function {
                            Some(f) => format!("{reason} in {f}"),
                            None => reason.to_owned(),
                        })
                    }
                    _ => None,
                });
                let place = place.unwrap_or_else(|| "by a netfilter verdict".to_owned());
                let key = match cause {
                    Some(id) => format!("{id}: {place}"),
                    None => place,
                };
                *self.drops.entry(key).or_default() += 1;
            }
        }
    }

    /// "7 delivered, 3 left the host, 2 dropped (2 netfilter: NETFILTER_DROP in nf_hook_slow)",
    /// or None
    /// when there was nothing.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.delivered, "delivered"),
            (self.left, "left the host"),
            (self.unroutable, "unroutable"),
            (self.incomplete, "incomplete"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if self.dropped > 0 {
            let places: Vec<String> = self
                .drops
                .iter()
                .map(|(place, n)| format!("{n} {place}"))
                .collect();
            parts.push(format!("{} dropped ({})", self.dropped, places.join(", ")));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}
