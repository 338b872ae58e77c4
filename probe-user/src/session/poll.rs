//! Descriptors on the event loop: ring buffers, netlink sockets, the eBPF log.

use std::{io, os::fd::AsRawFd};

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
