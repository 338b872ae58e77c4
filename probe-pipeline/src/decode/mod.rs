//! Ring-buffer bytes → [`Event`]. Two steps: check the length against the kind the header names,
//! then read each field at the offset probe-common's definition gives. Bytes are never cast to a
//! struct, so a short, long or foreign buffer is an error, never undefined behaviour or a panic.

use std::{
    mem::{offset_of, size_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use probe_common::{
    ChainEvent, DropEvent, EventHeader, FibEvent, FibRuleEvent, MAX_SNAPLEN, NfEvent, PacketInfo,
    TcEvent, TcQuoteEvent, TcSnapEvent, chain_engine, direction, family, fib_source, kind,
    packet_flags, probe_source,
};
use thiserror::Error;

use crate::event::{
    ChainVerdict, Direction, DropSighting, Engine, Event, EventBody, Family, FibLookup,
    FibRuleMatch, Frame, Hook, HookVerdict, IpHeader, L4Header, LinkLayer, Mechanism, Packet,
    RuleAction, TcSighting, TcpFlags, Transport, Verdict,
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
    #[error("captured length {0} is over the {MAX_SNAPLEN}-byte maximum")]
    BadCaptureLength(u16),
    #[error("captured frame starts at link-layer offset {0}, expected 0 or 14")]
    BadLinkLayer(u8),
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
        kind::TC_SNAP => EventBody::Tc(decode_tc_snap(exact::<TcSnapEvent>(buf, event_kind)?)?),
        kind::TC_QUOTE => EventBody::Tc(decode_tc_quote(exact::<TcQuoteEvent>(buf, event_kind)?)?),
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
        quoted: None,
        frame: None,
    })
}

/// An ICMP error with the packet it quotes.
fn decode_tc_quote(f: Fields<'_>) -> Result<TcSighting, DecodeError> {
    let mut tc = decode_tc(f.at(offset_of!(TcQuoteEvent, tc)))?;
    tc.quoted = Some(decode_packet(f.at(offset_of!(TcQuoteEvent, quoted))));
    Ok(tc)
}

/// A tc sighting with the packet's first bytes; the copied length is checked, never trusted.
fn decode_tc_snap(f: Fields<'_>) -> Result<TcSighting, DecodeError> {
    let mut tc = decode_tc(f.at(offset_of!(TcSnapEvent, tc)))?;
    let cap_len = f.u16(offset_of!(TcSnapEvent, cap_len));
    if usize::from(cap_len) > MAX_SNAPLEN {
        return Err(DecodeError::BadCaptureLength(cap_len));
    }
    let link = match f.u8(offset_of!(TcSnapEvent, l2_len)) {
        0 => LinkLayer::Ip,
        14 => LinkLayer::Ethernet,
        other => return Err(DecodeError::BadLinkLayer(other)),
    };
    let data = f.array::<MAX_SNAPLEN>(offset_of!(TcSnapEvent, data));
    let bytes = &data[..usize::from(cap_len)];
    // An ICMP error's quote is in the copied bytes, when enough were copied.
    if crate::packet::is_icmp_error(&tc.packet) {
        let l3 = match link {
            LinkLayer::Ethernet => bytes.get(14..),
            LinkLayer::Ip => Some(bytes),
        };
        tc.quoted = l3.and_then(crate::packet::quoted_by_error);
    }
    tc.frame = Some(Frame {
        link,
        bytes: bytes.to_vec(),
    });
    Ok(tc)
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

/// The mechanism behind an nf_hook_slow verdict.
fn hook_source(source: u8) -> Mechanism {
    match source {
        probe_source::FEXIT => Mechanism::FexitNfHookSlow,
        probe_source::KRETPROBE => Mechanism::KretprobeNfHookSlow,
        _ => Mechanism::Unknown,
    }
}

fn decode_nf(f: Fields<'_>) -> HookVerdict {
    let ret = f.i32(offset_of!(NfEvent, ret));
    let (verdict, errno) = match ret {
        1 => (Verdict::Accept, None),
        0 => (Verdict::Stolen, None),
        r if r < 0 => (Verdict::Drop, Some(-r)),
        _ => (Verdict::Unknown, None),
    };
    HookVerdict {
        hook: Hook::from_number(f.u8(offset_of!(NfEvent, hook))),
        family: Family::from_nfproto(f.u8(offset_of!(NfEvent, pf))),
        verdict,
        errno,
        in_ifindex: f.u32(offset_of!(NfEvent, in_ifindex)),
        out_ifindex: f.u32(offset_of!(NfEvent, out_ifindex)),
        netns: f.u32(offset_of!(NfEvent, netns_inum)),
        skb: f.u64(offset_of!(NfEvent, skb_addr)),
        duration_ns: f.u64(offset_of!(NfEvent, duration_ns)),
        packet: decode_packet(f.at(offset_of!(NfEvent, packet))),
        source: hook_source(f.u8(offset_of!(NfEvent, source))),
    }
}

fn c_str<const N: usize>(b: [u8; N]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(N);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn decode_chain(f: Fields<'_>) -> ChainVerdict {
    ChainVerdict {
        engine: match f.u8(offset_of!(ChainEvent, engine)) {
            chain_engine::NFTABLES => Engine::Nftables,
            chain_engine::IPTABLES => Engine::Iptables,
            _ => Engine::Unknown,
        },
        table: c_str(f.array::<32>(offset_of!(ChainEvent, table))),
        chain: c_str(f.array::<32>(offset_of!(ChainEvent, chain))),
        hook: Hook::from_number(f.u8(offset_of!(ChainEvent, hook))),
        family: Family::from_nfproto(f.u8(offset_of!(ChainEvent, pf))),
        verdict: Verdict::from_nf(f.u32(offset_of!(ChainEvent, verdict))),
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
        action: RuleAction::from_number(f.u8(offset_of!(FibRuleEvent, action))),
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
            fib_source::TP_FIB4 => Mechanism::FibTracepoint,
            fib_source::TP_FIB6 => Mechanism::Fib6Tracepoint,
            fib_source::RAW_TP_FIB4 => Mechanism::FibRawTracepoint,
            _ => Mechanism::Unknown,
        },
        tried: Vec::new(),
        rule_pref: None,
        netns: f.u32(offset_of!(FibEvent, netns_inum)),
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
mod tests;
