//! Headers rebuilt from a sighting's decoded fields, for packets whose bytes were not copied:
//! an Ethernet header with zero addresses (the MAC addresses are not read) and the packet's
//! EtherType, then an IPv4 or IPv6 header and the TCP, UDP or ICMP header the kernel side
//! read, with correct checksums over what is written. Fields the kernel side did not read take
//! neutral values (TTL/hop limit 64, TCP window 65535, ack 0), and no payload follows: the IP
//! length fields cover the rebuilt headers only, so every reader decodes them as a whole
//! packet.
//!
//! Every block of a file has the one link type, Ethernet: libpcap (tcpdump) refuses a pcapng
//! file whose interfaces have different ones, and Ethernet keeps the real MAC header where
//! the trace copied one.

use std::net::IpAddr;

use crate::event::{IpHeader, L4Header, Packet, Transport};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// The packet as an Ethernet frame: headers only, from the decoded fields.
pub fn rebuild(p: &Packet) -> Vec<u8> {
    match &p.ip {
        Some(ip) => {
            let packet = ip_packet(ip);
            ethernet(&packet, p.ethertype)
        }
        // Not IP (ARP, LLDP, ...): only the EtherType is known.
        None => ethernet(&[], p.ethertype),
    }
}

/// `network` (bytes from the network header on) behind an Ethernet header with zero
/// addresses; the EtherType from the IP version when there is one, else `ethertype`.
pub fn ethernet(network: &[u8], ethertype: u16) -> Vec<u8> {
    let ethertype = match network.first().map(|b| b >> 4) {
        Some(4) => ETH_P_IP,
        Some(6) => ETH_P_IPV6,
        _ => ethertype,
    };
    let mut frame = Vec::with_capacity(14 + network.len());
    frame.extend_from_slice(&[0; 12]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(network);
    frame
}

fn ip_packet(ip: &IpHeader) -> Vec<u8> {
    let proto = ip.proto.number();
    match (ip.src, ip.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let (src, dst) = (src.octets(), dst.octets());
            let pseudo = |len: usize| {
                let mut p = Vec::with_capacity(12);
                p.extend_from_slice(&src);
                p.extend_from_slice(&dst);
                p.extend_from_slice(&[0, proto]);
                p.extend_from_slice(&(len as u16).to_be_bytes());
                p
            };
            let l4 = transport(ip, pseudo);
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&ip.ip_id.to_be_bytes());
            // A non-first fragment: its offset was not read, any non-zero one keeps readers
            // from looking for a transport header.
            if ip.fragment {
                h[7] = 1;
            }
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&src);
            h[16..20].copy_from_slice(&dst);
            let sum = checksum(&[&h]);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h.extend_from_slice(&l4);
            h
        }
        (src, dst) => {
            let (src, dst) = (v6_octets(src), v6_octets(dst));
            let pseudo = |len: usize| {
                let mut p = Vec::with_capacity(40);
                p.extend_from_slice(&src);
                p.extend_from_slice(&dst);
                p.extend_from_slice(&(len as u32).to_be_bytes());
                p.extend_from_slice(&[0, 0, 0, proto]);
                p
            };
            let l4 = transport(ip, pseudo);
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&src);
            h[24..40].copy_from_slice(&dst);
            h.extend_from_slice(&l4);
            h
        }
    }
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// The transport header, checksummed with the pseudo-header `pseudo(len)` gives (ICMPv4 has
/// none); empty when the kernel side read none.
fn transport(ip: &IpHeader, pseudo: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let (mut h, sum_at, with_pseudo) = match (&ip.l4, ip.proto) {
        (
            Some(L4Header::Tcp {
                sport,
                dport,
                seq,
                tcp_flags,
            }),
            _,
        ) => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..8].copy_from_slice(&seq.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = tcp_flags.0;
            h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
            (h, 16, true)
        }
        (Some(L4Header::Udp { sport, dport }), _) => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            (h, 6, true)
        }
        (
            Some(L4Header::Icmp {
                icmp_type,
                icmp_code,
                icmp_id,
                icmp_seq,
            }),
            proto,
        ) => {
            let mut h = vec![*icmp_type, *icmp_code, 0, 0];
            h.extend_from_slice(&icmp_id.to_be_bytes());
            h.extend_from_slice(&icmp_seq.to_be_bytes());
            (h, 2, proto == Transport::Icmpv6)
        }
        (None, _) => return Vec::new(),
    };
    let pseudo = if with_pseudo {
        pseudo(h.len())
    } else {
        Vec::new()
    };
    let mut sum = checksum(&[&pseudo, &h]);
    // UDP sends a computed 0 as all ones (0 means "no checksum").
    if sum == 0 && ip.proto == Transport::Udp {
        sum = 0xFFFF;
    }
    h[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The Internet checksum (RFC 1071) over the parts, as one byte string.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for byte in parts.iter().flat_map(|p| p.iter().copied()) {
        match odd.take() {
            Some(hi) => sum += u32::from(u16::from_be_bytes([hi, byte])),
            None => odd = Some(byte),
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(hi) << 8;
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::TcpFlags, packet::from_network_header};

    fn ip(src: &str, dst: &str, proto: Transport, l4: Option<L4Header>) -> Packet {
        Packet {
            ethertype: if src.contains(':') { 0x86DD } else { 0x0800 },
            len: 100,
            ip: Some(IpHeader {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                proto,
                ip_id: if src.contains(':') { 0 } else { 0x1234 },
                fragment: false,
                l4,
            }),
            truncated: false,
        }
    }

    /// The rebuilt bytes decode to the same fields, and every checksum verifies.
    fn round_trip(p: &Packet) {
        let frame = rebuild(p);
        assert_eq!(frame[..12], [0; 12]);
        let v4 = frame[14] >> 4 == 4;
        let ethertype: [u8; 2] = if v4 { [0x08, 0x00] } else { [0x86, 0xDD] };
        assert_eq!(frame[12..14], ethertype);
        let (net, l4) = frame[14..].split_at(if v4 { 20 } else { 40 });
        let back = from_network_header(net, (!l4.is_empty()).then_some(l4));
        assert_eq!(back.ip, p.ip, "{frame:02x?}");
        if v4 {
            assert_eq!(checksum(&[net]), 0, "IPv4 header checksum");
        }
        let proto = p.ip.as_ref().unwrap().proto;
        if !l4.is_empty() && (proto != Transport::Icmp) {
            let pseudo = if v4 {
                [
                    &net[12..20],
                    &[0, proto.number()],
                    &(l4.len() as u16).to_be_bytes(),
                ]
                .concat()
            } else {
                [
                    &net[8..40],
                    &(l4.len() as u32).to_be_bytes()[..],
                    &[0, 0, 0, proto.number()],
                ]
                .concat()
            };
            assert_eq!(checksum(&[&pseudo, l4]), 0, "{proto} checksum");
        } else if !l4.is_empty() {
            assert_eq!(checksum(&[l4]), 0, "ICMP checksum");
        }
    }

    #[test]
    fn rebuilt_headers_decode_back_with_valid_checksums() {
        let tcp = Some(L4Header::Tcp {
            sport: 40000,
            dport: 80,
            seq: 0xDEAD_BEEF,
            tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK),
        });
        round_trip(&ip("10.0.0.1", "172.17.0.2", Transport::Tcp, tcp.clone()));
        round_trip(&ip("fd00::1", "fd00::2", Transport::Tcp, tcp));
        let udp = Some(L4Header::Udp {
            sport: 5353,
            dport: 53,
        });
        round_trip(&ip("10.0.0.1", "10.0.0.2", Transport::Udp, udp.clone()));
        round_trip(&ip("fd00::1", "fd00::2", Transport::Udp, udp));
        let echo = |t| {
            Some(L4Header::Icmp {
                icmp_type: t,
                icmp_code: 0,
                icmp_id: 7,
                icmp_seq: 3,
            })
        };
        round_trip(&ip("10.0.0.1", "10.0.0.2", Transport::Icmp, echo(8)));
        round_trip(&ip("fd00::1", "fd00::2", Transport::Icmpv6, echo(128)));
        // Nothing read past the network header: the IP header alone.
        round_trip(&ip("10.0.0.1", "10.0.0.2", Transport::Other(47), None));
        round_trip(&ip("fd00::1", "fd00::2", Transport::Tcp, None));
    }

    #[test]
    fn a_fragment_has_an_offset_and_no_transport_header() {
        let mut p = ip("10.0.0.1", "10.0.0.2", Transport::Udp, None);
        if let Some(h) = p.ip.as_mut() {
            h.fragment = true;
        }
        let frame = rebuild(&p);
        let ip = &frame[14..];
        assert_eq!(ip.len(), 20);
        assert_ne!(u16::from_be_bytes([ip[6], ip[7]]) & 0x1FFF, 0);
        assert_eq!(from_network_header(ip, None).ip, p.ip);
    }

    #[test]
    fn a_packet_that_is_not_ip_keeps_its_ethertype() {
        let p = Packet {
            ethertype: 0x0806,
            len: 42,
            ip: None,
            truncated: false,
        };
        let frame = rebuild(&p);
        assert_eq!(frame.len(), 14);
        assert_eq!(&frame[12..], &[0x08, 0x06]);
    }

    #[test]
    fn a_packet_copied_from_its_network_header_gets_its_ethertype_from_the_version() {
        assert_eq!(ethernet(&[0x45, 0], 0)[12..14], [0x08, 0x00]);
        assert_eq!(ethernet(&[0x60, 0], 0x0800)[12..14], [0x86, 0xDD]);
        // Neither: the EtherType the packet had.
        assert_eq!(ethernet(&[0x12], 0x88CC)[12..14], [0x88, 0xCC]);
        assert_eq!(ethernet(&[], 0x0806).len(), 14);
    }

    #[test]
    fn checksum_of_odd_lengths() {
        // RFC 1071's example: 0x0001 f203 f4f5 f6f7 sums to 0xddf2.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03], &[0xf4, 0xf5, 0xf6, 0xf7]]),
            !0xddf2
        );
        assert_eq!(checksum(&[&[0xff]]), !0xff00);
        assert_eq!(checksum(&[]), 0xFFFF);
    }
}
