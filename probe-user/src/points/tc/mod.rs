//! Hops: tc ingress/egress classifiers on bridges, veths, tunnels and the uplink. Attached per
//! interface (tcx links where the kernel has them, else a clsact qdisc), found automatically
//! or named by the user, and kept on the right interfaces while a trace runs.

pub mod attach;
pub mod discover;
pub mod owner;
pub mod watch;

pub use attach::{Backend, BackendChoice, TcAttacher};
pub use discover::Selector;
pub use watch::TcWatch;

use crate::kernel::Kernel;

pub const NAME: &str = "tc on interfaces";

/// The backend `--tc-backend auto` picks on this kernel, as doctor shows it.
pub fn doctor_backend(kernel: &Kernel) -> &'static str {
    if has_tcx(kernel) {
        "tcx"
    } else {
        "clsact qdisc (netlink)"
    }
}

/// Whether the kernel knows tcx attach types (Linux 6.6+).
pub fn has_tcx(kernel: &Kernel) -> bool {
    kernel.enum_has("bpf_attach_type", "BPF_TCX_INGRESS")
}
