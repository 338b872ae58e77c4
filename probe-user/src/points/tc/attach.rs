//! Attaching the tc classifiers to interfaces, with the kernel's best mechanism.
//!
//! tcx links (Linux 6.6+) are tried first: they belong to this process, so the kernel detaches
//! them however probe exits, even when killed. Where tcx is missing, the programs go under a
//! clsact qdisc over netlink; a qdisc probe had to create is deleted again on shutdown, one that
//! was already there is left alone.

use std::fmt;

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions, TcError},
    },
};
use probe_common::names;
use thiserror::Error;

use crate::host::iface::{Iface, LinkLayer};

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// tcx where the kernel has it, else clsact.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

/// What is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Tcx,
    Clsact,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Tcx => "tcx",
            Backend::Clsact => "clsact",
        })
    }
}

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("cannot load program {name} into the kernel: {source}")]
    Load {
        name: &'static str,
        source: ProgramError,
    },
    #[error("cannot add a clsact qdisc to {iface}: {source}")]
    Qdisc { iface: String, source: TcError },
    #[error("cannot attach to {iface} {direction} with {backend}: {source}")]
    Attach {
        iface: String,
        direction: &'static str,
        backend: Backend,
        source: ProgramError,
    },
}

/// Loads the classifiers into the kernel; must run once before [`TcAttacher::attach`].
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), AttachError> {
    for name in [
        names::TC_INGRESS,
        names::TC_EGRESS,
        names::TC_INGRESS_L3,
        names::TC_EGRESS_L3,
    ] {
        classifier(ebpf, name)?
            .load()
            .map_err(|source| AttachError::Load { name, source })?;
    }
    Ok(())
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, AttachError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(AttachError::MissingProgram(name))
}

/// Attaches classifiers to interfaces and remembers what it must undo.
#[derive(Debug, Default)]
pub struct TcAttacher {
    choice: BackendChoice,
    /// Settled on the first successful attach in `Auto` mode.
    settled: Option<Backend>,
    /// Interfaces (ifindex) whose clsact qdisc probe created.
    created_qdiscs: Vec<u32>,
}

impl TcAttacher {
    pub fn new(choice: BackendChoice) -> Self {
        Self {
            choice,
            settled: None,
            created_qdiscs: Vec::new(),
        }
    }

    /// Attaches ingress and egress classifiers to `iface`; returns the backend used.
    pub fn attach(&mut self, ebpf: &mut Ebpf, iface: &Iface) -> Result<Backend, AttachError> {
        let backend = match (self.choice, self.settled) {
            (BackendChoice::Tcx, _) | (BackendChoice::Auto, Some(Backend::Tcx)) => Backend::Tcx,
            (BackendChoice::Clsact, _) | (BackendChoice::Auto, Some(Backend::Clsact)) => {
                Backend::Clsact
            }
            (BackendChoice::Auto, None) => match self.attach_with(ebpf, iface, Backend::Tcx) {
                Ok(()) => {
                    self.settled = Some(Backend::Tcx);
                    return Ok(Backend::Tcx);
                }
                Err(err) => {
                    log::warn!("tcx is not available ({err}); using a clsact qdisc instead");
                    Backend::Clsact
                }
            },
        };
        self.attach_with(ebpf, iface, backend)?;
        self.settled = Some(backend);
        Ok(backend)
    }

    fn attach_with(
        &mut self,
        ebpf: &mut Ebpf,
        iface: &Iface,
        backend: Backend,
    ) -> Result<(), AttachError> {
        if backend == Backend::Clsact {
            self.ensure_clsact(iface)?;
        }
        let (ingress, egress) = match iface.link_layer {
            LinkLayer::Ethernet => (names::TC_INGRESS, names::TC_EGRESS),
            LinkLayer::None => (names::TC_INGRESS_L3, names::TC_EGRESS_L3),
        };
        let mut attached = Vec::with_capacity(2);
        for (name, attach_type, direction) in [
            (ingress, TcAttachType::Ingress, "ingress"),
            (egress, TcAttachType::Egress, "egress"),
        ] {
            let options = match backend {
                // First, so that no other program's verdict hides packets from us.
                Backend::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
                Backend::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
            };
            let program = classifier(ebpf, name)?;
            match program.attach_with_options(&iface.name, attach_type, options) {
                Ok(link) => attached.push((name, link)),
                Err(source) => {
                    // Leave nothing half-attached behind.
                    for (name, link) in attached {
                        let _ = classifier(ebpf, name).map(|p| p.detach(link));
                    }
                    return Err(AttachError::Attach {
                        iface: iface.name.clone(),
                        direction,
                        backend,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn ensure_clsact(&mut self, iface: &Iface) -> Result<(), AttachError> {
        if self.created_qdiscs.contains(&iface.index) {
            return Ok(());
        }
        match tc::qdisc_add_clsact(&iface.name) {
            Ok(()) => {
                self.created_qdiscs.push(iface.index);
                Ok(())
            }
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(AttachError::Qdisc {
                iface: iface.name.clone(),
                source,
            }),
        }
    }

    /// The backend in use, once one attach has succeeded.
    pub fn backend(&self) -> Option<Backend> {
        self.settled
    }

    /// An interface went away, and its qdisc with it: never try to delete that qdisc later
    /// (the index could be reused by someone else's interface).
    pub fn forget(&mut self, ifindex: u32) {
        self.created_qdiscs.retain(|&i| i != ifindex);
    }

    /// Deletes the qdiscs probe created. Call after the programs' links are gone.
    pub fn remove_created_qdiscs(&mut self) {
        for ifindex in self.created_qdiscs.drain(..) {
            match crate::host::rtnl::delete_clsact(ifindex) {
                Ok(()) => {}
                // The interface went away, and the qdisc with it.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => log::warn!("could not delete the clsact qdisc on ifindex {ifindex}: {e}"),
            }
        }
    }
}

impl Drop for TcAttacher {
    fn drop(&mut self) {
        self.remove_created_qdiscs();
    }
}
