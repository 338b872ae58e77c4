//! Ring-buffer bytes → [`Event`]. Two steps: check the length against the kind the header names,
//! then read each field at the offset probe-common's definition gives. Bytes are never cast to a
//! struct, so a short, long or foreign buffer is an error, never undefined behaviour or a panic.

use std::{
    mem::{offset_of, size_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use probe_common::{
    ChainEvent, DropEvent, EventHeader, FibEvent, FibRuleEvent, NfEvent, PacketInfo, TcEvent,
    chain_engine, direction, family, fib_source, kind, packet_flags, probe_source,
};
use thiserror::Error;

use crate::event::{
    ChainVerdict, Direction, DropSighting, Event, EventBody, FibLookup, FibRuleMatch, HookVerdict,
    IpHeader, L4Header, Packet, TcSighting, TcpFlags, Transport, fib_rule_action_name, hook_name,
    nf_verdict_name, nfproto_name,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {got} bytes is shorter than the {need}-byte header")]
    ShortHeader { need: usize, got: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
    #[error("event of kind {kind} has {got} bytes, expected {expected}")]
    WrongSize {
        kind: u16,
        expected: usize,
        got: usize,
    },
    #[error("unknown tc direction {0}")]
    BadDirection(u8),
    #[error("unknown address family {0}")]
    BadFamily(u8),
}

/// Decodes one event exactly as a kernel program wrote it.
#[inline]
pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    let header_len = size_of::<EventHeader>();
    if buf.len() < header_len {
        return Err(DecodeError::ShortHeader {
            need: header_len,
            got: buf.len(),
        });
    }
    let header = Fields::new(buf, 0);
    let event_kind = header.u16(offset_of!(EventHeader, kind));
    let ts_ns = header.u64(offset_of!(EventHeader, ts_ns));
    let cpu = header.u32(offset_of!(EventHeader, cpu));
    let body = match event_kind {
        kind::TC => EventBody::Tc(decode_tc(exact::<TcEvent>(buf, event_kind)?)?),
        kind::DROP => EventBody::Drop(decode_drop(exact::<DropEvent>(buf, event_kind)?)),
        kind::FIB => EventBody::Fib(decode_fib(exact::<FibEvent>(buf, event_kind)?)?),
        kind::NF => EventBody::Netfilter(decode_nf(exact::<NfEvent>(buf, event_kind)?)),
        kind::CHAIN => EventBody::Chain(decode_chain(exact::<ChainEvent>(buf, event_kind)?)),
        kind::FIB_RULE => {
            EventBody::FibRule(decode_fib_rule(exact::<FibRuleEvent>(buf, event_kind)?))
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event { ts_ns, cpu, body })
}

/// The buffer, if it has exactly the size of `T`.
fn exact<T>(buf: &[u8], event_kind: u16) -> Result<Fields<'_>, DecodeError> {
    if buf.len() != size_of::<T>() {
        return Err(DecodeError::WrongSize {
            kind: event_kind,
            expected: size_of::<T>(),
            got: buf.len(),
        });
    }
    Ok(Fields::new(buf, 0))
}

fn decode_tc(f: Fields<'_>) -> Result<TcSighting, DecodeError> {
    let dir = f.u8(offset_of!(TcEvent, direction));
    let direction = match dir {
        direction::INGRESS => Direction::Ingress,
        direction::EGRESS => Direction::Egress,
        other => return Err(DecodeError::BadDirection(other)),
    };
    Ok(TcSighting {
        ifindex: f.u32(offset_of!(TcEvent, ifindex)),
        direction,
        netns_cookie: f.u64(offset_of!(TcEvent, netns_cookie)),
        mark: f.u32(offset_of!(TcEvent, mark)),
        packet: decode_packet(f.at(offset_of!(TcEvent, packet))),
    })
}

fn decode_drop(f: Fields<'_>) -> DropSighting {
    DropSighting {
        skb: f.u64(offset_of!(DropEvent, skb_addr)),
        reason_code: f.u32(offset_of!(DropEvent, reason)),
        reason: None,
        location: f.u64(offset_of!(DropEvent, location)),
        location_sym: None,
        ifindex: f.u32(offset_of!(DropEvent, ifindex)),
        netns: f.u32(offset_of!(DropEvent, netns_inum)),
        packet: decode_packet(f.at(offset_of!(DropEvent, packet))),
    }
}

fn source_name(source: u8, function: &'static str) -> &'static str {
    match (source, function) {
        (probe_source::FEXIT, "nf_hook_slow") => "fexit:nf_hook_slow",
        (probe_source::KRETPROBE, "nf_hook_slow") => "kretprobe:nf_hook_slow",
        _ => "unknown",
    }
}

fn decode_nf(f: Fields<'_>) -> HookVerdict {
    let ret = f.i32(offset_of!(NfEvent, ret));
    let (verdict, errno) = match ret {
        1 => ("accept", None),
        0 => ("stolen", None),
        r if r < 0 => ("drop", Some(-r)),
        _ => ("unknown", None),
    };
    HookVerdict {
        hook: hook_name(f.u8(offset_of!(NfEvent, hook))),
        family: nfproto_name(f.u8(offset_of!(NfEvent, pf))),
        verdict,
        errno,
        in_ifindex: f.u32(offset_of!(NfEvent, in_ifindex)),
        out_ifindex: f.u32(offset_of!(NfEvent, out_ifindex)),
        netns: f.u32(offset_of!(NfEvent, netns_inum)),
        skb: f.u64(offset_of!(NfEvent, skb_addr)),
        duration_ns: f.u64(offset_of!(NfEvent, duration_ns)),
        packet: decode_packet(f.at(offset_of!(NfEvent, packet))),
        source: source_name(f.u8(offset_of!(NfEvent, source)), "nf_hook_slow"),
    }
}

fn c_str<const N: usize>(b: [u8; N]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(N);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn decode_chain(f: Fields<'_>) -> ChainVerdict {
    ChainVerdict {
        engine: match f.u8(offset_of!(ChainEvent, engine)) {
            chain_engine::NFTABLES => "nftables",
            chain_engine::IPTABLES => "iptables",
            _ => "unknown",
        },
        table: c_str(f.array::<32>(offset_of!(ChainEvent, table))),
        chain: c_str(f.array::<32>(offset_of!(ChainEvent, chain))),
        hook: hook_name(f.u8(offset_of!(ChainEvent, hook))),
        family: nfproto_name(f.u8(offset_of!(ChainEvent, pf))),
        verdict: nf_verdict_name(f.u32(offset_of!(ChainEvent, verdict))),
        skb: f.u64(offset_of!(ChainEvent, skb_addr)),
    }
}

fn decode_fib_rule(f: Fields<'_>) -> FibRuleMatch {
    let fam = match f.u8(offset_of!(FibRuleEvent, family)) {
        family::IPV6 => family::IPV6,
        _ => family::IPV4,
    };
    FibRuleMatch {
        src: ip_from(fam, f.array::<16>(offset_of!(FibRuleEvent, src))),
        dst: ip_from(fam, f.array::<16>(offset_of!(FibRuleEvent, dst))),
        pref: f.u32(offset_of!(FibRuleEvent, pref)),
        table: f.u32(offset_of!(FibRuleEvent, table)),
        table_name: None,
        action: fib_rule_action_name(f.u8(offset_of!(FibRuleEvent, action))),
        err: f.i32(offset_of!(FibRuleEvent, err)),
    }
}

fn ip_from(fam: u8, bytes: [u8; 16]) -> IpAddr {
    if fam == family::IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

fn decode_fib(f: Fields<'_>) -> Result<FibLookup, DecodeError> {
    let fam = f.u8(offset_of!(FibEvent, family));
    if fam != family::IPV4 && fam != family::IPV6 {
        return Err(DecodeError::BadFamily(fam));
    }
    let gw_family = f.u8(offset_of!(FibEvent, gw_family));
    let gateway = match gw_family {
        family::IPV4 | family::IPV6 => {
            Some(ip_from(gw_family, f.array::<16>(offset_of!(FibEvent, gw))))
        }
        _ => None,
    };
    let name = f.array::<16>(offset_of!(FibEvent, dev_name));
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let dev = String::from_utf8_lossy(&name[..name_len]).into_owned();
    let err = f.i32(offset_of!(FibEvent, err));
    Ok(FibLookup {
        table: f.u32(offset_of!(FibEvent, table)),
        table_name: None,
        err,
        error: FibLookup::error_name(err).map(str::to_owned),
        src: ip_from(fam, f.array::<16>(offset_of!(FibEvent, src))),
        dst: ip_from(fam, f.array::<16>(offset_of!(FibEvent, dst))),
        gateway,
        // The tracepoints print "-" when no device was chosen.
        dev: (!dev.is_empty() && dev != "-").then_some(dev),
        oif: f.i32(offset_of!(FibEvent, oif)),
        iif: f.i32(offset_of!(FibEvent, iif)),
        proto: Transport::from_number(f.u8(offset_of!(FibEvent, proto))),
        sport: f.u16(offset_of!(FibEvent, sport)),
        dport: f.u16(offset_of!(FibEvent, dport)),
        tos: f.u8(offset_of!(FibEvent, tos)),
        scope: f.u8(offset_of!(FibEvent, scope)),
        flags: f.u8(offset_of!(FibEvent, flags)),
        source: match f.u8(offset_of!(FibEvent, source)) {
            fib_source::TP_FIB4 => "tracepoint:fib:fib_table_lookup",
            fib_source::TP_FIB6 => "tracepoint:fib6:fib6_table_lookup",
            _ => "unknown",
        },
    })
}

fn decode_packet(p: Fields<'_>) -> Packet {
    let flags = p.u8(offset_of!(PacketInfo, flags));
    let fam = p.u8(offset_of!(PacketInfo, family));
    let saddr = p.array::<16>(offset_of!(PacketInfo, saddr));
    let daddr = p.array::<16>(offset_of!(PacketInfo, daddr));
    let (src, dst) = match fam {
        family::IPV4 => (
            IpAddr::V4(Ipv4Addr::new(saddr[0], saddr[1], saddr[2], saddr[3])),
            IpAddr::V4(Ipv4Addr::new(daddr[0], daddr[1], daddr[2], daddr[3])),
        ),
        family::IPV6 => (
            IpAddr::V6(Ipv6Addr::from(saddr)),
            IpAddr::V6(Ipv6Addr::from(daddr)),
        ),
        _ => (
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ),
    };
    let truncated = flags & packet_flags::TRUNCATED != 0;
    let fragment = flags & packet_flags::FRAGMENT != 0;
    let ip = (fam == family::IPV4 || fam == family::IPV6).then(|| {
        let proto = Transport::from_number(p.u8(offset_of!(PacketInfo, l4_proto)));
        let sport = p.u16(offset_of!(PacketInfo, sport));
        let dport = p.u16(offset_of!(PacketInfo, dport));
        // The kernel side leaves transport fields zero when it could not read them.
        let l4 = if truncated || fragment {
            None
        } else {
            match proto {
                Transport::Tcp => Some(L4Header::Tcp {
                    sport,
                    dport,
                    seq: p.u32(offset_of!(PacketInfo, tcp_seq)),
                    tcp_flags: TcpFlags(p.u8(offset_of!(PacketInfo, tcp_flags))),
                }),
                Transport::Udp => Some(L4Header::Udp { sport, dport }),
                Transport::Icmp | Transport::Icmpv6 => Some(L4Header::Icmp {
                    icmp_type: p.u8(offset_of!(PacketInfo, icmp_type)),
                    icmp_code: p.u8(offset_of!(PacketInfo, icmp_code)),
                    icmp_id: sport,
                    icmp_seq: dport,
                }),
                Transport::Other(_) => None,
            }
        };
        IpHeader {
            src,
            dst,
            proto,
            ip_id: p.u16(offset_of!(PacketInfo, ip_id)),
            fragment,
            l4,
        }
    });
    Packet {
        ethertype: p.u16(offset_of!(PacketInfo, l3_proto)),
        len: p.u32(offset_of!(PacketInfo, len)),
        ip,
        truncated,
    }
}

/// Reads native-endian fields out of a buffer whose length has already been checked against the
/// struct being read. Offsets come from `offset_of!` on that struct, so they are in bounds.
#[derive(Clone, Copy)]
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf: &buf[base..] }
    }

    fn at(self, base: usize) -> Self {
        Self::new(self.buf, base)
    }

    fn array<const N: usize>(self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[off..off + N]);
        out
    }

    fn u8(self, off: usize) -> u8 {
        self.buf[off]
    }

    fn u16(self, off: usize) -> u16 {
        u16::from_ne_bytes(self.array(off))
    }

    fn u32(self, off: usize) -> u32 {
        u32::from_ne_bytes(self.array(off))
    }

    fn u64(self, off: usize) -> u64 {
        u64::from_ne_bytes(self.array(off))
    }

    fn i32(self, off: usize) -> i32 {
        i32::from_ne_bytes(self.array(off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes a probe-common struct into bytes the way the kernel writes it.
    fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
        // SAFETY: T is Pod: plain integers and arrays with explicit padding.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn udp_event() -> TcEvent {
        let mut packet = PacketInfo {
            sport: 40000,
            dport: 9000,
            l3_proto: 0x0800,
            l4_proto: 17,
            family: family::IPV4,
            ip_id: 0x1234,
            len: 60,
            ..Default::default()
        };
        packet.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        packet.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        TcEvent {
            header: EventHeader {
                ts_ns: 123_456_789,
                kind: kind::TC,
                flags: 0,
                cpu: 1,
            },
            packet,
            netns_cookie: 4096,
            ifindex: 7,
            mark: 0,
            direction: direction::EGRESS,
            _pad: [0; 7],
        }
    }

    #[test]
    fn decodes_a_udp_sighting() {
        let event = decode(&bytes_of(&udp_event())).unwrap();
        assert_eq!(event.ts_ns, 123_456_789);
        assert_eq!(event.cpu, 1);
        let EventBody::Tc(tc) = event.body else {
            panic!("not tc")
        };
        assert_eq!(tc.ifindex, 7);
        assert_eq!(tc.direction, Direction::Egress);
        assert_eq!(tc.netns_cookie, 4096);
        let ip = tc.packet.ip.unwrap();
        assert_eq!(ip.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ip.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(ip.proto, Transport::Udp);
        assert_eq!(ip.ip_id, 0x1234);
        assert_eq!(
            ip.l4,
            Some(L4Header::Udp {
                sport: 40000,
                dport: 9000
            })
        );
        assert_eq!(tc.packet.len, 60);
    }

    #[test]
    fn decodes_tcp_ipv6_with_flags() {
        let mut ev = udp_event();
        ev.direction = direction::INGRESS;
        ev.packet.family = family::IPV6;
        ev.packet.l3_proto = 0x86DD;
        ev.packet.l4_proto = 6;
        ev.packet.saddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        ev.packet.daddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        ev.packet.tcp_flags = TcpFlags::SYN | TcpFlags::ACK;
        ev.packet.tcp_seq = 77;
        let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
            panic!("not tc")
        };
        assert_eq!(tc.direction, Direction::Ingress);
        let ip = tc.packet.ip.unwrap();
        assert_eq!(ip.dst, "fd00::2".parse::<IpAddr>().unwrap());
        match ip.l4 {
            Some(L4Header::Tcp { seq, tcp_flags, .. }) => {
                assert_eq!(seq, 77);
                assert_eq!(tcp_flags.to_string(), "S.");
            }
            other => panic!("expected TCP, got {other:?}"),
        }
    }

    #[test]
    fn decodes_icmp_echo_and_non_ip() {
        let mut ev = udp_event();
        ev.packet.l4_proto = 1;
        ev.packet.icmp_type = 8;
        ev.packet.sport = 5;
        ev.packet.dport = 9;
        let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
            panic!("not tc")
        };
        assert_eq!(
            tc.packet.ip.unwrap().l4,
            Some(L4Header::Icmp {
                icmp_type: 8,
                icmp_code: 0,
                icmp_id: 5,
                icmp_seq: 9
            })
        );

        let mut arp = udp_event();
        arp.packet = PacketInfo {
            l3_proto: 0x0806,
            len: 42,
            ..Default::default()
        };
        let EventBody::Tc(tc) = decode(&bytes_of(&arp)).unwrap().body else {
            panic!("not tc")
        };
        assert_eq!(tc.packet.ip, None);
        assert_eq!(tc.packet.ethertype, 0x0806);
    }

    #[test]
    fn truncated_and_fragment_packets_have_no_transport_header() {
        let mut ev = udp_event();
        ev.packet.flags = packet_flags::TRUNCATED;
        let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
            panic!("not tc")
        };
        assert!(tc.packet.truncated);
        assert_eq!(tc.packet.ip.unwrap().l4, None);

        let mut ev = udp_event();
        ev.packet.flags = packet_flags::FRAGMENT;
        let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
            panic!("not tc")
        };
        let ip = tc.packet.ip.unwrap();
        assert!(ip.fragment);
        assert_eq!(ip.l4, None);
    }

    #[test]
    fn rejects_every_truncation_of_a_tc_event() {
        let full = bytes_of(&udp_event());
        for len in 0..full.len() {
            let err = decode(&full[..len]).unwrap_err();
            if len < size_of::<EventHeader>() {
                assert_eq!(err, DecodeError::ShortHeader { need: 16, got: len });
            } else {
                assert_eq!(
                    err,
                    DecodeError::WrongSize {
                        kind: kind::TC,
                        expected: size_of::<TcEvent>(),
                        got: len
                    }
                );
            }
        }
    }

    #[test]
    fn rejects_oversized_and_unknown_events() {
        let mut long = bytes_of(&udp_event());
        long.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode(&long),
            Err(DecodeError::WrongSize { got: 104, .. })
        ));

        let mut unknown = udp_event();
        unknown.header.kind = 999;
        assert_eq!(
            decode(&bytes_of(&unknown)),
            Err(DecodeError::UnknownKind(999))
        );

        let mut bad_dir = udp_event();
        bad_dir.direction = 9;
        assert_eq!(
            decode(&bytes_of(&bad_dir)),
            Err(DecodeError::BadDirection(9))
        );
    }

    #[test]
    fn decodes_a_drop() {
        let tc = udp_event();
        let ev = DropEvent {
            header: EventHeader {
                kind: kind::DROP,
                ..tc.header
            },
            packet: tc.packet,
            skb_addr: 0xffff_8880_0000_1000,
            location: 0xffff_ffff_8120_0123,
            netns_inum: 4026531840,
            ifindex: 3,
            reason: 12,
            protocol: 0x0800,
            _pad: 0,
        };
        let EventBody::Drop(d) = decode(&bytes_of(&ev)).unwrap().body else {
            panic!("not a drop")
        };
        assert_eq!(d.reason_code, 12);
        assert_eq!(d.skb, 0xffff_8880_0000_1000);
        assert_eq!(d.netns, 4026531840);
        assert_eq!(
            d.packet.ip.unwrap().dst,
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        let full = bytes_of(&ev);
        assert!(decode(&full[..full.len() - 1]).is_err());
    }

    #[test]
    fn decodes_a_fib_lookup() {
        let mut ev = FibEvent {
            header: EventHeader {
                kind: kind::FIB,
                ..Default::default()
            },
            table: 254,
            err: -libc::ENETUNREACH,
            family: family::IPV4,
            proto: 17,
            source: fib_source::TP_FIB4,
            dport: 53,
            ..Default::default()
        };
        ev.dst[..4].copy_from_slice(&[10, 9, 9, 9]);
        ev.dev_name[..1].copy_from_slice(b"-");
        let EventBody::Fib(f) = decode(&bytes_of(&ev)).unwrap().body else {
            panic!("not a fib lookup")
        };
        assert_eq!(f.table, 254);
        assert_eq!(f.error.as_deref(), Some("ENETUNREACH"));
        assert_eq!(f.dst, "10.9.9.9".parse::<IpAddr>().unwrap());
        assert_eq!(f.dev, None);
        assert_eq!(f.gateway, None);
        assert_eq!(f.source, "tracepoint:fib:fib_table_lookup");

        ev.family = 9;
        assert_eq!(decode(&bytes_of(&ev)), Err(DecodeError::BadFamily(9)));
    }

    #[test]
    fn decodes_hook_chain_and_rule_verdicts() {
        let tc = udp_event();
        let nf = NfEvent {
            header: EventHeader {
                kind: kind::NF,
                ..tc.header
            },
            packet: tc.packet,
            skb_addr: 1,
            duration_ns: 1500,
            netns_inum: 7,
            in_ifindex: 3,
            out_ifindex: 4,
            ret: -libc::EPERM,
            hook: 2,
            pf: 2,
            source: probe_source::FEXIT,
            _pad: [0; 5],
        };
        let EventBody::Netfilter(v) = decode(&bytes_of(&nf)).unwrap().body else {
            panic!("not a hook verdict")
        };
        assert_eq!((v.hook, v.family, v.verdict), ("FORWARD", "ipv4", "drop"));
        assert_eq!(v.errno, Some(libc::EPERM));
        assert_eq!(v.source, "fexit:nf_hook_slow");

        let mut chain = ChainEvent {
            header: EventHeader {
                kind: kind::CHAIN,
                ..tc.header
            },
            verdict: 0,
            hook: 2,
            pf: 2,
            engine: chain_engine::NFTABLES,
            source: probe_source::KRETPROBE,
            ..Default::default()
        };
        chain.table[..6].copy_from_slice(b"filter");
        chain.chain[..7].copy_from_slice(b"FORWARD");
        let EventBody::Chain(c) = decode(&bytes_of(&chain)).unwrap().body else {
            panic!("not a chain verdict")
        };
        assert_eq!((c.table.as_str(), c.chain.as_str()), ("filter", "FORWARD"));
        assert_eq!(c.verdict, "drop");

        let mut rule = FibRuleEvent {
            header: EventHeader {
                kind: kind::FIB_RULE,
                ..tc.header
            },
            pref: 5209,
            table: 51820,
            action: 1,
            family: family::IPV4,
            ..Default::default()
        };
        rule.dst[..4].copy_from_slice(&[172, 18, 0, 2]);
        let EventBody::FibRule(r) = decode(&bytes_of(&rule)).unwrap().body else {
            panic!("not a rule match")
        };
        assert_eq!((r.pref, r.table, r.action), (5209, 51820, "to-table"));
        assert_eq!(r.dst, "172.18.0.2".parse::<IpAddr>().unwrap());
    }

    /// `len` bytes from a xorshift generator: deterministic, varied.
    fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every length up to two events, with varied contents.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..2 * size_of::<TcEvent>() {
            for _ in 0..64 {
                let buf = random_bytes(&mut seed, len);
                let _ = decode(&buf);
            }
        }
    }

    #[test]
    fn any_field_values_under_a_valid_header_never_panic() {
        // Past the kind check: every event type with arbitrary contents (families, protocols,
        // names without a NUL, reasons and hooks out of range), at its own size and longer.
        use probe_common::{ChainEvent, DropEvent, FibEvent, FibRuleEvent, NfEvent, TcEvent, kind};
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let kinds = [
            (kind::TC, size_of::<TcEvent>()),
            (kind::DROP, size_of::<DropEvent>()),
            (kind::FIB, size_of::<FibEvent>()),
            (kind::NF, size_of::<NfEvent>()),
            (kind::CHAIN, size_of::<ChainEvent>()),
            (kind::FIB_RULE, size_of::<FibRuleEvent>()),
        ];
        for (k, size) in kinds {
            for extra in [0, 8] {
                for _ in 0..2000 {
                    let mut buf = random_bytes(&mut seed, size + extra);
                    buf[8..10].copy_from_slice(&k.to_ne_bytes());
                    let _ = decode(&buf);
                }
            }
        }
    }
}
