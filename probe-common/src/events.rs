//! The events in the ring buffer: the header every one starts with, the packet as a program read
//! it, one struct per kind of sighting, and the values their fields take.

/// Version of the event layout. Bumped whenever any struct in this crate changes shape, so a
/// recorded file from another version is refused instead of misread.
pub const EVENT_ABI_VERSION: u16 = 3;

/// `EventHeader::kind` values.
pub mod kind {
    /// A packet seen by a tc classifier: [`super::TcEvent`].
    pub const TC: u16 = 1;
    /// A packet freed as dropped (`skb:kfree_skb`): [`super::DropEvent`].
    pub const DROP: u16 = 2;
    /// A routing table lookup (`fib:fib_table_lookup` and friends): [`super::FibEvent`].
    pub const FIB: u16 = 3;
    /// A netfilter hook's verdict (`nf_hook_slow`): [`super::NfEvent`].
    pub const NF: u16 = 4;
    /// A netfilter table/base chain's verdict (`nft_do_chain`, `ipt_do_table`):
    /// [`super::ChainEvent`].
    pub const CHAIN: u16 = 5;
    /// The policy routing rule that chose a table (`fib_rules_lookup`): [`super::FibRuleEvent`].
    pub const FIB_RULE: u16 = 6;
    /// A packet seen by a tc classifier, with its first bytes (`--snaplen`):
    /// [`super::TcSnapEvent`].
    pub const TC_SNAP: u16 = 7;
    /// An ICMP or ICMPv6 error seen by a tc classifier, with the header of the packet it
    /// quotes: [`super::TcQuoteEvent`].
    pub const TC_QUOTE: u16 = 8;
}

/// Most bytes of a packet a tc classifier copies into a [`TcSnapEvent`] (`--snaplen N`).
pub const MAX_SNAPLEN: usize = 256;

/// How a kernel-function observation was made (`source` fields).
pub mod probe_source {
    pub const FEXIT: u8 = 1;
    pub const KRETPROBE: u8 = 2;
}

/// `ChainEvent::engine` values.
pub mod chain_engine {
    /// nf_tables (native nft rules, and iptables-nft).
    pub const NFTABLES: u8 = 1;
    /// Legacy x_tables (iptables-legacy).
    pub const IPTABLES: u8 = 2;
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
pod!(EventHeader);

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
pod!(PacketInfo);

/// A packet seen by a tc classifier on an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcEvent {
    pub header: EventHeader,
    pub packet: PacketInfo,
    /// Network namespace cookie; 0 (not read: `bpf_get_netns_cookie` is refused in tc
    /// programs before Linux 6.15). Kept so the layout stays put when it is filled again.
    pub netns_cookie: u64,
    /// Interface the classifier is attached to.
    pub ifindex: u32,
    /// skb->mark.
    pub mark: u32,
    /// One of [`direction`].
    pub direction: u8,
    pub _pad: [u8; 7],
}
pod!(TcEvent);

/// A tc sighting with the packet's first bytes, written instead of a [`TcEvent`] when
/// `--snaplen` is set (the default path keeps the smaller event).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcSnapEvent {
    /// The sighting; its header's kind is [`kind::TC_SNAP`].
    pub tc: TcEvent,
    /// Bytes of `data` that hold the packet (at most [`MAX_SNAPLEN`]).
    pub cap_len: u16,
    /// Where `data` starts: 14 at the Ethernet header, 0 at the network header (tun,
    /// WireGuard).
    pub l2_len: u8,
    pub _pad: [u8; 5],
    /// The packet from its first byte as the classifier sees it; zero after `cap_len`.
    pub data: [u8; MAX_SNAPLEN],
}
pod!(TcSnapEvent);

/// An ICMP error (destination unreachable, time exceeded, parameter problem; for ICMPv6 also
/// packet too big) seen by a tc classifier, written instead of a [`TcEvent`] so that the packet
/// it answers can be named: the error's payload starts with that packet's headers. Rare by
/// nature; every other packet keeps the smaller event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcQuoteEvent {
    /// The sighting of the error; its header's kind is [`kind::TC_QUOTE`].
    pub tc: TcEvent,
    /// The quoted packet as far as the error carries it (`TRUNCATED` where it was cut).
    pub quoted: PacketInfo,
}
pod!(TcQuoteEvent);

/// A packet the kernel freed as dropped (tracepoint `skb:kfree_skb`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub header: EventHeader,
    /// Read from the skb's network header when the kernel had set one.
    pub packet: PacketInfo,
    /// Address of the sk_buff: identifies the packet among other sightings of it.
    pub skb_addr: u64,
    /// Kernel text address of the caller that dropped it (symbolized in userspace).
    pub location: u64,
    /// Inode number of the network namespace of the skb's device, or of its socket when it has
    /// no device any more (as in /proc/PID/ns/net).
    pub netns_inum: u32,
    /// skb->dev->ifindex, 0 when the skb had no device.
    pub ifindex: u32,
    /// `enum skb_drop_reason` value; names are read from the running kernel.
    pub reason: u32,
    /// skb->protocol (EtherType, host order).
    pub protocol: u16,
    pub _pad: u16,
}
pod!(DropEvent);

/// `FibEvent::source` values: which mechanism reported the lookup.
pub mod fib_source {
    /// Tracepoint `fib:fib_table_lookup` (IPv4).
    pub const TP_FIB4: u8 = 1;
    /// Tracepoint `fib6:fib6_table_lookup` (IPv6).
    pub const TP_FIB6: u8 = 2;
    /// Raw tracepoint `fib_table_lookup` (IPv4), reading the next hop itself.
    pub const RAW_TP_FIB4: u8 = 3;
}

/// A routing table lookup and its result.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibEvent {
    pub header: EventHeader,
    /// Addresses in network order; IPv4 in the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Gateway of the chosen next hop, of family `gw_family`.
    pub gw: [u8; 16],
    /// Name of the output device the lookup chose, NUL-padded.
    pub dev_name: [u8; 16],
    /// Routing table id (254 main, 255 local, ...).
    pub table: u32,
    /// 0 on success, else a negative errno (-ENETUNREACH, -EHOSTUNREACH, ...).
    pub err: i32,
    /// Output and input interface of the flow being routed (0 = any).
    pub oif: i32,
    pub iif: i32,
    pub sport: u16,
    pub dport: u16,
    /// One of [`family`].
    pub family: u8,
    /// IP protocol of the flow.
    pub proto: u8,
    pub tos: u8,
    pub scope: u8,
    pub flags: u8,
    /// One of [`fib_source`].
    pub source: u8,
    /// Family of `gw` ([`family`]); OTHER when the route has no gateway (directly connected)
    /// or the lookup failed.
    pub gw_family: u8,
    pub _pad: u8,
    /// Inode of the network namespace the lookup ran in (as in /proc/PID/ns/net); 0 when
    /// unknown (recordings made before lookups carried it).
    pub netns_inum: u32,
}
pod!(FibEvent);

/// A packet through one netfilter hook (`nf_hook_slow`, which runs the hook's chains).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NfEvent {
    pub header: EventHeader,
    /// Read at entry, before any verdict could free the packet.
    pub packet: PacketInfo,
    pub skb_addr: u64,
    /// Time spent in the hook's functions.
    pub duration_ns: u64,
    pub netns_inum: u32,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// nf_hook_slow's result: 1 the packet continues, 0 stolen or queued, negative: dropped
    /// (-EPERM for a plain DROP, another -errno when a rule chose one).
    pub ret: i32,
    /// NF_INET_* hook number (0 PREROUTING, 1 INPUT, 2 FORWARD, 3 OUTPUT, 4 POSTROUTING).
    pub hook: u8,
    /// NFPROTO_* family (2 IPv4, 10 IPv6, 7 bridge, ...).
    pub pf: u8,
    /// One of [`probe_source`].
    pub source: u8,
    pub _pad: [u8; 5],
}
pod!(NfEvent);

/// One table's base chain deciding about a packet: nf_tables (`nft_do_chain`) or legacy
/// iptables (`ipt_do_table`, chain left empty).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainEvent {
    pub header: EventHeader,
    pub skb_addr: u64,
    /// NUL-padded names.
    pub table: [u8; 32],
    pub chain: [u8; 32],
    /// NF_DROP 0, NF_ACCEPT 1, NF_STOLEN 2, NF_QUEUE 3 (low byte), ...
    pub verdict: u32,
    pub hook: u8,
    pub pf: u8,
    /// One of [`chain_engine`].
    pub engine: u8,
    /// One of [`probe_source`].
    pub source: u8,
}
pod!(ChainEvent);

/// The policy routing rule that decided which table a lookup used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibRuleEvent {
    pub header: EventHeader,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Rule priority (`ip rule` pref) and its table; 0 when no rule matched.
    pub pref: u32,
    pub table: u32,
    /// fib_rules_lookup's result: 0 found, else -errno.
    pub err: i32,
    pub family: u8,
    /// FR_ACT_* (1 to table, 6 blackhole, 7 unreachable, 8 prohibit).
    pub action: u8,
    pub source: u8,
    pub _pad: u8,
}
pod!(FibRuleEvent);
