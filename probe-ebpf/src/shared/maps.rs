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
