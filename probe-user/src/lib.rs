//! probe: an eBPF datapath observer for container hosts.
//!
//! Data flows one way: kernel sighting → ring buffer → the pipeline (probe-pipeline: decode,
//! filter, correlate, diagnose, record, render). This crate is the part that needs the kernel:
//! [`kernel`] facts read once per start, the observation [`points`] that attach programs,
//! [`host`] knowledge (interfaces, namespaces, Docker), the [`session`] every attaching
//! command starts with, and the [`cmd`]s themselves.

pub mod cmd;
pub mod export;
pub mod host;
pub mod kernel;
pub mod metrics;
pub mod points;
pub mod schema;
pub mod session;

/// The kernel lacks a mechanism the command needs: exit status 3, so scripts can tell it from
/// a runtime error (1) or a usage error (2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KernelLacks(pub String);

/// Whether an error means "this kernel cannot do that": a [`KernelLacks`], or tcx asked for
/// by name on a kernel without it.
pub fn kernel_lacks(e: &anyhow::Error) -> bool {
    use points::tc::{Backend, attach::AttachError, watch::WatchError};
    // The attach error may sit inside the watcher's (whose `transparent` display hides it
    // from the chain).
    let tcx_refused = |c: &(dyn std::error::Error + 'static)| {
        let attach = c
            .downcast_ref::<AttachError>()
            .or_else(|| match c.downcast_ref() {
                Some(WatchError::Attach(a)) => Some(&**a),
                _ => None,
            });
        matches!(
            attach,
            Some(AttachError::Attach {
                backend: Backend::Tcx,
                ..
            })
        )
    };
    e.chain().any(|c| {
        c.is::<KernelLacks>()
            || tcx_refused(c)
                && !kernel::btf::Btf::from_sys()
                    .and_then(|b| b.enum_values("bpf_attach_type"))
                    .is_ok_and(|v| v.iter().any(|(n, _)| n == "BPF_TCX_INGRESS"))
    })
}
