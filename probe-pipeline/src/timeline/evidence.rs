//! The facts a diagnosis shows next to its cause: what the timeline holds (the routing
//! decision, the rule) and what the live host says at that moment (sysctls, the device's MTU
//! and queue, the neighbour entry, the socket). Each cause names the kinds of facts that bear
//! on it (`knowledge`); this module fills in those it can read, and leaves out the rest rather
//! than guess.

use std::{fmt::Write as _, net::IpAddr};

use schemars::JsonSchema;
use serde::Serialize;

use super::Journey;
use crate::{
    event::{Direction, DropSighting, EventBody, FibLookup, Transport, Verdict},
    host::HostFacts,
    knowledge::{Cause, Fact},
    topology::Topology,
};

/// Where a fact was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// From the packet's own timeline (also in a replay).
    Timeline,
    /// Read from the live host when the diagnosis was made.
    Host,
}

/// One fact of a diagnosis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FactValue {
    pub fact: Fact,
    /// The reading, in the words of the tool a user would check it with
    /// (`net.ipv4.conf.veth-a.rp_filter=1 (strict)`, `dev eth0 mtu 1400`).
    pub value: String,
    pub from: Source,
}

/// What the facts are read from: the journey, its drop and its routing decision.
pub(super) struct Scene<'a> {
    pub j: &'a Journey,
    pub topo: &'a Topology,
    pub drop: Option<&'a DropSighting>,
    pub route: Option<&'a FibLookup>,
}

/// The facts of `cause` that can be read, in the order the cause lists them.
pub(super) fn gather(s: &Scene<'_>, cause: &Cause) -> Vec<FactValue> {
    let host = s.topo.host.get();
    let mut out = Vec::new();
    for &fact in cause.facts {
        let reading = match fact {
            Fact::Route => route(s).map(|v| (v, Source::Timeline)),
            Fact::Rule => rule(s).map(|v| (v, Source::Timeline)),
            Fact::Mtu => host.and_then(|h| mtu(s, h)).map(|v| (v, Source::Host)),
            Fact::RpFilter => host
                .and_then(|h| rp_filter(s, h))
                .map(|v| (v, Source::Host)),
            Fact::Forwarding => host
                .and_then(|h| forwarding(s, h))
                .map(|v| (v, Source::Host)),
            Fact::BridgeNetfilter => host.map(bridge_netfilter).map(|v| (v, Source::Host)),
            Fact::RouteLocalnet => host
                .and_then(|h| route_localnet(s, h))
                .map(|v| (v, Source::Host)),
            Fact::Neighbour => host
                .and_then(|h| neighbour(s, h))
                .map(|v| (v, Source::Host)),
            Fact::Qdisc => host.and_then(|h| qdisc(s, h)).map(|v| (v, Source::Host)),
            Fact::Socket => host.and_then(|h| socket(s, h)).map(|v| (v, Source::Host)),
            // The error the host sent back, when its tc sighting was joined to the packet.
            Fact::IcmpError => {
                s.j.icmp_errors
                    .first()
                    .map(|e| (e.sentence(), Source::Timeline))
            }
            // Not read yet: the kernel exposes it to none of probe's programs today.
            Fact::Conntrack => None,
        };
        if let Some((value, from)) = reading {
            out.push(FactValue { fact, value, from });
        }
    }
    out
}

/// `table main: EHOSTUNREACH` or `table main -> dev eth0 via 10.0.0.1`.
fn route(s: &Scene<'_>) -> Option<String> {
    // The decision that failed, else the last one that succeeded.
    let f =
        s.j.hops
            .iter()
            .rev()
            .find_map(|h| match &h.event.body {
                EventBody::Fib(f) if f.failed() => Some(f),
                _ => None,
            })
            .or(s.route)?;
    let mut v = format!("{} table {}", f.dst, f.table_label());
    if f.failed() {
        let _ = write!(v, ": {}", f.error.as_deref().unwrap_or("no route"));
        if let Some(kind) = failed_route_kind(f) {
            let _ = write!(v, " ({kind})");
        }
    } else {
        if let Some(dev) = &f.dev {
            let _ = write!(v, " -> dev {dev}");
        }
        if let Some(gw) = f.gateway {
            let _ = write!(v, " via {gw}");
        }
    }
    Some(v)
}

/// What kind of route refused the packet, by the kernel's errno for each route type.
fn failed_route_kind(f: &FibLookup) -> Option<&'static str> {
    match f.error.as_deref()? {
        "EHOSTUNREACH" => Some("an unreachable route"),
        "EACCES" => Some("a prohibit route"),
        "EINVAL" => Some("a blackhole route"),
        "ENETUNREACH" => Some("no route at all"),
        "EAGAIN" => Some("no route in this table"),
        _ => None,
    }
}

/// The rule or chain policy that dropped, as the timeline names it.
fn rule(s: &Scene<'_>) -> Option<String> {
    s.j.hops.iter().rev().find_map(|h| match &h.event.body {
        EventBody::Rule(r) if r.verdict == Verdict::Drop => Some(match &r.rule {
            Some(text) => format!("{}/{} rule [{text}]", r.table, r.chain),
            None => format!("{}/{} {}", r.table, r.chain, r.decided_by.as_str()),
        }),
        EventBody::Chain(c) if c.verdict == Verdict::Drop => {
            Some(format!("{} {}/{}", c.engine.as_str(), c.table, c.chain))
        }
        _ => None,
    })
}

/// The interface the packet came in on in the traced namespace: the first tc ingress.
fn input_dev(s: &Scene<'_>) -> Option<String> {
    s.j.hops
        .iter()
        .find_map(|h| match &h.event.body {
            EventBody::Tc(t)
                if t.direction == Direction::Ingress && s.topo.links.contains_key(&t.ifindex) =>
            {
                Some(t.ifindex)
            }
            _ => None,
        })
        .or_else(|| s.drop.map(|d| d.ifindex).filter(|&i| i != 0))
        .map(|i| s.topo.name(i))
}

/// The device the packet was to leave by: the route's, else the one it was dropped on.
fn output_dev(s: &Scene<'_>) -> Option<String> {
    s.route.and_then(|f| f.dev.clone()).or_else(|| {
        s.drop
            .map(|d| d.ifindex)
            .filter(|&i| i != 0)
            .map(|i| s.topo.name(i))
    })
}

fn is_v6(s: &Scene<'_>) -> bool {
    s.j.first.is_some_and(|t| t.dst.is_ipv6()) || s.route.is_some_and(|f| f.dst.is_ipv6())
}

/// `dev eth0 mtu 1400; the packet was 1500 bytes`.
fn mtu(s: &Scene<'_>, h: &dyn HostFacts) -> Option<String> {
    let dev = output_dev(s)?;
    let mtu = h.mtu(&dev)?;
    let mut v = format!("dev {dev} mtu {mtu}");
    if let Some(len) = s.drop.map(|d| d.packet.len).filter(|&l| l != 0) {
        let _ = write!(v, "; the packet was {len} bytes");
    }
    Some(v)
}

/// rp_filter of the input device and of `all`: the kernel applies the larger.
fn rp_filter(s: &Scene<'_>, h: &dyn HostFacts) -> Option<String> {
    let dev = input_dev(s)?;
    let own = h.sysctl(&format!("net/ipv4/conf/{dev}/rp_filter"))?;
    let all = h.sysctl("net/ipv4/conf/all/rp_filter").unwrap_or_default();
    let effective = own.parse::<u8>().unwrap_or(0).max(all.parse().unwrap_or(0));
    let mode = match effective {
        0 => "off",
        1 => "strict: the reply route must leave by the same interface",
        _ => "loose: any route back will do",
    };
    Some(format!(
        "net.ipv4.conf.{dev}.rp_filter={own}, net.ipv4.conf.all.rp_filter={all} ({mode})"
    ))
}

fn forwarding(s: &Scene<'_>, h: &dyn HostFacts) -> Option<String> {
    if is_v6(s) {
        let v = h.sysctl("net/ipv6/conf/all/forwarding")?;
        Some(format!("net.ipv6.conf.all.forwarding={v}"))
    } else {
        let v = h.sysctl("net/ipv4/ip_forward")?;
        let dev = input_dev(s)
            .and_then(|d| {
                h.sysctl(&format!("net/ipv4/conf/{d}/forwarding"))
                    .map(|f| format!(", net.ipv4.conf.{d}.forwarding={f}"))
            })
            .unwrap_or_default();
        Some(format!("net.ipv4.ip_forward={v}{dev}"))
    }
}

fn bridge_netfilter(h: &dyn HostFacts) -> String {
    match h.sysctl("net/bridge/bridge-nf-call-iptables") {
        Some(v) => format!("net.bridge.bridge-nf-call-iptables={v}"),
        None => "br_netfilter is not loaded: bridged packets skip iptables".to_owned(),
    }
}

fn route_localnet(s: &Scene<'_>, h: &dyn HostFacts) -> Option<String> {
    let all = h.sysctl("net/ipv4/conf/all/route_localnet")?;
    let dev = input_dev(s)
        .and_then(|d| {
            h.sysctl(&format!("net/ipv4/conf/{d}/route_localnet"))
                .map(|v| format!(", net.ipv4.conf.{d}.route_localnet={v}"))
        })
        .unwrap_or_default();
    Some(format!("net.ipv4.conf.all.route_localnet={all}{dev}"))
}

/// The next hop's entry: the route's gateway, else the destination itself.
fn neighbour(s: &Scene<'_>, h: &dyn HostFacts) -> Option<String> {
    let dev = output_dev(s)?;
    let next: IpAddr = s
        .route
        .and_then(|f| f.gateway)
        .or_else(|| s.route.map(|f| f.dst))
        .or_else(|| s.j.current.map(|t| t.dst))?;
    Some(match h.neighbour(next, &dev) {
        Some(entry) => format!("{next} dev {dev} {entry}"),
        None => format!("{next} dev {dev}: no neighbour entry"),
    })
}

fn qdisc(s: &Scene<'_>, h: &dyn HostFacts) -> Option<String> {
    let dev = output_dev(s)?;
    h.qdisc(&dev).map(|q| format!("dev {dev} qdisc {q}"))
}

/// The socket a packet for its destination would find, or that there is none.
fn socket(s: &Scene<'_>, h: &dyn HostFacts) -> Option<String> {
    let t = s.j.current?;
    // Dropped inside another namespace (a container's): the host's sockets are not its own.
    if s.drop
        .is_some_and(|d| s.topo.foreign_netns(u64::from(d.netns)).is_some())
    {
        return None;
    }
    if !matches!(t.proto, Transport::Tcp | Transport::Udp) || t.dport == 0 {
        return None;
    }
    let proto = if t.proto == Transport::Tcp {
        "tcp"
    } else {
        "udp"
    };
    Some(
        match h.socket(t.proto, (t.dst, t.dport), (t.src, t.sport)) {
            Some(owner) => format!("{proto} socket {owner}"),
            None => format!("no {proto} socket bound to port {} here", t.dport),
        },
    )
}
