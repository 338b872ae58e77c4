//! Hop timelines from live traffic on the story lab: one journey per packet, request and reply
//! linked across NAT, rewrites shown, a diagnosis that names what happened.

use std::time::Duration;

use probe_lab::{
    HostLab, Netns, ProbeRun,
    probe::json_lines,
    require_root,
    traffic::{serve_tcp_once, tcp_exchange, udp_send},
};
use serde_json::Value;

fn lab() -> HostLab {
    HostLab::new(&Netns::unique_prefix()).unwrap()
}

fn timelines(lab: &HostLab, extra: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    timelines_and_summary(lab, extra, traffic).0
}

/// The timelines and probe's exit summary line.
fn timelines_and_summary(
    lab: &HostLab,
    extra: &[&str],
    traffic: impl FnOnce(),
) -> (Vec<Value>, String) {
    let mut args = vec!["trace", "--netns", lab.host().name(), "--json"];
    args.extend_from_slice(extra);
    let run = ProbeRun::start(&args).unwrap();
    traffic();
    let (stdout, stderr) = run.stop().unwrap();
    let summary = stderr
        .lines()
        .find(|l| l.contains("timelines from"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"))
        .to_owned();
    let lines = json_lines(&stdout).unwrap();
    assert!(lines.iter().all(|l| l["schema"] == "probe.timeline/1"));
    (lines, summary)
}

#[test]
fn dnat_connection_is_one_flow_with_the_rewrite_and_the_reply_linked() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let web = lab.web().addr;
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let mut client_port = 0;
    let journeys = timelines(&lab, &["--iface", "eth0,veth-web", "--rules"], || {
        client_port = tcp_exchange(
            &lab.outside,
            HostLab::HOST_ADDR,
            HostLab::PUBLISHED_PORT,
            Duration::from_secs(5),
        )
        .unwrap();
    });
    let has_flags =
        |j: &Value, flags: &str| {
            j["hops"].as_array().unwrap().iter().any(|h| {
                h["event"]["kind"] == "tc" && h["event"]["packet"]["ip"]["tcp_flags"] == flags
            })
        };
    let syn = journeys
        .iter()
        .find(|j| {
            j["first"]["dport"] == HostLab::PUBLISHED_PORT
                && j["first"]["sport"] == client_port
                && has_flags(j, "S")
        })
        .unwrap_or_else(|| panic!("no SYN timeline in {journeys:#?}"));
    assert_eq!(syn["outcome"], "delivered", "{syn:#}");
    assert_eq!(
        syn["rewrites"][0]["before"]["dst"],
        HostLab::HOST_ADDR.to_string()
    );
    assert_eq!(syn["rewrites"][0]["after"]["dst"], web.to_string());
    assert_eq!(syn["rewrites"][0]["after"]["dport"], HostLab::WEB_PORT);
    let diagnosis = syn["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.contains("DNAT 203.0.113.1:8080 → 172.17.0.2:80"),
        "{diagnosis}"
    );
    // The DNAT rule is part of the journey.
    assert!(
        syn["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["event"]["kind"] == "rule"
                && h["event"]["chain"] == "DOCKER"
                && h["event"]["table"] == "nat")
    );
    // Hops are in time order with their gaps; rule verdicts have no kernel time and show none.
    let hops = syn["hops"].as_array().unwrap();
    let mut last = 0;
    for h in hops {
        if h["untimed"] == true {
            assert!(h["t_ns"].is_null(), "{h:#}");
            continue;
        }
        let t = h["t_ns"].as_u64().unwrap();
        assert!(t >= last);
        last = t;
    }

    let syn_ack = journeys
        .iter()
        .find(|j| {
            j["first"]["sport"] == HostLab::WEB_PORT
                && j["first"]["dport"] == client_port
                && has_flags(j, "S.")
        })
        .unwrap_or_else(|| panic!("no SYN-ACK timeline in {journeys:#?}"));
    assert_eq!(
        syn_ack["flow"], syn["flow"],
        "reply linked to its request: {syn:#} {syn_ack:#}"
    );
    assert_eq!(syn_ack["outcome"], "left");
    assert_eq!(
        syn_ack["rewrites"][0]["after"]["src"],
        HostLab::HOST_ADDR.to_string(),
        "un-NATed on the way out"
    );
}

#[test]
fn dropped_packet_ends_with_the_rule_and_the_reason() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    lab.firewalld_forward_drop().unwrap();
    let mut sport = 0;
    let (journeys, summary) = timelines_and_summary(&lab, &["--rules", "--no-routes"], || {
        sport = udp_send(&lab.web().ns, HostLab::OUTSIDE_ADDR, 53).unwrap();
    });
    // The exit summary counts the drop by reason and the function that dropped it.
    assert!(
        summary.contains("1 dropped (1 netfilter: NETFILTER_DROP in n"),
        "{summary}"
    );
    let dropped = journeys
        .iter()
        .find(|j| j["first"]["sport"] == sport && j["first"]["dport"] == 53)
        .unwrap_or_else(|| panic!("no timeline in {journeys:#?}"));
    assert_eq!(dropped["outcome"], "dropped");
    let d = dropped["diagnosis"].as_str().unwrap();
    assert!(d.contains("inet firewalld/filter_FORWARD (forward)"), "{d}");
    assert!(d.ends_with("(reason NETFILTER_DROP)"), "{d}");
    let first = &dropped["hops"][0];
    assert_eq!(
        first["event"]["kind"], "tc",
        "first seen entering the host: {first}"
    );
    assert_eq!(
        first["event"]["ifname"].as_str().or(Some("veth-web")),
        Some("veth-web")
    );
}

#[test]
fn vpn_misroute_is_diagnosed() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let web = lab.web().addr;
    lab.vpn_up().unwrap();
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let journeys = timelines(&lab, &["--no-drops"], || {
        let r = tcp_exchange(
            lab.host(),
            web,
            HostLab::WEB_PORT,
            Duration::from_millis(500),
        );
        assert!(r.is_err());
    });
    let misrouted = journeys
        .iter()
        .find(|j| j["first"]["dst"] == web.to_string() && j["first"]["dport"] == HostLab::WEB_PORT)
        .unwrap_or_else(|| panic!("no timeline in {journeys:#?}"));
    let d = misrouted["diagnosis"].as_str().unwrap();
    assert!(d.starts_with("routed to tun0 by table 51820"), "{d}");
    assert!(d.contains("shadows"), "{d}");
    assert!(
        misrouted["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["inferred"] == true)
    );
}

/// Sends one datagram from `ns` to `dst` where a socket in `server_ns` receives it.
fn udp_delivered(client: &Netns, server: &Netns, dst: std::net::IpAddr, port: u16) {
    let any: std::net::IpAddr = match dst {
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let listener = server
        .run(move || std::net::UdpSocket::bind((any, port)).unwrap())
        .unwrap();
    client
        .run(move || {
            let s = std::net::UdpSocket::bind((any, 0)).unwrap();
            s.connect((dst, port)).unwrap();
            s.send(b"one decision").unwrap();
        })
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    listener.recv(&mut buf).expect("datagram delivered");
}

/// The kernel probes several tables for one routing decision (IPv6: local, whose miss it
/// reports as EHOSTUNREACH, then main; both again once the source address is chosen). A
/// timeline shows each decision once, with the tables tried folded in, and never calls the
/// normal local-table miss unroutable.
#[test]
fn one_route_row_per_routing_decision_ipv4_and_ipv6() {
    require_root();
    // Without BTF (the tracepoint record) a lookup that found no device can take the namespace
    // of the calling task only: another lab's with the same addresses could mix in.
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = probe_lab::Routed::new().unwrap().with_ipv6().unwrap();
    for (dst, port) in [
        (std::net::IpAddr::from(probe_lab::Routed::SERVER), 7301u16),
        (std::net::IpAddr::from(probe_lab::Routed::SERVER6), 7302u16),
    ] {
        for json in [true, false] {
            // No filter: the router's own lookup for a forwarded packet carries no ports.
            let mut args = vec!["trace", "--netns", lab.router.name()];
            if json {
                args.push("--json");
            }
            let run = ProbeRun::start(&args).unwrap();
            udp_delivered(&lab.client, &lab.server, dst, port);
            let (stdout, stderr) = run.stop().unwrap();
            assert!(!stderr.contains("unroutable"), "{stderr}");
            if json {
                check_json_decisions(&stdout, dst, port);
            } else {
                check_text_decisions(&stdout, port);
            }
        }
    }
}

fn check_json_decisions(stdout: &str, dst: std::net::IpAddr, port: u16) {
    let timelines = json_lines(stdout).unwrap();
    assert!(
        timelines.iter().all(|t| t["outcome"] != "unroutable"),
        "{timelines:#?}"
    );
    let t = timelines
        .iter()
        .find(|t| t["first"]["dport"] == port)
        .unwrap_or_else(|| panic!("no timeline for {port} in {timelines:#?}"));
    let routes: Vec<&Value> = t["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["event"]["kind"] == "fib")
        .collect();
    // The router's forwarding decision is among them.
    assert!(
        routes.iter().any(|r| r["event"]["dev"] == "to-server"),
        "{t:#}"
    );
    // Every row is a decision that found a route, and no two rows are one decision (the
    // traced router's own only: the sender's and the receiver's are their namespaces').
    let mut decisions = Vec::new();
    for r in &routes {
        let e = &r["event"];
        assert_eq!(e["err"], 0, "{t:#}");
        assert_eq!(e["dst"], dst.to_string(), "{t:#}");
        assert!(!r["what"].as_str().unwrap().contains("no route"), "{t:#}");
        let key = (e["iif"].clone(), e["src"].clone(), e["dev"].clone());
        assert!(!decisions.contains(&key), "one decision in two rows: {t:#}");
        decisions.push(key);
    }
    if dst.is_ipv6() {
        // The local table's miss is folded into the decision it belongs to.
        assert!(
            routes.iter().any(|r| r["event"]["tried"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["table_name"] == "local"))),
            "{t:#}"
        );
        assert!(
            routes
                .iter()
                .all(|r| r["where"].as_str().unwrap().starts_with("route table main")),
            "{t:#}"
        );
    }
}

fn check_text_decisions(stdout: &str, port: u16) {
    let block: Vec<&str> = stdout
        .split("\npacket ")
        .find(|b| b.contains(&format!(":{port} ")))
        .unwrap_or_else(|| panic!("no timeline for {port} in {stdout}"))
        .lines()
        .collect();
    let routes: Vec<&&str> = block
        .iter()
        .filter(|l| l.contains(" route table "))
        .collect();
    assert!(routes.len() <= 3, "{stdout}");
    assert!(
        routes.iter().any(|l| l.contains("-> dev to-server")),
        "{stdout}"
    );
    assert!(
        routes
            .iter()
            .all(|l| !l.contains("no route") && !l.contains("UNREACH")),
        "{stdout}"
    );
    assert!(!stdout.contains("not routed"), "{stdout}");
}

/// The gateway of a route row is the next hop's own: the client's default route names its
/// gateway; a directly connected route (the client's to the router, the router's to the server)
/// names none. The tracepoint record's gateway fields are left unwritten for such a route and
/// held leftovers of earlier events (`via 56.0.0.0`).
#[test]
fn route_rows_show_the_real_gateway_or_none_ipv4_and_ipv6() {
    require_root();
    // With --all-netns another lab's lookups with the same addresses would mix in.
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = probe_lab::Routed::new().unwrap().with_ipv6().unwrap();
    let v4 = |a: std::net::Ipv4Addr| std::net::IpAddr::from(a);
    let v6 = |a: std::net::Ipv6Addr| std::net::IpAddr::from(a);
    for (server, router, gateway, port) in [
        (
            v4(probe_lab::Routed::SERVER),
            v4("10.203.1.1".parse().unwrap()),
            "10.203.1.1",
            7311u16,
        ),
        (
            v6(probe_lab::Routed::SERVER6),
            v6("fd03:1::1".parse().unwrap()),
            "fd03:1::1",
            7312u16,
        ),
    ] {
        // The route rows of the timelines of datagrams sent `rounds` times to each target.
        let trace = |targets: &[(std::net::IpAddr, &Netns)], rounds: usize| {
            // The client's lookups are made in its own namespace: shown with --all-netns.
            let run = ProbeRun::start(&[
                "trace",
                "--netns",
                lab.router.name(),
                "--json",
                "--all-netns",
            ])
            .unwrap();
            for _ in 0..rounds {
                for (dst, receiver) in targets {
                    udp_delivered(&lab.client, receiver, *dst, port);
                }
            }
            let (stdout, _) = run.stop().unwrap();
            let timelines = json_lines(&stdout).unwrap();
            let routes: Vec<Value> = timelines
                .iter()
                .filter(|t| t["first"]["dport"] == port)
                .flat_map(|t| t["hops"].as_array().unwrap())
                .filter(|h| h["event"]["kind"] == "fib" && h["event"]["err"] == 0)
                .cloned()
                .collect();
            routes
        };
        let routes = if server.is_ipv4() {
            // Several datagrams to both, so that the connected route's lookup follows lookups
            // with a gateway and other events (the leftovers came from those).
            trace(&[(server, &lab.server), (router, &lab.router)], 3)
        } else {
            // IPv6 datagrams carry no identity: one at a time keeps their timelines apart.
            let mut r = trace(&[(server, &lab.server)], 1);
            r.extend(trace(&[(router, &lab.router)], 1));
            r
        };
        let timelines = &routes;
        // The client's own decisions are output lookups (the kernel sets iif to loopback's 1).
        let client = |h: &&Value, dst: std::net::IpAddr| {
            h["event"]["dev"] == "eth0"
                && h["event"]["iif"] == 1
                && h["event"]["dst"] == dst.to_string()
        };
        let via_gateway: Vec<&Value> = routes.iter().filter(|h| client(h, server)).collect();
        let connected: Vec<&Value> = routes
            .iter()
            .filter(|h| client(h, router) || h["event"]["dev"] == "to-server")
            .collect();
        assert!(
            !via_gateway.is_empty() && connected.len() >= 2,
            "{timelines:#?}"
        );
        for h in via_gateway {
            assert_eq!(h["event"]["gateway"], gateway, "{h:#}");
            assert!(
                h["what"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("-> dev eth0 via {gateway}")),
                "{h:#}"
            );
        }
        for h in connected {
            assert!(h["event"].get("gateway").is_none(), "{h:#}");
            assert!(!h["what"].as_str().unwrap().contains(" via "), "{h:#}");
        }
    }
}

/// IPv6 datagrams of one socket carry nothing that tells them apart (no IP id): sent back to
/// back across a router, each is still its own timeline, seen once at each hook.
#[test]
fn back_to_back_ipv6_datagrams_are_one_timeline_each() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = probe_lab::Routed::new().unwrap().with_ipv6().unwrap();
    let dst = std::net::IpAddr::from(probe_lab::Routed::SERVER6);
    // One datagram first, untraced: the router resolves the server's address (a packet
    // waiting a second for neighbour discovery outlives a timeline's linger).
    udp_delivered(&lab.client, &lab.server, dst, 7311);
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.router.name(),
        "--json",
        "--no-routes",
        "udp port 7310",
    ])
    .unwrap();
    let listener = lab
        .server
        .run(|| std::net::UdpSocket::bind(("::", 7310)).unwrap())
        .unwrap();
    lab.client
        .run(move || {
            let s = std::net::UdpSocket::bind(("::", 0)).unwrap();
            s.connect((dst, 7310)).unwrap();
            for _ in 0..5 {
                s.send(b"same tuple").unwrap();
            }
        })
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        listener.recv(&mut buf).expect("datagram delivered");
    }
    let (stdout, stderr) = run.stop().unwrap();
    let timelines: Vec<Value> = json_lines(&stdout)
        .unwrap()
        .into_iter()
        .filter(|t| t["first"]["dport"] == 7310)
        .collect();
    assert_eq!(timelines.len(), 5, "{timelines:#?}\n{stderr}");
    // Each is one datagram's passage: in once, out once (where nf_hook_slow is probed, the
    // router's hook verdicts sit between).
    for t in &timelines {
        let places: Vec<&str> = t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["event"]["kind"] == "tc")
            .map(|h| h["where"].as_str().unwrap())
            .collect();
        assert_eq!(places, ["to-client ingress", "to-server egress"], "{t:#}");
    }
}
