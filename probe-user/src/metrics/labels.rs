//! Label sets of probe's series and how kernel numbers become their values: reasons by the
//! running kernel's names, places by function and interface name, namespaces by container
//! or `ip netns` name. Every label has a cap on its distinct values; past it, `other`.

use std::collections::{HashMap, HashSet};

use probe_common::{DropCountKey, HopPoint, RouteFailKey, direction, family};
use probe_pipeline::{
    names::{DropReasons, KernelSymbols, RouteTables},
    topology::Topology,
};
use prometheus_client::encoding::EncodeLabelSet;

/// The value a label takes past its cap.
pub const OTHER: &str = "other";

/// Labels of `probe_drops_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DropLabels {
    /// The kernel's name of the drop reason (`NETFILTER_DROP`, `NO_SOCKET`, ...).
    pub reason: String,
    /// The kernel function that dropped the packet.
    pub location: String,
    /// The skb's interface (`-` for none).
    pub interface: String,
    /// The container, `ip netns` name or inode of the skb's namespace; `host` for probe's own.
    pub netns: String,
}

/// Labels of `probe_route_lookup_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RouteLabels {
    pub family: String,
    pub table: String,
    pub errno: String,
}

/// Labels of `probe_hop_latency_seconds`: a packet seen at `from` and next at `to`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct HopLabels {
    pub from_iface: String,
    pub from_dir: String,
    pub to_iface: String,
    pub to_dir: String,
}

/// What puts names on the kernel's numbers.
pub struct Namer<'a> {
    pub topology: &'a Topology,
    pub reasons: &'a DropReasons,
    pub symbols: &'a KernelSymbols,
    pub tables: &'a RouteTables,
}

/// A label set and whether every part of it is a final name (an interface not yet known by
/// name is asked again at the next scrape).
pub struct Named<L> {
    pub labels: L,
    pub settled: bool,
}

impl Namer<'_> {
    pub fn drop(&self, k: &DropCountKey, caps: &mut Caps) -> Named<DropLabels> {
        let reason = match self.reasons.name(k.reason) {
            Some(n) => n.to_owned(),
            None if k.reason == 0 => "unreported".to_owned(),
            None => format!("reason_{}", k.reason),
        };
        let location = self
            .symbols
            .symbolize(k.location)
            .map(|s| s.split('+').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let own = self.topology.own_netns;
        let here = k.netns_inum == 0 || u64::from(k.netns_inum) == own;
        let (interface, iface_known) = if k.ifindex == 0 {
            ("-".to_owned(), true)
        } else if here {
            (
                self.topology.name(k.ifindex),
                self.topology.links.contains_key(&k.ifindex),
            )
        } else {
            // Another namespace's interfaces are not read: its index is all there is.
            (format!("if{}", k.ifindex), true)
        };
        let (netns, netns_known) = self.netns(k.netns_inum);
        Named {
            labels: DropLabels {
                reason: caps.admit("reason", reason),
                location: caps.admit("location", location),
                interface: caps.admit("interface", interface),
                netns: caps.admit("netns", netns),
            },
            settled: iface_known && netns_known,
        }
    }

    /// A namespace's name, and whether it is final (an inode may get a container's name once
    /// Docker reports it).
    fn netns(&self, inum: u32) -> (String, bool) {
        let inum = u64::from(inum);
        let t = self.topology;
        if inum == 0 {
            return ("unknown".to_owned(), true);
        }
        if let Some(c) = t.containers.by_netns(inum) {
            return (c.to_owned(), true);
        }
        if let Some(n) = t.netns_names.get(&inum) {
            return (n.clone(), true);
        }
        if inum == t.own_netns {
            return ("host".to_owned(), true);
        }
        (inum.to_string(), false)
    }

    pub fn route(&self, k: &RouteFailKey, caps: &mut Caps) -> Named<RouteLabels> {
        let fam = match k.family {
            family::IPV4 => "ipv4",
            family::IPV6 => "ipv6",
            _ => "other",
        };
        let table = self
            .tables
            .name(k.table)
            .map_or_else(|| k.table.to_string(), str::to_owned);
        Named {
            labels: RouteLabels {
                family: fam.to_owned(),
                table: caps.admit("table", table),
                errno: caps.admit("errno", errno_name(k.err)),
            },
            settled: true,
        }
    }

    pub fn hop(&self, from: HopPoint, to: HopPoint, caps: &mut Caps) -> Named<HopLabels> {
        let dir = |p: HopPoint| {
            if p.direction == direction::EGRESS {
                "egress"
            } else {
                "ingress"
            }
        };
        let known = |p: HopPoint| self.topology.links.contains_key(&p.ifindex);
        Named {
            labels: HopLabels {
                from_iface: caps.admit("interface", self.topology.name(from.ifindex)),
                from_dir: dir(from).to_owned(),
                to_iface: caps.admit("interface", self.topology.name(to.ifindex)),
                to_dir: dir(to).to_owned(),
            },
            settled: known(from) && known(to),
        }
    }
}

/// The symbolic name of a routing lookup's negative errno.
pub fn errno_name(err: i32) -> String {
    match -err {
        3 => "ESRCH".to_owned(),
        11 => "EAGAIN".to_owned(),
        13 => "EACCES".to_owned(),
        22 => "EINVAL".to_owned(),
        101 => "ENETUNREACH".to_owned(),
        113 => "EHOSTUNREACH".to_owned(),
        n => format!("E{n}"),
    }
}

/// Each label's distinct values, up to a cap.
#[derive(Debug)]
pub struct Caps {
    limit: usize,
    seen: HashMap<&'static str, HashSet<String>>,
}

impl Caps {
    /// At most `limit` values per label (at least 1), then `other`.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            seen: HashMap::new(),
        }
    }

    /// `value` if the label already has it or still has room, else [`OTHER`].
    pub fn admit(&mut self, label: &'static str, value: String) -> String {
        let seen = self.seen.entry(label).or_default();
        if seen.contains(&value) {
            return value;
        }
        if seen.len() >= self.limit {
            return OTHER.to_owned();
        }
        seen.insert(value.clone());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_past_their_cap_are_other() {
        let mut caps = Caps::new(2);
        assert_eq!(caps.admit("interface", "veth-a".into()), "veth-a");
        assert_eq!(caps.admit("interface", "veth-b".into()), "veth-b");
        assert_eq!(caps.admit("interface", "veth-c".into()), OTHER);
        // Known values stay; other labels have their own room.
        assert_eq!(caps.admit("interface", "veth-a".into()), "veth-a");
        assert_eq!(caps.admit("reason", "NO_SOCKET".into()), "NO_SOCKET");
    }

    #[test]
    fn errnos_by_name() {
        assert_eq!(errno_name(-101), "ENETUNREACH");
        assert_eq!(errno_name(-11), "EAGAIN");
        assert_eq!(errno_name(-99), "E99");
    }
}
