//! Ctrl-C (and SIGTERM) during a demo or benchmark: noted, not fatal, so the lab's namespaces
//! are removed on the normal path instead of being left behind by a killed process.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handlers (an async-signal-safe atomic store).
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn happened() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
