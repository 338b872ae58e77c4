//! What a diagnosis may ask the host at the moment it is made: sysctls, a device's MTU and
//! queueing discipline, a neighbour entry, the socket bound to an address. The pipeline knows
//! nothing of /proc or netlink: a live trace hands it a reader of the traced namespace
//! (probe-user's `host::facts`); a replay has none, and its diagnoses carry only what the
//! recorded timeline shows.

use std::{fmt, net::IpAddr, sync::Arc};

use crate::event::Transport;

/// A local socket and the process holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    /// The address the socket is bound to (`0.0.0.0` / `::` for any).
    pub addr: IpAddr,
    pub port: u16,
    /// The first process found holding it (none when only the kernel holds it).
    pub process: Option<(String, u32)>,
    /// Where a userland proxy (docker-proxy) holding the socket forwards what it receives.
    pub forwards_to: Option<(IpAddr, u16)>,
}

impl fmt::Display for SocketOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port)?,
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port)?,
        }
        if let Some((name, pid)) = &self.process {
            write!(f, " (process {name}, pid {pid})")?;
        }
        Ok(())
    }
}

/// Readings of the traced namespace. Every method answers None when the host cannot tell
/// (no such sysctl, device gone, no permission): a fact is shown only when it was read.
pub trait HostFacts: Send + Sync {
    /// The value of a sysctl under /proc/sys, by its path there (`net/ipv4/ip_forward`).
    fn sysctl(&self, path: &str) -> Option<String>;
    /// A device's MTU, by name.
    fn mtu(&self, dev: &str) -> Option<u32>;
    /// The neighbour entry of `addr` on `dev`, as `ip neigh` would say it (`lladdr ..
    /// REACHABLE`, `FAILED`), or None when there is no entry.
    fn neighbour(&self, addr: IpAddr, dev: &str) -> Option<String>;
    /// The device's root queueing discipline and its counters (`noqueue`, `pfifo_fast
    /// drops 12 backlog 0`).
    fn qdisc(&self, dev: &str) -> Option<String>;
    /// The socket that would receive a packet for `local` from `remote`: the connected
    /// socket of that pair, else a listener (TCP) or bound socket (UDP) on the exact address,
    /// then on the wildcard.
    fn socket(
        &self,
        proto: Transport,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    ) -> Option<SocketOwner>;
}

/// The host reader a topology carries, if any. Never recorded: facts are read when the
/// diagnosis is made, and a replay has none.
#[derive(Clone, Default)]
pub struct Host(Option<Arc<dyn HostFacts>>);

impl Host {
    pub fn new(facts: Arc<dyn HostFacts>) -> Self {
        Self(Some(facts))
    }

    pub fn get(&self) -> Option<&dyn HostFacts> {
        self.0.as_deref()
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Host(live)"
        } else {
            "Host(none)"
        })
    }
}
