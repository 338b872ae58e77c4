//! Small networks made of namespaces: two hosts on a veth pair, and a Docker-like bridge with
//! "containers".

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;

use crate::Netns;

/// Writes a sysctl of the namespace `ns` (through /proc/sys/net, which is per namespace).
pub fn sysctl(ns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    let shown = path.clone();
    ns.run(move || std::fs::write(&path, value))?
        .with_context(|| format!("cannot write {shown} in {}", ns.name()))
}

/// Turns IPv6 off in a namespace before links are made, so router solicitations and MLD reports
/// do not crowd the output of demos and tests that do not ask for IPv6.
fn quiet_ipv6(ns: &Netns) -> anyhow::Result<()> {
    sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
    sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
}

/// Two namespaces joined by a veth pair named `veth0` on both ends.
pub struct TwoHosts {
    // Field order is drop order: the namespaces go last.
    pub a: Netns,
    pub b: Netns,
    pub a_addr: Ipv4Addr,
    pub b_addr: Ipv4Addr,
}

impl TwoHosts {
    pub const IFACE: &'static str = "veth0";

    pub fn new() -> anyhow::Result<Self> {
        let a = Netns::new("a")?;
        let b = Netns::new("b")?;
        quiet_ipv6(&a)?;
        quiet_ipv6(&b)?;
        let (a_addr, b_addr) = (Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2));
        a.veth_to(Self::IFACE, &b, Self::IFACE)?;
        for (ns, addr) in [(&a, a_addr), (&b, b_addr)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", Self::IFACE])?;
            ns.ip(&["link", "set", Self::IFACE, "up"])?;
        }
        Ok(Self {
            a,
            b,
            a_addr,
            b_addr,
        })
    }
}

/// Three namespaces in a line: client — router — server, the router forwarding between two
/// veth links (client 10.203.1.2 via 10.203.1.1, server 10.203.2.2 via 10.203.2.1).
pub struct Routed {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
}

impl Routed {
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 2);
    pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 203, 2, 2);
    /// Router interface names toward the client and the server.
    pub const TO_CLIENT: &'static str = "to-client";
    pub const TO_SERVER: &'static str = "to-server";

    pub fn new() -> anyhow::Result<Self> {
        let client = Netns::new("client")?;
        let router = Netns::new("router")?;
        let server = Netns::new("server")?;
        for ns in [&client, &router, &server] {
            quiet_ipv6(ns)?;
        }
        for (peer, router_if, net) in [(&client, Self::TO_CLIENT, 1), (&server, Self::TO_SERVER, 2)]
        {
            router.veth_to(router_if, peer, "eth0")?;
            router.ip(&[
                "addr",
                "add",
                &format!("10.203.{net}.1/24"),
                "dev",
                router_if,
            ])?;
            router.ip(&["link", "set", router_if, "up"])?;
            peer.ip(&["addr", "add", &format!("10.203.{net}.2/24"), "dev", "eth0"])?;
            peer.ip(&["link", "set", "eth0", "up"])?;
            peer.ip(&["route", "add", "default", "via", &format!("10.203.{net}.1")])?;
        }
        sysctl(&router, "net.ipv4.ip_forward", "1")?;
        Ok(Self {
            client,
            router,
            server,
        })
    }

    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd03, 1, 0, 0, 0, 0, 0, 2);
    pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd03, 2, 0, 0, 0, 0, 0, 2);

    /// Adds IPv6 to the same links: client fd03:1::2 via fd03:1::1, server fd03:2::2 via
    /// fd03:2::1 (addresses without duplicate detection, so they are usable at once).
    pub fn with_ipv6(self) -> anyhow::Result<Self> {
        for ns in [&self.client, &self.router, &self.server] {
            sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "0")?;
        }
        for (peer, router_if, net) in [
            (&self.client, Self::TO_CLIENT, 1),
            (&self.server, Self::TO_SERVER, 2),
        ] {
            sysctl(
                &self.router,
                &format!("net.ipv6.conf.{router_if}.disable_ipv6"),
                "0",
            )?;
            sysctl(peer, "net.ipv6.conf.eth0.disable_ipv6", "0")?;
            self.router.ip(&[
                "-6",
                "addr",
                "add",
                &format!("fd03:{net}::1/64"),
                "dev",
                router_if,
                "nodad",
            ])?;
            peer.ip(&[
                "-6",
                "addr",
                "add",
                &format!("fd03:{net}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            peer.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd03:{net}::1"),
            ])?;
        }
        sysctl(&self.router, "net.ipv6.conf.all.forwarding", "1")?;
        Ok(self)
    }
}

/// One "container": a namespace whose eth0 is a veth into the lab host's bridge.
pub struct Container {
    pub ns: Netns,
    pub name: String,
    pub addr: Ipv4Addr,
    /// Name of the host end of its veth, in the host namespace.
    pub host_if: String,
}

/// A host namespace with a Docker-like bridge `docker0` (172.17.0.1/16) and containers on it.
pub struct BridgeLab {
    pub containers: Vec<Container>,
    pub host: Netns,
}

impl BridgeLab {
    pub const BRIDGE: &'static str = "docker0";
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);

    /// `prefix` names the namespaces (`<prefix>host`, `<prefix><container>`); an existing lab
    /// of the same names is replaced.
    pub fn new(prefix: &str, containers: &[&str]) -> anyhow::Result<Self> {
        let host = Netns::named(&format!("{prefix}host"))?;
        quiet_ipv6(&host)?;
        host.ip(&["link", "add", Self::BRIDGE, "type", "bridge"])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{}/16", Self::GATEWAY),
            "dev",
            Self::BRIDGE,
        ])?;
        host.ip(&["link", "set", Self::BRIDGE, "up"])?;
        let mut lab = Self {
            containers: Vec::new(),
            host,
        };
        for (i, name) in containers.iter().enumerate() {
            let ns = Netns::named(&format!("{prefix}{name}"))?;
            quiet_ipv6(&ns)?;
            let addr = Ipv4Addr::new(172, 17, 0, 2 + i as u8);
            let host_if = format!("veth-{name}");
            lab.host.veth_to(&host_if, &ns, "eth0")?;
            lab.host
                .ip(&["link", "set", &host_if, "master", Self::BRIDGE, "up"])?;
            ns.ip(&["addr", "add", &format!("{addr}/16"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &Self::GATEWAY.to_string()])?;
            lab.containers.push(Container {
                ns,
                name: (*name).to_owned(),
                addr,
                host_if,
            });
        }
        Ok(lab)
    }

    /// Leaves every namespace in place (for `cargo xtask lab up`).
    pub fn keep(self) {
        for c in self.containers {
            c.ns.keep();
        }
        self.host.keep();
    }

    /// Removes a lab left in place; returns how many namespaces were deleted.
    pub fn remove(prefix: &str, containers: &[&str]) -> usize {
        std::iter::once("host")
            .chain(containers.iter().copied())
            .filter(|role| Netns::remove(&format!("{prefix}{role}")))
            .count()
    }

    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name} in the lab"))
    }
}
