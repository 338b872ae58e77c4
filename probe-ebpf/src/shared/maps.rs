//! Maps shared by every program: the event ring buffer and per-CPU counters.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use probe_common::{DEFAULT_RINGBUF_BYTES, counter};

/// All events, from every program, in one ring buffer (userspace may resize it at load time).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Indexed by `probe_common::counter::*`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Adds one to a per-CPU counter and returns the new value (0 if the index is out of range).
#[inline(always)]
pub fn bump(index: u32) -> u64 {
    match COUNTERS.get_ptr_mut(index) {
        Some(slot) => {
            // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    }
}
