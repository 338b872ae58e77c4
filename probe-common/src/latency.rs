//! Latency mode's maps (`probe latency`): a packet's chain of sightings keyed by its `struct
//! sk_buff` address, the per-stage histograms grouped by entry interface or flow, and each
//! CPU's slowest samples. The hop points and the legacy packet identity are in `keys`.

use crate::{FlowKey, HopPoint};

/// `HopPoint::direction` values past tc's [`direction`](crate::direction): the stages inside
/// the path that tracepoints show, and the start of a chain.
pub mod stage {
    /// `qdisc:qdisc_enqueue` on the point's device.
    pub const QDISC_ENQUEUE: u8 = 2;
    /// `qdisc:qdisc_dequeue` on the point's device.
    pub const QDISC_DEQUEUE: u8 = 3;
    /// `net:netif_rx` of the packet handed on by the point's device (a veth's peer).
    pub const NETIF_RX: u8 = 4;
    /// `net:netif_receive_skb` of that packet: the backlog's softirq took it.
    pub const NETIF_RECEIVE: u8 = 5;
    /// kprobe `br_handle_frame` on the port the packet entered by (the point's device).
    pub const BR_HANDLE_FRAME: u8 = 6;
    /// kprobe `br_forward`: the bridge chose the output port.
    pub const BR_FORWARD: u8 = 7;
    /// `from` of a chain's first sighting (counted, to tell how many sightings found none).
    pub const START: u8 = 255;
}

/// `LatencyOptions::group_by` values.
pub mod group_by {
    pub const NONE: u32 = 0;
    /// By the interface where probe first saw the packet (also `--by container`).
    pub const INTERFACE: u32 = 1;
    /// By the packet's tuple at its first sighting.
    pub const FLOW: u32 = 2;
}

/// Group of the samples that did not get a flow group (the group map was full).
pub const GROUP_OTHER: u32 = u32::MAX;

/// Most flow groups the kernel names (the rest are [`GROUP_OTHER`]).
pub const MAX_FLOW_GROUPS: u32 = 256;

/// Slowest samples each CPU keeps per interval.
pub const TOP_N: usize = 8;

/// Run-time latency options, the one entry of the `LATENCY_OPTS` array, written by userspace
/// before any program is attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyOptions {
    /// One of [`group_by`].
    pub group_by: u32,
    pub _pad: u32,
}
pod!(LatencyOptions);

/// Key of the stage histogram map: samples of `group` seen at `from` and next at `to`, whose
/// gap fell in log2 bucket `bucket` (`from.direction == stage::START`: chains started at `to`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StageKey {
    pub group: u32,
    pub from: HopPoint,
    pub to: HopPoint,
    pub bucket: u32,
}
pod!(StageKey);

/// Per-CPU value of the stage histogram map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageStat {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
}
pod!(StageStat);

/// A packet in flight, by its skb address: where it was seen last, and what it was at its
/// first sighting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub ts_ns: u64,
    pub at: HopPoint,
    /// What forwarding leaves alone (protocol, IPv4 id, TCP sequence, IP length): an skb the
    /// kernel reused for another packet shows another fingerprint.
    pub fingerprint: u32,
    pub group: u32,
    /// The tuple at the first sighting (for the slowest samples).
    pub tuple: FlowKey,
}
pod!(Chain);

/// One slow sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outlier {
    pub gap_ns: u64,
    pub group: u32,
    pub _pad: u32,
    pub from: HopPoint,
    pub to: HopPoint,
    pub tuple: FlowKey,
}
pod!(Outlier);

/// One CPU's slowest samples since userspace last cleared them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopN {
    pub slots: [Outlier; TOP_N],
    /// The smallest gap in `slots` and where it is: a sample must beat it to get in.
    pub min_ns: u64,
    pub min_slot: u32,
    pub _pad: u32,
}
pod!(TopN);
