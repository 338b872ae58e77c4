//! The container-host lab of the stories: a "host" namespace set up the way Docker sets up a
//! host (docker0 bridge, containers on veths, Docker's iptables chains, a published port), an
//! "outside" namespace that plays the network behind the host's uplink, and switches for the
//! incidents: a VPN that shadows the container subnet, a firewalld-style forward drop, and
//! Docker's `icc=false` with br_netfilter.
//!
//! Addresses: containers 172.17.0.0/16 (as Docker); host uplink 203.0.113.1/24 and "outside"
//! 203.0.113.2 (TEST-NET-3, documentation-only); VPN tun0 10.8.0.2/24. All of it lives in the
//! lab's namespaces.

use std::net::Ipv4Addr;

use crate::{BridgeLab, Netns, topology::sysctl};

pub struct HostLab {
    pub bridge: BridgeLab,
    pub outside: Netns,
}

/// Docker's nat and filter rules for docker0 with one published port (host 8080 → web:80),
/// in iptables-restore form, as `docker run -p 8080:80` leaves them.
const DOCKER_RULES: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

/// firewalld's shape: its own nftables table, a forward chain that drops what its zones do not
/// allow (here: container traffic leaving through the uplink).
const FIREWALLD_TABLE: &str = "\
table inet firewalld {
  chain filter_FORWARD {
    type filter hook forward priority filter + 10; policy accept;
    ip saddr 172.17.0.0/16 oifname \"eth0\" drop
  }
}
";

impl HostLab {
    pub const UPLINK: &'static str = "eth0";
    pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    pub const PUBLISHED_PORT: u16 = 8080;
    pub const WEB_PORT: u16 = 80;
    pub const VPN_IF: &'static str = "tun0";
    pub const VPN_TABLE: u32 = 51820;
    pub const VPN_RULE_PREF: u32 = 5209;

    /// Builds the lab with containers `web` (172.17.0.2) and `db` (172.17.0.3); namespaces are
    /// `<prefix>host`, `<prefix>web`, `<prefix>db`, `<prefix>outside` (existing ones replaced).
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let bridge = BridgeLab::new(prefix, &["web", "db"])?;
        let outside = Netns::named(&format!("{prefix}outside"))?;
        sysctl(&outside, "net.ipv6.conf.all.disable_ipv6", "1")?;
        let host = &bridge.host;
        host.veth_to(Self::UPLINK, &outside, Self::UPLINK)?;
        host.ip(&[
            "addr",
            "add",
            &format!("{}/24", Self::HOST_ADDR),
            "dev",
            Self::UPLINK,
        ])?;
        host.ip(&["link", "set", Self::UPLINK, "up"])?;
        outside.ip(&[
            "addr",
            "add",
            &format!("{}/24", Self::OUTSIDE_ADDR),
            "dev",
            Self::UPLINK,
        ])?;
        outside.ip(&["link", "set", Self::UPLINK, "up"])?;
        host.ip(&[
            "route",
            "add",
            "default",
            "via",
            &Self::OUTSIDE_ADDR.to_string(),
        ])?;
        sysctl(host, "net.ipv4.ip_forward", "1")?;
        // Bridged traffic meets iptables only when br_netfilter says so (story 4 turns it on).
        sysctl(host, "net.bridge.bridge-nf-call-iptables", "0")?;
        iptables_restore(host, DOCKER_RULES)?;
        Ok(Self { bridge, outside })
    }

    /// Leaves every namespace in place (for `cargo xtask lab up`).
    pub fn keep(self) {
        self.bridge.keep();
        self.outside.keep();
    }

    pub fn host(&self) -> &Netns {
        &self.bridge.host
    }

    pub fn web(&self) -> &crate::topology::Container {
        self.bridge.container("web")
    }

    pub fn db(&self) -> &crate::topology::Container {
        self.bridge.container("db")
    }

    /// What a VPN client does: a tun interface, its own routing table with a route for a
    /// prefix that covers the containers (longer than docker0's /16), and a policy rule.
    pub fn vpn_up(&self) -> anyhow::Result<()> {
        let host = self.host();
        host.ip(&["tuntap", "add", Self::VPN_IF, "mode", "tun"])?;
        host.ip(&["addr", "add", "10.8.0.2/24", "dev", Self::VPN_IF])?;
        host.ip(&["link", "set", Self::VPN_IF, "up"])?;
        let table = Self::VPN_TABLE.to_string();
        host.ip(&[
            "route",
            "add",
            "172.17.0.0/24",
            "dev",
            Self::VPN_IF,
            "table",
            &table,
        ])?;
        host.ip(&[
            "rule",
            "add",
            "to",
            "172.17.0.0/24",
            "table",
            &table,
            "pref",
            &Self::VPN_RULE_PREF.to_string(),
        ])?;
        Ok(())
    }

    pub fn vpn_down(&self) -> anyhow::Result<()> {
        let host = self.host();
        host.ip(&["rule", "del", "pref", &Self::VPN_RULE_PREF.to_string()])?;
        host.ip(&["link", "del", Self::VPN_IF])?;
        Ok(())
    }

    pub fn firewalld_forward_drop(&self) -> anyhow::Result<()> {
        nft_stdin(self.host(), FIREWALLD_TABLE)
    }

    pub fn remove_firewalld(&self) -> anyhow::Result<()> {
        self.host()
            .exec("nft", &["delete", "table", "inet", "firewalld"])
            .map(|_| ())
    }

    /// Docker with `icc=false`: container-to-container traffic on docker0 is dropped, which
    /// bridged traffic only meets once br_netfilter hands it to iptables.
    pub fn icc_false(&self, br_netfilter: bool) -> anyhow::Result<()> {
        let host = self.host();
        host.exec(
            "iptables",
            &[
                "-I", "FORWARD", "-i", "docker0", "-o", "docker0", "-j", "DROP",
            ],
        )?;
        sysctl(
            host,
            "net.bridge.bridge-nf-call-iptables",
            if br_netfilter { "1" } else { "0" },
        )
    }
}

fn iptables_restore(ns: &Netns, rules: &str) -> anyhow::Result<()> {
    piped(ns, "iptables-restore", &[], rules)
}

fn nft_stdin(ns: &Netns, script: &str) -> anyhow::Result<()> {
    piped(ns, "nft", &["-f", "-"], script)
}

/// Runs `program args` in `ns` with `input` on stdin.
fn piped(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
