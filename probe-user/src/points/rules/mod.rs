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
mod socket;
mod table;

use std::{collections::HashMap, io};

pub use socket::{RawTrace, TraceSocket};
use socket::{TRACETYPE_POLICY, TRACETYPE_RETURN, TRACETYPE_RULE};
use table::nft;
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
/// What `nft` says about chains and rules, looked up lazily and cached.
#[derive(Default)]
pub struct Ruleset {
    /// (family, table, chain) → hook of a base chain.
    hooks: HashMap<(String, String, String), Hook>,
    /// (family, table, chain) → handle → rule text.
    rules: HashMap<(String, String, String), HashMap<u64, String>>,
    /// When each chain was last listed.
    listed_at: HashMap<(String, String, String), std::time::Instant>,
    hooks_loaded: bool,
}

impl Ruleset {
    fn hook(&mut self, key: &(String, String, String)) -> Option<Hook> {
        if !self.hooks.contains_key(key) && !self.hooks_loaded {
            self.load_hooks();
        }
        self.hooks.get(key).copied()
    }

    fn load_hooks(&mut self) {
        self.hooks_loaded = true;
        let Ok(json) = nft(&["-j", "list", "chains"]) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) else {
            return;
        };
        for item in v["nftables"].as_array().into_iter().flatten() {
            let c = &item["chain"];
            if let (Some(f), Some(t), Some(n), Some(h)) = (
                c["family"].as_str(),
                c["table"].as_str(),
                c["name"].as_str(),
                c["hook"].as_str(),
            ) {
                self.hooks
                    .insert((f.into(), t.into(), n.into()), Hook::from_nft(h));
            }
        }
    }

    fn rule(&mut self, key: &(String, String, String), handle: u64) -> Option<String> {
        let known = self.rules.get(key).is_some_and(|r| r.contains_key(&handle));
        // A handle the last listing lacked is a rule added since, or one gone already: list
        // the chain again, but at most once a second (each listing runs `nft`).
        let fresh = self
            .listed_at
            .get(key)
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
        if !known && !fresh {
            let listed = nft(&["-a", "list", "chain", &key.0, &key.1, &key.2]).unwrap_or_default();
            self.rules.insert(key.clone(), parse_rule_handles(&listed));
            self.listed_at
                .insert(key.clone(), std::time::Instant::now());
        }
        self.rules.get(key)?.get(&handle).cloned()
    }
}

/// `nft -a list chain` output → handle → rule text.
fn parse_rule_handles(listing: &str) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for line in listing.lines() {
        let line = line.trim();
        let Some((rule, handle)) = line.rsplit_once(" # handle ") else {
            continue;
        };
        if line.starts_with("chain ") || line.starts_with("table ") {
            continue;
        }
        if let Ok(h) = handle.trim().parse::<u64>() {
            out.insert(h, without_counter_values(rule.trim()));
        }
    }
    out
}

/// `counter packets 6 bytes 186 drop` → `counter drop`: the numbers change with every packet
/// and say nothing about the rule.
fn without_counter_values(rule: &str) -> String {
    let words: Vec<&str> = rule.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        out.push(words[i]);
        let counted = words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
            && words.get(i + 2).is_some_and(|w| w.parse::<u64>().is_ok())
            && words.get(i + 4).is_some_and(|w| w.parse::<u64>().is_ok());
        i += if counted { 5 } else { 1 };
    }
    out.join(" ")
}

/// Turns raw trace messages into events. Walks through probe's own table are dropped. The
/// kernel sends a packet's headers only with the first message of each chain it walks, so each
/// trace id remembers its packet and the hook of the base chain it is in.
pub struct Tracer {
    ruleset: Ruleset,
    walks: BoundedMap<u32, Walk>,
    own_table: String,
}

#[derive(Default)]
struct Walk {
    hook: Option<Hook>,
    packet: Option<Packet>,
    headers: Option<RawHeaders>,
}

/// Walks remembered at most; the oldest are forgotten first (their packets are long gone).
const MAX_WALKS: usize = 65536;

impl Tracer {
    pub fn new(own_table: &str) -> Self {
        Self {
            ruleset: Ruleset::default(),
            walks: BoundedMap::new(MAX_WALKS),
            own_table: own_table.to_owned(),
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
        Some(Event {
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
        })
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
        let mut tracer = Tracer::new("probe_trace_100");
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

    #[test]
    fn rule_handles_from_listing() {
        let listing = "table ip filter {\n\tchain FORWARD { # handle 2\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter packets 0 bytes 0 jump DOCKER-USER # handle 7\n\t\tiifname \"docker0\" oifname \"docker0\" counter packets 0 bytes 0 drop # handle 12\n\t}\n}\n";
        let rules = parse_rule_handles(listing);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[&12],
            "iifname \"docker0\" oifname \"docker0\" counter drop"
        );
        assert_eq!(rules[&7], "counter jump DOCKER-USER");
    }
}
