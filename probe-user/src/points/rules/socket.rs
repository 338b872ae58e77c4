//! The netlink socket nftables trace messages (and ruleset changes) arrive on, and the parse
//! of one trace message.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use super::NftraceError;
use crate::host::rtnl::{attributes, c_string, messages};

pub(super) const NFNLGRP_NFTRACE: u32 = 9;
/// Ruleset changes (tables, chains, rules added or deleted).
pub(super) const NFNLGRP_NFTABLES: u32 = 7;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFTA_TABLE_NAME: u16 = 1;
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
pub(super) const RCVBUF_BYTES: i32 = 16 << 20;
/// A netlink socket subscribed to nftables trace messages.
pub struct TraceSocket {
    fd: OwnedFd,
    /// Messages the kernel could not deliver (ENOBUFS), counted and survived.
    pub lost: u64,
    /// Tables deleted since the last look (a ruleset reload takes probe's with it).
    deleted_tables: Vec<String>,
}

impl AsRawFd for TraceSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl TraceSocket {
    pub fn open() -> Result<Self, NftraceError> {
        let err = || NftraceError::Socket(io::Error::last_os_error());
        // SAFETY: plain socket creation; owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(err());
        }
        // SAFETY: fd is fresh and valid.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let setopt = |level, name, value: i32| {
            // SAFETY: an int option on our socket.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    name,
                    (&value as *const i32).cast(),
                    size_of::<i32>() as u32,
                )
            }
        };
        // SAFETY: valid address struct.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        } != 0
        {
            return Err(err());
        }
        for group in [NFNLGRP_NFTRACE, NFNLGRP_NFTABLES] {
            if setopt(
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                group as i32,
            ) != 0
            {
                return Err(err());
            }
        }
        // Large buffer first (root may exceed rmem_max); a smaller one is not fatal.
        if setopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF_BYTES) != 0 {
            setopt(libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF_BYTES);
        }
        Ok(Self {
            fd,
            lost: 0,
            deleted_tables: Vec::new(),
        })
    }

    /// Everything received so far. ENOBUFS (the kernel dropped messages because we were slow)
    /// is counted and reading goes on: the socket never dies of it.
    pub fn receive(&mut self) -> Vec<RawTrace> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        self.lost += 1;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return out,
                }
            }
            for (ty, _, body) in messages(&buf[..n as usize]) {
                log::trace!("netfilter message type {ty:#x}, {} bytes", body.len());
                if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE {
                    out.extend(RawTrace::parse(body));
                } else if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE {
                    let name = body.get(4..).and_then(|attrs| {
                        attributes(attrs)
                            .find_map(|(t, p)| (t == NFTA_TABLE_NAME).then(|| c_string(p)))
                    });
                    self.deleted_tables.extend(name);
                }
            }
        }
    }

    /// Whether the table `name` was deleted since the last call.
    pub fn table_deleted(&mut self, name: &str) -> bool {
        let deleted = self.deleted_tables.iter().any(|t| t == name);
        self.deleted_tables.clear();
        deleted
    }
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
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
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
                NFTA_TRACE_TABLE => t.table = c_string(p),
                NFTA_TRACE_CHAIN => t.chain = c_string(p),
                NFTA_TRACE_RULE_HANDLE => {
                    t.rule_handle = p
                        .get(..8)
                        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
                }
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
                            NFTA_VERDICT_CHAIN => t.target = Some(c_string(vp)),
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
