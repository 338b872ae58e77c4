//! ICMP errors joined to the packet they answer. An error (destination unreachable, time
//! exceeded, parameter problem, ICMPv6 packet too big) quotes the headers of the packet that
//! caused it; the tc programs read that quote, and the correlator links the two journeys: the
//! packet's timeline shows the error as a row and names it in its outcome, the error's
//! timeline says which packet it answers.

use std::net::IpAddr;

use crate::event::{Event, EventBody, L4Header, Packet, TcSighting, Transport};

/// An ICMP error the host sent about a journey's packet.
#[derive(Clone, Debug)]
pub struct IcmpError {
    /// The error's own journey.
    pub journey: u64,
    /// Its first sighting (where and when it was first seen).
    pub sighting: Event,
}

impl IcmpError {
    fn tc(&self) -> Option<&TcSighting> {
        match &self.sighting.body {
            EventBody::Tc(t) => Some(t),
            _ => None,
        }
    }

    /// `port unreachable`, `fragmentation needed (mtu 1280)`, ...
    pub fn describe(&self) -> String {
        self.tc()
            .map_or_else(|| "error".to_owned(), |t| describe(&t.packet))
    }

    /// Where the error was sent.
    pub fn to(&self) -> Option<IpAddr> {
        self.tc()?.packet.ip.as_ref().map(|ip| ip.dst)
    }

    /// The ICMP type and code.
    pub fn type_code(&self) -> Option<(u8, u8)> {
        icmp_header(&self.tc()?.packet).map(|(_, t, code, _, _)| (t, code))
    }

    /// The next-hop MTU a "fragmentation needed" or "packet too big" error reports.
    pub fn mtu(&self) -> Option<u32> {
        mtu(&self.tc()?.packet)
    }

    /// `ICMP port unreachable to 10.0.0.1 (packet 7)`: the error in a sentence.
    pub fn sentence(&self) -> String {
        let family = match self
            .tc()
            .and_then(|t| t.packet.ip.as_ref())
            .map(|ip| ip.proto)
        {
            Some(Transport::Icmpv6) => "ICMPv6",
            _ => "ICMP",
        };
        let to = self.to().map(|a| format!(" to {a}")).unwrap_or_default();
        format!("{family} {}{to} (packet {})", self.describe(), self.journey)
    }
}

/// The MTU field of a "fragmentation needed" (ICMP 3/4: bytes 6-7 of the header) or "packet
/// too big" (ICMPv6 2: bytes 4-7) error. The decoder keeps those bytes as the echo fields.
fn mtu(p: &Packet) -> Option<u32> {
    let (proto, icmp_type, icmp_code, id, seq) = icmp_header(p)?;
    mtu_of(proto, icmp_type, icmp_code, id, seq)
}

/// The ICMP header's fields: protocol, type, code, and bytes 4-7 (as the echo fields).
fn icmp_header(p: &Packet) -> Option<(Transport, u8, u8, u16, u16)> {
    let ip = p.ip.as_ref()?;
    match ip.l4 {
        Some(L4Header::Icmp {
            icmp_type,
            icmp_code,
            icmp_id,
            icmp_seq,
        }) => Some((ip.proto, icmp_type, icmp_code, icmp_id, icmp_seq)),
        _ => None,
    }
}

fn mtu_of(proto: Transport, icmp_type: u8, icmp_code: u8, id: u16, seq: u16) -> Option<u32> {
    match (proto, icmp_type, icmp_code) {
        (Transport::Icmp, 3, 4) => Some(u32::from(seq)),
        (Transport::Icmpv6, 2, _) => Some(u32::from(id) << 16 | u32::from(seq)),
        _ => None,
    }
    .filter(|&m| m != 0)
}

/// An ICMP error in words.
fn describe(p: &Packet) -> String {
    match icmp_header(p) {
        Some((proto, t, code, id, seq)) => {
            error_name(proto, t, code, id, seq).unwrap_or_else(|| format!("type {t} code {code}"))
        }
        None => "error".to_owned(),
    }
}

/// The name of an ICMP or ICMPv6 error (`port unreachable`, `fragmentation needed (mtu
/// 1280)`); None for a message that is no error. `id` and `seq` are the header's bytes 4-7.
pub(crate) fn error_name(
    proto: Transport,
    icmp_type: u8,
    icmp_code: u8,
    id: u16,
    seq: u16,
) -> Option<String> {
    let name = match (proto, icmp_type, icmp_code) {
        (Transport::Icmp, 3, 0) => "network unreachable",
        (Transport::Icmp, 3, 1) => "host unreachable",
        (Transport::Icmp, 3, 2) => "protocol unreachable",
        (Transport::Icmp, 3, 3) => "port unreachable",
        (Transport::Icmp, 3, 4) => "fragmentation needed",
        (Transport::Icmp, 3, 9 | 10 | 13) => "administratively prohibited",
        (Transport::Icmp, 11, 0) => "time exceeded (TTL)",
        (Transport::Icmp, 11, 1) => "time exceeded (reassembly)",
        (Transport::Icmp, 12, _) => "parameter problem",
        (Transport::Icmpv6, 1, 0) => "no route",
        (Transport::Icmpv6, 1, 1) => "administratively prohibited",
        (Transport::Icmpv6, 1, 3) => "address unreachable",
        (Transport::Icmpv6, 1, 4) => "port unreachable",
        (Transport::Icmpv6, 1, 5 | 6) => "rejected by policy",
        (Transport::Icmpv6, 2, _) => "packet too big",
        (Transport::Icmpv6, 3, 0) => "time exceeded (hop limit)",
        (Transport::Icmpv6, 3, 1) => "time exceeded (reassembly)",
        (Transport::Icmpv6, 4, _) => "parameter problem",
        (Transport::Icmp, 3, _) | (Transport::Icmpv6, 1, _) => {
            return Some(format!("unreachable (code {icmp_code})"));
        }
        _ => return None,
    };
    Some(match mtu_of(proto, icmp_type, icmp_code, id, seq) {
        Some(m) => format!("{name} (mtu {m})"),
        None => name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::IpHeader;

    fn error(proto: Transport, icmp_type: u8, icmp_code: u8, id: u16, seq: u16) -> Packet {
        let (src, dst) = match proto {
            Transport::Icmpv6 => ("fd00::1", "fd00::2"),
            _ => ("10.0.0.1", "10.0.0.2"),
        };
        Packet {
            ethertype: 0,
            len: 0,
            ip: Some(IpHeader {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                proto,
                ip_id: 0,
                fragment: false,
                l4: Some(L4Header::Icmp {
                    icmp_type,
                    icmp_code,
                    icmp_id: id,
                    icmp_seq: seq,
                }),
            }),
            truncated: false,
        }
    }

    #[test]
    fn names_the_errors_and_their_mtu() {
        for (proto, t, code, id, seq, name) in [
            (Transport::Icmp, 3, 3, 0, 0, "port unreachable"),
            (
                Transport::Icmp,
                3,
                4,
                0,
                1280,
                "fragmentation needed (mtu 1280)",
            ),
            (
                Transport::Icmpv6,
                2,
                0,
                0,
                1280,
                "packet too big (mtu 1280)",
            ),
            (Transport::Icmpv6, 1, 4, 0, 0, "port unreachable"),
            (Transport::Icmp, 11, 0, 0, 0, "time exceeded (TTL)"),
            (Transport::Icmp, 3, 15, 0, 0, "unreachable (code 15)"),
        ] {
            assert_eq!(describe(&error(proto, t, code, id, seq)), name);
        }
        // A 32-bit MTU: the high half is in the first field.
        assert_eq!(mtu(&error(Transport::Icmpv6, 2, 0, 1, 0)), Some(65536));
        // A port unreachable's MTU bytes are unused: no MTU is claimed.
        assert_eq!(mtu(&error(Transport::Icmp, 3, 3, 0, 1280)), None);
    }
}
