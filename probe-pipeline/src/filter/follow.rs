//! Following what a filter admitted through NAT, the way the kernel programs do.

use probe_common::PacketKey;

use super::Filter;
use crate::{
    bounded::BoundedMap,
    event::{Event, EventBody, Packet},
    identity,
    tuple::Tuple,
};

/// A filter applied to a stream of events the way the kernel programs apply it: a packet
/// admitted once is followed through NAT (by what NAT leaves alone: protocol, IPv4 id, TCP
/// sequence), and its connection comes along in both directions, under every tuple it was seen
/// with.
pub struct Follower {
    filter: Filter,
    packets: BoundedMap<PacketKey, ()>,
    /// Both directions of every tuple an admitted packet was seen with.
    flows: BoundedMap<Tuple, ()>,
}

/// Bound on what a follower remembers; past it, the oldest is forgotten first.
const FOLLOW_MAX: usize = 65536;

impl Follower {
    pub fn new(filter: Filter) -> Self {
        Follower {
            filter,
            packets: BoundedMap::new(FOLLOW_MAX),
            flows: BoundedMap::new(FOLLOW_MAX),
        }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Whether `event` belongs to what the filter admits.
    pub fn admits(&mut self, event: &Event) -> bool {
        let packet = identity::packet_of(event);
        let key = packet.and_then(identity::key);
        let tuple = Tuple::of_event(event);
        let known = key.is_some_and(|k| self.packets.contains_key(&k))
            || tuple.is_some_and(|t| self.flows.contains_key(&t));
        if !known && !tuple.is_some_and(|t| self.filter.matches(&t)) {
            // An ICMP error about an admitted packet comes with it, as in the kernel (each of
            // its sightings carries the quote).
            return match &event.body {
                EventBody::Tc(t) => t.quoted.as_ref().is_some_and(|q| self.knows_or_matches(q)),
                _ => false,
            };
        }
        // Only sightings of a packet carry what it takes to follow it.
        if let Some(k) = key {
            self.packets.insert(k, ());
            if let Some(t) = tuple {
                self.flows.insert(t, ());
                self.flows.insert(t.reversed(), ());
            }
        }
        true
    }

    fn knows_or_matches(&self, p: &Packet) -> bool {
        identity::key(p).is_some_and(|k| self.packets.contains_key(&k))
            || Tuple::of(p).is_some_and(|t| self.flows.contains_key(&t) || self.filter.matches(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(src: &str, sport: u16, dst: &str, dport: u16, ip_id: u16) -> Event {
        use crate::event::*;
        Event {
            ts_ns: 0,
            cpu: 0,
            body: EventBody::Tc(TcSighting {
                ifindex: 2,
                direction: Direction::Ingress,
                netns_cookie: 0,
                mark: 0,
                packet: Packet {
                    ethertype: 0x0800,
                    len: 60,
                    ip: Some(IpHeader {
                        src: src.parse().unwrap(),
                        dst: dst.parse().unwrap(),
                        proto: Transport::Udp,
                        ip_id,
                        fragment: false,
                        l4: Some(L4Header::Udp { sport, dport }),
                    }),
                    truncated: false,
                },
                quoted: None,
                frame: None,
            }),
        }
    }

    #[test]
    fn follower_keeps_a_packet_through_nat_and_its_replies() {
        let mut f = Follower::new(Filter::parse("udp dst port 8053").unwrap());
        // The request, before and after DNAT; then the reply, before and after un-NAT.
        assert!(f.admits(&sighting("10.0.0.9", 4000, "10.0.0.1", 8053, 7)));
        assert!(f.admits(&sighting("10.0.0.9", 4000, "172.17.0.2", 53, 7)));
        assert!(f.admits(&sighting("172.17.0.2", 53, "10.0.0.9", 4000, 99)));
        assert!(f.admits(&sighting("10.0.0.1", 8053, "10.0.0.9", 4000, 99)));
        // Another conversation is not.
        assert!(!f.admits(&sighting("10.0.0.9", 4001, "172.17.0.2", 53, 8)));
    }
}
