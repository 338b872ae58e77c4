//! `probe latency`: per-hop latency computed in the kernel. Each tc sighting looks up where the
//! same packet (by `PacketKey`, which NAT leaves alone) was seen last, adds the gap to a log2
//! histogram for that pair of points, and moves the packet's mark to here. No events are
//! written; userspace reads the histograms.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{LruHashMap, PerCpuHashMap},
};
use probe_common::{HopBucket, HopPoint, LATENCY_BUCKETS, LastSeen, PacketInfo};

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
