//! nftables requests over netlink: a batch of messages (new table, chains, rules, or a delete),
//! framed for sending on probe's netlink socket (`host::netlink`), which reads the kernel's
//! acknowledgements back.
//!
//! probe speaks to nftables itself rather than through the `nft` command for its trace table,
//! because a table created with the owner flag (NFT_TABLE_F_OWNER, Linux 5.12+) belongs to the
//! socket that made it: the kernel removes it when that socket closes, so even a SIGKILLed probe
//! leaves no table behind.

use std::sync::atomic::{AtomicU32, Ordering};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFPROTO_INET: u8 = 1;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
/// nlmsghdr, then nfgenmsg.
const HEADER_LEN: usize = 16 + 4;

/// One attribute being written: plain bytes, or attributes nested inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

impl Attr {
    /// A NUL-terminated string, as nftables names are sent.
    pub fn string(ty: u16, s: &str) -> Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        Attr::Bytes(ty, b)
    }

    /// A 32-bit number in network order, as nftables takes them.
    pub fn be32(ty: u16, v: u32) -> Self {
        Attr::Bytes(ty, v.to_be_bytes().to_vec())
    }

    fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let ty = match self {
            Attr::Bytes(ty, bytes) => {
                out.extend_from_slice(bytes);
                *ty
            }
            Attr::Nested(ty, inner) => {
                for a in inner {
                    a.write(out);
                }
                ty | NLA_F_NESTED
            }
        };
        let len = (out.len() - start) as u16;
        out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        out[start + 2..start + 4].copy_from_slice(&ty.to_ne_bytes());
        // nla_len excludes the padding to the next 4-byte boundary.
        out.resize(out.len().next_multiple_of(4), 0);
    }
}

/// Sequence numbers, unique in the process: a failed batch leaves the kernel's answers to its
/// later messages in the socket, and they must not be taken for the next batch's.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// A request: the messages of one batch, applied by the kernel all or none.
pub struct Batch {
    bytes: Vec<u8>,
    /// Sequence numbers of the messages that will be acknowledged.
    acked: Vec<u32>,
}

impl Batch {
    pub fn new() -> Self {
        let mut b = Self {
            bytes: Vec::new(),
            acked: Vec::new(),
        };
        b.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, &[]);
        b
    }

    /// Adds an nftables message of type `NFT_MSG_*` for `family`.
    pub fn add(&mut self, msg: u16, family: u8, attrs: &[Attr]) {
        let flags = match msg {
            NFT_MSG_NEWRULE => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
            NFT_MSG_NEWTABLE | NFT_MSG_NEWCHAIN => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            _ => NLM_F_REQUEST | NLM_F_ACK,
        };
        let seq = self.message((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, family, attrs);
        self.acked.push(seq);
    }

    fn message(&mut self, ty: u16, flags: u16, family: u8, attrs: &[Attr]) -> u32 {
        let start = self.bytes.len();
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        self.bytes.extend_from_slice(&[0; 4]);
        self.bytes.extend_from_slice(&ty.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, NFNETLINK_V0, resource id (the subsystem, for the batch markers).
        self.bytes.extend_from_slice(&[family, 0]);
        let res_id = if ty == NFNL_MSG_BATCH_BEGIN || ty == NFNL_MSG_BATCH_END {
            NFNL_SUBSYS_NFTABLES
        } else {
            0
        };
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        debug_assert_eq!(self.bytes.len() - start, HEADER_LEN);
        for a in attrs {
            a.write(&mut self.bytes);
        }
        let len = (self.bytes.len() - start) as u32;
        self.bytes[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        seq
    }

    /// The batch's bytes, closed, and the sequence numbers whose acks to wait for.
    pub fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, &[]);
        (self.bytes, self.acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_but_their_length_is_not() {
        let mut out = Vec::new();
        Attr::string(1, "ab").write(&mut out);
        assert_eq!(out, [7, 0, 1, 0, b'a', b'b', 0, 0]);
        let mut out = Vec::new();
        Attr::Nested(4, vec![Attr::be32(1, 3)]).write(&mut out);
        assert_eq!(out, [12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end_and_acks_only_its_requests() {
        let mut b = Batch::new();
        b.add(NFT_MSG_NEWTABLE, NFPROTO_INET, &[Attr::string(1, "t")]);
        let (bytes, acked) = b.finish();
        let begin_seq = u32::from_ne_bytes(bytes[8..12].try_into().unwrap());
        assert_eq!(acked, [begin_seq + 1]);
        let first_len = u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize;
        assert_eq!(first_len, HEADER_LEN);
        assert_eq!(
            u16::from_ne_bytes([bytes[4], bytes[5]]),
            NFNL_MSG_BATCH_BEGIN
        );
        // The batch marker names the subsystem, big-endian.
        assert_eq!(&bytes[18..20], &[0, 10]);
        let table = &bytes[first_len..];
        assert_eq!(u16::from_ne_bytes([table[4], table[5]]), 10 << 8);
        assert_eq!(table[16], NFPROTO_INET);
        let end = &bytes[bytes.len() - HEADER_LEN..];
        assert_eq!(u16::from_ne_bytes([end[4], end[5]]), NFNL_MSG_BATCH_END);
    }
}
