//! A filter as an `or` of `and`s of single header tests: the shape a firewall states a match in
//! (one rule per clause, one expression per test), so that a filter can also be handed to
//! nftables (`probe trace --rules` marks only the packets the filter admits).
//!
//! Every test names what it reads and the guard that makes reading it meaningful: an address
//! test holds only for packets of its family, a port test only for TCP or UDP. A negated test
//! keeps its guard (`not src host 10.0.0.1` becomes "not IPv4, or IPv4 with another source"),
//! so each clause can be checked header by header without misreading another protocol's bytes.

use std::net::IpAddr;

use super::{Dir, Filter, ProtoMatch};
use crate::event::Transport;

/// Which end of the packet (or of a connection's tuple) a test reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// One test of one header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Test {
    /// IPv4 (`true`) or IPv6.
    Ipv4(bool),
    /// The IP protocol number.
    Protocol(u8),
    /// The address at `end` is inside `addr/len`; holds only for packets of `addr`'s family.
    Net { end: End, addr: IpAddr, len: u8 },
    /// The port at `end` is in `lo..=hi`; holds only for packets of `protocol` (TCP or UDP).
    Ports {
        protocol: u8,
        end: End,
        lo: u16,
        hi: u16,
    },
}

/// A test or its negation (the guard of a negated test still holds: see the module comment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Literal {
    pub test: Test,
    pub negated: bool,
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

fn protocol_number(t: Transport) -> u8 {
    match t {
        Transport::Tcp => TCP,
        Transport::Udp => UDP,
        Transport::Icmp => 1,
        Transport::Icmpv6 => 58,
        Transport::Other(n) => n,
    }
}

/// A formula in negation normal form over literals.
enum Nnf {
    Lit(Literal),
    And(Vec<Nnf>),
    Or(Vec<Nnf>),
}

fn lit(test: Test, negated: bool) -> Nnf {
    Nnf::Lit(Literal { test, negated })
}

fn ends(dir: Dir) -> &'static [End] {
    match dir {
        Dir::Src => &[End::Src],
        Dir::Dst => &[End::Dst],
        Dir::Either => &[End::Src, End::Dst],
    }
}

impl Filter {
    /// The filter as clauses (any clause admits a packet; a clause admits it when every literal
    /// holds), or None when that takes more than `max` clauses.
    pub fn clauses(&self, max: usize) -> Option<Vec<Vec<Literal>>> {
        let mut clauses = dnf(&nnf(self, false), max)?;
        // `udp port 53` expands to TCP and UDP port tests; the TCP ones can never hold.
        clauses.retain(|c| consistent(c));
        Some(clauses)
    }
}

/// Records that a clause needs `value` in `slot`; false if it already needs another.
fn need<T: PartialEq + Copy>(slot: &mut Option<T>, value: T) -> bool {
    match *slot {
        Some(v) if v != value => false,
        _ => {
            *slot = Some(value);
            true
        }
    }
}

/// Whether a clause can hold at all: one family and one protocol at most.
fn consistent(clause: &[Literal]) -> bool {
    let mut v4: Option<bool> = None;
    let mut protocol: Option<u8> = None;
    let mut not_protocols = Vec::new();
    for l in clause {
        let ok = match (&l.test, l.negated) {
            (Test::Ipv4(x), neg) => need(&mut v4, *x != neg),
            (Test::Net { addr, .. }, _) => need(&mut v4, addr.is_ipv4()),
            (Test::Protocol(p), false) | (Test::Ports { protocol: p, .. }, _) => {
                let ok = need(&mut protocol, *p);
                ok && !not_protocols.contains(p)
            }
            (Test::Protocol(p), true) => {
                not_protocols.push(*p);
                protocol != Some(*p)
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

fn nnf(f: &Filter, negated: bool) -> Nnf {
    match f {
        Filter::Not(a) => nnf(a, !negated),
        Filter::And(a, b) if !negated => Nnf::And(vec![nnf(a, false), nnf(b, false)]),
        Filter::And(a, b) => Nnf::Or(vec![nnf(a, true), nnf(b, true)]),
        Filter::Or(a, b) if !negated => Nnf::Or(vec![nnf(a, false), nnf(b, false)]),
        Filter::Or(a, b) => Nnf::And(vec![nnf(a, true), nnf(b, true)]),
        Filter::Proto(ProtoMatch::Ipv4) => lit(Test::Ipv4(true), negated),
        Filter::Proto(ProtoMatch::Ipv6) => lit(Test::Ipv4(false), negated),
        Filter::Proto(ProtoMatch::Transport(t)) => {
            lit(Test::Protocol(protocol_number(*t)), negated)
        }
        Filter::Net(dir, addr, len) => {
            let one = |end: End| {
                let test = Test::Net {
                    end,
                    addr: *addr,
                    len: *len,
                };
                if negated {
                    // Not (family and inside) = another family, or the family and outside.
                    Nnf::Or(vec![lit(Test::Ipv4(addr.is_ipv4()), true), lit(test, true)])
                } else {
                    lit(test, false)
                }
            };
            let each = ends(*dir).iter().map(|e| one(*e)).collect();
            if negated {
                Nnf::And(each)
            } else {
                Nnf::Or(each)
            }
        }
        Filter::Ports(dir, lo, hi) => {
            // Ports exist for TCP and UDP only: one test per protocol.
            let one = |protocol: u8, end: End| {
                let test = Test::Ports {
                    protocol,
                    end,
                    lo: *lo,
                    hi: *hi,
                };
                if negated {
                    Nnf::Or(vec![lit(Test::Protocol(protocol), true), lit(test, true)])
                } else {
                    lit(test, false)
                }
            };
            let each = [TCP, UDP]
                .iter()
                .flat_map(|p| ends(*dir).iter().map(|e| one(*p, *e)))
                .collect();
            if negated {
                Nnf::And(each)
            } else {
                Nnf::Or(each)
            }
        }
    }
}

/// Distributes `and` over `or`, giving up past `max` clauses.
fn dnf(f: &Nnf, max: usize) -> Option<Vec<Vec<Literal>>> {
    match f {
        Nnf::Lit(l) => Some(vec![vec![l.clone()]]),
        Nnf::Or(parts) => {
            let mut out = Vec::new();
            for p in parts {
                out.extend(dnf(p, max)?);
                if out.len() > max {
                    return None;
                }
            }
            Some(out)
        }
        Nnf::And(parts) => {
            let mut out: Vec<Vec<Literal>> = vec![Vec::new()];
            for p in parts {
                let right = dnf(p, max)?;
                if out.len().saturating_mul(right.len()) > max {
                    return None;
                }
                out = out
                    .iter()
                    .flat_map(|l| {
                        right.iter().map(move |r| {
                            let mut c = l.clone();
                            c.extend(r.iter().cloned());
                            c
                        })
                    })
                    .collect();
            }
            Some(out)
        }
    }
}

impl Literal {
    /// Whether the literal holds for a packet, with its guard (the reference the clauses are
    /// tested against: they must admit exactly what [`Filter::matches`] admits).
    pub fn holds(&self, t: &crate::tuple::Tuple) -> bool {
        let guard_and_value = match &self.test {
            Test::Ipv4(v4) => return (t.src.is_ipv4() == *v4) != self.negated,
            Test::Protocol(p) => return (protocol_number(t.proto) == *p) != self.negated,
            Test::Net { end, addr, len } => {
                let a = if *end == End::Src { t.src } else { t.dst };
                (
                    a.is_ipv4() == addr.is_ipv4(),
                    crate::addr::in_subnet(a, *addr, *len),
                )
            }
            Test::Ports {
                protocol,
                end,
                lo,
                hi,
            } => {
                let p = if *end == End::Src { t.sport } else { t.dport };
                (
                    protocol_number(t.proto) == *protocol,
                    (*lo..=*hi).contains(&p),
                )
            }
        };
        guard_and_value.0 && (guard_and_value.1 != self.negated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::Tuple;

    fn tuple(proto: Transport, src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple {
            proto,
            src: src.parse().unwrap(),
            sport,
            dst: dst.parse().unwrap(),
            dport,
        }
    }

    /// The clauses admit exactly what the filter admits, over packets of every kind.
    #[test]
    fn clauses_admit_what_the_filter_admits() {
        let packets = [
            tuple(Transport::Tcp, "172.17.0.2", 41000, "10.0.0.1", 80),
            tuple(Transport::Udp, "172.17.0.2", 53, "10.0.0.9", 5353),
            tuple(Transport::Udp, "10.0.0.1", 80, "172.17.0.3", 1000),
            tuple(Transport::Icmp, "172.17.0.2", 0, "10.0.0.1", 0),
            tuple(Transport::Icmpv6, "fd00::2", 0, "fd00::1", 0),
            tuple(Transport::Tcp, "fd00::2", 80, "fd00::1", 443),
            tuple(Transport::Other(47), "10.0.0.1", 0, "10.0.0.2", 0),
        ];
        for expr in [
            "host 172.17.0.2",
            "not host 172.17.0.2",
            "tcp port 80",
            "not port 80",
            "src net 172.17.0.0/16 and not dst port 5353",
            "(udp or icmp) and dst host 10.0.0.1",
            "not (ip6 or tcp)",
            "portrange 1-1023 and not src host 10.0.0.1",
            "ip6 and not net fd00::/64",
            "icmp6 or not ip",
        ] {
            let f = Filter::parse(expr).unwrap();
            let clauses = f.clauses(64).unwrap_or_else(|| panic!("{expr}: too many"));
            for p in &packets {
                let by_clauses = clauses.iter().any(|c| c.iter().all(|l| l.holds(p)));
                assert_eq!(by_clauses, f.matches(p), "{expr} on {p:?}: {clauses:?}");
            }
        }
    }

    #[test]
    fn a_filter_past_the_limit_has_no_clauses() {
        let f = Filter::parse("(port 1 or port 2) and (port 3 or port 4) and (port 5 or port 6)")
            .unwrap();
        assert!(f.clauses(8).is_none());
        // The TCP half of `port 53` is pruned: two clauses, source or destination port.
        let udp = Filter::parse("udp port 53").unwrap().clauses(8).unwrap();
        assert_eq!(udp.len(), 2, "{udp:?}");
    }
}
