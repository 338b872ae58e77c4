//! The kernel's clocks, read for the pipeline (which does no system calls itself).

use probe_pipeline::render::Clock;

fn read(id: libc::clockid_t) -> i128 {
    // SAFETY: plain syscall into a stack struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_MONOTONIC now, in ns: the clock the kernel programs stamp events with.
pub fn monotonic_now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC) as u64
}

/// The offsets that turn event times into the local time of day, as of now.
pub fn now() -> Clock {
    let mono = read(libc::CLOCK_MONOTONIC);
    let real = read(libc::CLOCK_REALTIME);
    // The type is left to localtime_r: time_t's width differs between libcs (musl's is changing).
    let secs = real.div_euclid(1_000_000_000) as _;
    // SAFETY: localtime_r writes into our struct only.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    Clock {
        realtime_minus_monotonic_ns: (real - mono) as i64,
        utc_offset_s: tm.tm_gmtoff,
    }
}
