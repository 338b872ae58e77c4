//! The last line of a timeline: what happened to the packet, in plain words.

use std::{collections::HashMap, net::IpAddr};

use serde::Serialize;

use super::Journey;
use crate::event::{Direction, EventBody};

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
    pub containers: crate::docker::Containers,
    /// Inode of the traced network namespace (0: unknown).
    #[serde(default)]
    pub own_netns: u64,
    /// Names of namespaces made with `ip netns add`, by inode.
    #[serde(default)]
    pub netns_names: std::collections::BTreeMap<u64, String>,
}

impl Topology {
    fn kind_of_name(&self, name: &str) -> &str {
        self.links
            .values()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
            .unwrap_or("")
    }

    fn name(&self, ifindex: u32) -> String {
        self.links
            .get(&ifindex)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("if{ifindex}"))
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
        if ifindex != 0
            && !self.links.contains_key(&ifindex)
            && let Some((c, name)) = self.containers.inside(ifindex)
        {
            return format!("{name} in container {c}");
        }
        let name = if ifindex == 0 {
            "-".to_owned()
        } else {
            self.name(ifindex)
        };
        match self.container_of(ifindex) {
            Some(c) => format!("{name} (container {c})"),
            None => name,
        }
    }

    fn is_inside(&self, ifindex: u32) -> bool {
        !self.links.contains_key(&ifindex) && self.containers.inside(ifindex).is_some()
    }

    fn bridge_for(&self, addr: IpAddr) -> Option<&str> {
        self.bridge_subnets
            .iter()
            .find(|(net, len, _)| in_subnet(addr, *net, *len))
            .map(|(_, _, name)| name.as_str())
    }

    fn is_tunnel(&self, name: &str) -> bool {
        matches!(
            self.kind_of_name(name),
            "tun" | "wireguard" | "ipip" | "gre" | "vti" | "xfrm"
        ) || name.starts_with("tun")
            || name.starts_with("wg")
    }
}

/// `; container a → container b` for a journey between containers Docker named (either side
/// alone when only one is a container), else nothing.
fn containers_involved(j: &Journey, topo: &Topology) -> String {
    let from = j
        .hops
        .iter()
        .find_map(|h| match &h.event.body {
            EventBody::Tc(t) if t.direction == Direction::Ingress => Some(t.ifindex),
            _ => None,
        })
        .and_then(|i| topo.container_of(i))
        .or_else(|| j.first.and_then(|t| topo.containers.by_addr(t.src)));
    let to = j.current.and_then(|t| topo.containers.by_addr(t.dst));
    match (from, to) {
        (Some(a), Some(b)) => format!("; container {a} → container {b}"),
        (Some(a), None) => format!("; from container {a}"),
        (None, Some(b)) => format!("; to container {b}"),
        (None, None) => String::new(),
    }
}

fn in_subnet(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// How the journey ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Dropped,
    /// Went into a container's interface or a local socket.
    Delivered,
    /// Left the host (uplink or tunnel).
    Left,
    /// A routing lookup failed: nothing was sent.
    Unroutable,
    /// Last seen somewhere with no end in sight.
    Incomplete,
}

pub fn diagnose(j: &Journey, topo: &Topology) -> (Outcome, String) {
    let rewrites: Vec<String> = j.rewrites.iter().map(super::render::rewrite_note).collect();
    let after_nat = if rewrites.is_empty() {
        String::new()
    } else {
        format!(" after {}", rewrites.join(", "))
    };

    // Dropped: name the rule, else the hook/chain, else the kernel's reason and place.
    // A packet freed after it left or was delivered (a socket purging its queue on close) was
    // not dropped on the way: only drops before the first exit count.
    let exit = j
        .hops
        .iter()
        .position(|h| super::is_exit(&h.event) && !matches!(h.event.body, EventBody::Drop(_)))
        .unwrap_or(usize::MAX);
    if let Some(drop) = j.hops.iter().take(exit).find_map(|h| match &h.event.body {
        EventBody::Drop(d) => Some(d),
        _ => None,
    }) {
        let reason = drop
            .reason
            .clone()
            .unwrap_or_else(|| format!("code {}", drop.reason_code));
        let by_rule = j.hops.iter().rev().find_map(|h| match &h.event.body {
            EventBody::Rule(r) if r.verdict == "drop" => Some(format!(
                "{} {}/{} ({}) rule {}{}",
                r.family,
                r.table,
                r.chain,
                r.hook.as_deref().unwrap_or("?"),
                r.rule_handle.map(|h| h.to_string()).unwrap_or_default(),
                r.rule
                    .as_ref()
                    .map(|t| format!(" [{t}]"))
                    .unwrap_or_default()
            )),
            EventBody::Rule(r) if r.decided_by == "policy" && r.verdict == "drop" => {
                Some(format!("{} {}/{} policy DROP", r.family, r.table, r.chain))
            }
            _ => None,
        });
        let by_hook = j.hops.iter().rev().find_map(|h| match &h.event.body {
            EventBody::Chain(c) if c.verdict == "drop" => Some(format!(
                "{} {}/{} at {}",
                c.engine, c.table, c.chain, c.hook
            )),
            EventBody::Netfilter(n) if n.verdict == "drop" => Some(format!("netfilter {}", n.hook)),
            _ => None,
        });
        let at = drop
            .location_sym
            .as_ref()
            .map(|l| format!(" in {l}"))
            .unwrap_or_default();
        let parties = containers_involved(j, topo);
        let text = match (by_rule, by_hook) {
            (Some(rule), _) => format!("dropped by {rule}{after_nat} (reason {reason}){parties}"),
            (None, Some(hook)) => {
                format!("dropped at {hook}{after_nat} (reason {reason}){parties}")
            }
            (None, None) => format!("dropped{after_nat}: reason {reason}{at}{parties}"),
        };
        return (Outcome::Dropped, text);
    }

    // Routed into a tunnel although a bridge here owns the destination: the VPN story.
    let route = j.hops.iter().rev().find_map(|h| match &h.event.body {
        EventBody::Fib(f) if f.err == 0 && f.dev.is_some() => Some(f),
        _ => None,
    });
    let rule = j.hops.iter().rev().find_map(|h| match &h.event.body {
        EventBody::FibRule(r) if r.pref != 0 => Some(r),
        _ => None,
    });
    if let Some(f) = route {
        let dev = f.dev.as_deref().unwrap_or("");
        let table = f.table_name.clone().unwrap_or_else(|| f.table.to_string());
        let by_rule = rule
            .map(|r| format!(" (rule pref {})", r.pref))
            .unwrap_or_default();
        if topo.is_tunnel(dev)
            && let Some(bridge) = topo.bridge_for(f.dst)
        {
            return (
                Outcome::Left,
                format!(
                    "routed to {dev} by table {table}{by_rule} — {}{} belongs to {bridge}'s \
                     subnet, which the VPN's route shadows",
                    f.dst,
                    topo.containers
                        .by_addr(f.dst)
                        .map(|c| format!(" (container {c})"))
                        .unwrap_or_default()
                ),
            );
        }
    }

    // Delivered or left: judged by the last tc sighting in the traced namespace (a sighting
    // inside a container, past its veth, is the same delivery seen from the other end).
    let last_tc = j.hops.iter().rev().find_map(|h| match &h.event.body {
        EventBody::Tc(t) if !topo.is_inside(t.ifindex) => Some(t),
        _ => None,
    });
    if let Some(t) = last_tc {
        let name = topo.name(t.ifindex);
        let kind = topo
            .links
            .get(&t.ifindex)
            .map(|(_, k)| k.as_str())
            .unwrap_or("");
        let to = match j.current {
            Some(c) if c.dport != 0 => format!(" to {}:{}", c.dst, c.dport),
            Some(c) => format!(" to {}", c.dst),
            None => String::new(),
        };
        if t.direction == Direction::Egress {
            if topo.uplinks.contains(&name) {
                return (
                    Outcome::Left,
                    format!("left the host through the uplink {name}{to}{after_nat}"),
                );
            }
            if kind == "veth" {
                let container = topo
                    .container_of(t.ifindex)
                    .or_else(|| j.current.and_then(|c| topo.containers.by_addr(c.dst)))
                    .map(|c| format!(" (container {c})"))
                    .unwrap_or_default();
                return (
                    Outcome::Delivered,
                    format!("delivered{to}{container} through {name}{after_nat}"),
                );
            }
            if topo.is_tunnel(&name) {
                return (
                    Outcome::Left,
                    format!("sent into the tunnel {name}{after_nat}"),
                );
            }
            return (Outcome::Left, format!("left through {name}{after_nat}"));
        }
    }
    let local = j.hops.iter().any(|h| {
        matches!(&h.event.body, EventBody::Netfilter(n) if n.hook == "INPUT" && n.verdict == "accept")
    });
    if local {
        return (
            Outcome::Delivered,
            format!("delivered to a local socket{after_nat}"),
        );
    }
    if let Some(f) = j.hops.iter().find_map(|h| match &h.event.body {
        EventBody::Fib(f) if f.err != 0 && f.err != -libc::EAGAIN => Some(f),
        _ => None,
    }) {
        let table = f.table_name.clone().unwrap_or_else(|| f.table.to_string());
        return (
            Outcome::Unroutable,
            format!(
                "not routed: {} for {} (table {table})",
                f.error.as_deref().unwrap_or("error"),
                f.dst
            ),
        );
    }
    if let Some(f) = route {
        let dev = f.dev.as_deref().unwrap_or("?");
        let table = f.table_name.clone().unwrap_or_else(|| f.table.to_string());
        let by_rule = rule
            .map(|r| format!(" (rule pref {})", r.pref))
            .unwrap_or_default();
        return (
            Outcome::Incomplete,
            format!("routed to {dev} by table {table}{by_rule}, then not seen again{after_nat}"),
        );
    }
    let last = j
        .hops
        .last()
        .map(|h| super::render::place(&h.event, topo))
        .unwrap_or_default();
    (
        Outcome::Incomplete,
        format!("last seen at {last}{after_nat}"),
    )
}
