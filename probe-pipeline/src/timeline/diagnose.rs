//! The last line of a timeline: what happened to the packet, in plain words. Each kind of end
//! is one function that either recognises the journey or passes it on; they are tried in order
//! of how decisive their evidence is (a drop, then a shadowed route, then where it left).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{
    Journey,
    evidence::{self, FactValue, Scene},
    is_exit,
};
use crate::{
    event::{
        ChainVerdict, DecidedBy, Direction, DropSighting, EventBody, FibLookup, Hook, HookVerdict,
        RT_TABLE_LOCAL, RuleVerdict, TcSighting, Verdict,
    },
    knowledge::{self, Cause},
    render::facts,
    topology::Topology,
};

/// How the journey ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// A journey's end: its outcome and the sentence that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    pub outcome: Outcome,
    pub text: String,
    /// For a drop: what caused it, from the knowledge of drop causes (its stable id, the
    /// evidence to look at, the next step).
    pub cause: Option<&'static Cause>,
    /// The evidence for the cause that could be read (from the timeline and the live host).
    pub facts: Vec<FactValue>,
}

impl Diagnosis {
    fn new(outcome: Outcome, text: String) -> Self {
        Self {
            outcome,
            text,
            cause: None,
            facts: Vec::new(),
        }
    }
}

/// What the diagnoses share: the journey, the host, and the rewrites said once.
struct Case<'a> {
    j: &'a Journey,
    topo: &'a Topology,
    /// ` after DNAT a → b`, or empty.
    after_nat: String,
}

pub fn diagnose(j: &Journey, topo: &Topology) -> Diagnosis {
    let rewrites: Vec<String> = j.rewrites.iter().map(|r| r.note()).collect();
    let after_nat = if rewrites.is_empty() {
        String::new()
    } else {
        format!(" after {}", rewrites.join(", "))
    };
    let case = Case { j, topo, after_nat };
    let mut d = dropped(&case)
        .or_else(|| shadowed_by_tunnel(&case))
        .or_else(|| last_tc_exit(&case))
        .or_else(|| local_delivery(&case))
        .or_else(|| unroutable(&case))
        .unwrap_or_else(|| incomplete(&case));
    // The errors the host sent about the packet, and for an error the packet it answers.
    for (n, e) in j.icmp_errors.iter().enumerate() {
        let lead = if n == 0 {
            "; the host answered with"
        } else {
            " and"
        };
        let _ = write!(d.text, "{lead} {}", e.sentence());
    }
    if let Some(a) = j.answers {
        let _ = write!(d.text, " (an ICMP error about packet {a})");
    }
    d
}

impl Case<'_> {
    fn rev_find<'b, T>(&'b self, f: impl Fn(&'b EventBody) -> Option<T>) -> Option<T> {
        self.j.hops.iter().rev().find_map(|h| f(&h.event.body))
    }

    /// ` (route table main: EHOSTUNREACH)`: the failed routing decision a drop followed.
    fn failed_route(&self) -> String {
        self.rev_find(|b| match b {
            EventBody::Fib(f) if f.failed() => Some(format!(
                " (route table {}: {})",
                table_of(f),
                f.error.as_deref().unwrap_or("no route")
            )),
            _ => None,
        })
        .unwrap_or_default()
    }

    /// The successful routing decision last made for the packet.
    fn route(&self) -> Option<&FibLookup> {
        self.rev_find(|b| match b {
            EventBody::Fib(f) if f.err == 0 && f.dev.is_some() => Some(f),
            _ => None,
        })
    }

    /// ` (rule pref N)` when a policy rule other than the default chose the table.
    fn by_rule(&self) -> String {
        self.rev_find(|b| match b {
            EventBody::Fib(f) if f.err == 0 && f.dev.is_some() => f.rule_pref,
            EventBody::FibRule(r) => Some(r.pref),
            _ => None,
        })
        .filter(|&p| p != 0)
        .map(|p| format!(" (rule pref {p})"))
        .unwrap_or_default()
    }
}

fn table_of(f: &FibLookup) -> String {
    f.table_label()
}

/// Dropped: name the rule or the chain's policy, else the hook/chain, else the kernel's reason
/// and place. A packet freed after it left or was delivered (a socket purging its queue on
/// close) was not dropped on the way: only drops before the first exit count.
fn dropped(c: &Case<'_>) -> Option<Diagnosis> {
    let j = c.j;
    let exit = j
        .hops
        .iter()
        .position(|h| is_exit(&h.event) && !matches!(h.event.body, EventBody::Drop(_)))
        .unwrap_or(usize::MAX);
    let drop = j
        .hops
        .iter()
        .take(exit)
        .find_map(|h| match &h.event.body {
            EventBody::Drop(d) => Some(d),
            _ => None,
        })
        .or_else(|| dropped_in_the_exits_queue(j, exit))?;
    let reason = drop
        .reason
        .clone()
        .unwrap_or_else(|| format!("code {}", drop.reason_code));
    let by_rule = c.rev_find(|b| match b {
        EventBody::Rule(r) if r.verdict == Verdict::Drop => Some(rule_drop(r)),
        _ => None,
    });
    let by_hook = c.rev_find(|b| match b {
        EventBody::Chain(ch) if ch.verdict == Verdict::Drop => Some(chain_drop(ch)),
        EventBody::Netfilter(n) if n.verdict == Verdict::Drop => Some(hook_drop(n)),
        _ => None,
    });
    let parties = containers_involved(j, c.topo);
    let after_nat = &c.after_nat;
    // A rule or hook that dropped is netfilter's doing, whatever the reason says (5.10 has none).
    let cause = if by_rule.is_some() {
        knowledge::by_rule(
            c.rev_find(|b| match b {
                EventBody::Rule(r) if r.verdict == Verdict::Drop => Some(r.rule.as_deref()),
                _ => None,
            })
            .flatten(),
        )
    } else if by_hook.is_some() {
        knowledge::by_reason("NETFILTER_DROP")
    } else {
        knowledge::cause(drop.reason.as_deref(), drop.location_sym.as_deref())
    };
    let text = match (by_rule, by_hook, cause) {
        (Some(rule), _, _) => format!("dropped by {rule}{after_nat} (reason {reason}){parties}"),
        (None, Some(hook), _) => {
            format!("dropped at {hook}{after_nat} (reason {reason}){parties}")
        }
        // Kernels before 5.17 name no reason (code 0): the cause came from the location.
        (None, None, Some(cause)) => format!(
            "dropped{after_nat}{}: {}{}{}{parties}",
            drop_location(drop),
            cause.explanation,
            c.failed_route(),
            drop.reason
                .as_ref()
                .map(|r| format!(" (reason {r})"))
                .unwrap_or_default()
        ),
        (None, None, None) => format!(
            "dropped{after_nat}: reason {reason}{}{parties}",
            drop_location(drop)
        ),
    };
    let facts = cause
        .map(|cause| {
            let scene = Scene {
                j,
                topo: c.topo,
                drop: Some(drop),
                route: c.route(),
            };
            evidence::gather(&scene, cause)
        })
        .unwrap_or_default();
    Some(Diagnosis {
        cause,
        facts,
        ..Diagnosis::new(Outcome::Dropped, text)
    })
}

/// tc egress runs before the device's queueing discipline: a packet seen leaving can still be
/// dropped by the qdisc or the device behind it, on that same device.
fn dropped_in_the_exits_queue(j: &Journey, exit: usize) -> Option<&DropSighting> {
    let exit_dev = match &j.hops.get(exit)?.event.body {
        EventBody::Tc(t) => t.ifindex,
        _ => return None,
    };
    j.hops[exit..].iter().find_map(|h| match &h.event.body {
        EventBody::Drop(d)
            if (d.ifindex == exit_dev || d.ifindex == 0)
                && knowledge::cause(d.reason.as_deref(), d.location_sym.as_deref())
                    .is_some_and(|c| matches!(c.id, "queue-discipline" | "device")) =>
        {
            Some(d)
        }
        _ => None,
    })
}

/// `inet firewalld/filter_FORWARD (forward) rule 2 [... drop]`, or `... (forward) policy drop`
/// when no rule matched and the base chain's policy decided.
fn rule_drop(r: &RuleVerdict) -> String {
    let hook = r.hook.map_or("?", Hook::nft_name);
    let place = format!("{} {}/{} ({hook})", r.family.nft_name(), r.table, r.chain);
    match r.decided_by {
        DecidedBy::Policy => format!("{place} policy drop"),
        DecidedBy::Rule => format!(
            "{place} rule {}{}",
            r.rule_handle.map(|h| h.to_string()).unwrap_or_default(),
            r.rule
                .as_ref()
                .map(|t| format!(" [{t}]"))
                .unwrap_or_default()
        ),
        other => format!("{place} {}", other.as_str()),
    }
}

fn chain_drop(c: &ChainVerdict) -> String {
    format!(
        "{} {}/{} at {}",
        c.engine.as_str(),
        c.table,
        c.chain,
        c.hook.kernel_name()
    )
}

fn hook_drop(n: &HookVerdict) -> String {
    format!("netfilter {}", n.hook.kernel_name())
}

fn drop_location(d: &DropSighting) -> String {
    d.location_sym
        .as_ref()
        .map(|l| format!(" in {l}"))
        .unwrap_or_default()
}

/// Routed into a tunnel although a bridge here owns the destination: the VPN story.
fn shadowed_by_tunnel(c: &Case<'_>) -> Option<Diagnosis> {
    let f = c.route()?;
    let dev = f.dev.as_deref().unwrap_or("");
    let bridge = c.topo.bridge_for(f.dst).filter(|_| c.topo.is_tunnel(dev))?;
    let container = c
        .topo
        .containers
        .by_addr(f.dst)
        .map(|n| format!(" (container {n})"))
        .unwrap_or_default();
    Some(Diagnosis::new(
        Outcome::Left,
        format!(
            "routed to {dev} by table {}{} — {}{container} belongs to {bridge}'s subnet, which \
             the VPN's route shadows",
            table_of(f),
            c.by_rule(),
            f.dst,
        ),
    ))
}

/// ` — hairpin NAT: ...` when a packet that came in from a container, addressed to one of
/// the host's own addresses (a published port), was rewritten and sent back to a container
/// (itself, or a neighbour on the bridge), which is what `--userland-proxy=false` and
/// hairpin-mode bridges do.
fn hairpin(c: &Case<'_>, out_ifindex: u32) -> String {
    let topo = c.topo;
    let Some(in_ifindex) = c.j.hops.iter().find_map(|h| match &h.event.body {
        EventBody::Tc(t)
            if t.direction == Direction::Ingress && topo.links.contains_key(&t.ifindex) =>
        {
            Some(t.ifindex)
        }
        _ => None,
    }) else {
        return String::new();
    };
    let Some(dnat) = c.j.rewrites.iter().find(|r| r.before.dst != r.after.dst) else {
        return String::new();
    };
    let to_host = topo.local_addrs.is_empty() || topo.local_addrs.contains(&dnat.before.dst);
    // From the very bridge subnet the rewrite sends it back to: a container's packet, not an
    // outside client's that came in through a veth of its own.
    let bridge = topo.bridge_for(dnat.before.src);
    let same_bridge = bridge.is_some() && bridge == topo.bridge_for(dnat.after.dst);
    if topo.kind(in_ifindex) != "veth" || !to_host || !same_bridge {
        return String::new();
    }
    let from = topo.iface_label(in_ifindex);
    let published = if dnat.before.dport != 0 {
        format!("{}:{}", dnat.before.dst, dnat.before.dport)
    } else {
        dnat.before.dst.to_string()
    };
    if in_ifindex == out_ifindex {
        format!(
            " — hairpin NAT: sent from {from} to the host's {published} and turned back to \
             where it came from"
        )
    } else {
        format!(
            " — hairpin NAT: sent from {from} to the host's {published} and turned back \
             into the bridge"
        )
    }
}

/// Delivered or left: judged by the last tc sighting in the traced namespace (a sighting
/// inside a container, past its veth, is the same delivery seen from the other end).
fn last_tc_exit(c: &Case<'_>) -> Option<Diagnosis> {
    let (topo, j, after_nat) = (c.topo, c.j, &c.after_nat);
    let t: &TcSighting = c
        .rev_find(|b| match b {
            EventBody::Tc(t) if !topo.is_inside(t.ifindex) => Some(t),
            _ => None,
        })
        .filter(|t| t.direction == Direction::Egress)?;
    let name = topo.name(t.ifindex);
    let to = match j.current {
        Some(cur) if cur.dport != 0 => format!(" to {}:{}", cur.dst, cur.dport),
        Some(cur) => format!(" to {}", cur.dst),
        None => String::new(),
    };
    let (outcome, text) = if topo.uplinks.contains(&name) {
        (
            Outcome::Left,
            format!("left the host through the uplink {name}{to}{after_nat}"),
        )
    } else if topo.kind(t.ifindex) == "veth" {
        let container = topo
            .container_of(t.ifindex)
            .or_else(|| j.current.and_then(|cur| topo.containers.by_addr(cur.dst)))
            .map(|n| format!(" (container {n})"))
            .unwrap_or_default();
        (
            Outcome::Delivered,
            format!(
                "delivered{to}{container} through {name}{after_nat}{}",
                hairpin(c, t.ifindex)
            ),
        )
    } else if topo.is_tunnel(&name) {
        (
            Outcome::Left,
            format!("sent into the tunnel {name}{after_nat}"),
        )
    } else {
        (Outcome::Left, format!("left through {name}{after_nat}"))
    };
    Some(Diagnosis::new(outcome, text))
}

/// Reached this host itself: accepted at INPUT, routed by the local table, or last seen
/// coming in on loopback. The socket that took it, and the process holding it, come from the
/// live host; a userland proxy (docker-proxy) is followed to where it forwards.
fn local_delivery(c: &Case<'_>) -> Option<Diagnosis> {
    let accepted = c
        .rev_find(|b| match b {
            EventBody::Netfilter(n) if n.hook == Hook::Input && n.verdict == Verdict::Accept => {
                Some(())
            }
            _ => None,
        })
        .is_some();
    let by_local_table = c.route().is_some_and(|f| f.table == RT_TABLE_LOCAL);
    let for_an_own_address =
        c.j.current
            .is_some_and(|t| c.topo.local_addrs.contains(&t.dst));
    let on_loopback = c
        .rev_find(|b| match b {
            EventBody::Tc(t) if !c.topo.is_inside(t.ifindex) => Some(t),
            _ => None,
        })
        .is_some_and(|t| t.direction == Direction::Ingress && c.topo.name(t.ifindex) == "lo");
    if !(accepted || by_local_table || for_an_own_address || on_loopback) {
        return None;
    }
    let after_nat = &c.after_nat;
    let socket = c.j.current.filter(|t| t.dport != 0).and_then(|t| {
        c.topo
            .host
            .get()?
            .socket(t.proto, (t.dst, t.dport), (t.src, t.sport))
    });
    let text = match socket {
        Some(owner) => {
            let proxy = owner
                .forwards_to
                .map(|(ip, port)| {
                    let container = c
                        .topo
                        .containers
                        .by_addr(ip)
                        .map(|n| format!(", container {n}"))
                        .unwrap_or_default();
                    let proxy = owner
                        .process
                        .as_ref()
                        .map(|(name, pid)| format!("{name} (pid {pid})"))
                        .unwrap_or_else(|| "the proxy".into());
                    format!("; forwarded by {proxy} to {ip}:{port}{container}")
                })
                .unwrap_or_default();
            format!("delivered to local socket {owner}{after_nat}{proxy}")
        }
        None => {
            let how = if for_an_own_address {
                "one of its own addresses"
            } else if by_local_table {
                "local route, table local"
            } else if accepted {
                "accepted at netfilter INPUT"
            } else {
                "came in on lo"
            };
            format!("delivered to this host ({how}){after_nat}")
        }
    };
    Some(Diagnosis::new(Outcome::Delivered, text))
}

/// A routing decision that found no route, and nothing was sent. Tables without a route that
/// the kernel tried before the one that decided are part of the decision, not failures.
fn unroutable(c: &Case<'_>) -> Option<Diagnosis> {
    let f = c.j.hops.iter().find_map(|h| match &h.event.body {
        EventBody::Fib(f) if f.failed() => Some(f),
        _ => None,
    })?;
    let text = if f.is_table_miss() {
        let mut tables = f.tables_before();
        tables.push(table_of(f));
        format!(
            "not routed: no route for {} (tables tried: {})",
            f.dst,
            tables.join(", ")
        )
    } else {
        format!(
            "not routed: {} for {} (table {})",
            f.error.as_deref().unwrap_or("error"),
            f.dst,
            table_of(f)
        )
    };
    Some(Diagnosis::new(Outcome::Unroutable, text))
}

fn incomplete(c: &Case<'_>) -> Diagnosis {
    let text = match c.route() {
        Some(f) => format!(
            "routed to {} by table {}{}, then not seen again{}",
            f.dev.as_deref().unwrap_or("?"),
            table_of(f),
            c.by_rule(),
            c.after_nat
        ),
        None => {
            let last =
                c.j.hops
                    .last()
                    .map(|h| facts::place(&h.event, c.topo))
                    .unwrap_or_default();
            format!("last seen at {last}{}", c.after_nat)
        }
    };
    Diagnosis::new(Outcome::Incomplete, text)
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
