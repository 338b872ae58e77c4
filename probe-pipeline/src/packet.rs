//! Parsing packet headers that reach userspace as bytes (nftables trace messages carry the
//! network and transport headers). Every read is bounds-checked; short input gives a packet
//! marked truncated, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::event::{IpHeader, L4Header, Packet, TcpFlags, Transport};

/// A packet from its network header and, when known separately, its transport header.
pub fn from_network_header(l3: &[u8], transport: Option<&[u8]>) -> Packet {
    let mut packet = Packet {
        ethertype: 0,
        len: l3.len() as u32,
        ip: None,
        truncated: false,
    };
    let Some(&first) = l3.first() else {
        packet.truncated = true;
        return packet;
    };
    let (src, dst, proto, ip_id, fragment, l4_start, total) = match first >> 4 {
        4 if l3.len() >= 20 => {
            let ihl = usize::from(first & 0x0f) * 4;
            let frag = u16::from_be_bytes([l3[6], l3[7]]) & 0x1fff != 0;
            packet.ethertype = 0x0800;
            (
                IpAddr::V4(Ipv4Addr::new(l3[12], l3[13], l3[14], l3[15])),
                IpAddr::V4(Ipv4Addr::new(l3[16], l3[17], l3[18], l3[19])),
                l3[9],
                u16::from_be_bytes([l3[4], l3[5]]),
                frag,
                ihl.max(20),
                u16::from_be_bytes([l3[2], l3[3]]) as u32,
            )
        }
        6 if l3.len() >= 40 => {
            let addr = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&l3[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            packet.ethertype = 0x86dd;
            (
                addr(8),
                addr(24),
                l3[6],
                0,
                false,
                40,
                40 + u16::from_be_bytes([l3[4], l3[5]]) as u32,
            )
        }
        _ => {
            packet.truncated = true;
            return packet;
        }
    };
    packet.len = total;
    let proto = Transport::from_number(proto);
    let l4_bytes = transport.or_else(|| l3.get(l4_start..));
    let l4 = if fragment {
        None
    } else {
        l4_bytes.and_then(|t| l4_header(proto, t))
    };
    if l4.is_none() && !fragment && matches!(proto, Transport::Tcp | Transport::Udp) {
        packet.truncated = true;
    }
    packet.ip = Some(IpHeader {
        src,
        dst,
        proto,
        ip_id,
        fragment,
        l4,
    });
    packet
}

/// Whether `p` is an ICMP error, whose payload quotes the packet it answers: destination
/// unreachable (fragmentation needed among them), time exceeded, parameter problem, and for
/// ICMPv6 also packet too big. The same test as the tc programs'.
pub fn is_icmp_error(p: &Packet) -> bool {
    let Some(ip) = &p.ip else { return false };
    match (ip.proto, &ip.l4) {
        (Transport::Icmp, Some(L4Header::Icmp { icmp_type, .. })) => {
            ip.src.is_ipv4() && matches!(icmp_type, 3 | 11 | 12)
        }
        (Transport::Icmpv6, Some(L4Header::Icmp { icmp_type, .. })) => {
            ip.src.is_ipv6() && matches!(icmp_type, 1..=4)
        }
        _ => false,
    }
}

/// The packet an ICMP error quotes, from the error's bytes starting at its network header:
/// the quote follows the error's 8-byte ICMP header. None when the bytes end before it.
pub fn quoted_by_error(l3: &[u8]) -> Option<Packet> {
    let l4 = match l3.first()? >> 4 {
        4 => usize::from(l3[0] & 0x0f) * 4,
        6 => 40,
        _ => return None,
    };
    let quote = l3.get(l4 + 8..).filter(|q| !q.is_empty())?;
    Some(from_network_header(quote, None))
}

fn l4_header(proto: Transport, t: &[u8]) -> Option<L4Header> {
    let u16_at = |o: usize| t.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match proto {
        Transport::Tcp if t.len() >= 14 => Some(L4Header::Tcp {
            sport: u16_at(0)?,
            dport: u16_at(2)?,
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            tcp_flags: TcpFlags(t[13]),
        }),
        Transport::Udp if t.len() >= 4 => Some(L4Header::Udp {
            sport: u16_at(0)?,
            dport: u16_at(2)?,
        }),
        Transport::Icmp | Transport::Icmpv6 if t.len() >= 8 => Some(L4Header::Icmp {
            icmp_type: t[0],
            icmp_code: t[1],
            icmp_id: u16_at(4)?,
            icmp_seq: u16_at(6)?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 32, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(&[0x9c, 0x41, 0x23, 0x28, 0, 12, 0, 0, 1, 2, 3, 4]);
        p
    }

    #[test]
    fn parses_ipv4_udp() {
        let p = from_network_header(&ipv4_udp(), None);
        let ip = p.ip.unwrap();
        assert_eq!(ip.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ip.ip_id, 0x1234);
        assert_eq!(
            ip.l4,
            Some(L4Header::Udp {
                sport: 40001,
                dport: 9000
            })
        );
        assert_eq!(p.len, 32);
    }

    #[test]
    fn separate_transport_header_wins() {
        let l3 = &ipv4_udp()[..20];
        let p = from_network_header(l3, Some(&[0, 53, 0, 54]));
        assert_eq!(
            p.ip.unwrap().l4,
            Some(L4Header::Udp {
                sport: 53,
                dport: 54
            })
        );
    }

    #[test]
    fn every_prefix_is_safe() {
        let full = ipv4_udp();
        for n in 0..full.len() {
            let p = from_network_header(&full[..n], None);
            if n < 20 {
                assert!(p.truncated && p.ip.is_none(), "{n}");
            }
        }
        let _ = from_network_header(&[0x4f; 64], None);
        let _ = from_network_header(&[0x60; 39], Some(&[]));
    }
}
