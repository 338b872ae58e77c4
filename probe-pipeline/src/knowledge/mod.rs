//! What a drop means: for each of the kernel's drop reasons (`enum skb_drop_reason`) and, for
//! kernels without reasons (5.10), for the function that freed the packet, a stable cause id,
//! what happened in plain words, what probe can attach as evidence, and what to look at next.
//!
//! The knowledge is data (`reasons.rs`), not code: one row per cause with the reasons it
//! covers. A reason no row names still gets a sentence (the kernel's name and where it was
//! freed) and is listed as uncovered by `probe explain --all`.

mod reasons;

use serde::Serialize;

/// Evidence a diagnosis can carry next to a cause: what probe reads from the timeline or the
/// host when the cause is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fact {
    /// The routing decision: table, result, route type (unreachable, blackhole, prohibit).
    Route,
    /// The output device's MTU, the packet's size and its DF flag.
    Mtu,
    /// rp_filter of the input interface (and `all`).
    RpFilter,
    /// net.ipv4.ip_forward / net.ipv6.conf.all.forwarding.
    Forwarding,
    /// net.bridge.bridge-nf-call-iptables (br_netfilter).
    BridgeNetfilter,
    /// net.ipv4.conf.*.route_localnet.
    RouteLocalnet,
    /// The netfilter rule or chain policy that decided.
    Rule,
    /// The connection's conntrack state.
    Conntrack,
    /// The neighbour (ARP/NDP) entry of the next hop.
    Neighbour,
    /// The queueing discipline of the device.
    Qdisc,
    /// The local sockets bound to the destination (or their absence).
    Socket,
    /// The ICMP error the host answered with.
    IcmpError,
}

impl Fact {
    /// How a text diagnosis introduces the fact.
    pub fn label(self) -> &'static str {
        match self {
            Fact::Route => "route",
            Fact::Mtu => "mtu",
            Fact::RpFilter => "rp_filter",
            Fact::Forwarding => "forwarding",
            Fact::BridgeNetfilter => "br_netfilter",
            Fact::RouteLocalnet => "route_localnet",
            Fact::Rule => "rule",
            Fact::Conntrack => "conntrack",
            Fact::Neighbour => "neighbour",
            Fact::Qdisc => "qdisc",
            Fact::Socket => "socket",
            Fact::IcmpError => "icmp",
        }
    }
}

/// One cause of drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Cause {
    /// Stable, for scripts and dashboards: `no-socket`, `netfilter`, `mtu`, ...
    pub id: &'static str,
    /// What happened, in plain words, without the kernel's vocabulary.
    pub explanation: &'static str,
    /// What probe can attach as evidence.
    pub facts: &'static [Fact],
    /// What to look at or do next.
    pub next: &'static str,
}

/// A row of the knowledge: a cause and the reason names (or freeing functions) it covers.
struct Row {
    cause: Cause,
    /// Drop-reason names (without `SKB_DROP_REASON_`); a trailing `*` covers a prefix.
    reasons: &'static [&'static str],
    /// Functions that free with this cause on kernels without reasons (5.10).
    functions: &'static [&'static str],
}

/// A reason that, raised in a given function, has a narrower cause than the reason alone.
struct Refined {
    reason: &'static str,
    function: &'static str,
    cause: &'static str,
}

fn by_id(id: &str) -> Option<&'static Cause> {
    reasons::ROWS.iter().map(|r| &r.cause).find(|c| c.id == id)
}

fn covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The cause of the kernel's drop reason `name` (as the running kernel spells it).
pub fn by_reason(name: &str) -> Option<&'static Cause> {
    let name = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(name);
    reasons::ROWS
        .iter()
        .find(|r| r.reasons.iter().any(|p| covers(p, name)))
        .map(|r| &r.cause)
}

/// The cause of a drop by the function that freed the packet, for kernels without reasons.
/// `location` may carry an offset (`ip_error+0x94`).
pub fn by_function(location: &str) -> Option<&'static Cause> {
    let function = function_of(location);
    reasons::ROWS
        .iter()
        .find(|r| r.functions.contains(&function))
        .map(|r| &r.cause)
}

/// The function of a drop location: `ip_rcv_finish_core.constprop.0+0x1ab` is
/// `ip_rcv_finish_core` (the compiler's clones carry a suffix after a dot).
fn function_of(location: &str) -> &str {
    let function = location.split('+').next().unwrap_or(location);
    function.split('.').next().unwrap_or(function)
}

/// The cause of a drop: its reason where the kernel gave a specific one, else where it was
/// freed. A place may narrow a generic reason, NOT_SPECIFIED included.
pub fn cause(reason: Option<&str>, location: Option<&str>) -> Option<&'static Cause> {
    let specific =
        reason.filter(|r| !matches!(*r, "NOT_SPECIFIED" | "SKB_DROP_REASON_NOT_SPECIFIED"));
    let function = location.map(function_of);
    let refined = reason.zip(function).and_then(|(r, f)| {
        let r = r.strip_prefix("SKB_DROP_REASON_").unwrap_or(r);
        reasons::REFINED
            .iter()
            .find(|x| x.reason == r && x.function == f)
            .and_then(|x| by_id(x.cause))
    });
    refined
        .or_else(|| specific.and_then(by_reason))
        .or_else(|| location.and_then(by_function))
}

/// The cause of a drop by a netfilter rule, from the rule's text: a rule that drops what
/// conntrack calls INVALID is conntrack's doing; any other is the rule's.
pub fn by_rule(rule_text: Option<&str>) -> Option<&'static Cause> {
    let invalid = rule_text.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t.contains("ct state invalid") || t.contains("ctstate invalid")
    });
    by_id(if invalid {
        "conntrack-invalid"
    } else {
        "netfilter"
    })
}

/// Every cause, for `probe explain --all`.
pub fn all() -> impl Iterator<Item = (&'static Cause, &'static [&'static str])> {
    reasons::ROWS.iter().map(|r| (&r.cause, r.reasons))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_row_says_something() {
        let mut ids: Vec<&str> = reasons::ROWS.iter().map(|r| r.cause.id).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate cause ids");
        for r in reasons::ROWS {
            let c = &r.cause;
            assert!(
                c.id.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'),
                "{}",
                c.id
            );
            assert!(c.explanation.len() > 20 && c.next.len() > 20, "{}", c.id);
            let refined =
                reasons::REFINED.iter().any(|x| x.cause == c.id) || c.id == "conntrack-invalid";
            assert!(
                !r.reasons.is_empty() || !r.functions.is_empty() || refined,
                "{}",
                c.id
            );
        }
    }

    #[test]
    fn no_reason_belongs_to_two_causes() {
        for (i, a) in reasons::ROWS.iter().enumerate() {
            for b in &reasons::ROWS[i + 1..] {
                for p in a.reasons {
                    for q in b.reasons {
                        let clash = covers(p, q.trim_end_matches('*'))
                            || covers(q, p.trim_end_matches('*'));
                        assert!(!clash, "{p} ({}) and {q} ({})", a.cause.id, b.cause.id);
                    }
                }
            }
        }
    }

    #[test]
    fn reasons_and_locations_find_their_cause() {
        assert_eq!(by_reason("NO_SOCKET").unwrap().id, "no-socket");
        assert_eq!(
            by_reason("SKB_DROP_REASON_NETFILTER_DROP").unwrap().id,
            "netfilter"
        );
        assert_eq!(by_reason("TCP_MD5FAILURE").unwrap().id, "tcp-auth");
        assert_eq!(by_function("ip_error+0x94").unwrap().id, "no-route");
        // A specific reason wins; NOT_SPECIFIED falls back to the location.
        assert_eq!(
            cause(Some("NOT_SPECIFIED"), Some("ip_error+0x94"))
                .unwrap()
                .id,
            "no-route"
        );
        assert_eq!(
            cause(Some("PKT_TOO_BIG"), Some("ip_forward+0x2c0"))
                .unwrap()
                .id,
            "mtu"
        );
        assert!(cause(Some("SOMETHING_NEW"), Some("somewhere+0x1")).is_none());
        // The place narrows a generic reason.
        assert_eq!(
            cause(Some("IP_INHDR"), Some("ip_forward+0x1f0"))
                .unwrap()
                .id,
            "ttl-exceeded"
        );
        assert_eq!(
            cause(Some("IP_INHDR"), Some("ip_rcv_core+0x9")).unwrap().id,
            "malformed"
        );
        assert_eq!(
            cause(Some("IP_INADDRERRORS"), Some("ip_error+0x94"))
                .unwrap()
                .id,
            "forwarding-disabled"
        );
        // 6.1 frees what the input route lookup refused, other than by rp_filter, without
        // a reason; a kernel without reasons (5.10) gives none, and the place alone is not
        // enough there (rp_filter drops in the same place).
        assert_eq!(
            cause(
                Some("NOT_SPECIFIED"),
                Some("ip_rcv_finish_core.constprop.0+0x1ab")
            )
            .unwrap()
            .id,
            "martian-address"
        );
        assert!(cause(None, Some("ip_rcv_finish_core.constprop.0+0x1ab")).is_none());
        assert_eq!(by_function("ip_error.isra.0+0x94").unwrap().id, "no-route");
        for r in reasons::REFINED {
            assert!(by_id(r.cause).is_some(), "{}", r.cause);
        }
        assert_eq!(
            by_rule(Some("ct state invalid counter drop")).unwrap().id,
            "conntrack-invalid"
        );
        assert_eq!(
            by_rule(Some("-m conntrack --ctstate INVALID -j DROP"))
                .unwrap()
                .id,
            "conntrack-invalid"
        );
        assert_eq!(by_rule(Some("udp dport 53 drop")).unwrap().id, "netfilter");
        assert_eq!(by_rule(None).unwrap().id, "netfilter");
    }
}
