//! Types that cross the kernel/userspace boundary, defined once.
//!
//! Every type here is `#[repr(C)]` and made of fixed-width integers and arrays only: no Rust
//! enums, no `Option`, no pointers. Each event starts with an [`EventHeader`]; its `kind` says
//! which struct follows. Userspace never casts ring-buffer bytes to these types: it length-checks
//! the bytes and reads fields at the offsets these definitions give (`core::mem::offset_of!`).
#![no_std]

use core::mem::size_of;

/// Version of the event layout. Bumped whenever any struct in this crate changes shape, so a
/// recorded file from another version is refused instead of misread.
pub const EVENT_ABI_VERSION: u16 = 1;

/// `EventHeader::kind` values.
pub mod kind {
    /// A packet seen by a tc classifier: [`super::TcEvent`].
    pub const TC: u16 = 1;
}

/// `TcEvent::direction` values.
pub mod direction {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
}

/// `PacketInfo::family` values (not AF_* numbers: these are ours and stable).
pub mod family {
    /// Not an IP packet (ARP, LLDP, ...): only `l3_proto` and `len` are meaningful.
    pub const OTHER: u8 = 0;
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Bits of `PacketInfo::flags`.
pub mod packet_flags {
    /// The packet was cut short before the transport header could be read.
    pub const TRUNCATED: u8 = 1 << 0;
    /// IPv4 fragment other than the first: no transport header in this packet.
    pub const FRAGMENT: u8 = 1 << 1;
}

/// Common first part of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// One of [`kind`].
    pub kind: u16,
    /// Reserved, zero.
    pub flags: u16,
    /// CPU the program ran on.
    pub cpu: u32,
}

/// What a program could read of a packet. Addresses are in network order; IPv4 addresses use the
/// first four bytes. Ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketInfo {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Transport source port; for ICMP echo, the identifier.
    pub sport: u16,
    /// Transport destination port; for ICMP echo, the sequence number.
    pub dport: u16,
    /// EtherType of the packet (host order), e.g. 0x0800.
    pub l3_proto: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6), 0 when unknown.
    pub l4_proto: u8,
    /// One of [`family`].
    pub family: u8,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ...).
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Bits of [`packet_flags`].
    pub flags: u8,
    /// IPv4 identification (0 for IPv6): lets sightings of one packet be told apart.
    pub ip_id: u16,
    pub _pad0: u16,
    /// skb->len at the observation point.
    pub len: u32,
    /// TCP sequence number (host order), 0 otherwise.
    pub tcp_seq: u32,
}

/// A packet seen by a tc classifier on an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcEvent {
    pub header: EventHeader,
    pub packet: PacketInfo,
    /// Network namespace cookie (`bpf_get_netns_cookie`), 0 when the kernel cannot tell.
    pub netns_cookie: u64,
    /// Interface the classifier is attached to.
    pub ifindex: u32,
    /// skb->mark.
    pub mark: u32,
    /// One of [`direction`].
    pub direction: u8,
    pub _pad: [u8; 7],
}

/// Per-CPU counters kept by the programs, indices into the `COUNTERS` per-CPU array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Packets seen by tc classifiers (events or not).
    pub const TC_SEEN: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// Names of the maps and globals userspace looks up; defined here so both sides agree.
pub mod names {
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const TC_INGRESS: &str = "tc_ingress";
    pub const TC_EGRESS: &str = "tc_egress";
    pub const TC_INGRESS_L3: &str = "tc_ingress_l3";
    pub const TC_EGRESS_L3: &str = "tc_egress_l3";
}

/// Default size of the event ring buffer in bytes (power of two, multiple of the page size).
pub const DEFAULT_RINGBUF_BYTES: u32 = 4 * 1024 * 1024;

// The layout is part of the recorded-file format: catch accidental changes at compile time.
const _: () = assert!(size_of::<EventHeader>() == 16);
const _: () = assert!(size_of::<PacketInfo>() == 56);
const _: () = assert!(size_of::<TcEvent>() == 96);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, made of integers and arrays, with explicit
    // padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::PacketInfo {}
    unsafe impl aya::Pod for super::TcEvent {}
}
