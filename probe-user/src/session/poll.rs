//! Descriptors on the event loop: ring buffers, netlink sockets, the eBPF log.

use std::{io, os::fd::AsRawFd, time::Duration};

use tokio::io::{Interest, unix::AsyncFd};

/// Registers a descriptor with the event loop. Every caller passes something whose descriptor
/// stays open and the same while the AsyncFd lives: RingBuf and EbpfLogger own their map's
/// descriptor and are owned by the AsyncFd; the link socket outlives the loop.
pub fn pollable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: see above.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}

pub async fn readable<T: AsRawFd>(
    fd: &mut Option<AsyncFd<T>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, T>> {
    match fd {
        Some(l) => l.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Longest an event waits in the ring buffer before the reader looks: the programs wake the
/// reader only once a share of the ring is unread (`ebpf::wakeup_bytes`), so a lone packet on
/// an idle host is collected by this timer instead. `PROBE_POLL_MS` overrides it, for the
/// bench's measurements.
pub const POLL_BOUND: Duration = Duration::from_millis(10);

/// A timer for the bounded poll: a late tick is not made up with a burst of ticks.
pub fn poll_timer() -> tokio::time::Interval {
    let period = std::env::var("PROBE_POLL_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(POLL_BOUND, Duration::from_millis);
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}
