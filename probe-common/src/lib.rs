//! Types that cross the kernel/userspace boundary, defined once.
//!
//! Every type here is `#[repr(C)]` and made of fixed-width integers and arrays only: no Rust
//! enums, no `Option`, no pointers. Each event starts with an [`EventHeader`]; its `kind` says
//! which struct follows. Userspace never casts ring-buffer bytes to these types: it length-checks
//! the bytes and reads fields at the offsets these definitions give (`core::mem::offset_of!`).
//!
//! The definitions are grouped in private modules (events, layout, config, keys) and all
//! re-exported here, so every path is `probe_common::X`. Each struct is followed by `pod!(X);`,
//! its `aya::Pod` impl for userspace (feature `user`).
#![no_std]

use core::mem::size_of;

/// Implements `aya::Pod` for a type, on the userspace side only (feature `user`). Every struct
/// here that crosses into a map, a global or the ring buffer has one, right after its
/// definition; a new type must meet the SAFETY condition below to get it.
macro_rules! pod {
    ($t:ty) => {
        // SAFETY: the type is #[repr(C)], Copy, made of integers and arrays, with explicit
        // padding fields, so every bit pattern is valid.
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $t {}
    };
}

mod config;
mod events;
mod keys;
mod latency;
mod layout;
mod watch;

pub use config::*;
pub use events::*;
pub use keys::*;
pub use latency::*;
pub use layout::*;
pub use watch::*;

/// Per-CPU counters kept by the programs, indices into the `COUNTERS` per-CPU array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Sightings a kernel-side filter turned away (no event written).
    pub const FILTERED: u32 = 1;
    /// Latency samples not counted because the histogram map was full.
    pub const LATENCY_MAP_FULL: u32 = 2;
    /// Drops or routing failures not counted because a `probe watch` map was full.
    pub const WATCH_MAP_FULL: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// Names of the maps and globals userspace looks up; defined here so both sides agree.
pub mod names {
    /// The nftables tables `--rules` adds (`inet probe_trace_PID`): probe's own, never a step
    /// of a packet's way through the host.
    pub const TRACE_TABLE_PREFIX: &str = "probe_trace_";
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const ADMITTED_PACKETS_MAP: &str = "ADMITTED_PACKETS";
    pub const ADMITTED_FLOWS_MAP: &str = "ADMITTED_FLOWS";
    pub const LAST_SEEN_MAP: &str = "LAST_SEEN";
    pub const LATENCY_MAP: &str = "LATENCY";
    pub const LATENCY_CHAINS_MAP: &str = "LATENCY_CHAINS";
    pub const LATENCY_STAGES_MAP: &str = "LATENCY_STAGES";
    pub const LATENCY_TOP_MAP: &str = "LATENCY_TOP";
    pub const LATENCY_FLOWS_MAP: &str = "LATENCY_FLOWS";
    pub const LATENCY_OPTS_MAP: &str = "LATENCY_OPTS";
    pub const RAW_TP_QDISC_ENQUEUE: &str = "latency_qdisc_enqueue";
    pub const RAW_TP_QDISC_DEQUEUE: &str = "latency_qdisc_dequeue";
    pub const RAW_TP_NETIF_RX: &str = "latency_netif_rx";
    pub const RAW_TP_NETIF_RECEIVE: &str = "latency_netif_receive_skb";
    pub const KPROBE_BR_HANDLE_FRAME: &str = "latency_br_handle_frame";
    pub const KPROBE_BR_FORWARD: &str = "latency_br_forward";
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const TC_INGRESS: &str = "tc_ingress";
    pub const TC_EGRESS: &str = "tc_egress";
    pub const TC_INGRESS_L3: &str = "tc_ingress_l3";
    pub const TC_EGRESS_L3: &str = "tc_egress_l3";
    pub const TP_KFREE_SKB: &str = "kfree_skb";
    pub const TP_FIB_LOOKUP: &str = "fib_table_lookup";
    pub const TP_FIB6_LOOKUP: &str = "fib6_table_lookup";
    pub const RAW_TP_FIB_LOOKUP: &str = "fib_table_lookup_raw";
    pub const RAW_TP_FIB6_NETNS: &str = "fib6_table_lookup_netns";
    pub const ROUTE_INPUT_FENTRY: &str = "ip_route_input_fentry";
    pub const ROUTE_INPUT_FEXIT: &str = "ip_route_input_fexit";
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
const _: () = assert!(size_of::<TcSnapEvent>() == 360);
const _: () = assert!(size_of::<TcQuoteEvent>() == 152);
const _: () = assert!(size_of::<DropEvent>() == 104);
const _: () = assert!(size_of::<FibEvent>() == 112);
const _: () = assert!(size_of::<NfEvent>() == 112);
const _: () = assert!(size_of::<ChainEvent>() == 96);
const _: () = assert!(size_of::<FibRuleEvent>() == 64);
const _: () = assert!(size_of::<KernelLayout>() == 170);
const _: () = assert!(size_of::<FilterInsn>() == 40);
const _: () = assert!(size_of::<PacketKey>() == 8);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<HopBucket>() == 20);
const _: () = assert!(size_of::<StageKey>() == 24);
const _: () = assert!(size_of::<Chain>() == 64);
const _: () = assert!(size_of::<Outlier>() == 72);
const _: () = assert!(size_of::<DropCountKey>() == 24);
const _: () = assert!(size_of::<RouteFailKey>() == 12);
