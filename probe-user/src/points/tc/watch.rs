//! Keeping tc programs on the right interfaces while a trace runs: attach to what the selector
//! wants at start, then follow rtnetlink link events to attach to interfaces that appear (a
//! container starting) and forget those that vanish.

use std::collections::BTreeMap;

use aya::Ebpf;

use super::{
    attach::{self, AttachError, TcAttacher},
    discover::Selector,
};
use crate::host::{
    netlink::NetlinkError,
    rtnl::{self, IfaceError, Link, LinkChange},
};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Attach(#[from] Box<AttachError>),
    #[error("cannot list or follow network interfaces: {0}")]
    Netlink(#[from] NetlinkError),
}

pub struct TcWatch {
    selector: Selector,
    attacher: TcAttacher,
    monitor: rtnl::Socket,
    /// ifindex → name of every interface with programs attached.
    attached: BTreeMap<u32, String>,
}

impl TcWatch {
    /// Lists interfaces, attaches to those selected, and starts following link events.
    /// Subscribing before listing means no interface can appear unseen in between.
    pub fn start(
        bpf: &mut Ebpf,
        mut selector: Selector,
        attacher: TcAttacher,
    ) -> Result<Self, WatchError> {
        // What probes killed here left behind goes first (never a live one's, or another
        // tool's).
        for line in super::owner::sweep() {
            log::info!("{line}");
        }
        let monitor = rtnl::Socket::link_monitor()?;
        let links = rtnl::Socket::request_socket()?.links()?;
        if let Some(name) = selector.missing_exact(&links).into_iter().next() {
            return Err(IfaceError::NotFound(name).into());
        }
        for glob in selector.unmatched_globs(&links) {
            log::info!("no interface matches '{glob}' yet; probe attaches when one appears");
        }
        selector.set_uplinks(crate::host::uplinks(&crate::host::routes()));
        attach::load_programs(bpf).map_err(Box::new)?;
        let mut watch = Self {
            selector,
            attacher,
            monitor,
            attached: BTreeMap::new(),
        };
        for link in &links {
            watch.consider(bpf, link, false).map_err(Box::new)?;
        }
        if watch.attached.is_empty() && watch.selector.discovers() {
            log::info!(
                "no bridge, veth, tunnel or uplink here yet; probe attaches when one appears"
            );
        }
        Ok(watch)
    }

    /// Interfaces with programs, for the start-up message.
    pub fn describe(&self) -> Vec<String> {
        let backend = self
            .attacher
            .backend()
            .map(|b| format!(" ({b})"))
            .unwrap_or_default();
        self.attached
            .values()
            .map(|n| format!("{n}{backend}"))
            .collect()
    }

    pub fn monitor(&self) -> &rtnl::Socket {
        &self.monitor
    }

    /// Handles pending link events and returns them, for whoever names interfaces. Errors
    /// attaching to one new interface are logged, not fatal: the trace goes on for the others.
    pub fn on_link_events(&mut self, bpf: &mut Ebpf) -> Vec<LinkChange> {
        let changes = match self.monitor.changes() {
            Ok(c) => c,
            Err(NetlinkError::Overflow) => {
                // Notifications were lost: take stock again.
                log::warn!("link notifications overflowed; re-reading interfaces");
                match rtnl::Socket::request_socket().and_then(|mut s| s.links()) {
                    Ok(links) => {
                        let present: Vec<u32> = links.iter().map(|l| l.index).collect();
                        let gone: Vec<u32> = self
                            .attached
                            .keys()
                            .filter(|i| !present.contains(i))
                            .copied()
                            .collect();
                        let mut changes: Vec<LinkChange> = gone
                            .into_iter()
                            .map(|index| LinkChange::Removed { index })
                            .collect();
                        changes.extend(links.into_iter().map(LinkChange::New));
                        changes
                    }
                    Err(e) => {
                        log::warn!("cannot re-read interfaces: {e}");
                        return Vec::new();
                    }
                }
            }
            Err(e) => {
                log::warn!("link notifications failed: {e}");
                return Vec::new();
            }
        };
        for change in &changes {
            match change {
                LinkChange::New(link) => {
                    if let Err(e) = self.consider(bpf, link, true) {
                        // An interface that went away meanwhile (container churn) is no news.
                        if rtnl::lookup(&link.name).is_ok_and(|i| i.index == link.index) {
                            log::warn!("cannot attach to {}: {e}", link.name);
                        } else {
                            log::debug!("{} went away before probe could attach: {e}", link.name);
                        }
                    }
                }
                LinkChange::Removed { index } => {
                    if let Some(name) = self.attached.remove(index) {
                        // The kernel detached our programs with the device; release the links.
                        self.attacher.forget(bpf, *index);
                        log::debug!("{name} went away");
                    }
                }
            }
        }
        changes
    }

    fn consider(&mut self, bpf: &mut Ebpf, link: &Link, hot: bool) -> Result<(), AttachError> {
        if self.attached.contains_key(&link.index) || !self.selector.wants(link) {
            return Ok(());
        }
        let backend = self.attacher.attach(bpf, link)?;
        self.attached.insert(link.index, link.name.clone());
        if hot {
            log::info!("attached to {} ({backend}) as it appeared", link.name);
        }
        Ok(())
    }

    /// Deletes qdiscs probe created; call once the programs' links are gone.
    pub fn finish(mut self) {
        self.attacher.remove_created_qdiscs();
        // A qdisc another probe created and left to us, now that our filters are gone too.
        for line in super::owner::sweep() {
            log::info!("{line}");
        }
    }
}
