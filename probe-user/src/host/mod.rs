//! What probe reads about the host it traces: its interfaces (rtnetlink), network namespaces,
//! routes, routing table names and Docker's containers, put together as the pipeline's one
//! [`Topology`].

pub mod docker;
pub mod facts;
pub mod link_state;
pub mod netlink;
pub mod netns;
pub mod rtnl;

use probe_pipeline::{names::RouteTables, topology::Topology};

/// This namespace's interfaces, or none when rtnetlink cannot be asked.
pub fn links() -> Vec<rtnl::Link> {
    rtnl::Socket::request_socket()
        .and_then(|mut s| s.links())
        .unwrap_or_default()
}

/// Interfaces by role, bridge subnets and uplinks of the calling thread's namespace, for
/// names and diagnoses. Containers are filled in by the Docker watcher.
pub fn topology(links: &[rtnl::Link]) -> Topology {
    let mut t = Topology {
        own_netns: netns::own().unwrap_or(0),
        ..Topology::default()
    };
    for l in links {
        t.links.insert(
            l.index,
            (l.name.clone(), l.kind.clone().unwrap_or_default()),
        );
    }
    refresh_routes(&mut t);
    t
}

/// Interfaces came or went: their names and kinds, at once (no dump of every link per event,
/// which would hold the kernel's rtnl lock against the host's own container start-up). Routes
/// and namespace names change with them: [`refresh_routes`] catches up, debounced.
pub fn apply(t: &mut Topology, changes: &[rtnl::LinkChange]) {
    for change in changes {
        match change {
            rtnl::LinkChange::New(l) => {
                // An interface's kind never changes; a notification that does not carry it (or
                // carries link info the parser could not read) must not make a veth unknown.
                let kind = l
                    .kind
                    .clone()
                    .or_else(|| {
                        t.links
                            .get(&l.index)
                            .filter(|(_, k)| !k.is_empty())
                            .map(|(_, k)| k.clone())
                    })
                    .unwrap_or_default();
                t.links.insert(l.index, (l.name.clone(), kind));
            }
            rtnl::LinkChange::Removed { index } => {
                t.links.remove(index);
            }
        }
    }
}

/// Bridge subnets, uplinks and `ip netns` names, read again.
pub fn refresh_routes(t: &mut Topology) {
    t.netns_names = netns::named();
    let routes = routes();
    let name = |index: &u32| t.links.get(index).map(|(name, kind)| (name.clone(), kind));
    // Routes of bridges in IPv4's main table: the connected subnets behind them.
    t.bridge_subnets = routes
        .iter()
        .filter(|r| r.table == rtnl::Route::MAIN_TABLE && r.destination.is_ipv4())
        .filter_map(|r| {
            let (bridge, kind) = r.devices.first().and_then(name)?;
            (kind == "bridge").then_some((r.destination, r.prefix_len, bridge))
        })
        .collect();
    let mut uplinks: Vec<String> = uplinks(&routes)
        .iter()
        .filter_map(|i| name(i).map(|(n, _)| n))
        .collect();
    uplinks.sort();
    uplinks.dedup();
    t.uplinks = uplinks;
    // The namespace's own addresses: a packet for one of them is delivered here.
    t.local_addrs = routes
        .iter()
        .filter(|r| r.local)
        .map(|r| r.destination)
        .collect();
    t.local_addrs.sort();
    t.local_addrs.dedup();
    log::debug!(
        "uplinks {:?}, bridge subnets {:?}",
        t.uplinks,
        t.bridge_subnets
    );
}

/// Everything read again, keeping the container names already known.
pub fn refresh(t: &mut Topology) {
    let containers = std::mem::take(&mut t.containers);
    *t = topology(&links());
    t.containers = containers;
}

/// Routing table names from iproute2's rt_tables files, with the kernel's reserved ids.
pub fn route_tables() -> RouteTables {
    let mut t = RouteTables::default();
    for path in [
        "/usr/share/iproute2/rt_tables",
        "/etc/iproute2/rt_tables",
        "/usr/lib/iproute2/rt_tables",
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            t.add(&text);
        }
    }
    for dir in [
        "/etc/iproute2/rt_tables.d",
        "/usr/share/iproute2/rt_tables.d",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "conf")
                && let Ok(text) = std::fs::read_to_string(e.path())
            {
                t.add(&text);
            }
        }
    }
    t
}

/// The calling thread's namespace's routes, or none when rtnetlink cannot be asked.
pub fn routes() -> Vec<rtnl::Route> {
    rtnl::Socket::request_socket()
        .and_then(|mut s| s.routes())
        .unwrap_or_default()
}

/// Devices of default routes: IPv4's main table, and IPv6's every table. Only routes that
/// forward count (not IPv6's unreachable defaults on loopback).
pub fn uplinks(routes: &[rtnl::Route]) -> Vec<u32> {
    routes
        .iter()
        .filter(|r| {
            r.prefix_len == 0
                && r.unicast
                && (r.destination.is_ipv6() || r.table == rtnl::Route::MAIN_TABLE)
        })
        .flat_map(|r| r.devices.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::LinkLayerType;

    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>) -> rtnl::Link {
        rtnl::Link {
            index,
            name: name.into(),
            hw_type: LinkLayerType::Ether,
            kind: kind.map(str::to_owned),
            master: None,
            peer: None,
        }
    }

    /// A change that does not say the kind (a state change whose link info could not be read)
    /// keeps the one known: a veth must not turn into an unknown device, which would make a
    /// delivery read "left through veth-web".
    #[test]
    fn a_change_without_a_kind_keeps_the_known_one() {
        let mut t = topology(&[link(4, "veth-web", Some("veth"))]);
        apply(&mut t, &[rtnl::LinkChange::New(link(4, "veth-web", None))]);
        assert_eq!(t.kind(4), "veth");
        // A renamed device keeps its kind too; a new index starts unknown.
        apply(
            &mut t,
            &[
                rtnl::LinkChange::New(link(4, "web0", None)),
                rtnl::LinkChange::New(link(9, "x", None)),
            ],
        );
        assert_eq!((t.name(4).as_str(), t.kind(4)), ("web0", "veth"));
        assert_eq!(t.kind(9), "");
    }
}
