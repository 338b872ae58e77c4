//! `probe latency`: per-hop latency computed in the kernel. Each sighting looks up where the
//! same packet was seen last, adds the gap to a log2 histogram for that pair of points, and
//! moves the packet's mark to here. No events are written; userspace reads the histograms.
//!
//! Two identities: [`record_skb`] (what `probe latency` uses) keys a packet by its skb, so
//! every packet is measured, IPv6 and IPv4 id 0 included, and the tracepoints inside the path
//! (qdisc, backlog) join the same chain; [`record`] keys it by `PacketKey` (IPv4 id, TCP
//! sequence), which survives a copy of the packet into another skb but misses IPv6 and id 0.

use core::mem::size_of;

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use probe_common::{
    Chain, FlowKey, GROUP_OTHER, HopBucket, HopPoint, LATENCY_BUCKETS, LastSeen, LatencyOptions,
    MAX_FLOW_GROUPS, PacketInfo, StageKey, StageStat, TopN, direction, group_by, stage,
};

use super::filter;

/// Where each packet in flight was seen last.
#[map(name = "LAST_SEEN")]
static LAST_SEEN: LruHashMap<probe_common::PacketKey, LastSeen> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU as u32);

/// Packets per (from, to, bucket).
#[map(name = "LATENCY")]
static LATENCY: PerCpuHashMap<HopBucket, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// A packet's previous sighting older than this is another packet that happens to share its
/// identity (the IPv4 id wraps): start over instead of recording a bogus gap.
const MAX_GAP_NS: u64 = 1_000_000_000;

/// The `PacketKey` identity (see the module's comment); kept for modes that follow a packet
/// across copies.
#[allow(dead_code)]
#[inline(always)]
pub fn record(p: &PacketInfo, at: HopPoint, now: u64) {
    let Some(key) = filter::packet_key(p) else {
        return;
    };
    if let Some(last) = LAST_SEEN.get_ptr_mut(&key) {
        // SAFETY: map value pointer; a racing update of the same packet on another CPU can
        // only make one gap wrong, never fault.
        let last = unsafe { &mut *last };
        let gap = now.saturating_sub(last.ts_ns);
        if gap <= MAX_GAP_NS && last.at != at {
            count(HopBucket {
                from: last.at,
                to: at,
                bucket: log2(gap),
            });
        }
        last.ts_ns = now;
        last.at = at;
    } else {
        let _ = LAST_SEEN.insert(&key, &LastSeen { ts_ns: now, at }, 0);
    }
}

#[allow(dead_code)]
#[inline(always)]
fn count(key: HopBucket) {
    match LATENCY.get_ptr_mut(&key) {
        // SAFETY: per-CPU slot, written only by this CPU while this program runs.
        Some(n) => unsafe { *n += 1 },
        None => {
            // Never silently: a full map's misses are counted and reported.
            if LATENCY.insert(&key, &1, 0).is_err() {
                super::maps::bump(probe_common::counter::LATENCY_MAP_FULL);
            }
        }
    }
}

/// floor(log2(v)), 0 for 0, capped to the last bucket. Written out: the BPF target has no
/// count-leading-zeros instruction.
#[inline(always)]
fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if v >= 1u64 << shift {
            v >>= shift;
            r += shift;
        }
    }
    if r >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        r
    }
}

// ---- Every packet, by its skb: chains of sightings through tc and the stages inside the path.

/// Each packet in flight, by the address of its `struct sk_buff`: the kernel's own identity
/// for it, the same at tc (where the context is the skb) and at the tracepoints inside the
/// path (which receive it as an argument), and unchanged by forwarding, NAT or IPv6.
#[map(name = "LATENCY_CHAINS")]
static CHAINS: LruHashMap<u64, Chain> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU as u32);

/// Samples per (group, from, to, bucket): count, sum and largest gap.
#[map(name = "LATENCY_STAGES")]
static STAGES: PerCpuHashMap<StageKey, StageStat> = PerCpuHashMap::with_max_entries(8192, 0);

/// Each CPU's slowest samples since userspace last cleared them.
#[map(name = "LATENCY_TOP")]
static TOP: PerCpuArray<TopN> = PerCpuArray::with_max_entries(1, 0);

/// Flow groups (`--by flow`): group id → the tuple it stands for, bounded; a flow that finds
/// the map full goes to GROUP_OTHER.
#[map(name = "LATENCY_FLOWS")]
static FLOWS: HashMap<u32, FlowKey> = HashMap::with_max_entries(MAX_FLOW_GROUPS, 0);

/// Run-time options (grouping), written by userspace before anything is attached.
#[map(name = "LATENCY_OPTS")]
static OPTS: Array<LatencyOptions> = Array::with_max_entries(1, 0);

/// A tc sighting in latency mode. `skb` is the classifier's context pointer, which is the
/// packet's `struct sk_buff` (kept only as a map key: reading it as a number needs the
/// privileges probe runs with anyway). `l2_len` is the link-layer header's length. Not
/// inlined: its chain and keys live in their own stack frame, not the tc program's, which the
/// filter's frame is added to (the verifier allows 512 bytes for a call chain).
#[inline(never)]
pub fn record_skb(skb: u64, p: &PacketInfo, l2_len: usize, at: HopPoint, now: u64) {
    let fp = fingerprint(p, l2_len);
    match CHAINS.get_ptr_mut(&skb) {
        Some(c) => {
            // SAFETY: map value pointer; a racing update on another CPU can only make one
            // sample wrong, never fault.
            let c = unsafe { &mut *c };
            let gap = now.saturating_sub(c.ts_ns);
            if c.fingerprint == fp && gap <= MAX_GAP_NS && tc_follows(c.at, at) {
                sample(c.group, c.at, at, gap, &c.tuple);
                c.ts_ns = now;
                c.at = at;
            } else {
                // The kernel reused this skb for another packet: start over in place (no
                // insert: skb addresses recur, so most first sightings land here).
                restart(c, p, fp, at, now);
            }
        }
        None => {
            let mut c = Chain::default();
            restart(&mut c, p, fp, at, now);
            let _ = CHAINS.insert(&skb, &c, 0);
        }
    }
}

/// A sighting at a stage inside the path (qdisc, backlog): only continues a chain a tc point
/// started, and only in the order the kernel runs them, so a reused skb never joins a stale
/// chain. `dev_ifindex` is the skb's device (qdisc stages; 0 where not read).
#[inline(always)]
pub fn record_stage(skb: u64, st: u8, dev_ifindex: u32, now: u64) {
    let Some(c) = CHAINS.get_ptr_mut(&skb) else {
        return;
    };
    // SAFETY: as in record_skb.
    let c = unsafe { &mut *c };
    let last = c.at;
    let after_egress = last.direction == direction::EGRESS;
    let follows = match st {
        stage::QDISC_ENQUEUE => after_egress && last.ifindex == dev_ifindex,
        // Kernels without qdisc_enqueue (5.10) measure from the tc egress point.
        stage::QDISC_DEQUEUE => {
            (after_egress || last.direction == stage::QDISC_ENQUEUE) && last.ifindex == dev_ifindex
        }
        stage::NETIF_RX => after_egress || last.direction == stage::QDISC_DEQUEUE,
        stage::BR_HANDLE_FRAME => {
            last.direction == direction::INGRESS && last.ifindex == dev_ifindex
        }
        // A frame from a port, or one the bridge device itself sends (br_dev_xmit).
        stage::BR_FORWARD => last.direction == stage::BR_HANDLE_FRAME || after_egress,
        // A NAPI veth hands on without netif_rx.
        stage::NETIF_RECEIVE => {
            after_egress
                || last.direction == stage::QDISC_DEQUEUE
                || last.direction == stage::NETIF_RX
        }
        _ => false,
    };
    if !follows {
        return;
    }
    let gap = now.saturating_sub(c.ts_ns);
    if gap > MAX_GAP_NS {
        return;
    }
    let to = HopPoint {
        ifindex: last.ifindex,
        direction: st,
        _pad: [0; 3],
    };
    sample(c.group, last, to, gap, &c.tuple);
    c.ts_ns = now;
    c.at = to;
}

/// Whether tc point `at` can be the next sighting after `last`. Entering a namespace again
/// after leaving it (egress, or a stage after it, then tc ingress) is another packet in a
/// reused skb; so is the same point twice.
#[inline(always)]
fn tc_follows(last: HopPoint, at: HopPoint) -> bool {
    if last.ifindex == at.ifindex && last.direction == at.direction {
        return false;
    }
    !(at.direction == direction::INGRESS && !ingress_side(last.direction))
}

/// Points a packet passes before it leaves by a device: tc ingress and the bridge's input
/// steps (a frame the bridge passes up reaches tc ingress on the bridge device next).
#[inline(always)]
fn ingress_side(at: u8) -> bool {
    at == direction::INGRESS || at == stage::BR_HANDLE_FRAME || at == stage::BR_FORWARD
}

/// Starts `c` as a new chain at `at`, and counts the start (the measured fraction's "found
/// no previous sighting").
#[inline(never)]
fn restart(c: &mut Chain, p: &PacketInfo, fp: u32, at: HopPoint, now: u64) {
    c.ts_ns = now;
    c.at = at;
    c.fingerprint = fp;
    c.tuple = FlowKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        l4_proto: p.l4_proto,
        _pad: [0; 3],
    };
    let by = OPTS.get(0).map_or(group_by::NONE, |o| o.group_by);
    c.group = match by {
        group_by::INTERFACE => at.ifindex,
        group_by::FLOW => flow_group(&c.tuple),
        _ => 0,
    };
    let start = HopPoint {
        ifindex: 0,
        direction: stage::START,
        _pad: [0; 3],
    };
    add(
        &StageKey {
            group: c.group,
            from: start,
            to: at,
            bucket: 0,
        },
        0,
    );
}

/// What forwarding leaves alone: protocol, IPv4 id, TCP sequence, length past the link layer.
#[inline(always)]
fn fingerprint(p: &PacketInfo, l2_len: usize) -> u32 {
    p.tcp_seq
        ^ ((p.ip_id as u32) << 16)
        ^ ((p.l4_proto as u32) << 8)
        ^ p.len.wrapping_sub(l2_len as u32).wrapping_mul(0x9E37_79B1)
}

/// The flow group of a tuple: a hash, named in FLOWS for userspace; GROUP_OTHER once FLOWS
/// is full.
#[inline(never)]
fn flow_group(t: &FlowKey) -> u32 {
    let words = t as *const FlowKey as *const u32;
    let mut h: u32 = 0x811C_9DC5;
    for i in 0..size_of::<FlowKey>() / 4 {
        // SAFETY: i * 4 + 4 <= size_of::<FlowKey>(); unaligned read of plain bytes.
        let w = unsafe { words.add(i).read_unaligned() };
        h = (h ^ w).wrapping_mul(0x0100_0193);
    }
    if h == GROUP_OTHER {
        h = 0;
    }
    if FLOWS.get_ptr(&h).is_some() || FLOWS.insert(&h, t, 0).is_ok() {
        h
    } else {
        GROUP_OTHER
    }
}

#[inline(always)]
fn sample(group: u32, from: HopPoint, to: HopPoint, gap: u64, tuple: &FlowKey) {
    add(
        &StageKey {
            group,
            from,
            to,
            bucket: log2(gap),
        },
        gap,
    );
    slowest(group, from, to, gap, tuple);
}

#[inline(always)]
fn add(key: &StageKey, gap: u64) {
    match STAGES.get_ptr_mut(key) {
        Some(s) => {
            // SAFETY: per-CPU slot, written only by this CPU while this program runs.
            let s = unsafe { &mut *s };
            s.count += 1;
            s.sum_ns += gap;
            if gap > s.max_ns {
                s.max_ns = gap;
            }
        }
        None => {
            let s = StageStat {
                count: 1,
                sum_ns: gap,
                max_ns: gap,
            };
            // Never silently: a full map's misses are counted and reported.
            if STAGES.insert(key, &s, 0).is_err() {
                super::maps::bump(probe_common::counter::LATENCY_MAP_FULL);
            }
        }
    }
}

/// Keeps the sample if it is among this CPU's TOP_N slowest of the interval.
#[inline(never)]
fn slowest(group: u32, from: HopPoint, to: HopPoint, gap: u64, tuple: &FlowKey) {
    let Some(t) = TOP.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, written only by this CPU while this program runs (userspace
    // clearing it at the same time can only lose one sample).
    let t = unsafe { &mut *t };
    if gap <= t.min_ns {
        return;
    }
    let Some(slot) = t.slots.get_mut(t.min_slot as usize) else {
        return;
    };
    slot.gap_ns = gap;
    slot.group = group;
    slot.from = from;
    slot.to = to;
    slot.tuple = *tuple;
    let (mut min, mut at) = (u64::MAX, 0u32);
    for (i, s) in t.slots.iter().enumerate() {
        if s.gap_ns < min {
            min = s.gap_ns;
            at = i as u32;
        }
    }
    t.min_ns = min;
    t.min_slot = at;
}
