//! Which sightings are the same packet. tc programs see bytes but no kernel pointer, so a
//! packet is recognised by what NAT leaves alone: probe-common's [`PacketKey`], the same key
//! the kernel programs use to follow a filtered packet and to time its hops. This module only
//! reads that key off a decoded packet.

use probe_common::PacketKey;

use crate::event::{Event, EventBody, L4Header, Packet};

/// The identity of a decoded packet.
pub fn key(p: &Packet) -> Option<PacketKey> {
    let ip = p.ip.as_ref()?;
    let proto = ip.proto.number();
    let sequence = match ip.l4 {
        Some(L4Header::Tcp { seq, .. }) => PacketKey::sequence(proto, seq, 0, 0),
        Some(L4Header::Icmp {
            icmp_id, icmp_seq, ..
        }) => PacketKey::sequence(proto, 0, icmp_id, icmp_seq),
        _ => 0,
    };
    Some(PacketKey::new(proto, ip.ip_id, sequence))
}

/// The packet an event saw, for the events that carry one.
pub fn packet_of(e: &Event) -> Option<&Packet> {
    match &e.body {
        EventBody::Tc(t) => Some(&t.packet),
        EventBody::Drop(d) => Some(&d.packet),
        EventBody::Netfilter(n) => Some(&n.packet),
        EventBody::Rule(r) => r.packet.as_ref(),
        EventBody::Fib(_) | EventBody::FibRule(_) | EventBody::Chain(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{IpHeader, TcpFlags, Transport};

    fn packet(proto: Transport, ip_id: u16, l4: Option<L4Header>) -> Packet {
        Packet {
            ethertype: 0x0800,
            len: 60,
            ip: Some(IpHeader {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                proto,
                ip_id,
                fragment: false,
                l4,
            }),
            truncated: false,
        }
    }

    /// The decoded packet gives the key the kernel computes from the raw fields.
    #[test]
    fn same_key_as_the_kernel() {
        let tcp = packet(
            Transport::Tcp,
            7,
            Some(L4Header::Tcp {
                sport: 1,
                dport: 2,
                seq: 99,
                tcp_flags: TcpFlags(TcpFlags::SYN),
            }),
        );
        let info = probe_common::PacketInfo {
            l4_proto: 6,
            ip_id: 7,
            tcp_seq: 99,
            sport: 1,
            dport: 2,
            ..Default::default()
        };
        assert_eq!(key(&tcp), Some(PacketKey::of(&info)));
        let echo = packet(
            Transport::Icmp,
            0,
            Some(L4Header::Icmp {
                icmp_type: 8,
                icmp_code: 0,
                icmp_id: 5,
                icmp_seq: 3,
            }),
        );
        let info = probe_common::PacketInfo {
            l4_proto: 1,
            sport: 5,
            dport: 3,
            ..Default::default()
        };
        assert_eq!(key(&echo), Some(PacketKey::of(&info)));
        assert!(key(&echo).unwrap().is_distinct());
        let udp = packet(
            Transport::Udp,
            0,
            Some(L4Header::Udp { sport: 1, dport: 2 }),
        );
        assert!(!key(&udp).unwrap().is_distinct());
    }
}
