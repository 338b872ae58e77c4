//! The running kernel's struct and tracepoint layout, written by userspace at load time from BTF
//! and tracefs. Nothing here hard-codes an offset for a kernel version.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use probe_common::{ABSENT, KernelLayout};

#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout::ABSENT;

/// Reads one layout entry. Volatile, so the compiler cannot fold in the load-time default.
#[inline(always)]
pub fn get<F: Copy + 'static>(field: impl FnOnce(&'static KernelLayout) -> &'static F) -> F {
    // SAFETY: LAYOUT is a plain static; the reference is valid for the program's life.
    unsafe { core::ptr::read_volatile(field(&LAYOUT)) }
}

/// Reads a `T` at `base + offset` in kernel memory; Err when the offset is ABSENT or the read
/// faults.
#[inline(always)]
pub fn read_kernel<T: Copy>(base: u64, offset: u16) -> Result<T, i32> {
    if offset == ABSENT || base == 0 {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}
