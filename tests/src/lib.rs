//! A lab of network namespaces for probe's tests and demo, and a handle on a running `probe`.
//!
//! Everything here is created inside namespaces the lab owns; the root namespace is never
//! touched, and every object removes itself on drop (also when a test fails).

pub mod cmd;
pub mod netns;
pub mod probe;
pub mod topology;

pub use netns::{Netns, in_netns};
pub use probe::{ProbeRun, probe_binary};
pub use topology::{BridgeLab, TwoHosts};

/// Tests and the demo need root to create namespaces and load programs; say so plainly.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "these tests create network namespaces and load eBPF programs: run them as root \
             (`cargo xtask test` does)"
        );
    }
}
