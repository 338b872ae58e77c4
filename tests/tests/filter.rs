//! `--filter` in the kernel: packets it turns away cost no event, and packets it admits are
//! followed through NAT, replies included, by the kernel programs themselves.

use std::{net::UdpSocket, time::Duration};

use probe_lab::{
    HostLab, Netns, ProbeRun, Routed, TwoHosts,
    probe::json_lines,
    require_root,
    traffic::{serve_tcp_once, tcp_exchange, udp_listen},
};
use serde_json::Value;

/// "... N sightings filtered out in the kernel" from probe's summary line.
fn filtered_in_kernel(stderr: &str) -> u64 {
    stderr
        .lines()
        .flat_map(|line| line.split(';'))
        .find_map(|part| {
            part.trim()
                .strip_suffix("sightings filtered out in the kernel")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn packets_the_filter_turns_away_write_no_event() {
    require_root();
    const TURNED_AWAY: usize = 200;
    let lab = TwoHosts::new().unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        TwoHosts::IFACE,
        "--no-routes",
        "--no-drops",
        "--no-netfilter",
        "--events",
        "--json",
        "--filter",
        "udp dst port 9000",
    ])
    .unwrap();
    let b_addr = lab.b_addr;
    let receiver = udp_listen(&lab.b, b_addr, 9000).unwrap();
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            for i in 0..TURNED_AWAY {
                sock.send_to(&(i as u32).to_be_bytes(), (b_addr, 9001))
                    .unwrap();
            }
            sock.send_to(b"kept", (b_addr, 9000)).unwrap();
        })
        .unwrap();
    // Datagrams leave in order once the neighbour is resolved: the last one's arrival means
    // every one of them went through veth0.
    receiver.recv(&mut [0u8; 16]).unwrap();
    let (stdout, stderr) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let kept: Vec<&Value> = events
        .iter()
        .filter(|e| e["packet"]["ip"]["dport"] == 9000)
        .collect();
    assert_eq!(kept.len(), 1, "the matching packet, once: {events:#?}");
    assert_eq!(events.len(), 1, "nothing else: {events:#?}");
    // Each turned-away datagram left veth0 once; ARP and the like are turned away too.
    let filtered = filtered_in_kernel(&stderr);
    assert!(
        filtered >= TURNED_AWAY as u64,
        "the kernel turned away {filtered} sightings, expected at least {TURNED_AWAY}: {stderr}"
    );
}

#[test]
fn admitted_connection_is_followed_through_dnat_and_back() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    let web = lab.web().addr;
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    // Only the published port matches: after DNAT the request goes to port 80, and the reply
    // comes from it, so both are seen only because the kernel follows what it admitted.
    let filter = format!("tcp port {}", HostLab::PUBLISHED_PORT);
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.host().name(),
        "--iface",
        "eth0,veth-web",
        "--no-routes",
        "--json",
        "--filter",
        &filter,
    ])
    .unwrap();
    let client_port = tcp_exchange(
        &lab.outside,
        HostLab::HOST_ADDR,
        HostLab::PUBLISHED_PORT,
        Duration::from_secs(5),
    )
    .unwrap();
    let (stdout, stderr) = run.stop().unwrap();
    let journeys = json_lines(&stdout).unwrap();
    let at = |j: &Value, iface: &str, flags: &str| {
        j["hops"].as_array().unwrap().iter().any(|h| {
            h["where"].as_str().is_some_and(|w| w.starts_with(iface))
                && h["event"]["packet"]["ip"]["tcp_flags"] == flags
        })
    };
    let syn = journeys
        .iter()
        .find(|j| j["first"]["sport"] == client_port && at(j, "veth-web egress", "S"))
        .unwrap_or_else(|| panic!("no SYN delivered to the container: {journeys:#?}\n{stderr}"));
    assert_eq!(syn["rewrites"][0]["after"]["dport"], HostLab::WEB_PORT);
    let syn_ack = journeys
        .iter()
        .find(|j| at(j, "veth-web ingress", "S."))
        .unwrap_or_else(|| panic!("no SYN-ACK from the container: {journeys:#?}\n{stderr}"));
    assert_eq!(syn_ack["flow"], syn["flow"], "{syn_ack:#}");
    assert!(at(syn_ack, "eth0 egress", "S."), "{syn_ack:#}");
}

/// With a filter, every program must still pass this kernel's verifier: the filter runs inside
/// each of them. A datagram to a port nobody listens on is dropped by the receiver's UDP; the
/// drop of the admitted packet is reported, and the one turned away is not.
#[test]
fn a_dropped_packet_the_filter_admits_is_reported() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--events",
        "--json",
        "--filter",
        "udp dst port 9002",
    ])
    .unwrap();
    let warnings: Vec<&String> = run
        .stderr_so_far()
        .iter()
        .filter(|l| l.contains("unavailable"))
        .collect();
    assert!(
        warnings.is_empty(),
        "a program did not load with a filter: {warnings:#?}"
    );
    let b_addr = lab.b_addr;
    // The admitted datagram goes last: its ICMP port-unreachable reply arriving means both
    // were dropped already.
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            sock.connect((b_addr, 9003)).unwrap();
            sock.send(b"turned away").unwrap();
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            sock.connect((b_addr, 9002)).unwrap();
            sock.send(b"admitted").unwrap();
            // A connected UDP socket reports the ICMP error as ECONNREFUSED on its next recv.
            let err = sock.recv(&mut [0u8; 16]).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        })
        .unwrap();
    let (stdout, stderr) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let drops: Vec<&Value> = events.iter().filter(|e| e["kind"] == "drop").collect();
    assert!(
        drops.iter().any(|e| e["packet"]["ip"]["dport"] == 9002),
        "no drop of the admitted datagram: {events:#?}\n{stderr}"
    );
    assert!(
        !drops.iter().any(|e| e["packet"]["ip"]["dport"] == 9003),
        "the turned-away datagram's drop was reported: {events:#?}"
    );
}

/// Address filters (`host`, `net`, `src`/`dst`, IPv6 networks, `not`) give the filter its
/// largest frame, which sits on top of each program's own within the kernel's 512 bytes: every
/// program must load with one, in each mode, and the filter must choose by address. Three
/// datagrams differ only in port; the filter admits one of them by its destination address and
/// turns away the others by theirs.
#[test]
fn address_filters_load_in_every_mode_and_choose_by_address() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let (a, b) = (lab.a_addr, lab.b_addr);
    let filter = format!(
        "dst host {b} and udp dst port 9010 or dst host {a} and udp dst port 9011 \
         or net fd00::/8 and not host fd00::1 \
         or src net 10.201.0.0/24 and udp dst port 9012 and not net {b}/32"
    );
    let dir = std::env::temp_dir().join(format!("probe-filter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcapng = dir.join("trace.pcapng");
    let modes: [&[&str]; 3] = [
        &["--json"],
        &["--events", "--json"],
        &[
            "--json",
            "--snaplen",
            "64",
            "--pcapng",
            pcapng.to_str().unwrap(),
        ],
    ];
    for mode in modes {
        let mut args = vec!["trace", "--netns", lab.a.name(), "--filter", &filter];
        args.extend_from_slice(mode);
        let run = ProbeRun::start(&args).unwrap();
        let unloaded: Vec<&String> = run
            .stderr_so_far()
            .iter()
            .filter(|l| l.contains("unavailable") || l.contains("cannot load"))
            .collect();
        assert!(
            unloaded.is_empty(),
            "{mode:?}: a program did not load: {unloaded:#?}"
        );
        let receiver = udp_listen(&lab.b, b, 9010).unwrap();
        lab.a
            .run(move || {
                let sock = UdpSocket::bind((a, 0)).unwrap();
                for port in [9011, 9012, 9010] {
                    sock.send_to(b"which", (b, port)).unwrap();
                }
            })
            .unwrap();
        // One socket's datagrams leave in order: the last one's arrival means all three left.
        receiver.recv(&mut [0u8; 16]).unwrap();
        let (stdout, stderr) = run.stop().unwrap();
        let lines = json_lines(&stdout).unwrap();
        let port_of = |v: &Value| {
            v["packet"]["ip"]["dport"]
                .as_u64()
                .or_else(|| v["first"]["dport"].as_u64())
        };
        let ports: Vec<u64> = lines.iter().filter_map(port_of).collect();
        assert!(
            ports.contains(&9010),
            "{mode:?}: the admitted datagram is missing: {lines:#?}\n{stderr}"
        );
        assert!(
            !ports.iter().any(|p| *p == 9011 || *p == 9012),
            "{mode:?}: a datagram the filter turns away by address was reported: {lines:#?}"
        );
        assert!(
            filtered_in_kernel(&stderr) >= 2,
            "{mode:?}: the kernel turned away fewer than the two datagrams: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Routing lookups are judged by the filter before they take a ring entry, for IPv4 (raw
/// tracepoint, or the record without BTF) and IPv6 (the record). The router's input lookups
/// carry no ports, so they are admitted as the lookup of the packet its tc ingress program
/// judged just before: the admitted datagram's timeline has its forwarding lookup, and the
/// datagram turned away, sent just before it between the same addresses, has no timeline.
#[test]
fn routing_lookups_follow_the_filter() {
    require_root();
    let lab = Routed::new().unwrap().with_ipv6().unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.router.name(),
        "--json",
        "--no-netfilter",
        "--filter",
        "udp dst port 7331",
    ])
    .unwrap();
    let any6: std::net::IpAddr = std::net::Ipv6Addr::UNSPECIFIED.into();
    let any4: std::net::IpAddr = std::net::Ipv4Addr::UNSPECIFIED.into();
    let servers = [
        (std::net::IpAddr::from(Routed::SERVER), any4),
        (std::net::IpAddr::from(Routed::SERVER6), any6),
    ];
    for (server, any) in servers {
        let receiver = lab
            .server
            .run(move || UdpSocket::bind((any, 7331)).unwrap())
            .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The turned-away datagram first: the admitted one's arrival means both were routed.
        lab.client
            .run(move || {
                let sock = UdpSocket::bind((any, 0)).unwrap();
                sock.send_to(b"turned away", (server, 7332)).unwrap();
                sock.send_to(b"admitted", (server, 7331)).unwrap();
            })
            .unwrap();
        receiver.recv(&mut [0u8; 16]).unwrap();
    }
    let (stdout, stderr) = run.stop().unwrap();
    let timelines = json_lines(&stdout).unwrap();
    assert!(
        !timelines.iter().any(|t| t["first"]["dport"] == 7332),
        "a timeline of a turned-away datagram: {timelines:#?}"
    );
    for (server, _) in servers {
        let admitted = timelines
            .iter()
            .find(|t| t["first"]["dport"] == 7331 && t["first"]["dst"] == server.to_string())
            .unwrap_or_else(|| panic!("{server}: no timeline: {timelines:#?}\n{stderr}"));
        let forwarding = admitted["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| {
                let e = &h["event"];
                e["kind"] == "fib" && e["dev"] == Routed::TO_SERVER && e["iif"].as_i64() > Some(1)
            })
            .count();
        assert_eq!(
            forwarding, 1,
            "{server}: its forwarding lookup: {admitted:#}"
        );
    }
    // Each turned-away datagram's sightings on both router interfaces and its lookup.
    let filtered = filtered_in_kernel(&stderr);
    assert!(filtered >= 6, "{filtered} sightings turned away: {stderr}");
}
