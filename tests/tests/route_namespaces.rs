//! Routing lookups in their own namespace: every route row carries the namespace the lookup
//! ran in, a timeline shows only the traced namespace's lookups (by default), and a lookup
//! from another namespace is labelled with it (`--all-netns`). Lookups of namespaces with the
//! same addresses and routes look alike in every other field, so only the namespace can tell
//! them apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::time::Duration;

use probe_lab::{HostLab, Netns, ProbeRun, Routed, probe::json_lines, require_root};
use serde_json::Value;

/// Sends one datagram from `client` to `dst:port`, received by a socket in `server`.
fn udp_delivered(client: &Netns, server: &Netns, dst: IpAddr, port: u16) {
    let any: IpAddr = match dst {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let listener = server
        .run(move || UdpSocket::bind((any, port)).unwrap())
        .unwrap();
    client
        .run(move || {
            let s = UdpSocket::bind((any, 0)).unwrap();
            s.send_to(b"which namespace", (dst, port)).unwrap();
        })
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    listener.recv(&mut buf).expect("datagram delivered");
}

/// Sends one datagram from `client` to `dst:port` (nobody need receive it).
fn udp_sent(client: &Netns, dst: Ipv4Addr, port: u16) {
    client
        .run(move || {
            let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            s.send_to(b"no route there", (dst, port)).unwrap();
        })
        .unwrap();
}

/// The route rows of every timeline.
fn route_rows(timelines: &[Value]) -> Vec<(&Value, &Value)> {
    timelines
        .iter()
        .flat_map(|t| {
            t["hops"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| h["event"]["kind"] == "fib")
                .map(move |h| (t, h))
        })
        .collect()
}

/// Two labs with the same addresses and routes, the same datagrams through both, one of them
/// traced: each of its timelines holds its own router's forwarding decision, once, and no row
/// of the twin's (nor of its own client's and server's namespaces). IPv4 and IPv6.
#[test]
fn lookups_of_a_twin_namespace_with_the_same_addresses_stay_out() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let traced = Routed::new().unwrap().with_ipv6().unwrap();
    let twin = Routed::new().unwrap().with_ipv6().unwrap();
    let router_ns = traced.router.inode().unwrap();
    const ROUNDS: usize = 5;
    for (dst, port) in [
        (IpAddr::from(Routed::SERVER), 7321u16),
        (IpAddr::from(Routed::SERVER6), 7324u16),
    ] {
        let run = ProbeRun::start(&["trace", "--netns", traced.router.name(), "--json"]).unwrap();
        for _ in 0..ROUNDS {
            for lab in [&traced, &twin] {
                udp_delivered(&lab.client, &lab.server, dst, port);
            }
        }
        let (stdout, _) = run.stop().unwrap();
        let timelines = json_lines(&stdout).unwrap();
        let routes = route_rows(&timelines);
        for (t, h) in &routes {
            assert_eq!(
                h["event"]["netns"], router_ns,
                "a row of another namespace: {t:#}"
            );
            assert!(!h["where"].as_str().unwrap().contains(" in "), "{t:#}");
        }
        // Input lookups carry the interface the packet came in on (output ones carry
        // loopback's 1, other lookups 0).
        let forwarding = |h: &Value| {
            let e = &h["event"];
            e["kind"] == "fib" && e["dev"] == Routed::TO_SERVER && e["iif"].as_i64() > Some(1)
        };
        assert!(routes.iter().any(|(_, h)| forwarding(h)), "{timelines:#?}");
        if dst.is_ipv6() {
            // IPv6 datagrams carry no identity (no IP ID): timelines of back-to-back ones may
            // merge, so only the namespace of each row is checked.
            continue;
        }
        let ours: Vec<&Value> = timelines
            .iter()
            .filter(|t| t["first"]["dport"] == port)
            .collect();
        assert_eq!(ours.len(), ROUNDS, "{timelines:#?}");
        for t in ours {
            let rows = t["hops"].as_array().unwrap();
            assert_eq!(rows.iter().filter(|h| forwarding(h)).count(), 1, "{t:#}");
        }
    }
}

/// A lookup that fails in the traced namespace has no result device to tell its namespace:
/// the router's input lookup for a destination it has no route to is known by the tc
/// sighting of its packet just before, and joins that packet's timeline.
#[test]
fn failed_lookup_in_the_traced_namespace_joins_its_packet() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    let router_ns = lab.router.inode().unwrap();
    const PORT: u16 = 7322;
    let nowhere = Ipv4Addr::new(10, 203, 9, 9);
    let run = ProbeRun::start(&["trace", "--netns", lab.router.name(), "--json"]).unwrap();
    udp_sent(&lab.client, nowhere, PORT);
    let (stdout, _) = run.stop().unwrap();
    let timelines = json_lines(&stdout).unwrap();
    let t = timelines
        .iter()
        .find(|t| t["first"]["dst"] == nowhere.to_string() && t["first"]["dport"] == PORT)
        .unwrap_or_else(|| panic!("no timeline for the datagram in {timelines:#?}"));
    let hops = t["hops"].as_array().unwrap();
    // The packet was seen arriving, then its routing decision failed.
    assert!(hops.iter().any(|h| h["event"]["kind"] == "tc"), "{t:#}");
    let failed: Vec<&Value> = hops
        .iter()
        .filter(|h| h["event"]["kind"] == "fib" && h["event"]["err"] != 0)
        .collect();
    assert!(!failed.is_empty(), "{t:#}");
    for h in failed {
        assert_eq!(h["event"]["netns"], router_ns, "{t:#}");
        assert_eq!(h["event"]["dst"], nowhere.to_string(), "{t:#}");
    }
    assert!(
        t["outcome"] == "unroutable" || t["outcome"] == "dropped",
        "{t:#}"
    );
}

/// A container's own lookup (`route table main -> dev eth0 via 172.17.0.1`: its eth0) is
/// never shown as the host's: tracing the host it is absent, and with `--all-netns` it is
/// labelled with the container's namespace. The host's own forwarding decision is there.
#[test]
fn container_lookups_are_absent_or_labelled_never_the_hosts() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    let host_ns = lab.host().inode().unwrap();
    let web = lab.web();
    let web_ns = web.ns.inode().unwrap();
    const PORT: u16 = 7323;
    let gateway = probe_lab::BridgeLab::GATEWAY.to_string();
    for all_netns in [false, true] {
        let mut args = vec!["trace", "--netns", lab.host().name(), "--json"];
        if all_netns {
            args.push("--all-netns");
        }
        let run = ProbeRun::start(&args).unwrap();
        udp_sent(&web.ns, HostLab::OUTSIDE_ADDR, PORT);
        let (stdout, _) = run.stop().unwrap();
        let timelines = json_lines(&stdout).unwrap();
        let t = timelines
            .iter()
            .find(|t| t["first"]["dport"] == PORT)
            .unwrap_or_else(|| panic!("no timeline for the datagram in {timelines:#?}"));
        let routes: Vec<&Value> = t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["event"]["kind"] == "fib")
            .collect();
        // The host's forwarding decision: arrived on docker0, out of its uplink, where the
        // outside's address is directly connected.
        assert!(
            routes.iter().any(|h| h["event"]["netns"] == host_ns
                && h["event"]["dev"] == HostLab::UPLINK
                && h["event"]["iif"].as_i64() > Some(1)
                && h["event"].get("gateway").is_none()
                && !h["where"].as_str().unwrap().contains(" in ")),
            "{t:#}"
        );
        if all_netns {
            // The container's own decision, before its packet left it, joins as its own.
            assert!(
                routes.iter().any(|h| h["event"]["netns"] == web_ns),
                "{t:#}"
            );
        }
        for h in &routes {
            let ns = &h["event"]["netns"];
            let place = h["where"].as_str().unwrap();
            if *ns == host_ns {
                assert_ne!(h["event"]["gateway"], gateway.as_str(), "{t:#}");
                assert!(!place.contains(" in "), "{t:#}");
            } else {
                assert!(
                    all_netns,
                    "another namespace's lookup without --all-netns: {t:#}"
                );
                assert_eq!(*ns, web_ns, "{t:#}");
                assert!(
                    place.ends_with(&format!(" in netns {}", web.ns.name())),
                    "{t:#}"
                );
            }
        }
    }
}
