//! The tc slice end to end: real programs attached to veths in test namespaces, real UDP and
//! TCP between them, and probe's JSON output checked against what was sent.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use probe_lab::{ProbeRun, TwoHosts, probe::json_lines, require_root};
use serde_json::Value;

const UDP_PORT: u16 = 9000;
const TCP_PORT: u16 = 9001;
const CLIENT_UDP_PORT: u16 = 40001;

fn trace_args<'a>(ns: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "trace",
        "--netns",
        ns,
        "--iface",
        TwoHosts::IFACE,
        "--json",
        "--events",
    ];
    args.extend_from_slice(extra);
    args
}

/// Sightings on `ifindex` whose IP header matches.
fn matching<'a>(
    events: &'a [Value],
    ifindex: u32,
    direction: &str,
    proto: &str,
    src: (&str, u16),
    dst: (&str, u16),
) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            let ip = &e["packet"]["ip"];
            e["kind"] == "tc"
                && e["ifindex"] == ifindex
                && e["direction"] == direction
                && ip["proto"] == proto
                && ip["src"] == src.0
                && ip["sport"] == src.1
                && ip["dst"] == dst.0
                && ip["dport"] == dst.1
        })
        .collect()
}

#[test]
fn udp_and_tcp_sightings_match_what_was_sent() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let ifindex = lab.a.ifindex(TwoHosts::IFACE).unwrap();
    let probe = ProbeRun::start(&trace_args(lab.a.name(), &[])).unwrap();

    // Servers in B.
    let b_addr = lab.b_addr;
    let udp_server = lab
        .b
        .run(move || UdpSocket::bind((b_addr, UDP_PORT)).unwrap())
        .unwrap();
    let tcp_server = lab
        .b
        .run(move || TcpListener::bind((b_addr, TCP_PORT)).unwrap())
        .unwrap();

    // Client traffic from A: three datagrams and one TCP exchange.
    let tcp_client_port = lab
        .a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", CLIENT_UDP_PORT)).unwrap();
            for i in 0..3u8 {
                sock.send_to(&[i; 32], (b_addr, UDP_PORT)).unwrap();
            }
            let mut stream = TcpStream::connect_timeout(
                &SocketAddr::from((b_addr, TCP_PORT)),
                Duration::from_secs(5),
            )
            .unwrap();
            stream.write_all(b"hello").unwrap();
            stream.local_addr().unwrap().port()
        })
        .unwrap();
    let (mut conn, _) = tcp_server.accept().unwrap();
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    let mut dgram = [0u8; 64];
    udp_server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for _ in 0..3 {
        udp_server.recv_from(&mut dgram).unwrap();
    }
    drop(conn);

    let (stdout, _) = probe.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let a = lab.a_addr.to_string();
    let b = lab.b_addr.to_string();

    let udp = matching(
        &events,
        ifindex,
        "egress",
        "udp",
        (&a, CLIENT_UDP_PORT),
        (&b, UDP_PORT),
    );
    assert_eq!(udp.len(), 3, "UDP sightings: {udp:#?}");
    for e in &udp {
        assert_eq!(e["ifname"], TwoHosts::IFACE);
        assert_eq!(e["packet"]["ethertype"], 0x0800);
        // 14 Ethernet + 20 IP + 8 UDP + 32 payload.
        assert_eq!(e["packet"]["len"], 74);
    }

    let syn = matching(
        &events,
        ifindex,
        "egress",
        "tcp",
        (&a, tcp_client_port),
        (&b, TCP_PORT),
    );
    assert!(
        syn.iter().any(|e| e["packet"]["ip"]["tcp_flags"] == "S"),
        "no SYN among {syn:#?}"
    );
    let syn_ack = matching(
        &events,
        ifindex,
        "ingress",
        "tcp",
        (&b, TCP_PORT),
        (&a, tcp_client_port),
    );
    assert!(
        syn_ack
            .iter()
            .any(|e| e["packet"]["ip"]["tcp_flags"] == "S."),
        "no SYN-ACK among {syn_ack:#?}"
    );
    // Timestamps never go backwards on one CPU.
    let mut last = std::collections::HashMap::new();
    for e in &events {
        let (cpu, ts) = (e["cpu"].as_u64().unwrap(), e["ts_ns"].as_u64().unwrap());
        let prev = last.insert(cpu, ts).unwrap_or(0);
        assert!(ts >= prev, "time went backwards on cpu {cpu}");
    }
}

/// The observer never changes a packet's fate: with programs on both ends, every datagram sent
/// arrives, and each was seen leaving A and entering B.
fn every_packet_arrives(backend: &str) {
    require_root();
    const N: usize = 500;
    let lab = TwoHosts::new().unwrap();
    let on_a = ProbeRun::start(&trace_args(lab.a.name(), &["--tc-backend", backend])).unwrap();
    let on_b = ProbeRun::start(&trace_args(lab.b.name(), &["--tc-backend", backend])).unwrap();
    let b_addr = lab.b_addr;
    let server = lab
        .b
        .run(move || {
            let s = UdpSocket::bind((b_addr, UDP_PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The whole burst fits in the socket: any loss would be the datapath's.
            probe_lab::large_receive_buffer(&s, 16 << 20).unwrap();
            s
        })
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let mut got = 0;
        let mut buf = [0u8; 64];
        while got < N && server.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", CLIENT_UDP_PORT)).unwrap();
            for i in 0..N {
                sock.send_to(&(i as u32).to_be_bytes(), (b_addr, UDP_PORT))
                    .unwrap();
            }
        })
        .unwrap();
    let received = receiver.join().unwrap();
    assert_eq!(received, N, "{backend}: datagrams lost with probe attached");

    let a = lab.a_addr.to_string();
    let b = lab.b_addr.to_string();
    for (run, ns, direction) in [(on_a, &lab.a, "egress"), (on_b, &lab.b, "ingress")] {
        let ifindex = ns.ifindex(TwoHosts::IFACE).unwrap();
        let (stdout, stderr) = run.stop().unwrap();
        assert!(stderr.contains(&format!("({backend})")), "{stderr}");
        assert!(stderr.contains("none lost"), "{stderr}");
        let events = json_lines(&stdout).unwrap();
        let seen = matching(
            &events,
            ifindex,
            direction,
            "udp",
            (&a, CLIENT_UDP_PORT),
            (&b, UDP_PORT),
        );
        assert_eq!(
            seen.len(),
            N,
            "{backend}: {direction} sightings in {}",
            ns.name()
        );
    }
}

#[test]
fn every_packet_arrives_with_tcx() {
    require_root();
    if probe_lab::doctor::Doctor::run().unwrap().feature("tcx") {
        every_packet_arrives("tcx");
    } else {
        tcx_refused_without_tcx();
    }
}

/// On kernels before 6.6 (no tcx), asking for tcx on a named interface is refused with an
/// error naming the interface and the mechanism, and probe leaves nothing attached.
fn tcx_refused_without_tcx() {
    let lab = TwoHosts::new().unwrap();
    let out = std::process::Command::new(probe_lab::probe_binary())
        .args(trace_args(
            lab.a.name(),
            &["--tc-backend", "tcx", "--count", "1"],
        ))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit status 3: this kernel lacks what was asked for.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot attach to {} ingress with tcx",
            TwoHosts::IFACE
        )),
        "{stderr}"
    );
    assert!(filters(&lab.a, "ingress").is_empty());
    assert!(!qdiscs(&lab.a).contains("clsact"), "{}", qdiscs(&lab.a));
}

#[test]
fn every_packet_arrives_with_clsact() {
    every_packet_arrives("clsact");
}

fn qdiscs(ns: &probe_lab::Netns) -> String {
    ns.exec("tc", &["qdisc", "show", "dev", TwoHosts::IFACE])
        .unwrap()
}

fn filters(ns: &probe_lab::Netns, dir: &str) -> String {
    ns.exec("tc", &["filter", "show", "dev", TwoHosts::IFACE, dir])
        .unwrap()
}

#[test]
fn clsact_qdisc_is_removed_only_when_probe_created_it() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    // A: no qdisc before, so probe creates one and must remove it.
    // B: a clsact qdisc already there (someone else's), which must survive.
    lab.b
        .exec("tc", &["qdisc", "add", "dev", TwoHosts::IFACE, "clsact"])
        .unwrap();
    for ns in [&lab.a, &lab.b] {
        let run = ProbeRun::start(&trace_args(ns.name(), &["--tc-backend", "clsact"])).unwrap();
        assert!(qdiscs(ns).contains("clsact"), "{}", qdiscs(ns));
        assert!(filters(ns, "ingress").contains("tc_ingress"));
        assert!(filters(ns, "egress").contains("tc_egress"));
        run.stop().unwrap();
        assert!(
            filters(ns, "ingress").is_empty(),
            "{}",
            filters(ns, "ingress")
        );
        assert!(
            filters(ns, "egress").is_empty(),
            "{}",
            filters(ns, "egress")
        );
    }
    assert!(!qdiscs(&lab.a).contains("clsact"), "{}", qdiscs(&lab.a));
    assert!(qdiscs(&lab.b).contains("clsact"), "{}", qdiscs(&lab.b));
}

#[test]
fn count_stops_the_trace_by_itself() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let run = ProbeRun::start(&trace_args(lab.a.name(), &["--count", "4"])).unwrap();
    let b_addr = lab.b_addr;
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            for _ in 0..10 {
                sock.send_to(b"x", (b_addr, UDP_PORT)).unwrap();
            }
        })
        .unwrap();
    let (stdout, stderr) = run.finish().unwrap();
    assert_eq!(json_lines(&stdout).unwrap().len(), 4, "{stdout}");
    assert!(stderr.contains("4 events"), "{stderr}");
}

/// Without --iface probe finds the datapath interfaces itself, skips others (an ifb device), and attaches to
/// interfaces created while it runs.
fn attaches_to_interfaces_as_they_appear(iface_args: &[&str]) {
    require_root();
    let lab = TwoHosts::new().unwrap();
    lab.a.ip(&["link", "add", "ifb9", "type", "ifb"]).unwrap();
    let mut args = vec![
        "trace",
        "--netns",
        lab.a.name(),
        "--no-drops",
        "--no-routes",
        "--json",
        "--events",
    ];
    args.extend_from_slice(iface_args);
    let mut run = ProbeRun::start(&args).unwrap();
    let tracing = run
        .stderr_so_far()
        .iter()
        .find(|l| l.starts_with("probe: tracing"))
        .unwrap()
        .clone();
    assert!(tracing.contains("veth0"), "{tracing}");
    assert!(!tracing.contains("ifb9"), "{tracing}");

    // A new link between the namespaces, made while probe runs.
    lab.a
        .ip(&[
            "link",
            "add",
            "veth1",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            lab.b.name(),
        ])
        .unwrap();
    run.wait_for_stderr("probe: attached to veth1").unwrap();
    for (ns, addr) in [(&lab.a, "10.202.0.1/24"), (&lab.b, "10.202.0.2/24")] {
        ns.ip(&["addr", "add", addr, "dev", "veth1"]).unwrap();
        ns.ip(&["link", "set", "veth1", "up"]).unwrap();
    }
    let receiver =
        probe_lab::traffic::udp_listen(&lab.b, std::net::Ipv4Addr::new(10, 202, 0, 2), UDP_PORT)
            .unwrap();
    lab.a
        .run(|| {
            let sock = UdpSocket::bind(("10.202.0.1", CLIENT_UDP_PORT)).unwrap();
            sock.send_to(b"new link", ("10.202.0.2", UDP_PORT)).unwrap();
        })
        .unwrap();
    // The datagram waits for neighbour resolution before it leaves: stop only once it arrived.
    receiver.recv(&mut [0u8; 16]).unwrap();
    let ifindex = lab.a.ifindex("veth1").unwrap();
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let seen = matching(
        &events,
        ifindex,
        "egress",
        "udp",
        ("10.202.0.1", CLIENT_UDP_PORT),
        ("10.202.0.2", UDP_PORT),
    );
    assert_eq!(seen.len(), 1, "{seen:#?} in {events:#?}");
    assert_eq!(seen[0]["ifname"], "veth1");
}

#[test]
fn discovery_attaches_to_new_interfaces() {
    attaches_to_interfaces_as_they_appear(&[]);
}

#[test]
fn globs_attach_to_new_interfaces() {
    attaches_to_interfaces_as_they_appear(&["--iface", "veth*"]);
}

/// A filter keeps only matching packets, in event mode and in timeline mode.
#[test]
fn filter_keeps_only_matching_packets() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let b_addr = lab.b_addr;
    let send = |lab: &TwoHosts| {
        lab.a
            .run(move || {
                let sock = UdpSocket::bind(("0.0.0.0", CLIENT_UDP_PORT)).unwrap();
                sock.send_to(b"kept", (b_addr, 9000)).unwrap();
                sock.send_to(b"filtered", (b_addr, 9001)).unwrap();
            })
            .unwrap();
    };
    // The last datagram of each burst: once it arrived, both went through veth0.
    let last = probe_lab::traffic::udp_listen(&lab.b, b_addr, 9001).unwrap();
    for mode in [&["--events"][..], &[][..]] {
        let mut args = trace_args(
            lab.a.name(),
            &["--filter", "udp dst port 9000", "--no-routes"],
        );
        args.retain(|a| *a != "--events");
        args.extend_from_slice(mode);
        let run = ProbeRun::start(&args).unwrap();
        send(&lab);
        last.recv(&mut [0u8; 16]).unwrap();
        let (stdout, _) = run.stop().unwrap();
        let lines = json_lines(&stdout).unwrap();
        assert!(!lines.is_empty(), "{mode:?}: nothing kept");
        // Events carry the port in the packet; timelines in their first tuple.
        let dport = |l: &serde_json::Value| {
            l["packet"]["ip"]["dport"]
                .as_u64()
                .or_else(|| l["first"]["dport"].as_u64())
        };
        // The port unreachable for 9000 comes with the datagram it quotes: as an event with
        // the quote, or as a timeline that answers the datagram's.
        let kept: Vec<u64> = lines
            .iter()
            .filter(|l| dport(l) == Some(9000))
            .filter_map(|l| l["id"].as_u64())
            .collect();
        let about_kept = |l: &serde_json::Value| {
            l["quoted"]["ip"]["dport"] == 9000
                || l["answers"].as_u64().is_some_and(|id| kept.contains(&id))
        };
        assert!(
            lines
                .iter()
                .all(|l| dport(l) == Some(9000) || about_kept(l)),
            "{mode:?}: {lines:#?}"
        );
    }
}

/// With a ring buffer far too small for a burst, probe says events were lost: live, at exit
/// with the CPUs, and on the timelines in flight.
#[test]
fn lost_events_are_reported() {
    require_root();
    const N: usize = 3000;
    let lab = TwoHosts::new().unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        TwoHosts::IFACE,
        "--ringbuf-kib",
        "4",
        "--no-routes",
        "--no-drops",
        "--json",
    ])
    .unwrap();
    let b_addr = lab.b_addr;
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            for i in 0..N {
                sock.send_to(&(i as u32).to_be_bytes(), (b_addr, 9999))
                    .unwrap();
            }
        })
        .unwrap();
    let (stdout, stderr) = run.stop().unwrap();
    assert!(
        stderr.contains("LOST because the ring buffer was full (cpu"),
        "{stderr}"
    );
    let timelines = json_lines(&stdout).unwrap();
    assert!(timelines.len() < N, "some packets' sightings were lost");
    assert!(
        stderr.contains("events lost") || timelines.iter().any(|t| t["events_lost"] == true),
        "loss reported live or on timelines: {stderr}"
    );
}

/// Sends `n` datagrams from A to B and waits until every one arrived.
fn send_and_receive(lab: &TwoHosts, n: usize) {
    let b_addr = lab.b_addr;
    let server = lab
        .b
        .run(move || {
            let s = UdpSocket::bind((b_addr, UDP_PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .unwrap();
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", CLIENT_UDP_PORT)).unwrap();
            for i in 0..n {
                sock.send_to(&(i as u32).to_be_bytes(), (b_addr, UDP_PORT))
                    .unwrap();
            }
        })
        .unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..n {
        server.recv_from(&mut buf).unwrap();
    }
}

/// Two probes with clsact on one interface: when the one that created the qdisc exits, the
/// other keeps its hooks and sees every packet; the last one out removes the qdisc.
#[test]
fn two_clsact_probes_one_exits_the_other_sees_every_packet() {
    require_root();
    const N: usize = 20;
    let lab = TwoHosts::new().unwrap();
    let args = trace_args(lab.a.name(), &["--tc-backend", "clsact"]);
    let first = ProbeRun::start(&args).unwrap();
    let second = ProbeRun::start(&args).unwrap();
    first.stop().unwrap();
    assert!(qdiscs(&lab.a).contains("clsact"), "{}", qdiscs(&lab.a));
    send_and_receive(&lab, N);
    let (stdout, _) = second.stop().unwrap();
    let ifindex = lab.a.ifindex(TwoHosts::IFACE).unwrap();
    let (a, b) = (lab.a_addr.to_string(), lab.b_addr.to_string());
    let events = json_lines(&stdout).unwrap();
    let seen = matching(
        &events,
        ifindex,
        "egress",
        "udp",
        (&a, CLIENT_UDP_PORT),
        (&b, UDP_PORT),
    );
    assert_eq!(seen.len(), N, "{events:#?}");
    assert!(
        filters(&lab.a, "egress").is_empty(),
        "{}",
        filters(&lab.a, "egress")
    );
    assert!(!qdiscs(&lab.a).contains("clsact"), "{}", qdiscs(&lab.a));
}

/// Another tool's tc filter on the qdisc probe created survives probe's exit, and so does the
/// qdisc it needs.
#[test]
fn a_foreign_tc_filter_survives_probe() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let run = ProbeRun::start(&trace_args(lab.a.name(), &["--tc-backend", "clsact"])).unwrap();
    // A classic-BPF filter of someone else's, added under probe's qdisc.
    lab.a
        .exec(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                TwoHosts::IFACE,
                "ingress",
                "prio",
                "1",
                "bpf",
                "bytecode",
                "1,6 0 0 0,",
            ],
        )
        .unwrap();
    run.stop().unwrap();
    let left = filters(&lab.a, "ingress");
    assert!(left.contains("bytecode"), "{left}");
    assert!(!left.contains("tc_ingress"), "{left}");
    assert!(qdiscs(&lab.a).contains("clsact"), "{}", qdiscs(&lab.a));
}

/// SIGKILL leaves clsact filters running; the next probe removes them (and the qdisc the
/// killed one created), says so, and leaves nothing when it exits. `probe cleanup` does the
/// same on demand.
#[test]
fn a_killed_clsact_probe_is_cleaned_up_after() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let args = trace_args(lab.a.name(), &["--tc-backend", "clsact"]);
    for next in ["trace", "cleanup"] {
        let killed = ProbeRun::start(&args).unwrap();
        let pid = killed.pid();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        drop(killed);
        assert!(
            filters(&lab.a, "ingress").contains("tc_ingress"),
            "a kill leaves filters"
        );
        let said = if next == "trace" {
            let run = ProbeRun::start(&args).unwrap();
            let (_, stderr) = run.stop().unwrap();
            stderr
        } else {
            cleanup(&lab.a)
        };
        assert!(
            said.contains(&format!(
                "removed 2 tc filter(s) on {} left by probe {pid}",
                TwoHosts::IFACE
            )),
            "{next}: {said}"
        );
        assert!(
            filters(&lab.a, "ingress").is_empty(),
            "{}",
            filters(&lab.a, "ingress")
        );
        assert!(
            filters(&lab.a, "egress").is_empty(),
            "{}",
            filters(&lab.a, "egress")
        );
        assert!(
            !qdiscs(&lab.a).contains("clsact"),
            "{next}: {}",
            qdiscs(&lab.a)
        );
    }
}

/// `probe cleanup` in `ns`: what it said it removed.
fn cleanup(ns: &probe_lab::Netns) -> String {
    let out = std::process::Command::new(probe_lab::probe_binary())
        .args(["cleanup", "--netns", ns.name()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A ledger names its namespace by inode and cookie. When a namespace dies, a new one may get
/// its inode (and, made alike, its interface numbers): what the dead probe wrote down is then
/// not in the new namespace, and whatever the sweep would find there belongs to someone else.
/// The inode cannot be made to repeat on demand, so the test gives the killed probe's ledger
/// the cookie of another namespace: the sweep must leave the qdisc and filters alone, and say
/// nothing; with the ledger's own cookie back, it removes them.
#[test]
fn a_ledger_from_another_namespace_with_the_same_inode_removes_nothing() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let args = trace_args(lab.a.name(), &["--tc-backend", "clsact"]);
    let killed = ProbeRun::start(&args).unwrap();
    let pid = killed.pid();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    drop(killed);
    let ledger = std::path::PathBuf::from(format!("/run/probe/tc.{pid}"));
    let written = std::fs::read_to_string(&ledger).unwrap();
    let cookie_line = written
        .lines()
        .find(|l| l.starts_with("cookie "))
        .unwrap_or_else(|| panic!("no namespace cookie in the ledger (5.14+): {written}"));
    let (inode, cookie) = cookie_line
        .strip_prefix("cookie ")
        .and_then(|l| l.split_once(' '))
        .unwrap();
    let cookie: u64 = cookie.parse().unwrap();
    let other = written.replace(cookie_line, &format!("cookie {inode} {}", cookie + 1));
    std::fs::write(&ledger, other).unwrap();

    let said = cleanup(&lab.a);
    assert!(!said.contains("removed"), "{said}");
    assert!(
        filters(&lab.a, "ingress").contains("tc_ingress"),
        "{}",
        filters(&lab.a, "ingress")
    );
    assert!(qdiscs(&lab.a).contains("clsact"), "{}", qdiscs(&lab.a));

    // The same ledger naming this namespace's own cookie is this namespace's.
    std::fs::write(&ledger, &written).unwrap();
    let said = cleanup(&lab.a);
    assert!(
        said.contains(&format!(
            "removed 2 tc filter(s) on {} left by probe {pid}",
            TwoHosts::IFACE
        )),
        "{said}"
    );
    assert!(!qdiscs(&lab.a).contains("clsact"), "{}", qdiscs(&lab.a));
}

/// Open descriptors of a process that are bpf links.
fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().contains("bpf_link"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Interfaces that come and go (container churn) release their tcx links at once: probe's
/// descriptors stay flat.
#[test]
fn vanished_interfaces_release_their_links() {
    require_root();
    if !probe_lab::doctor::Doctor::run().unwrap().feature("tcx") {
        // clsact holds no descriptor per interface.
        return;
    }
    const PAIRS: usize = 30;
    let lab = TwoHosts::new().unwrap();
    let mut run = ProbeRun::start(&["trace", "--netns", lab.a.name(), "--events"]).unwrap();
    let pid = run.pid();
    let add = |x: &str, y: &str| {
        lab.a
            .exec("ip", &["link", "add", x, "type", "veth", "peer", "name", y])
            .unwrap()
    };
    // One round: the mark pair's own deletion is not waited for.
    for round in 0..1 {
        let before = bpf_links(pid);
        for i in 0..PAIRS {
            add(&format!("churn{i}a"), &format!("churn{i}b"));
        }
        // Every new veth end is attached as it appears (events are handled in order; the
        // kernel announces a pair's two ends in either order).
        for _ in 0..2 {
            run.wait_for_stderr(&format!("probe: attached to churn{}", PAIRS - 1))
                .unwrap();
        }
        let peak = bpf_links(pid);
        assert_eq!(peak, before + 2 * 2 * PAIRS, "round {round}");
        for i in 0..PAIRS {
            lab.a
                .exec("ip", &["link", "del", &format!("churn{i}a")])
                .unwrap();
        }
        // A pair added after the deletions is attached only once they were all handled.
        add(&format!("mark{round}a"), &format!("mark{round}b"));
        for _ in 0..2 {
            run.wait_for_stderr(&format!("probe: attached to mark{round}"))
                .unwrap();
        }
        assert_eq!(
            bpf_links(pid),
            before + 2 * 2,
            "round {round}: links of vanished interfaces are held"
        );
        lab.a
            .exec("ip", &["link", "del", &format!("mark{round}a")])
            .unwrap();
    }
    run.stop().unwrap();
}

/// `--snaplen`: the tc programs copy the packet's first bytes, through this kernel's verifier
/// (the copy has a length known only at load time), and the pcapng export carries them: the
/// datagram's payload is in the file, on both directions of the interface.
#[test]
fn snaplen_copies_the_packets_first_bytes_through_this_kernels_verifier() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let dir = std::env::temp_dir().join(format!("probe-snaplen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcapng = dir.join("trace.pcapng");
    let pcapng_s = pcapng.to_str().unwrap().to_owned();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        TwoHosts::IFACE,
        "--json",
        "--snaplen",
        "128",
        "--pcapng",
        &pcapng_s,
    ])
    .unwrap();
    let dst = SocketAddr::from((lab.b_addr, UDP_PORT));
    let marker = b"snaplen-marker-0123456789";
    let receiver = lab.b.run(move || UdpSocket::bind(dst).unwrap()).unwrap();
    lab.a
        .run(move || {
            let s = UdpSocket::bind(("0.0.0.0", CLIENT_UDP_PORT)).unwrap();
            s.send_to(marker, dst).unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 64];
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    receiver.recv_from(&mut buf).expect("the datagram arrives");
    let (stdout, stderr) = run.stop().unwrap();
    let written = std::fs::read(&pcapng).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let timelines = json_lines(&stdout).unwrap();
    assert!(
        timelines
            .iter()
            .any(|t| t["first"]["dport"] == UDP_PORT && t["first"]["sport"] == CLIENT_UDP_PORT),
        "{timelines:#?}\n{stderr}"
    );
    let copies = written
        .windows(marker.len())
        .filter(|w| *w == marker)
        .count();
    assert!(
        copies >= 1,
        "the payload is in the pcapng file ({} bytes)",
        written.len()
    );
}

/// The programs submit without waking the reader until a share of the ring is unread: a lone
/// packet on an idle host never gets there, and must still reach userspace (the reader's
/// bounded poll collects it). `--count 1` makes probe exit once it has the event (the filter
/// leaves out the ARP exchange before it, and only tc is attached: kernels with fentry would
/// report the netfilter hook first); the wait for that is bounded by the harness's timeout,
/// not measured.
#[test]
fn a_lone_packet_on_an_idle_host_is_delivered() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let mut run = ProbeRun::start(&trace_args(
        lab.a.name(),
        &[
            "--count",
            "1",
            "--filter",
            "udp dst port 9000",
            "--no-routes",
            "--no-drops",
            "--no-netfilter",
        ],
    ))
    .unwrap();
    let b_addr = lab.b_addr;
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", CLIENT_UDP_PORT)).unwrap();
            sock.send_to(b"lone", (b_addr, UDP_PORT)).unwrap();
        })
        .unwrap();
    run.wait_for_stderr("probe: 1 events").unwrap();
    let (stdout, _) = run.finish().unwrap();
    let events = json_lines(&stdout).unwrap();
    let ifindex = lab.a.ifindex(TwoHosts::IFACE).unwrap();
    let a = lab.a_addr.to_string();
    let b = lab.b_addr.to_string();
    let seen = matching(
        &events,
        ifindex,
        "egress",
        "udp",
        (&a, CLIENT_UDP_PORT),
        (&b, UDP_PORT),
    );
    assert_eq!(seen.len(), 1, "{stdout}");
}

/// A burst several times the wakeup mark (a sixteenth of the default 4 MiB ring, about 2,700
/// sightings; the programs wake the reader each time the unread data passes a multiple of it)
/// but within the ring: every datagram sent is one sighting, none lost, however the wakeups
/// and the bounded poll share the work.
#[test]
fn a_burst_past_the_wakeup_mark_is_delivered_complete() {
    require_root();
    const N: usize = 10_000;
    let lab = TwoHosts::new().unwrap();
    let run = ProbeRun::start(&trace_args(lab.a.name(), &["--no-routes", "--no-drops"])).unwrap();
    let b_addr = lab.b_addr;
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", CLIENT_UDP_PORT)).unwrap();
            for i in 0..N {
                sock.send_to(&(i as u32).to_be_bytes(), (b_addr, UDP_PORT))
                    .unwrap();
            }
        })
        .unwrap();
    let (stdout, stderr) = run.stop().unwrap();
    assert!(stderr.contains("none lost"), "{stderr}");
    let events = json_lines(&stdout).unwrap();
    let ifindex = lab.a.ifindex(TwoHosts::IFACE).unwrap();
    let a = lab.a_addr.to_string();
    let b = lab.b_addr.to_string();
    let seen = matching(
        &events,
        ifindex,
        "egress",
        "udp",
        (&a, CLIENT_UDP_PORT),
        (&b, UDP_PORT),
    );
    assert_eq!(seen.len(), N, "egress sightings of {N} datagrams sent");
}
