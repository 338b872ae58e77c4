//! Keys and values of the maps the programs keep: a packet's NAT-invariant identity, a
//! connection's tuple, and latency mode's hop points and histogram buckets.

use crate::PacketInfo;

/// What NAT leaves alone in a packet: its IP protocol, IPv4 identification and TCP sequence
/// number (for ICMP, the echo identifier and sequence). The one definition of a packet's
/// identity: it keys the kernel's memory of packets a filter admitted and of where a packet was
/// last seen (latency mode), and userspace recognises a packet after a rewrite by it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PacketKey {
    /// TCP sequence number; ICMP id << 16 | sequence; 0 for other protocols.
    pub tcp_seq: u32,
    pub ip_id: u16,
    pub l4_proto: u8,
    pub _pad: u8,
}
pod!(PacketKey);

impl PacketKey {
    /// From a packet's fields; `sequence` is what [`PacketKey::sequence`] picks.
    #[inline(always)]
    pub const fn new(l4_proto: u8, ip_id: u16, sequence: u32) -> Self {
        PacketKey {
            tcp_seq: sequence,
            ip_id,
            l4_proto,
            _pad: 0,
        }
    }

    /// The sequence part of the key: TCP's sequence number, ICMP's echo id and sequence.
    #[inline(always)]
    pub const fn sequence(l4_proto: u8, tcp_seq: u32, echo_id: u16, echo_seq: u16) -> u32 {
        match l4_proto {
            6 => tcp_seq,
            1 | 58 => (echo_id as u32) << 16 | echo_seq as u32,
            _ => 0,
        }
    }

    /// The key of a packet as a kernel program read it.
    #[inline(always)]
    pub const fn of(p: &PacketInfo) -> Self {
        Self::new(
            p.l4_proto,
            p.ip_id,
            Self::sequence(p.l4_proto, p.tcp_seq, p.sport, p.dport),
        )
    }

    /// Whether the key tells packets apart: with neither an IP id nor a sequence, every packet
    /// of the protocol would share it (IPv6; datagrams with IPv4 id 0).
    #[inline(always)]
    pub const fn is_distinct(&self) -> bool {
        self.ip_id != 0 || self.tcp_seq != 0
    }
}

/// A connection's addresses and ports in one direction, as a packet carries them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub l4_proto: u8,
    pub _pad: [u8; 3],
}
pod!(FlowKey);

/// An observation point, for latency histograms: a tc hook on an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HopPoint {
    pub ifindex: u32,
    /// One of [`direction`](crate::direction).
    pub direction: u8,
    pub _pad: [u8; 3],
}
pod!(HopPoint);

/// Key of the latency histogram map: packets seen at `from` and next at `to`, whose gap fell in
/// log2 bucket `bucket` (gap in ns in `[2^bucket, 2^(bucket+1))`, bucket 0 also holds 0 ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HopBucket {
    pub from: HopPoint,
    pub to: HopPoint,
    pub bucket: u32,
}
pod!(HopBucket);

/// Where a packet was last seen (latency mode), by [`PacketKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastSeen {
    pub ts_ns: u64,
    pub at: HopPoint,
}
pod!(LastSeen);

/// Number of log2 latency buckets (up to about 2^40 ns, 18 minutes).
pub const LATENCY_BUCKETS: u32 = 40;
