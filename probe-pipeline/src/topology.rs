//! What probe knows of the traced host: its interfaces by index (name and kind), bridge
//! subnets, uplinks, network namespaces, and Docker's names for containers. One type, read
//! from the host by probe-user, stored in recordings, and asked by the diagnosis and the
//! renderers, so every output names a place the same way.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

/// What probe knows of the namespace's interfaces, to speak of them by role.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Topology {
    /// ifindex → (name, link kind: bridge, veth, tun, wireguard, ...; empty for physical).
    pub links: HashMap<u32, (String, String)>,
    /// Subnets of bridges (docker0, br-*): (network, prefix length, bridge name).
    pub bridge_subnets: Vec<(IpAddr, u8, String)>,
    /// Default-route devices.
    pub uplinks: Vec<String>,
    /// Docker's names for interfaces, namespaces and addresses (empty without Docker).
    #[serde(default)]
    pub containers: Containers,
    /// Inode of the traced network namespace (0: unknown).
    #[serde(default)]
    pub own_netns: u64,
    /// Names of namespaces made with `ip netns add`, by inode.
    #[serde(default)]
    pub netns_names: BTreeMap<u64, String>,
    /// The traced namespace's own addresses (its `local` routes).
    #[serde(default)]
    pub local_addrs: Vec<IpAddr>,
    /// A reader of the live host for diagnoses (never recorded; none in a replay).
    #[serde(skip)]
    pub host: crate::host::Host,
}

impl Topology {
    pub fn kind_of_name(&self, name: &str) -> &str {
        self.links
            .values()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
            .unwrap_or("")
    }

    pub fn name(&self, ifindex: u32) -> String {
        let mut s = String::new();
        self.write_name(&mut s, ifindex);
        s
    }

    /// The interface's name (`if23` when unknown, `-` for none), appended to `out`.
    pub fn write_name(&self, out: &mut String, ifindex: u32) {
        match self.links.get(&ifindex) {
            Some((n, _)) => out.push_str(n),
            None if ifindex == 0 => out.push('-'),
            None => {
                let _ = write!(out, "if{ifindex}");
            }
        }
    }

    /// The interface's link kind (bridge, veth, tun, ...; empty for physical or unknown).
    pub fn kind(&self, ifindex: u32) -> &str {
        self.links.get(&ifindex).map_or("", |(_, k)| k.as_str())
    }

    /// The container an interface leads to (a host-side veth of the traced namespace), or is
    /// in (an interface inside a container, not one of the traced namespace's).
    pub fn container_of(&self, ifindex: u32) -> Option<&str> {
        self.containers.by_ifindex(ifindex).or_else(|| {
            (!self.links.contains_key(&ifindex))
                .then(|| self.containers.inside(ifindex).map(|(c, _)| c))
                .flatten()
        })
    }

    /// `veth1a2b3c (container web)`, `eth0 in container web`, or the plain name.
    pub fn iface_label(&self, ifindex: u32) -> String {
        let mut s = String::new();
        self.write_label(&mut s, ifindex);
        s
    }

    /// [`Topology::iface_label`], appended to `out` (no allocation for a plain name).
    pub fn write_label(&self, out: &mut String, ifindex: u32) {
        if ifindex != 0
            && !self.links.contains_key(&ifindex)
            && let Some((c, name)) = self.containers.inside(ifindex)
        {
            let _ = write!(out, "{name} in container {c}");
            return;
        }
        self.write_name(out, ifindex);
        if let Some(c) = self.container_of(ifindex) {
            let _ = write!(out, " (container {c})");
        }
    }

    /// The name of a namespace other than the traced one: its `ip netns` name or its inode.
    pub fn foreign_netns(&self, inode: u64) -> Option<String> {
        if inode == 0 || self.own_netns == 0 || inode == self.own_netns {
            return None;
        }
        Some(match self.netns_names.get(&inode) {
            Some(name) => name.clone(),
            None => inode.to_string(),
        })
    }

    pub fn is_inside(&self, ifindex: u32) -> bool {
        !self.links.contains_key(&ifindex) && self.containers.inside(ifindex).is_some()
    }

    pub fn bridge_for(&self, addr: IpAddr) -> Option<&str> {
        self.bridge_subnets
            .iter()
            .find(|(net, len, _)| crate::addr::in_subnet(addr, *net, *len))
            .map(|(_, _, name)| name.as_str())
    }

    pub fn is_tunnel(&self, name: &str) -> bool {
        matches!(
            self.kind_of_name(name),
            "tun" | "wireguard" | "ipip" | "gre" | "vti" | "xfrm"
        ) || name.starts_with("tun")
            || name.starts_with("wg")
    }
}

/// The container interfaces, namespaces and addresses probe knows by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Containers {
    /// ifindex in the traced namespace → the container it leads to (host-side veths), or the
    /// container itself when probe traces inside a container's namespace.
    #[serde(default)]
    pub interfaces: BTreeMap<u32, String>,
    /// Network namespace inode → container.
    #[serde(default)]
    pub netns: BTreeMap<u64, String>,
    /// Container addresses on Docker networks → container.
    #[serde(default)]
    pub addresses: BTreeMap<IpAddr, String>,
    /// Interfaces inside containers, by their index in the container's namespace →
    /// (container, interface name). probe sees them when it attached to both ends of a veth
    /// pair before Docker moved one into the container (tc programs stay on a moved device).
    #[serde(default)]
    pub inside: BTreeMap<u32, (String, String)>,
    /// Names of the interfaces in `interfaces`, for messages.
    #[serde(skip)]
    pub ifnames: BTreeMap<u32, String>,
}

impl Containers {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.netns.is_empty() && self.addresses.is_empty()
    }

    pub fn by_ifindex(&self, ifindex: u32) -> Option<&str> {
        self.interfaces.get(&ifindex).map(String::as_str)
    }

    /// (container, interface name) of an interface inside a container.
    pub fn inside(&self, ifindex: u32) -> Option<(&str, &str)> {
        self.inside
            .get(&ifindex)
            .map(|(c, n)| (c.as_str(), n.as_str()))
    }

    pub fn by_netns(&self, inode: u64) -> Option<&str> {
        self.netns.get(&inode).map(String::as_str)
    }

    pub fn by_addr(&self, addr: IpAddr) -> Option<&str> {
        self.addresses.get(&addr).map(String::as_str)
    }
}
