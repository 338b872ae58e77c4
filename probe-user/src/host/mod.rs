//! What probe reads about the host it traces: its interfaces (rtnetlink), network namespaces,
//! routes, routing table names and Docker's containers, put together as the pipeline's one
//! [`Topology`].

pub mod docker;
pub mod iface;
pub mod netns;
pub mod rtnl;

use std::net::{IpAddr, Ipv4Addr};

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
                t.links.insert(
                    l.index,
                    (l.name.clone(), l.kind.clone().unwrap_or_default()),
                );
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
    let bridges: Vec<&str> = t
        .links
        .values()
        .filter(|(_, kind)| kind == "bridge")
        .map(|(name, _)| name.as_str())
        .collect();
    // Connected IPv4 routes of bridges (/proc/net/route shows this thread's namespace).
    let mut subnets = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !bridges.contains(&f[0]) {
                continue;
            }
            let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
            if let (Some(dst), Some(mask)) = (hex(f[1]), hex(f[7])) {
                subnets.push((
                    IpAddr::V4(Ipv4Addr::from(dst)),
                    mask.count_ones() as u8,
                    f[0].to_owned(),
                ));
            }
        }
    }
    t.bridge_subnets = subnets;
    t.uplinks = default_route_devices();
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

/// Devices of default routes, from /proc/net/route and /proc/net/ipv6_route (which show the
/// namespace of the reading thread).
pub fn default_route_devices() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                out.push(f[0].to_owned());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
                out.push(f[9].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
