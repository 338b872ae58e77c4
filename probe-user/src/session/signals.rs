//! Stop signals held while programs are attached and nothing listens yet, so that Ctrl-C
//! during start-up cannot leave a qdisc or an nftables table behind.

/// SIGINT, SIGTERM and SIGHUP blocked on this thread; released explicitly once handled, or on
/// drop (an error before the event loop), when their default action applies after cleanup.
pub struct HeldSignals;

impl HeldSignals {
    fn set() -> libc::sigset_t {
        // SAFETY: sigset manipulation on a local.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            set
        }
    }

    pub fn hold() -> Self {
        let set = Self::set();
        // SAFETY: blocks signals for this thread; threads spawned later inherit the mask.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        HeldSignals
    }

    pub fn release() {
        let set = Self::set();
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        Self::release();
    }
}
