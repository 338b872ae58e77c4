//! The expressions of the trace table's rules: which packets get `meta nftrace set 1`.
//!
//! Without a filter, every packet. With one, each clause of the filter (see
//! `probe_pipeline::filter::Filter::clauses`) becomes one rule, twice over: on the packet's
//! headers as it enters the stack (before conntrack, so the raw table's verdicts are traced too),
//! and, after conntrack, on its connection's original and reply tuples, so that the replies and
//! the NATed legs of an admitted connection are traced as the filter's follower shows them.

use std::net::IpAddr;

use probe_pipeline::filter::{End, Filter, Literal, Test};

use super::batch::Attr;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFT_META_NFTRACE: u32 = 12;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_RANGE_SREG: u16 = 1;
const NFTA_RANGE_OP: u16 = 2;
const NFTA_RANGE_FROM_DATA: u16 = 3;
const NFTA_RANGE_TO_DATA: u16 = 4;
const NFT_RANGE_EQ: u32 = 0;
const NFT_RANGE_NEQ: u32 = 1;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
const NFT_CT_PROTO_SRC: u32 = 11;
const NFT_CT_PROTO_DST: u32 = 12;
const NFT_CT_SRC_IP: u32 = 19;
const NFT_CT_DST_IP: u32 = 20;
const NFT_CT_SRC_IP6: u32 = 21;
const NFT_CT_DST_IP6: u32 = 22;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFT_REG_1: u32 = 1;

/// A filter of more clauses than this marks every packet (each clause is two or three rules).
pub const MAX_CLAUSES: usize = 32;

/// Where a rule reads the addresses and ports it tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The packet's own headers.
    Headers,
    /// Its connection's tuple, as first seen (0) or as the reply carries it (1).
    Conntrack(u8),
}

/// The rules' expressions for one chain: without clauses, one rule that marks everything.
pub fn rules(clauses: Option<&[Vec<Literal>]>, source: Source) -> Vec<Vec<Attr>> {
    match clauses {
        None => vec![set_nftrace()],
        Some(clauses) => clauses
            .iter()
            .map(|clause| {
                let mut exprs: Vec<Attr> = clause
                    .iter()
                    .filter(|l| !implied(l, clause))
                    .flat_map(|l| literal(l, source))
                    .collect();
                exprs.extend(set_nftrace());
                exprs
            })
            .collect(),
    }
}

/// Whether `l` is a guard another literal of `clause` states anyway (`udp` in `udp port 53`).
fn implied(l: &Literal, clause: &[Literal]) -> bool {
    if l.negated {
        return false;
    }
    clause.iter().any(|other| match (&l.test, &other.test) {
        (Test::Protocol(p), Test::Ports { protocol, .. }) => p == protocol,
        (Test::Ipv4(v4), Test::Net { addr, .. }) => *v4 == addr.is_ipv4(),
        _ => false,
    })
}

/// The clauses to mark by, or None (mark every packet) with the reason to say.
pub fn clauses(filter: Option<&Filter>) -> Result<Option<Vec<Vec<Literal>>>, &'static str> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    match filter.clauses(MAX_CLAUSES) {
        Some(c) => Ok(Some(c)),
        None => Err("the filter takes too many nftables rules"),
    }
}

fn expression(name: &str, data: Vec<Attr>) -> Attr {
    Attr::Nested(
        NFTA_LIST_ELEM,
        vec![
            Attr::string(NFTA_EXPR_NAME, name),
            Attr::Nested(NFTA_EXPR_DATA, data),
        ],
    )
}

/// meta nftrace set 1: the value 1 into register 1, then nftrace from it.
fn set_nftrace() -> Vec<Attr> {
    vec![
        expression(
            "immediate",
            vec![
                Attr::be32(NFTA_IMMEDIATE_DREG, NFT_REG_1),
                Attr::Nested(
                    NFTA_IMMEDIATE_DATA,
                    vec![Attr::Bytes(NFTA_DATA_VALUE, vec![1])],
                ),
            ],
        ),
        expression(
            "meta",
            vec![
                Attr::be32(NFTA_META_KEY, NFT_META_NFTRACE),
                Attr::be32(NFTA_META_SREG, NFT_REG_1),
            ],
        ),
    ]
}

fn meta_load(key: u32) -> Attr {
    expression(
        "meta",
        vec![
            Attr::be32(NFTA_META_DREG, NFT_REG_1),
            Attr::be32(NFTA_META_KEY, key),
        ],
    )
}

fn cmp(negated: bool, value: Vec<u8>) -> Attr {
    expression(
        "cmp",
        vec![
            Attr::be32(NFTA_CMP_SREG, NFT_REG_1),
            Attr::be32(NFTA_CMP_OP, if negated { NFT_CMP_NEQ } else { NFT_CMP_EQ }),
            Attr::Nested(NFTA_CMP_DATA, vec![Attr::Bytes(NFTA_DATA_VALUE, value)]),
        ],
    )
}

fn payload(base: u32, offset: u32, len: u32) -> Attr {
    expression(
        "payload",
        vec![
            Attr::be32(NFTA_PAYLOAD_DREG, NFT_REG_1),
            Attr::be32(NFTA_PAYLOAD_BASE, base),
            Attr::be32(NFTA_PAYLOAD_OFFSET, offset),
            Attr::be32(NFTA_PAYLOAD_LEN, len),
        ],
    )
}

fn ct_load(key: u32, direction: u8) -> Attr {
    expression(
        "ct",
        vec![
            Attr::be32(NFTA_CT_DREG, NFT_REG_1),
            Attr::be32(NFTA_CT_KEY, key),
            Attr::Bytes(NFTA_CT_DIRECTION, vec![direction]),
        ],
    )
}

fn family(v4: bool) -> u8 {
    if v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 }
}

/// The expressions that hold exactly when `l` does (its guard first).
fn literal(l: &Literal, source: Source) -> Vec<Attr> {
    match &l.test {
        Test::Ipv4(v4) => vec![
            meta_load(NFT_META_NFPROTO),
            cmp(l.negated, vec![family(*v4)]),
        ],
        Test::Protocol(p) => vec![meta_load(NFT_META_L4PROTO), cmp(l.negated, vec![*p])],
        Test::Net { end, addr, len } => {
            let (bytes, offset): (Vec<u8>, u32) = match (addr, end) {
                (IpAddr::V4(a), End::Src) => (a.octets().to_vec(), 12),
                (IpAddr::V4(a), End::Dst) => (a.octets().to_vec(), 16),
                (IpAddr::V6(a), End::Src) => (a.octets().to_vec(), 8),
                (IpAddr::V6(a), End::Dst) => (a.octets().to_vec(), 24),
            };
            let load = match source {
                Source::Headers => payload(NFT_PAYLOAD_NETWORK_HEADER, offset, bytes.len() as u32),
                Source::Conntrack(dir) => {
                    let key = match (addr.is_ipv4(), end) {
                        (true, End::Src) => NFT_CT_SRC_IP,
                        (true, End::Dst) => NFT_CT_DST_IP,
                        (false, End::Src) => NFT_CT_SRC_IP6,
                        (false, End::Dst) => NFT_CT_DST_IP6,
                    };
                    ct_load(key, dir)
                }
            };
            let mask = prefix_mask(bytes.len(), *len);
            let masked: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
            let mut exprs = vec![
                meta_load(NFT_META_NFPROTO),
                cmp(false, vec![family(addr.is_ipv4())]),
                load,
            ];
            if mask.iter().any(|m| *m != 0xff) {
                exprs.push(expression(
                    "bitwise",
                    vec![
                        Attr::be32(NFTA_BITWISE_SREG, NFT_REG_1),
                        Attr::be32(NFTA_BITWISE_DREG, NFT_REG_1),
                        Attr::be32(NFTA_BITWISE_LEN, mask.len() as u32),
                        Attr::Nested(NFTA_BITWISE_MASK, vec![Attr::Bytes(NFTA_DATA_VALUE, mask)]),
                        Attr::Nested(
                            NFTA_BITWISE_XOR,
                            vec![Attr::Bytes(NFTA_DATA_VALUE, vec![0; bytes.len()])],
                        ),
                    ],
                ));
            }
            exprs.push(cmp(l.negated, masked));
            exprs
        }
        Test::Ports {
            protocol,
            end,
            lo,
            hi,
        } => {
            let load = match source {
                Source::Headers => payload(
                    NFT_PAYLOAD_TRANSPORT_HEADER,
                    if *end == End::Src { 0 } else { 2 },
                    2,
                ),
                Source::Conntrack(dir) => ct_load(
                    if *end == End::Src {
                        NFT_CT_PROTO_SRC
                    } else {
                        NFT_CT_PROTO_DST
                    },
                    dir,
                ),
            };
            let test = if lo == hi {
                cmp(l.negated, lo.to_be_bytes().to_vec())
            } else {
                expression(
                    "range",
                    vec![
                        Attr::be32(NFTA_RANGE_SREG, NFT_REG_1),
                        Attr::be32(
                            NFTA_RANGE_OP,
                            if l.negated {
                                NFT_RANGE_NEQ
                            } else {
                                NFT_RANGE_EQ
                            },
                        ),
                        Attr::Nested(
                            NFTA_RANGE_FROM_DATA,
                            vec![Attr::Bytes(NFTA_DATA_VALUE, lo.to_be_bytes().to_vec())],
                        ),
                        Attr::Nested(
                            NFTA_RANGE_TO_DATA,
                            vec![Attr::Bytes(NFTA_DATA_VALUE, hi.to_be_bytes().to_vec())],
                        ),
                    ],
                )
            };
            vec![
                meta_load(NFT_META_L4PROTO),
                cmp(false, vec![*protocol]),
                load,
                test,
            ]
        }
    }
}

/// The netmask of a `len`-bit prefix over `bytes` bytes.
fn prefix_mask(bytes: usize, len: u8) -> Vec<u8> {
    (0..bytes)
        .map(|i| {
            let bits = (usize::from(len)).saturating_sub(i * 8).min(8);
            if bits == 0 { 0 } else { 0xffu8 << (8 - bits) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(4, 16), [0xff, 0xff, 0, 0]);
        assert_eq!(prefix_mask(4, 20), [0xff, 0xff, 0xf0, 0]);
        assert_eq!(prefix_mask(4, 32), [0xff; 4]);
        assert_eq!(prefix_mask(4, 0), [0; 4]);
        assert_eq!(prefix_mask(16, 64)[7..9], [0xff, 0]);
    }

    #[test]
    fn no_filter_is_one_rule_and_a_long_one_is_refused() {
        assert_eq!(rules(None, Source::Headers).len(), 1);
        assert!(clauses(None).unwrap().is_none());
        let long = Filter::parse(
            "(port 1 or port 2) and (port 3 or port 4) and (port 5 or port 6) and (port 7 or port 8)",
        )
        .unwrap();
        assert!(clauses(Some(&long)).is_err());
        let udp = Filter::parse("udp port 53").unwrap();
        let c = clauses(Some(&udp)).unwrap().unwrap();
        assert_eq!(rules(Some(&c), Source::Conntrack(1)).len(), 2);
    }
}
