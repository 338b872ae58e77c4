//! Rule-level netfilter verdicts on kernels without kprobes (`probe trace --rules`): the
//! mechanism behind `nft monitor trace`. probe adds a small table of its own whose only rules
//! set `nftrace` on packets, listens to the kernel's trace messages (NFNLGRP_NFTRACE) and names
//! the table, chain, rule and verdict, for native nftables (firewalld) and iptables-nft (Docker)
//! alike. The table is owned by probe's netlink socket where the kernel allows it (5.12+), so
//! the kernel deletes it with the socket; else probe deletes it on exit, and stale ones of dead
//! probe processes on start.

/// As `probe doctor` lists this point.
pub const NAME: &str = "rule verdicts (--rules)";
/// Its only mechanism.
pub const BACKEND: &str = "nftables trace (NFNLGRP_NFTRACE)";

mod batch;
mod marking;
mod ruleset;
mod socket;
mod table;

use std::{
    collections::VecDeque,
    io,
    time::{Duration, Instant},
};

pub use ruleset::Ruleset;
pub use socket::{RawTrace, TraceSocket};
use socket::{TRACETYPE_POLICY, TRACETYPE_RETURN, TRACETYPE_RULE};
pub use table::{TraceTable, sweep_stale};

use thiserror::Error;

use probe_pipeline::{
    bounded::BoundedMap,
    event::{DecidedBy, Event, EventBody, Family, Hook, Packet, RawHeaders, RuleVerdict, Verdict},
    packet,
};

#[derive(Debug, Error)]
pub enum NftraceError {
    #[error("--rules needs the nft command (package nftables): {0}")]
    NoNft(io::Error),
    #[error("cannot add probe's nftables trace table: {0}")]
    AddTable(String),
    #[error("cannot listen to nftables trace messages: {0}")]
    Socket(io::Error),
}

const TABLE_PREFIX: &str = probe_common::names::TRACE_TABLE_PREFIX;

/// Turns raw trace messages into events. Walks through probe's own table are dropped. The
/// kernel sends a packet's headers only with the first message of each chain it walks, so each
/// trace id remembers its packet and the hook of the base chain it is in.
pub struct Tracer {
    ruleset: Ruleset,
    /// Verdicts waiting for a reading of their chain, in arrival order: (since, chain, event).
    parked: VecDeque<(Instant, ruleset::ChainKey, Event)>,
    walks: BoundedMap<u32, Walk>,
    own_table: String,
}

#[derive(Default)]
struct Walk {
    hook: Option<Hook>,
    packet: Option<Packet>,
    headers: Option<RawHeaders>,
}

/// Longest a verdict waits for the rule text being read: well within the time a journey
/// lingers after its last sighting, so the verdict still finds it.
const PARK_MAX: Duration = Duration::from_millis(150);

/// Longest the end of a trace waits for the readings its last verdicts need.
const SETTLE_MAX: Duration = Duration::from_secs(2);

/// Walks remembered at most; the oldest are forgotten first (their packets are long gone).
const MAX_WALKS: usize = 65536;

impl Tracer {
    /// A tracer that names rules from `ruleset` ([`Ruleset::read`]; empty: by handle only).
    pub fn new(own_table: &str, ruleset: Ruleset) -> Self {
        Self {
            ruleset,
            parked: VecDeque::new(),
            walks: BoundedMap::new(MAX_WALKS),
            own_table: own_table.to_owned(),
        }
    }

    /// The kernel said a chain changed ([`TraceSocket::take_changed_chains`]): its rules are
    /// read again (not those of probe's own tables).
    pub fn ruleset_changed(&mut self, (nfproto, table, chain, added): (u8, String, String, bool)) {
        if !table.starts_with(TABLE_PREFIX) {
            let family = Family::from_nfproto(nfproto).nft_name().into_owned();
            self.ruleset.changed((family, table, chain), added);
        }
    }

    pub fn event(&mut self, raw: RawTrace, ts_ns: u64) -> Option<Event> {
        let walk = self.walks.entry_or_insert_with(raw.id, Walk::default);
        if let Some(n) = raw.network.as_deref() {
            walk.packet = Some(packet::from_network_header(n, raw.transport.as_deref()));
            walk.headers = Some(RawHeaders {
                network: n.to_vec(),
                transport: raw.transport.clone(),
            });
        }
        // Messages from probe's trace tables (its own, and another probe's running alongside:
        // every walk passes both), and the one that opens each chain's walk (a "rule" message
        // without a rule: it only carries the packet's headers), decide nothing.
        if raw.table == self.own_table
            || raw.table.starts_with(TABLE_PREFIX)
            || (raw.trace_type == TRACETYPE_RULE && raw.rule_handle.is_none())
        {
            return None;
        }
        let family = Family::from_nfproto(raw.nfproto);
        let key = (
            family.nft_name().into_owned(),
            raw.table.clone(),
            raw.chain.clone(),
        );
        let hook = match self.ruleset.hook(&key) {
            Some(h) => {
                walk.hook = Some(h);
                Some(h)
            }
            None => walk.hook,
        };
        let packet = walk.packet.clone();
        let headers = walk.headers.clone();
        let rule = raw
            .rule_handle
            .filter(|_| raw.trace_type == TRACETYPE_RULE)
            .and_then(|h| self.ruleset.rule(&key, h));
        let verdict = raw.verdict.map_or(Verdict::None, Verdict::from_nft);
        let unnamed = (rule.is_none() && raw.rule_handle.is_some()) || hook.is_none();
        let event = Event {
            ts_ns,
            cpu: 0,
            body: EventBody::Rule(Box::new(RuleVerdict {
                trace_id: raw.id,
                family,
                table: raw.table,
                chain: raw.chain,
                hook,
                decided_by: match raw.trace_type {
                    TRACETYPE_POLICY => DecidedBy::Policy,
                    TRACETYPE_RETURN => DecidedBy::Return,
                    TRACETYPE_RULE => DecidedBy::Rule,
                    _ => DecidedBy::Unknown,
                },
                rule_handle: raw.rule_handle.filter(|_| raw.trace_type == TRACETYPE_RULE),
                rule,
                verdict,
                target: raw.target,
                iif: raw.iif,
                oif: raw.oif,
                mark: raw.mark,
                packet,
                headers,
            })),
        };
        // A rule added while tracing (or a chain) is being read: its verdict waits for the
        // text, and those after it wait too, so that verdicts keep the kernel's order.
        if !self.parked.is_empty() || (unnamed && self.ruleset.reading(&key)) {
            self.parked.push_back((Instant::now(), key, event));
            return None;
        }
        Some(event)
    }

    /// The verdicts that waited and may go now (`all`: every one, the trace is ending), named
    /// with what the reading found.
    pub fn released(&mut self, all: bool) -> Vec<Event> {
        let mut out = Vec::new();
        if all && !self.parked.is_empty() {
            self.ruleset.settle(SETTLE_MAX);
        }
        while let Some((since, key, _)) = self.parked.front() {
            if !all && since.elapsed() < PARK_MAX && self.ruleset.reading(key) {
                break;
            }
            let (_, key, mut event) = self.parked.pop_front().expect("non-empty");
            if let EventBody::Rule(r) = &mut event.body {
                if let (None, Some(h)) = (&r.rule, r.rule_handle) {
                    r.rule = self.ruleset.known_rule(&key, h);
                }
                r.hook = r.hook.or_else(|| self.ruleset.hook(&key));
            }
            out.push(event);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{socket::*, *};

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    #[test]
    fn parses_a_trace_message() {
        let mut body = vec![2, 0, 0, 0];
        body.extend(attr(NFTA_TRACE_TABLE, b"filter\0"));
        body.extend(attr(NFTA_TRACE_CHAIN, b"FORWARD\0"));
        body.extend(attr(NFTA_TRACE_RULE_HANDLE, &7u64.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_TYPE, &TRACETYPE_RULE.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_ID, &99u32.to_be_bytes()));
        let mut verdict = attr(NFTA_VERDICT_CODE, &(-3i32 as u32).to_be_bytes());
        verdict.extend(attr(NFTA_VERDICT_CHAIN, b"DOCKER-USER\0"));
        body.extend(attr(NFTA_TRACE_VERDICT | 0x8000, &verdict));
        let t = RawTrace::parse(&body).unwrap();
        assert_eq!(t.table, "filter");
        assert_eq!(t.chain, "FORWARD");
        assert_eq!(t.rule_handle, Some(7));
        assert_eq!(t.id, 99);
        assert_eq!(t.verdict, Some(-3));
        assert_eq!(Verdict::from_nft(t.verdict.unwrap()), Verdict::Jump);
        assert_eq!(t.target.as_deref(), Some("DOCKER-USER"));
        // Truncations never panic.
        for n in 0..body.len() {
            let _ = RawTrace::parse(&body[..n]);
        }
    }

    #[test]
    fn no_probe_trace_table_is_a_verdict() {
        let mut tracer = Tracer::new("probe_trace_100", Ruleset::default());
        for table in ["probe_trace_100", "probe_trace_200"] {
            let raw = RawTrace {
                nfproto: 1,
                id: 5,
                table: table.into(),
                chain: "mark".into(),
                rule_handle: Some(2),
                trace_type: TRACETYPE_RULE,
                verdict: Some(-1),
                ..RawTrace::default()
            };
            assert_eq!(tracer.event(raw, 0), None, "{table}");
        }
    }
}
