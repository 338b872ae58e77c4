//! Attaching the tc classifiers to interfaces, with the kernel's best mechanism.
//!
//! tcx links (Linux 6.6+) are tried first: they belong to this process, so the kernel detaches
//! them however probe exits, even when killed. Where tcx is missing, the programs go under a
//! clsact qdisc over netlink, as filters whose handle is probe's pid, written down in its
//! ledger ([`super::owner`]) so that a killed probe's filters are found and removed by the next.
//! A qdisc probe had to create is deleted on shutdown only when no filter (another probe's,
//! another tool's) is left on it; one that was already there is left alone.

use std::{collections::HashMap, fmt};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError, TcHandle},
    },
};
use probe_common::names;
use thiserror::Error;

use super::owner::{self, Ledger};
use crate::host::rtnl::{self, Link, LinkLayer};

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
pub struct TcAttacher {
    choice: BackendChoice,
    /// Settled on the first successful attach in `Auto` mode.
    settled: Option<Backend>,
    /// Interfaces (ifindex) whose clsact qdisc probe created.
    created_qdiscs: Vec<u32>,
    /// The links on each interface, by program: released as soon as the interface goes.
    links: HashMap<u32, Vec<(&'static str, SchedClassifierLinkId)>>,
    /// What a killed probe would leave, written down for the next one.
    ledger: Ledger,
    /// The qdiscs were dealt with.
    finished: bool,
}

impl TcAttacher {
    pub fn new(choice: BackendChoice) -> Self {
        Self {
            choice,
            settled: None,
            created_qdiscs: Vec::new(),
            links: HashMap::new(),
            ledger: Ledger::new(),
            finished: false,
        }
    }

    /// Attaches ingress and egress classifiers to `iface`; returns the backend used.
    pub fn attach(&mut self, ebpf: &mut Ebpf, iface: &Link) -> Result<Backend, AttachError> {
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
        iface: &Link,
        backend: Backend,
    ) -> Result<(), AttachError> {
        if backend == Backend::Clsact {
            self.ensure_clsact(iface)?;
        }
        let (ingress, egress) = match iface.link_layer() {
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
                Backend::Clsact => TcAttachOptions::Netlink(NlOptions {
                    // The owner's pid: how a later probe tells a killed one's filters apart.
                    handle: TcHandle::new(
                        (owner::own_handle() >> 16) as u16,
                        owner::own_handle() as u16,
                    ),
                    ..NlOptions::default()
                }),
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
        self.links.insert(iface.index, attached);
        if backend == Backend::Clsact {
            self.ledger.filters(iface.index);
        }
        Ok(())
    }

    fn ensure_clsact(&mut self, iface: &Link) -> Result<(), AttachError> {
        if self.created_qdiscs.contains(&iface.index) {
            return Ok(());
        }
        match tc::qdisc_add_clsact(&iface.name) {
            Ok(()) => {
                self.created_qdiscs.push(iface.index);
                self.ledger.qdisc(iface.index);
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

    /// An interface went away, and its qdisc with it: release its links now (a tcx link
    /// holds a descriptor until it is dropped), and never try to delete that qdisc later (the
    /// index could be reused by someone else's interface).
    pub fn forget(&mut self, ebpf: &mut Ebpf, ifindex: u32) {
        self.created_qdiscs.retain(|&i| i != ifindex);
        self.ledger.forget(ifindex);
        for (name, id) in self.links.remove(&ifindex).unwrap_or_default() {
            if let Ok(program) = classifier(ebpf, name) {
                // Taken out and dropped: the kernel already detached it with the device.
                drop(program.take_link(id));
            }
        }
    }

    /// Deletes the qdiscs probe created, where nothing is left on them: another probe's or
    /// another tool's filters keep theirs. Call after the programs' links are gone.
    pub fn remove_created_qdiscs(&mut self) {
        self.finished = true;
        let mut sock = match rtnl::Socket::request_socket() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot check the clsact qdiscs probe created: {e}");
                return;
            }
        };
        let mut kept = Vec::new();
        for ifindex in std::mem::take(&mut self.created_qdiscs) {
            if !owner::is_empty(&mut sock, ifindex) {
                // Another probe still uses it: the last one out removes it, finding it in the
                // ledger of this (soon dead) probe. Another tool's filters keep it for good.
                if owner::has_probe_filters(&mut sock, ifindex) {
                    kept.push(ifindex);
                }
                log::debug!("leaving the clsact qdisc on ifindex {ifindex}: other filters use it");
                continue;
            }
            match sock.delete_clsact(ifindex) {
                Ok(()) => {}
                // The interface went away, and the qdisc with it.
                Err(e) if e.errno() == Some(libc::ENODEV) => {}
                Err(e) => log::warn!("could not delete the clsact qdisc on ifindex {ifindex}: {e}"),
            }
        }
        self.ledger.finish(&kept);
    }
}

impl Drop for TcAttacher {
    fn drop(&mut self) {
        if !self.finished {
            self.remove_created_qdiscs();
        }
    }
}
