//! The netlink socket nftables trace messages (and ruleset changes) arrive on, and the parse
//! of one trace message.

use netlink_packet_core::{
    NLA_HEADER_SIZE, NlasIterator, parse_string, parse_u32_be, parse_u64_be,
};

use super::NftraceError;
use crate::host::netlink::{self, NETLINK_NETFILTER, NetlinkError, frames};

pub(super) const NFNLGRP_NFTRACE: u32 = 9;
/// Ruleset changes (tables, chains, rules added or deleted).
pub(super) const NFNLGRP_NFTABLES: u32 = 7;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_DELRULE: u16 = 8;
pub(super) const NFTA_TABLE_NAME: u16 = 1;
/// NFTA_RULE_TABLE and NFTA_CHAIN_TABLE.
pub(super) const NFTA_OF_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFT_MSG_TRACE: u16 = 17;
pub(super) const NFTA_TRACE_TABLE: u16 = 1;
pub(super) const NFTA_TRACE_CHAIN: u16 = 2;
pub(super) const NFTA_TRACE_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_TRACE_TYPE: u16 = 4;
pub(super) const NFTA_TRACE_VERDICT: u16 = 5;
pub(super) const NFTA_TRACE_ID: u16 = 6;
pub(super) const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
pub(super) const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
pub(super) const NFTA_TRACE_IIF: u16 = 10;
pub(super) const NFTA_TRACE_OIF: u16 = 12;
pub(super) const NFTA_TRACE_MARK: u16 = 14;
pub(super) const NFTA_TRACE_POLICY: u16 = 16;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const TRACETYPE_POLICY: u32 = 1;
pub(super) const TRACETYPE_RETURN: u32 = 2;
pub(super) const TRACETYPE_RULE: u32 = 3;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
/// Receive buffer for trace messages: a busy host emits many per packet.
pub(super) const RCVBUF_BYTES: usize = 16 << 20;
/// A netlink socket subscribed to nftables trace messages.
pub struct TraceSocket {
    socket: netlink::Socket,
    /// Messages the kernel could not deliver (ENOBUFS), counted and survived.
    pub lost: u64,
    /// Tables deleted since the last look (a ruleset reload takes probe's with it).
    deleted_tables: Vec<String>,
    /// Chains whose rules changed since the last look: (nfproto, table, chain, chain added).
    changed_chains: Vec<(u8, String, String, bool)>,
}

impl std::os::fd::AsRawFd for TraceSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

impl TraceSocket {
    pub fn open() -> Result<Self, NftraceError> {
        let socket = netlink::Socket::subscribe(
            NETLINK_NETFILTER,
            &[NFNLGRP_NFTRACE, NFNLGRP_NFTABLES],
            RCVBUF_BYTES,
        )
        .map_err(NftraceError::Socket)?;
        Ok(Self {
            socket,
            lost: 0,
            deleted_tables: Vec::new(),
            changed_chains: Vec::new(),
        })
    }

    /// Everything received so far. ENOBUFS (the kernel dropped messages because we were slow)
    /// is counted and reading goes on: the socket never dies of it, and what is queued after
    /// the loss is still news.
    pub fn receive(&mut self) -> Vec<RawTrace> {
        let mut out = Vec::new();
        loop {
            let datagram = match self.socket.recv() {
                Ok(Some(d)) => d,
                Err(NetlinkError::Overflow) => {
                    self.lost += 1;
                    continue;
                }
                Err(e) if e.errno() == Some(libc::EINTR) => continue,
                Ok(None) | Err(_) => return out,
            };
            for frame in frames(datagram) {
                let (ty, body) = (frame.message_type(), frame.payload());
                log::trace!("netfilter message type {ty:#x}, {} bytes", body.len());
                if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE {
                    out.extend(RawTrace::parse(body));
                } else if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE {
                    let name = body.get(4..).and_then(|attrs| {
                        attributes(attrs).find_map(|(t, p)| (t == NFTA_TABLE_NAME).then(|| text(p)))
                    });
                    self.deleted_tables.extend(name);
                } else if let Some(change) = chain_change(ty, body) {
                    self.changed_chains.push(change);
                }
            }
        }
    }

    /// The chains whose rules changed since the last call.
    pub fn take_changed_chains(&mut self) -> Vec<(u8, String, String, bool)> {
        std::mem::take(&mut self.changed_chains)
    }

    /// Whether the table `name` was deleted since the last call.
    pub fn table_deleted(&mut self, name: &str) -> bool {
        let deleted = self.deleted_tables.iter().any(|t| t == name);
        self.deleted_tables.clear();
        deleted
    }
}

/// A rule added or deleted, or a chain added: (nfproto, table, chain, chain added). The body
/// is an nfgenmsg (family first) and the message's attributes.
fn chain_change(ty: u16, body: &[u8]) -> Option<(u8, String, String, bool)> {
    let (name_attr, added) = match ty {
        t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => (NFTA_RULE_CHAIN, false),
        t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE => (NFTA_RULE_CHAIN, false),
        t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN => (NFTA_CHAIN_NAME, true),
        _ => return None,
    };
    let family = *body.first()?;
    let (mut table, mut chain) = (None, None);
    for (t, p) in attributes(body.get(4..)?) {
        if t == NFTA_OF_TABLE {
            table = Some(text(p));
        } else if t == name_attr {
            chain = Some(text(p));
        }
    }
    Some((family, table?, chain?, added))
}

/// The attributes (type, value) of a message body, each length-checked; stops at the first
/// malformed one.
fn attributes(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(body).map_while(Result::ok).map(|nla| {
        let (kind, len) = (nla.kind(), nla.value_length());
        (
            kind,
            &nla.into_inner()[NLA_HEADER_SIZE..NLA_HEADER_SIZE + len],
        )
    })
}

fn text(value: &[u8]) -> String {
    parse_string(value).unwrap_or_default()
}

/// One NFT_MSG_TRACE message, as the kernel sent it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawTrace {
    pub nfproto: u8,
    pub id: u32,
    pub table: String,
    pub chain: String,
    pub rule_handle: Option<u64>,
    /// enum nft_trace_types: 1 policy, 2 return, 3 rule.
    pub trace_type: u32,
    pub verdict: Option<i32>,
    pub target: Option<String>,
    pub iif: u32,
    pub oif: u32,
    pub mark: u32,
    pub network: Option<Vec<u8>>,
    pub transport: Option<Vec<u8>>,
}

fn be32(b: &[u8]) -> Option<u32> {
    parse_u32_be(b).ok()
}

impl RawTrace {
    pub fn parse(body: &[u8]) -> Option<Self> {
        // struct nfgenmsg: family, version, resource id.
        let nfproto = *body.first()?;
        let mut t = RawTrace {
            nfproto,
            ..Default::default()
        };
        for (ty, p) in attributes(body.get(4..)?) {
            match ty {
                NFTA_TRACE_TABLE => t.table = text(p),
                NFTA_TRACE_CHAIN => t.chain = text(p),
                NFTA_TRACE_RULE_HANDLE => t.rule_handle = parse_u64_be(p).ok(),
                NFTA_TRACE_TYPE => t.trace_type = be32(p).unwrap_or(0),
                NFTA_TRACE_ID => t.id = be32(p).unwrap_or(0),
                NFTA_TRACE_IIF => t.iif = be32(p).unwrap_or(0),
                NFTA_TRACE_OIF => t.oif = be32(p).unwrap_or(0),
                NFTA_TRACE_MARK => t.mark = be32(p).unwrap_or(0),
                NFTA_TRACE_NETWORK_HEADER => t.network = Some(p.to_vec()),
                // A base chain's policy comes as its own attribute, not as a verdict.
                NFTA_TRACE_POLICY => t.verdict = be32(p).map(|v| v as i32),
                NFTA_TRACE_TRANSPORT_HEADER => t.transport = Some(p.to_vec()),
                NFTA_TRACE_VERDICT => {
                    for (vty, vp) in attributes(p) {
                        match vty {
                            NFTA_VERDICT_CODE => t.verdict = be32(vp).map(|v| v as i32),
                            NFTA_VERDICT_CHAIN => t.target = Some(text(vp)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(t)
    }
}
