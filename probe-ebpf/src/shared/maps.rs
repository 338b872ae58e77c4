//! Maps shared by every program: the event ring buffer and per-CPU counters.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use probe_common::{DEFAULT_RINGBUF_BYTES, counter};

use super::config;

/// All events, from every program, in one ring buffer (userspace may resize it at load time).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Submits an event. A wakeup of the reader is work the kernel defers to an interrupt (a
/// self-IPI, microseconds on some machines): by default every submit that finds the reader
/// caught up pays one, which under traffic is one per burst. Instead a submit wakes the reader
/// only when its event takes the unread data past a multiple of `Config::wakeup_bytes` (a
/// fraction of the ring, set at load time); the reader's bounded poll interval collects
/// whatever stays below. Waking at each multiple, not at every submit past the first, keeps a
/// reader that has fallen behind from being woken (one interrupt each) by every event, and
/// a crossing missed in a race between CPUs is made good at the next multiple.
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>) {
    entry.submit(wakeup_flags(record_len::<T>()));
}

/// Discards a reserved entry. Without the flag a discard wakes a reader that has caught up, as
/// a submit does: with a filter that turns everything away the reader is always caught up, so
/// each discarded routing lookup paid a wakeup (2.9 µs per lookup on an AMD EPYC, against 0.85
/// µs for one that was written) and woke the reader for nothing.
#[inline(always)]
pub fn discard<T>(entry: RingBufEntry<T>) {
    entry.discard(BPF_RB_NO_WAKEUP as u64);
}

/// Bytes an entry of `T` takes in the ring: the kernel's 8-byte record header, then `T`, to a
/// multiple of 8.
#[inline(always)]
const fn record_len<T>() -> u64 {
    ((core::mem::size_of::<T>() + 8 + 7) & !7) as u64
}

#[inline(always)]
fn wakeup_flags(len: u64) -> u64 {
    let mark = u64::from(config::get(|c| &c.wakeup_bytes));
    if mark == 0 {
        return 0;
    }
    // Includes this entry (reserving moved the producer position), and whatever other CPUs
    // reserved since.
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if unread / mark > unread.saturating_sub(len) / mark {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

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

/// The key of a kretprobe's entry, parked by its kprobe: the current task and CPU. The task
/// alone is not enough: in softirq on an idle CPU the current task is that CPU's idle task,
/// whose pid_tgid is 0 on every CPU, so two CPUs' entries would mix. (A task that moved CPU
/// inside the probed function loses its entry to the LRU instead of taking another's.)
#[inline(always)]
pub fn task_cpu_key() -> u64 {
    // SAFETY: a helper without arguments, callable from any program type.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } as u64;
    // tgid and pid fit in 22 bits each: the top 10 bits are free for the CPU.
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() & ((1u64 << 54) - 1)) | (cpu << 54)
}
