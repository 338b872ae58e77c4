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
}

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

/// `FibEvent::source` values: which mechanism reported the lookup.
pub mod fib_source {
    /// Tracepoint `fib:fib_table_lookup` (IPv4).
    pub const TP_FIB4: u8 = 1;
    /// Tracepoint `fib6:fib6_table_lookup` (IPv6).
    pub const TP_FIB6: u8 = 2;
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
    pub _pad: [u8; 5],
}

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

/// Marks a layout offset the running kernel does not have.
pub const ABSENT: u16 = u16::MAX;

/// Where fields sit in a fib tracepoint record (`fib:fib_table_lookup` or
/// `fib6:fib6_table_lookup`), read from its `format` file at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FibTpLayout {
    pub tb_id: u16,
    pub err: u16,
    pub oif: u16,
    pub iif: u16,
    pub proto: u16,
    pub tos: u16,
    pub scope: u16,
    pub flags: u16,
    pub src: u16,
    pub dst: u16,
    /// IPv4 gateway (fib) or the only gateway (fib6).
    pub gw4: u16,
    pub gw6: u16,
    pub sport: u16,
    pub dport: u16,
    pub name: u16,
    /// 1 when `name` is a `__data_loc char[]` (a u32: offset of the string in the record in
    /// the low 16 bits), as on 5.10; 0 when it is an inline array. Takes the place of padding.
    pub name_loc: u16,
}

impl FibTpLayout {
    pub const ABSENT: Self = Self {
        tb_id: ABSENT,
        err: ABSENT,
        oif: ABSENT,
        iif: ABSENT,
        proto: ABSENT,
        tos: ABSENT,
        scope: ABSENT,
        flags: ABSENT,
        src: ABSENT,
        dst: ABSENT,
        gw4: ABSENT,
        gw6: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        name: ABSENT,
        name_loc: 0,
    };
}

/// Offsets of kernel struct members and tracepoint fields the programs read, taken from the
/// running kernel's BTF and tracefs at load time. [`ABSENT`] where the kernel lacks one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    // struct sk_buff
    pub skb_head: u16,
    pub skb_network_header: u16,
    pub skb_transport_header: u16,
    pub skb_dev: u16,
    pub skb_len: u16,
    // struct net_device
    pub dev_ifindex: u16,
    pub dev_nd_net: u16,
    // struct net
    pub net_ns_inum: u16,
    // struct sk_buff's socket and the socket's namespace (struct sock_common)
    pub skb_sk: u16,
    pub sk_net: u16,
    // tracepoint skb:kfree_skb
    pub kfree_skbaddr: u16,
    pub kfree_location: u16,
    pub kfree_protocol: u16,
    pub kfree_reason: u16,
    /// The receiving socket, when the drop happened on its way in (Linux 6.10+).
    pub kfree_rx_sk: u16,
    // struct nf_hook_state
    pub nfstate_hook: u16,
    pub nfstate_pf: u16,
    pub nfstate_in: u16,
    pub nfstate_out: u16,
    // struct nft_pktinfo, nft_chain, nft_table (module nf_tables)
    pub nftpkt_skb: u16,
    pub nftpkt_state: u16,
    pub nftchain_name: u16,
    pub nftchain_table: u16,
    pub nfttable_name: u16,
    // struct xt_table (module x_tables); argument positions of ipt_do_table, which changed
    // order across kernel versions
    pub xttable_name: u16,
    pub ipt_arg_table: u16,
    pub ipt_arg_skb: u16,
    pub ipt_arg_state: u16,
    // struct fib_lookup_arg, fib_rule, flowi
    pub fibarg_rule: u16,
    pub fibrule_pref: u16,
    pub fibrule_table: u16,
    pub fibrule_action: u16,
    pub flowi4_saddr: u16,
    pub flowi4_daddr: u16,
    pub fibops_family: u16,
    pub fib4: FibTpLayout,
    pub fib6: FibTpLayout,
}

impl KernelLayout {
    pub const ABSENT: Self = Self {
        skb_head: ABSENT,
        skb_network_header: ABSENT,
        skb_transport_header: ABSENT,
        skb_dev: ABSENT,
        skb_len: ABSENT,
        dev_ifindex: ABSENT,
        dev_nd_net: ABSENT,
        net_ns_inum: ABSENT,
        skb_sk: ABSENT,
        sk_net: ABSENT,
        kfree_skbaddr: ABSENT,
        kfree_location: ABSENT,
        kfree_protocol: ABSENT,
        kfree_reason: ABSENT,
        kfree_rx_sk: ABSENT,
        nfstate_hook: ABSENT,
        nfstate_pf: ABSENT,
        nfstate_in: ABSENT,
        nfstate_out: ABSENT,
        nftpkt_skb: ABSENT,
        nftpkt_state: ABSENT,
        nftchain_name: ABSENT,
        nftchain_table: ABSENT,
        nfttable_name: ABSENT,
        xttable_name: ABSENT,
        ipt_arg_table: ABSENT,
        ipt_arg_skb: ABSENT,
        ipt_arg_state: ABSENT,
        fibarg_rule: ABSENT,
        fibrule_pref: ABSENT,
        fibrule_table: ABSENT,
        fibrule_action: ABSENT,
        flowi4_saddr: ABSENT,
        flowi4_daddr: ABSENT,
        fibops_family: ABSENT,
        fib4: FibTpLayout::ABSENT,
        fib6: FibTpLayout::ABSENT,
    };
}

/// Name of the global holding the [`KernelLayout`].
pub const LAYOUT_GLOBAL: &str = "LAYOUT";

/// Most instructions a kernel-side filter may have.
pub const MAX_FILTER_INSNS: usize = 32;

/// `FilterInsn::op` values. A filter is a postfix program over a stack of booleans: tests push
/// one, `AND`/`OR` pop two and push one, `NOT` flips the top. The packet is admitted when the
/// stack's top is true at the end.
pub mod filter_op {
    /// `(address & mask) == addr` for the source, destination or either (`dir`), of family
    /// `arg` (4 or 6).
    pub const NET: u8 = 1;
    /// Port within `port_lo..=port_hi` (TCP and UDP only), on the side(s) `dir` names.
    pub const PORTS: u8 = 2;
    /// IP protocol number equals `arg`.
    pub const L4_PROTO: u8 = 3;
    /// Packet family ([`super::family`]) equals `arg`.
    pub const FAMILY: u8 = 4;
    pub const AND: u8 = 5;
    pub const OR: u8 = 6;
    pub const NOT: u8 = 7;
}

/// `FilterInsn::dir` values.
pub mod filter_dir {
    pub const SRC: u8 = 0;
    pub const DST: u8 = 1;
    pub const EITHER: u8 = 2;
}

/// One instruction of a kernel-side filter (see [`filter_op`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterInsn {
    /// Network address already masked, network order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    pub mask: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    pub op: u8,
    /// One of [`filter_dir`].
    pub dir: u8,
    /// Family for `NET` and `FAMILY`, protocol number for `L4_PROTO`.
    pub arg: u8,
    pub _pad: u8,
}

/// `Config::mode` values.
pub mod mode {
    /// One event per sighting into the ring buffer.
    pub const EVENTS: u8 = 0;
    /// No events: tc sightings feed per-hop latency histograms (`probe latency`).
    pub const LATENCY: u8 = 1;
}

/// Run-time choices handed to every program as a load-time constant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u8,
    pub _pad: [u8; 3],
    /// Instructions in use in `filter`; 0: every packet is admitted.
    pub filter_len: u32,
    pub filter: [FilterInsn; MAX_FILTER_INSNS],
}

impl Config {
    pub const DEFAULT: Self = Self {
        mode: mode::EVENTS,
        _pad: [0; 3],
        filter_len: 0,
        filter: [FilterInsn {
            addr: [0; 16],
            mask: [0; 16],
            port_lo: 0,
            port_hi: 0,
            op: 0,
            dir: 0,
            arg: 0,
            _pad: 0,
        }; MAX_FILTER_INSNS],
    };
}

/// Name of the global holding the [`Config`].
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// What NAT leaves alone in a packet: its IP protocol, IPv4 identification and TCP sequence
/// number. Keys the kernel's memory of packets a filter admitted, and of where a packet was
/// last seen (latency mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PacketKey {
    pub tcp_seq: u32,
    pub ip_id: u16,
    pub l4_proto: u8,
    pub _pad: u8,
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

/// An observation point, for latency histograms: a tc hook on an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HopPoint {
    pub ifindex: u32,
    /// One of [`direction`].
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// Key of the latency histogram map: packets seen at `from` and next at `to`, whose gap fell in
/// log2 bucket `bucket` (gap in ns in `[2^bucket, 2^(bucket+1))`, bucket 0 also holds 0 ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HopBucket {
    pub from: HopPoint,
    pub to: HopPoint,
    pub bucket: u32,
}

/// Where a packet was last seen (latency mode), by [`PacketKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastSeen {
    pub ts_ns: u64,
    pub at: HopPoint,
}

/// Number of log2 latency buckets (up to about 2^40 ns, 18 minutes).
pub const LATENCY_BUCKETS: u32 = 40;

/// Per-CPU counters kept by the programs, indices into the `COUNTERS` per-CPU array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Sightings a kernel-side filter turned away (no event written).
    pub const FILTERED: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// Names of the maps and globals userspace looks up; defined here so both sides agree.
pub mod names {
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const ADMITTED_PACKETS_MAP: &str = "ADMITTED_PACKETS";
    pub const ADMITTED_FLOWS_MAP: &str = "ADMITTED_FLOWS";
    pub const LAST_SEEN_MAP: &str = "LAST_SEEN";
    pub const LATENCY_MAP: &str = "LATENCY";
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const TC_INGRESS: &str = "tc_ingress";
    pub const TC_EGRESS: &str = "tc_egress";
    pub const TC_INGRESS_L3: &str = "tc_ingress_l3";
    pub const TC_EGRESS_L3: &str = "tc_egress_l3";
    pub const TP_KFREE_SKB: &str = "kfree_skb";
    pub const TP_FIB_LOOKUP: &str = "fib_table_lookup";
    pub const TP_FIB6_LOOKUP: &str = "fib6_table_lookup";
    pub const NF_HOOK_FENTRY: &str = "nf_hook_slow_fentry";
    pub const NF_HOOK_FEXIT: &str = "nf_hook_slow_fexit";
    pub const NF_HOOK_KPROBE: &str = "nf_hook_slow_kprobe";
    pub const NF_HOOK_KRETPROBE: &str = "nf_hook_slow_kretprobe";
    pub const NFT_CHAIN_KPROBE: &str = "nft_do_chain_kprobe";
    pub const NFT_CHAIN_KRETPROBE: &str = "nft_do_chain_kretprobe";
    pub const IPT_TABLE_KPROBE: &str = "ipt_do_table_kprobe";
    pub const IPT_TABLE_KRETPROBE: &str = "ipt_do_table_kretprobe";
    pub const FIB_RULES_KPROBE: &str = "fib_rules_lookup_kprobe";
    pub const FIB_RULES_KRETPROBE: &str = "fib_rules_lookup_kretprobe";
}

/// Default size of the event ring buffer in bytes (power of two, multiple of the page size).
pub const DEFAULT_RINGBUF_BYTES: u32 = 4 * 1024 * 1024;

// The layout is part of the recorded-file format: catch accidental changes at compile time.
const _: () = assert!(size_of::<EventHeader>() == 16);
const _: () = assert!(size_of::<PacketInfo>() == 56);
const _: () = assert!(size_of::<TcEvent>() == 96);
const _: () = assert!(size_of::<DropEvent>() == 104);
const _: () = assert!(size_of::<FibEvent>() == 112);
const _: () = assert!(size_of::<NfEvent>() == 112);
const _: () = assert!(size_of::<ChainEvent>() == 96);
const _: () = assert!(size_of::<FibRuleEvent>() == 64);
const _: () = assert!(size_of::<KernelLayout>() == 134);
const _: () = assert!(size_of::<FilterInsn>() == 40);
const _: () = assert!(size_of::<PacketKey>() == 8);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<HopBucket>() == 20);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, made of integers and arrays, with explicit
    // padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::PacketInfo {}
    unsafe impl aya::Pod for super::TcEvent {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::FibEvent {}
    unsafe impl aya::Pod for super::FibTpLayout {}
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::NfEvent {}
    unsafe impl aya::Pod for super::ChainEvent {}
    unsafe impl aya::Pod for super::FibRuleEvent {}
    unsafe impl aya::Pod for super::FilterInsn {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::PacketKey {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::HopPoint {}
    unsafe impl aya::Pod for super::HopBucket {}
    unsafe impl aya::Pod for super::LastSeen {}
}
