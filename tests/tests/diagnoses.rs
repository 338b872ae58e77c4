//! Each family of drop, made to happen for real in a lab (client — router — server
//! namespaces), traced with `probe trace --json`: the timeline's diagnosis names the cause in
//! plain words, JSON carries its id, the facts read from the timeline and the host, and the
//! next step. Local delivery ends at the socket and the process holding it.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use probe_lab::{
    ProbeRun, Routed, doctor::Doctor, one_lab_at_a_time, probe::json_lines, require_root,
    topology::sysctl,
};
use serde_json::Value;

/// Traces `ns` (JSON timelines) while `traffic` runs; returns the timelines and stderr.
fn trace(ns: &str, filter: &str, traffic: impl FnOnce()) -> (Vec<Value>, String) {
    let run = ProbeRun::start(&["trace", "--netns", ns, "--json", filter]).unwrap();
    traffic();
    let (stdout, stderr) = run.stop().unwrap();
    (json_lines(&stdout).unwrap(), stderr)
}

/// The first dropped timeline, with its cause id checked.
fn dropped<'a>(all: &'a [Value], cause: &str, stderr: &str) -> &'a Value {
    let d = all
        .iter()
        .find(|t| t["outcome"] == "dropped")
        .unwrap_or_else(|| panic!("no drop in {all:#?}\n{stderr}"));
    assert_eq!(d["cause"]["id"], cause, "{d:#}");
    assert_eq!(d["advice"], d["cause"]["next"], "{d:#}");
    d
}

/// The value of the fact `kind` (`rp_filter`, `mtu`, ...), which must be there.
fn fact<'a>(t: &'a Value, kind: &str) -> &'a str {
    t["facts"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["fact"] == kind))
        .and_then(|f| f["value"].as_str())
        .unwrap_or_else(|| panic!("no {kind} fact in {t:#}"))
}

fn diagnosis(t: &Value) -> &str {
    t["diagnosis"].as_str().unwrap()
}

fn udp_from(ns: &probe_lab::Netns, src: Option<IpAddr>, dst: IpAddr, port: u16, len: usize) {
    ns.run(move || {
        let bind: SocketAddr = match (src, dst) {
            (Some(s), _) => (s, 0).into(),
            (None, IpAddr::V4(_)) => "0.0.0.0:0".parse().unwrap(),
            (None, IpAddr::V6(_)) => "[::]:0".parse().unwrap(),
        };
        let s = UdpSocket::bind(bind).unwrap();
        s.send_to(&vec![b'x'; len], (dst, port)).unwrap();
    })
    .unwrap();
}

/// Waits until `ns`'s neighbour entry of `addr` says `state` (bounded: 10 s).
fn wait_for_neighbour(ns: &probe_lab::Netns, addr: &str, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ns.ip(&["neigh", "show", addr]).unwrap().contains(state) {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr}'s entry in {} never said {state}",
            ns.name()
        );
        std::thread::yield_now();
    }
}

fn setsockopt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: a plain int option on a socket the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

#[test]
fn an_unreachable_route_is_named_with_the_route_that_refused() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    lab.router
        .ip(&["route", "add", "unreachable", "10.99.0.0/16"])
        .unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7100", || {
        udp_from(&lab.client, None, "10.99.0.1".parse().unwrap(), 7100, 8)
    });
    let d = dropped(&all, "no-route", &stderr);
    assert!(
        diagnosis(d).contains("no route leads where it was going"),
        "{d:#}"
    );
    let route = fact(d, "route");
    assert!(
        route.contains("10.99.0.1") && route.contains("EHOSTUNREACH (an unreachable route)"),
        "{route}"
    );
    assert_eq!(
        fact(d, "forwarding"),
        "net.ipv4.ip_forward=1, net.ipv4.conf.to-client.forwarding=1"
    );
}

#[test]
fn forwarding_disabled_is_told_apart_from_a_missing_route() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    sysctl(&lab.router, "net.ipv4.ip_forward", "0").unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7101", || {
        udp_from(&lab.client, None, Routed::SERVER.into(), 7101, 8)
    });
    let d = dropped(&all, "forwarding-disabled", &stderr);
    assert!(diagnosis(d).contains("does not forward"), "{d:#}");
    assert!(
        fact(d, "forwarding").starts_with("net.ipv4.ip_forward=0"),
        "{d:#}"
    );
}

#[test]
fn reverse_path_filter_shows_the_interfaces_setting() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    sysctl(&lab.router, "net.ipv4.conf.all.rp_filter", "1").unwrap();
    sysctl(&lab.router, "net.ipv4.conf.to-client.rp_filter", "1").unwrap();
    // The router's address resolved first: with rp_filter on, it would not answer ARP for
    // the spoofed source either.
    udp_from(&lab.client, None, "10.203.1.1".parse().unwrap(), 9, 1);
    wait_for_neighbour(&lab.client, "10.203.1.1", "lladdr");
    // A source the router has no route back to.
    lab.client
        .ip(&["addr", "add", "10.77.0.1/32", "dev", "eth0"])
        .unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7102", || {
        udp_from(
            &lab.client,
            Some("10.77.0.1".parse().unwrap()),
            Routed::SERVER.into(),
            7102,
            8,
        )
    });
    let d = dropped(&all, "rp-filter", &stderr);
    assert!(diagnosis(d).contains("reverse-path filtering"), "{d:#}");
    assert_eq!(
        fact(d, "rp_filter"),
        "net.ipv4.conf.to-client.rp_filter=1, net.ipv4.conf.all.rp_filter=1 (strict: the reply \
         route must leave by the same interface)"
    );
}

#[test]
fn too_big_for_the_next_link_shows_its_mtu_and_the_packets_size() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    lab.router
        .ip(&["link", "set", Routed::TO_SERVER, "mtu", "1280"])
        .unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7103", || send_too_big(&lab));
    let d = dropped(&all, "mtu", &stderr);
    assert!(
        diagnosis(d).contains("larger than the output device's MTU"),
        "{d:#}"
    );
    // 1400 bytes of payload, 8 of UDP, 20 of IPv4.
    assert_eq!(
        fact(d, "mtu"),
        "dev to-server mtu 1280; the packet was 1428 bytes"
    );
    // The router's "fragmentation needed" back to the client is part of the datagram's
    // timeline: a row, a fact and a link both ways; in text, a row of its block.
    let e = answered(&all, d, "fragmentation needed (mtu 1280)", Routed::CLIENT);
    assert_eq!(e["where"], format!("{} egress", Routed::TO_CLIENT), "{d:#}");
    assert_eq!(e["mtu"], 1280, "{d:#}");
    assert!(
        fact(d, "icmp_error").starts_with(&format!(
            "ICMP fragmentation needed (mtu 1280) to {} (packet ",
            Routed::CLIENT
        )),
        "{d:#}"
    );
    let run = ProbeRun::start(&["trace", "--netns", lab.router.name(), "udp port 7103"]).unwrap();
    send_too_big(&lab);
    let (text, stderr) = run.stop().unwrap();
    let block = text
        .split("\npacket ")
        .find(|b| b.contains("PKT_TOO_BIG") || b.contains("MTU"))
        .unwrap_or_else(|| panic!("no drop block in\n{text}\n{stderr}"));
    let rows: Vec<&str> = block.lines().collect();
    let row = rows
        .iter()
        .position(|r| {
            r.contains("to-client egress")
                && r.contains("answered with ICMP fragmentation needed (mtu 1280)")
        })
        .unwrap_or_else(|| panic!("no ICMP row in\n{block}"));
    // A timed row among the hops, before the outcome, which names it too.
    assert!(rows[row].trim_start().starts_with('+'), "{block}");
    let outcome = rows.iter().position(|r| r.contains("=> ")).unwrap();
    assert!(
        row < outcome && rows[outcome].contains("the host answered with ICMP"),
        "{block}"
    );
}

fn send_too_big(lab: &Routed) {
    lab.client
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            // DF on: the router may not fragment; and the path MTU the router reports is
            // not applied, so that every call sends the datagram again.
            setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_PROBE,
            );
            s.send_to(&[b'x'; 1400], (Routed::SERVER, 7103)).unwrap();
        })
        .unwrap()
}

/// The ICMP error the host sent about timeline `t`: `what` it was, sent to `to`, in `t`'s
/// `icmp_errors` and named by its diagnosis, and an error timeline of its own that `answers`
/// `t`. Returns the `icmp_errors` entry.
fn answered<'a>(
    all: &'a [Value],
    t: &'a Value,
    what: &str,
    to: impl std::fmt::Display,
) -> &'a Value {
    let e = t["icmp_errors"]
        .as_array()
        .and_then(|e| e.first())
        .unwrap_or_else(|| panic!("no ICMP error joined to {t:#}\nall: {all:#?}"));
    assert_eq!(e["what"], what, "{t:#}");
    assert_eq!(e["to"], to.to_string(), "{t:#}");
    assert!(
        diagnosis(t).contains("; the host answered with ICMP") && diagnosis(t).contains(what),
        "{t:#}"
    );
    let error = all
        .iter()
        .find(|x| x["id"] == e["timeline"])
        .unwrap_or_else(|| {
            panic!(
                "the error's own timeline {} is missing: {all:#?}",
                e["timeline"]
            )
        });
    assert_eq!(error["answers"], t["id"], "{error:#}");
    assert!(
        t["hops"][0]["ts_ns"].as_u64() <= e["ts_ns"].as_u64(),
        "the error comes after the packet: {t:#}"
    );
    e
}

#[test]
fn ttl_running_out_at_the_router_is_not_called_a_malformed_packet() {
    require_root();
    let (major, minor) = Doctor::run().unwrap().kernel_version().unwrap();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7104", || {
        lab.client
            .run(|| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_ttl(1).unwrap();
                s.send_to(b"hop", (Routed::SERVER, 7104)).unwrap();
            })
            .unwrap()
    });
    // Kernels before 6.x's reasons in ip_forward (5.10 has none at all) free an expired
    // packet without saying why, and ip_forward frees for several causes: the place alone is
    // not enough, and probe does not guess.
    let reason_given = all.iter().any(|t| {
        t["hops"].as_array().is_some_and(|hops| {
            hops.iter()
                .any(|h| h["event"]["kind"] == "drop" && h["event"]["reason"] == "IP_INHDR")
        })
    });
    if (major, minor) < (5, 17) || !reason_given {
        let d = all
            .iter()
            .find(|t| t["outcome"] == "dropped")
            .unwrap_or_else(|| panic!("no drop in {all:#?}\n{stderr}"));
        assert!(diagnosis(d).contains("in ip_forward"), "{d:#}");
        return;
    }
    let d = dropped(&all, "ttl-exceeded", &stderr);
    assert!(diagnosis(d).contains("time to live ran out"), "{d:#}");
    assert!(
        fact(d, "route").starts_with("10.203.2.2 table main -> dev to-server"),
        "{d:#}"
    );
}

#[test]
fn a_rule_that_drops_is_netfilters_doing_with_the_bridge_setting() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    lab.router
        .exec(
            "nft",
            &[
                "add table inet lab; add chain inet lab forward_lab { type filter hook forward priority 0; }; \
                 add rule inet lab forward_lab udp dport 7105 drop",
            ],
        )
        .unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7105", || {
        udp_from(&lab.client, None, Routed::SERVER.into(), 7105, 8)
    });
    let d = dropped(&all, "netfilter", &stderr);
    let bridge = fact(d, "bridge_netfilter");
    assert!(
        bridge.starts_with("net.bridge.bridge-nf-call-iptables=")
            || bridge == "br_netfilter is not loaded: bridged packets skip iptables",
        "{bridge}"
    );
}

#[test]
fn a_neighbour_that_never_answers_is_named_with_its_entry() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    // One ARP probe, 100 ms apart: resolution fails fast.
    sysctl(&lab.router, "net.ipv4.neigh.to-server.mcast_solicit", "1").unwrap();
    sysctl(
        &lab.router,
        "net.ipv4.neigh.to-server.retrans_time_ms",
        "100",
    )
    .unwrap();
    let absent: IpAddr = "10.203.2.99".parse().unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7106", || {
        udp_from(&lab.client, None, absent, 7106, 8);
        // Until the router has given up on the neighbour (its entry fails).
        wait_for_neighbour(&lab.router, "10.203.2.99", "FAILED");
    });
    let d = dropped(&all, "neighbour", &stderr);
    assert_eq!(fact(d, "neighbour"), "10.203.2.99 dev to-server FAILED");
}

#[test]
fn a_packet_waiting_seconds_for_its_neighbour_is_one_timeline_to_its_drop() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    // The kernel's defaults: three solicitations a second apart, then the packet is dropped.
    sysctl(&lab.router, "net.ipv4.neigh.to-server.mcast_solicit", "3").unwrap();
    sysctl(
        &lab.router,
        "net.ipv4.neigh.to-server.retrans_time_ms",
        "1000",
    )
    .unwrap();
    let absent: IpAddr = "10.203.2.98".parse().unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7110", || {
        udp_from(&lab.client, None, absent, 7110, 8);
        wait_for_neighbour(&lab.router, "10.203.2.98", "FAILED");
    });
    let mine: Vec<&Value> = all.iter().filter(|t| t["first"]["dport"] == 7110).collect();
    assert_eq!(
        mine.len(),
        1,
        "one packet, one timeline: {mine:#?}\n{stderr}"
    );
    let d = dropped(&all, "neighbour", &stderr);
    // From its arrival to its drop, seconds apart.
    assert_eq!(
        d["hops"][0]["where"],
        format!("{} ingress", Routed::TO_CLIENT),
        "{d:#}"
    );
    let hops = d["hops"].as_array().unwrap();
    let waited = hops.last().unwrap()["t_ns"].as_u64().unwrap();
    assert!(waited > 1_000_000_000, "dropped after {waited} ns: {d:#}");
    // The router tells the sender.
    answered(&all, d, "host unreachable", Routed::CLIENT);
}

#[test]
fn a_full_queue_names_the_qdisc_and_its_drops() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    lab.router
        .exec(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                Routed::TO_SERVER,
                "root",
                "tbf",
                "rate",
                "1mbit",
                "burst",
                "1600",
                "limit",
                "1600",
            ],
        )
        .unwrap();
    let (all, stderr) = trace(lab.router.name(), "udp port 7107", || {
        lab.client
            .run(|| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                for _ in 0..40 {
                    s.send_to(&[b'x'; 1000], (Routed::SERVER, 7107)).unwrap();
                }
            })
            .unwrap()
    });
    let d = dropped(&all, "queue-discipline", &stderr);
    let q = fact(d, "qdisc");
    assert!(q.starts_with("dev to-server qdisc tbf (dropped "), "{q}");
    assert!(!q.starts_with("dev to-server qdisc tbf (dropped 0,"), "{q}");
}

#[test]
fn no_socket_for_udp_and_tcp_over_ipv4_and_ipv6() {
    require_root();
    let reasons = Doctor::run().unwrap().kernel_version().unwrap() >= (5, 17);
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap().with_ipv6().unwrap();
    for dst in [IpAddr::from(Routed::SERVER), IpAddr::from(Routed::SERVER6)] {
        // Until the server's port unreachable is back: the datagram arrived and was dropped
        // before the trace stops (a first datagram may wait for the neighbours on its way).
        let (all, stderr) = trace(lab.server.name(), "udp port 7108", || {
            lab.client
                .run(move || {
                    let any: SocketAddr = match dst {
                        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
                        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
                    };
                    let s = UdpSocket::bind(any).unwrap();
                    s.connect((dst, 7108)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.send(&[b'x'; 8]).unwrap();
                    let refused = s.recv(&mut [0u8; 8]).unwrap_err();
                    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
                })
                .unwrap()
        });
        let d = dropped(&all, "no-socket", &stderr);
        assert_eq!(
            fact(d, "socket"),
            "no udp socket bound to port 7108 here",
            "{dst}"
        );
        // The server's port unreachable is joined to the datagram.
        let client = if dst.is_ipv4() {
            IpAddr::from(Routed::CLIENT)
        } else {
            IpAddr::from(Routed::CLIENT6)
        };
        answered(&all, d, "port unreachable", client);
        let (all, stderr) = trace(lab.server.name(), "tcp port 7109", || {
            lab.client
                .run(move || {
                    let refused =
                        TcpStream::connect_timeout(&(dst, 7109).into(), Duration::from_secs(5));
                    assert!(refused.is_err());
                })
                .unwrap()
        });
        if reasons {
            let d = dropped(&all, "no-socket", &stderr);
            assert_eq!(
                fact(d, "socket"),
                "no tcp socket bound to port 7109 here",
                "{dst}"
            );
        } else {
            // Before 5.17: tcp_v*_rcv frees for several causes, and names none.
            let d = all
                .iter()
                .find(|t| t["outcome"] == "dropped")
                .unwrap_or_else(|| panic!("no drop in {all:#?}\n{stderr}"));
            assert!(diagnosis(d).contains("in tcp_v"), "{d:#}");
        }
    }
}

#[test]
fn a_socket_that_does_not_read_fills_up_and_is_named_with_its_process() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    let sink = lab
        .server
        .run(|| {
            let s = UdpSocket::bind((Routed::SERVER, 7110)).unwrap();
            setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1);
            s
        })
        .unwrap();
    let (all, stderr) = trace(lab.server.name(), "udp port 7110", || {
        lab.client
            .run(|| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                for _ in 0..50 {
                    s.send_to(&[b'x'; 1000], (Routed::SERVER, 7110)).unwrap();
                }
            })
            .unwrap()
    });
    let d = dropped(&all, "socket-full", &stderr);
    assert_eq!(
        fact(d, "socket"),
        format!(
            "udp socket 10.203.2.2:7110 (process {}, pid {})",
            own_comm(),
            std::process::id()
        )
    );
    drop(sink);
}

fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_owned()
}

/// Traffic that reaches a socket ends there, with the process holding it: never
/// "incomplete".
#[test]
fn local_delivery_ends_at_the_socket_and_its_process() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap().with_ipv6().unwrap();
    let owner = format!("(process {}, pid {})", own_comm(), std::process::id());
    for dst in [IpAddr::from(Routed::SERVER), IpAddr::from(Routed::SERVER6)] {
        let udp = lab
            .server
            .run(move || UdpSocket::bind((dst, 7111)).unwrap())
            .unwrap();
        let (all, stderr) = trace(lab.server.name(), "udp port 7111", || {
            udp_from(&lab.client, None, dst, 7111, 8);
            let mut buf = [0u8; 16];
            udp.recv(&mut buf).unwrap();
        });
        let t = all
            .iter()
            .find(|t| t["first"]["dport"] == 7111)
            .unwrap_or_else(|| panic!("no timeline in {all:#?}\n{stderr}"));
        let shown = SocketAddr::from((dst, 7111)).to_string();
        assert_eq!(t["outcome"], "delivered", "{t:#}");
        assert_eq!(
            diagnosis(t),
            format!("delivered to local socket {shown} {owner}")
        );

        let tcp = lab
            .server
            .run(move || TcpListener::bind((dst, 7112)).unwrap())
            .unwrap();
        let (all, stderr) = trace(lab.server.name(), "tcp port 7112", || {
            lab.client
                .run(move || {
                    TcpStream::connect_timeout(&(dst, 7112).into(), Duration::from_secs(5)).unwrap()
                })
                .unwrap();
            drop(tcp.accept().unwrap());
        });
        let syn = all
            .iter()
            .find(|t| t["first"]["dport"] == 7112)
            .unwrap_or_else(|| panic!("no timeline in {all:#?}\n{stderr}"));
        assert_eq!(syn["outcome"], "delivered", "{syn:#}");
        assert_eq!(
            diagnosis(syn),
            format!(
                "delivered to local socket {} {owner}",
                SocketAddr::from((dst, 7112))
            )
        );
        assert!(
            all.iter()
                .filter(|t| t["first"]["dport"] == 7112)
                .all(|t| t["outcome"] != "incomplete"),
            "{all:#?}"
        );
    }
}

/// A container reaching its neighbour through the host's published port, NATed there and
/// back into the bridge (what `--userland-proxy=false` does): named as hairpin NAT, with the
/// rewrite.
#[test]
fn hairpin_nat_is_named_with_its_rewrite() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab =
        probe_lab::HostLab::new(&format!("{}hp-", probe_lab::Netns::unique_prefix())).unwrap();
    let host = lab.host();
    let published = format!("{}", probe_lab::HostLab::PUBLISHED_PORT);
    let web = format!("{}:{}", lab.web().addr, probe_lab::HostLab::WEB_PORT);
    host.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "-i",
            "docker0",
            "-d",
            &probe_lab::HostLab::HOST_ADDR.to_string(),
            "-p",
            "tcp",
            "--dport",
            &published,
            "-j",
            "DNAT",
            "--to-destination",
            &web,
        ],
    )
    .unwrap();
    host.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "-s",
            "172.17.0.0/16",
            "-d",
            &lab.web().addr.to_string(),
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "MASQUERADE",
        ],
    )
    .unwrap();
    let _server = probe_lab::traffic::serve_tcp_once(
        &lab.web().ns,
        lab.web().addr,
        probe_lab::HostLab::WEB_PORT,
    )
    .unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        host.name(),
        "--json",
        "--iface",
        "veth-web,veth-db",
        "--no-routes",
    ])
    .unwrap();
    let sport = probe_lab::traffic::tcp_exchange(
        &lab.db().ns,
        probe_lab::HostLab::HOST_ADDR,
        probe_lab::HostLab::PUBLISHED_PORT,
        Duration::from_secs(5),
    )
    .expect("the neighbour answers through the host's published port");
    let (stdout, stderr) = run.stop().unwrap();
    let all = json_lines(&stdout).unwrap();
    let syn = all
        .iter()
        .find(|t| {
            t["first"]["sport"] == sport
                && t["first"]["dport"] == probe_lab::HostLab::PUBLISHED_PORT
        })
        .unwrap_or_else(|| panic!("no timeline of the SYN in {all:#?}\n{stderr}"));
    assert_eq!(syn["outcome"], "delivered", "{syn:#}");
    let d = diagnosis(syn);
    assert!(
        d.starts_with(&format!("delivered to {web} through veth-web after DNAT"))
            && d.ends_with(&format!(
                " — hairpin NAT: sent from veth-db to the host's {}:{published} and turned back \
                 into the bridge",
                probe_lab::HostLab::HOST_ADDR
            )),
        "{d}"
    );
}

/// The Internet checksum of `bytes` (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A bare TCP ACK from `src:sport` to `dst` with sequence and acknowledgement numbers `seq`;
/// its checksum right, or wrong on purpose.
fn tcp_segment(
    src: std::net::Ipv4Addr,
    (dst, dport): (std::net::Ipv4Addr, u16),
    sport: u16,
    (seq, ack): (u32, u32),
    good_checksum: bool,
) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    // Header length 5 words, ACK only; window; checksum (below); urgent pointer.
    tcp.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, tcp.len() as u8]);
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo) ^ if good_checksum { 0 } else { 0x5a5a };
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

/// Sends an IPv4 packet with a header of the test's making (IP_HDRINCL) from `ns`: the
/// kernel fills in the header checksum and the total length, nothing else.
fn send_raw_ipv4(
    ns: &probe_lab::Netns,
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    proto: u8,
    l4: Vec<u8>,
) {
    ns.run(move || {
        let mut packet = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
        packet.extend_from_slice(&src.octets());
        packet.extend_from_slice(&dst.octets());
        let total = (20 + l4.len()) as u16;
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&l4);
        // SAFETY: a raw socket this closure owns, closed below; sendto reads `packet` only.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let to = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            let sent = libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(
                sent,
                packet.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
            libc::close(fd);
        }
    })
    .unwrap();
}

/// A datagram from a multicast source: a martian the router refuses to route.
#[test]
fn a_martian_source_is_named() {
    require_root();
    let (major, minor) = Doctor::run().unwrap().kernel_version().unwrap();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&7120u16.to_be_bytes());
    udp.extend_from_slice(&12u16.to_be_bytes());
    // UDP over IPv4 may leave its checksum out (0).
    udp.extend_from_slice(&[0, 0, b'm', b'a', b'r', b's']);
    let (all, stderr) = trace(lab.router.name(), "udp port 7120", || {
        send_raw_ipv4(
            &lab.client,
            "224.0.0.5".parse().unwrap(),
            Routed::SERVER,
            libc::IPPROTO_UDP as u8,
            udp,
        )
    });
    if (major, minor) < (5, 17) {
        assert!(
            all.iter().any(|t| t["outcome"] == "dropped"),
            "{all:#?}\n{stderr}"
        );
        return;
    }
    let d = dropped(&all, "martian-address", &stderr);
    assert!(
        diagnosis(d).contains("source or destination address is not allowed"),
        "{d:#}"
    );
}

/// A TCP segment without its handshake, with loose pickup off: conntrack calls it INVALID,
/// and the rule that drops INVALID packets is named as conntrack's doing.
#[test]
fn a_packet_conntrack_calls_invalid_is_named_with_the_rule() {
    require_root();
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    lab.router
        .exec(
            "nft",
            &[
                "add table inet lab; add chain inet lab forward_lab { type filter hook forward \
               priority 0; }; add rule inet lab forward_lab ct state invalid drop",
            ],
        )
        .unwrap();
    sysctl(&lab.router, "net.netfilter.nf_conntrack_tcp_loose", "0").unwrap();
    let (src, dst) = (Routed::CLIENT, Routed::SERVER);
    let tcp = tcp_segment(src, (dst, 7121), 40001, (1000, 2000), true);
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.router.name(),
        "--json",
        "--rules",
        "tcp port 7121",
    ])
    .unwrap();
    send_raw_ipv4(&lab.client, src, dst, libc::IPPROTO_TCP as u8, tcp);
    let (stdout, stderr) = run.stop().unwrap();
    let all = json_lines(&stdout).unwrap();
    let d = dropped(&all, "conntrack-invalid", &stderr);
    assert!(
        diagnosis(d).starts_with("dropped by inet lab/forward_lab (forward) rule ")
            && diagnosis(d).contains("[ct state invalid drop]"),
        "{d:#}"
    );
    assert_eq!(
        fact(d, "rule"),
        "lab/forward_lab rule [ct state invalid drop]"
    );
}

/// TCP segments a connection refuses: one whose checksum is wrong, and one far outside the
/// receive window of an established connection.
#[test]
fn tcp_checksum_and_sequence_errors_are_named() {
    require_root();
    let reasons = Doctor::run().unwrap().kernel_version().unwrap() >= (5, 17);
    let _lab = one_lab_at_a_time();
    let lab = Routed::new().unwrap();
    let listener = lab
        .server
        .run(|| TcpListener::bind((Routed::SERVER, 7122)).unwrap())
        .unwrap();
    let client = lab
        .client
        .run(|| {
            TcpStream::connect_timeout(&(Routed::SERVER, 7122).into(), Duration::from_secs(5))
                .unwrap()
        })
        .unwrap();
    let _accepted = listener.accept().unwrap();
    let sport = client.local_addr().unwrap().port();
    for (good_checksum, cause) in [(false, "bad-checksum"), (true, "tcp-sequence")] {
        // Far from anything the connection expects.
        let tcp = tcp_segment(
            Routed::CLIENT,
            (Routed::SERVER, 7122),
            sport,
            (0x8000_0000, 1),
            good_checksum,
        );
        let (all, stderr) = trace(lab.server.name(), "tcp port 7122", || {
            send_raw_ipv4(
                &lab.client,
                Routed::CLIENT,
                Routed::SERVER,
                libc::IPPROTO_TCP as u8,
                tcp,
            )
        });
        if !reasons {
            assert!(
                all.iter().any(|t| t["outcome"] == "dropped"),
                "{all:#?}\n{stderr}"
            );
            continue;
        }
        let d = dropped(&all, cause, &stderr);
        assert_eq!(d["first"]["sport"], sport, "{d:#}");
    }
    drop(client);
}
