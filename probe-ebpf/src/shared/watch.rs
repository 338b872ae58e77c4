//! `probe watch`: counting in the kernel instead of writing events. Drops are counted by
//! (location, reason, interface, namespace), failed routing lookups by (family, table, error),
//! each in a per-CPU hash map that userspace sums when it is scraped. The latency histograms
//! are latency mode's own (`latency::record`).

use aya_ebpf::{macros::map, maps::PerCpuHashMap};
use probe_common::{
    DropCountKey, RouteFailKey, WATCH_DROPS_ENTRIES, WATCH_ROUTE_FAILS_ENTRIES, counter, mode,
};

use super::{config, maps};

/// Drops per kind.
#[map(name = "WATCH_DROPS")]
static WATCH_DROPS: PerCpuHashMap<DropCountKey, u64> =
    PerCpuHashMap::with_max_entries(WATCH_DROPS_ENTRIES, 0);

/// Failed routing lookups per kind.
#[map(name = "WATCH_ROUTE_FAILS")]
static WATCH_ROUTE_FAILS: PerCpuHashMap<RouteFailKey, u64> =
    PerCpuHashMap::with_max_entries(WATCH_ROUTE_FAILS_ENTRIES, 0);

/// Whether this run counts instead of writing events (a load-time constant).
#[inline(always)]
pub fn active() -> bool {
    config::get(|c| &c.mode) == mode::WATCH
}

#[inline(always)]
pub fn count_drop(key: &DropCountKey) {
    match WATCH_DROPS.get_ptr_mut(key) {
        // SAFETY: per-CPU slot, written only by this CPU while this program runs.
        Some(n) => unsafe { *n += 1 },
        None => {
            // A full map's misses are counted, never silent.
            if WATCH_DROPS.insert(key, &1, 0).is_err() {
                maps::bump(counter::WATCH_MAP_FULL);
            }
        }
    }
}

#[inline(always)]
pub fn count_route_failure(key: &RouteFailKey) {
    match WATCH_ROUTE_FAILS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(n) => unsafe { *n += 1 },
        None => {
            if WATCH_ROUTE_FAILS.insert(key, &1, 0).is_err() {
                maps::bump(counter::WATCH_MAP_FULL);
            }
        }
    }
}
