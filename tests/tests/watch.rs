//! `probe watch`: counts kept in the kernel, served as OpenMetrics and scraped by a real
//! Prometheus in the lab. Drops (a firewall rule, a port nobody listens on), bridged traffic
//! and failed routing lookups are driven in the lab's namespaces; what Prometheus stored is
//! asserted through its query API.

use std::{
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use probe_lab::{
    BridgeLab, Netns, ProbeRun,
    prometheus::{LOOPBACK, Prometheus, http_get, value},
    require_root,
    traffic::udp_listen,
};
use serde_json::Value;

const BRIDGED_PORT: u16 = 7400;
const FIREWALLED_PORT: u16 = 7401;
const CLOSED_PORT: u16 = 7402;
const METRICS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(LOOPBACK), 9464);
const PROMETHEUS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(LOOPBACK), 9090);

/// A connected UDP socket in container `from` (connected: the kernel numbers each datagram's
/// IPv4 id, which latency needs to tell packets apart).
fn sender(lab: &BridgeLab, from: &str, to: std::net::Ipv4Addr, port: u16) -> UdpSocket {
    lab.container(from)
        .ns
        .run(move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            s.connect((to, port))?;
            Ok(s)
        })
        .unwrap()
        .unwrap()
}

/// One round of traffic: `n` bridged datagrams a → b (each received), `n` to the gateway's
/// firewalled port and `n` to its closed port (each dropped), and `n` failed lookups.
fn round(lab: &BridgeLab, receiver: &UdpSocket, n: usize) {
    let b = lab.container("b").addr;
    let bridged = sender(lab, "a", b, BRIDGED_PORT);
    // Unconnected: the port-unreachable answers set no error on the socket.
    let dropped = lab
        .container("a")
        .ns
        .run(|| UdpSocket::bind(("0.0.0.0", 0)))
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 16];
    for i in 0..n {
        bridged.send(&(i as u32).to_be_bytes()).unwrap();
        // Received: it crossed both veths.
        receiver.recv(&mut buf).unwrap();
        dropped
            .send_to(b"x", (BridgeLab::GATEWAY, FIREWALLED_PORT))
            .unwrap();
        dropped
            .send_to(b"x", (BridgeLab::GATEWAY, CLOSED_PORT))
            .unwrap();
    }
    for _ in 0..n {
        // A lookup in the lab host's main table that hits its unreachable route; no packet.
        let _ = lab.host.ip(&["route", "get", "172.17.200.1"]);
    }
}

fn one(result: &[Value], what: &str) -> f64 {
    assert_eq!(result.len(), 1, "{what}: {result:#?}");
    value(&result[0])
}

#[test]
fn prometheus_scrapes_drops_by_reason_hop_latency_and_route_failures() {
    require_root();
    if !probe_lab::prometheus::installed() {
        // Straight to the terminal: the test harness keeps eprintln! of passing tests to itself.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED prometheus test (tests/tests/watch.rs): no prometheus here (`cargo xtask \
             setup` installs it)"
        );
        return;
    }
    let lab = BridgeLab::new(&Netns::unique_prefix(), &["a", "b"]).unwrap();
    let (a, b) = (lab.container("a"), lab.container("b"));
    let host = lab.host.name().to_owned();
    // The firewall: a rule dropping one port on the lab host's input; and a route that fails.
    lab.host
        .exec(
            "nft",
            &[
                "add table inet watch_test; add chain inet watch_test input { type filter hook \
                 input priority 0; }; add rule inet watch_test input udp dport 7401 drop",
            ],
        )
        .unwrap();
    lab.host
        .ip(&["route", "add", "unreachable", "172.17.200.0/24"])
        .unwrap();
    let receiver = udp_listen(&b.ns, b.addr, BRIDGED_PORT).unwrap();
    probe_lab::large_receive_buffer(&receiver, 4 << 20).unwrap();
    // Neighbours resolved before counting starts.
    round(&lab, &receiver, 1);

    let ifaces = format!("{},{}", a.host_if, b.host_if);
    let metrics = METRICS.to_string();
    let run = ProbeRun::start(&[
        "watch",
        "--netns",
        &host,
        "--iface",
        &ifaces,
        "--metrics",
        &metrics,
    ])
    .unwrap();
    // probe serves OpenMetrics itself (checked before Prometheus reads it).
    let (status, text) = http_get(&host, METRICS, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("# TYPE probe_drops counter"), "{text}");
    assert!(
        text.contains("# TYPE probe_hop_latency_seconds histogram"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(http_get(&host, METRICS, "/nothing").unwrap().0, 404);

    let prom = Prometheus::start(&lab.host, PROMETHEUS, METRICS, Duration::from_secs(1)).unwrap();
    const N: usize = 40;
    round(&lab, &receiver, N);
    // Every drop of the first round was counted, by the kernel's reason names, in the lab
    // host's namespace (named as `ip netns` names it).
    let total =
        |reason: &str| format!(r#"sum(probe_drops_total{{reason="{reason}",netns="{host}"}})"#);
    prom.query_until(&total("NETFILTER_DROP"), |r| {
        r.len() == 1 && value(&r[0]) >= N as f64
    })
    .unwrap();
    let by_place = prom
        .query(&format!(
            r#"probe_drops_total{{reason="NETFILTER_DROP",netns="{host}"}}"#
        ))
        .unwrap();
    assert!(
        by_place.iter().any(|s| {
            // The function that freed it: nf_hook_slow, or nft_do_chain on kernels where
            // nftables drops with its own reason.
            ["nf_hook_slow", "nft_do_chain"]
                .contains(&s["metric"]["location"].as_str().unwrap_or(""))
                && s["metric"]["interface"] == BridgeLab::BRIDGE
        }),
        "{by_place:#?}"
    );
    // A second round, so rate() has an increase to see.
    round(&lab, &receiver, N);
    let rates = prom
        .query_until(
            &format!(r#"sum by (reason) (rate(probe_drops_total{{netns="{host}"}}[1m]))"#),
            |r| {
                ["NETFILTER_DROP", "NO_SOCKET"].iter().all(|reason| {
                    r.iter()
                        .any(|s| s["metric"]["reason"] == *reason && value(s) > 0.0)
                })
            },
        )
        .unwrap();
    // Exactly what was sent, no more: the counter is every drop, nothing else of this port.
    let fw = one(
        &prom
            .query_until(&total("NETFILTER_DROP"), |r| {
                r.len() == 1 && value(&r[0]) >= 2.0 * N as f64
            })
            .unwrap(),
        "NETFILTER_DROP",
    );
    assert_eq!(fw, 2.0 * N as f64, "{rates:#?}");

    // The hop latency of bridged packets: veth-a ingress → veth-b egress, a plausible median
    // (above nothing, below the kernel's 1 s cap) and every bridged packet in the histogram.
    let hop = format!(
        r#"from_iface="{}",from_dir="ingress",to_iface="{}",to_dir="egress""#,
        a.host_if, b.host_if
    );
    let p50 = prom
        .query_until(
            &format!(
                "histogram_quantile(0.5, sum by (le, from_iface, to_iface) \
                 (rate(probe_hop_latency_seconds_bucket{{{hop}}}[1m])))"
            ),
            |r| r.len() == 1 && value(&r[0]).is_finite(),
        )
        .unwrap();
    let median = one(&p50, "p50");
    assert!(median > 0.0 && median < 0.1, "median {median} s: {p50:#?}");
    assert_eq!(p50[0]["metric"]["from_iface"], a.host_if.as_str());
    let count = one(
        &prom
            .query_until(
                &format!("sum(probe_hop_latency_seconds_count{{{hop}}})"),
                |r| r.len() == 1 && value(&r[0]) >= 2.0 * N as f64,
            )
            .unwrap(),
        "count",
    );
    assert_eq!(count, 2.0 * N as f64);

    // Failed lookups: the unreachable route, in table main.
    let fails = prom
        .query_until(
            r#"sum(probe_route_lookup_failures_total{family="ipv4",table="main",errno="EHOSTUNREACH"})"#,
            |r| r.len() == 1 && value(&r[0]) >= 2.0 * N as f64,
        )
        .unwrap();
    assert!(one(&fails, "route failures") >= 2.0 * N as f64);
    let lost = prom.query("sum(probe_counts_lost_total)").unwrap();
    assert_eq!(one(&lost, "lost"), 0.0);

    // Interface churn: b's veth goes; its hop series stays, with its counts, and probe goes
    // on serving.
    lab.host.ip(&["link", "del", &b.host_if]).unwrap();
    let gone = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let hop_count = format!(r#"probe_hop_latency_seconds_count{{{hop}}}"#);
    // A sample scraped after the veth went.
    let after = prom
        .query_until(
            &format!("{hop_count} and timestamp({hop_count}) > {gone:.3}"),
            |r| !r.is_empty(),
        )
        .unwrap();
    assert_eq!(one(&after, "count after the veth went"), 2.0 * N as f64);
    let (status, text) = http_get(&host, METRICS, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!(r#"to_iface="{}""#, b.host_if)),
        "{text}"
    );

    drop(prom);
    let (_, stderr) = run.stop().unwrap();
    // Nothing left behind: no filter or qdisc on the remaining veth.
    for dir in ["ingress", "egress"] {
        let filters = lab
            .host
            .exec("tc", &["filter", "show", "dev", &a.host_if, dir])
            .unwrap();
        assert!(filters.trim().is_empty(), "{dir}: {filters}\n{stderr}");
    }
}

#[test]
fn a_busy_metrics_address_is_a_clear_error() {
    require_root();
    let ns = Netns::new("watch-busy").unwrap();
    let _held = ns
        .run(|| std::net::TcpListener::bind(METRICS))
        .unwrap()
        .unwrap();
    let out = std::process::Command::new(probe_lab::probe_binary())
        .args([
            "watch",
            "--netns",
            ns.name(),
            "--metrics",
            &METRICS.to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("address is in use"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The sum of the samples of `metric` whose labels include every one of `labels`, in
/// OpenMetrics text.
fn sum_of(text: &str, metric: &str, labels: &[String]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The kernel side on its own (also run in the VM matrix, where no Prometheus is): the watch
/// programs pass this kernel's verifier, and /metrics counts every drop and bridged packet.
#[test]
fn counts_drops_and_hop_latency_through_this_kernels_verifier() {
    require_root();
    let lab = BridgeLab::new(&Netns::unique_prefix(), &["a", "b"]).unwrap();
    let (a, b) = (lab.container("a"), lab.container("b"));
    let host = lab.host.name().to_owned();
    lab.host
        .ip(&["route", "add", "unreachable", "172.17.200.0/24"])
        .unwrap();
    let receiver = udp_listen(&b.ns, b.addr, BRIDGED_PORT).unwrap();
    round(&lab, &receiver, 1);
    let ifaces = format!("{},{}", a.host_if, b.host_if);
    let metrics = METRICS.to_string();
    let run = ProbeRun::start(&[
        "watch",
        "--netns",
        &host,
        "--iface",
        &ifaces,
        "--metrics",
        &metrics,
    ])
    .unwrap();
    const N: usize = 25;
    // Without the firewall rule both gateway ports are closed: 2N drops in the lab host.
    round(&lab, &receiver, N);
    let (status, text) = http_get(&host, METRICS, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    let netns = format!(r#"netns="{host}""#);
    let drops = sum_of(&text, "probe_drops_total", &[netns]);
    assert!(drops >= 2 * N as u64, "{drops} drops:\n{text}");
    let hop = [
        format!(r#"from_iface="{}",from_dir="ingress""#, a.host_if),
        format!(r#"to_iface="{}",to_dir="egress""#, b.host_if),
    ];
    let count = sum_of(&text, "probe_hop_latency_seconds_count", &hop);
    assert_eq!(count, N as u64, "{text}");
    let fails = sum_of(
        &text,
        "probe_route_lookup_failures_total",
        &[r#"errno="EHOSTUNREACH""#.to_owned()],
    );
    assert!(fails >= N as u64, "{text}");
    // SIGTERM, as a service manager stops it: a clean exit, nothing left attached or
    // listening.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.pid() as i32, libc::SIGTERM) };
    let (_, stderr) = run.finish().unwrap();
    assert!(!stderr.contains("error"), "{stderr}");
    for iface in [&a.host_if, &b.host_if] {
        for dir in ["ingress", "egress"] {
            let filters = lab
                .host
                .exec("tc", &["filter", "show", "dev", iface, dir])
                .unwrap();
            assert!(filters.trim().is_empty(), "{iface} {dir}: {filters}");
        }
    }
    assert!(http_get(&host, METRICS, "/metrics").is_err());
}
