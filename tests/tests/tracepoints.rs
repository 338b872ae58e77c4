//! Drops and routing decisions through tracepoints (the backend every kernel has): a DROP rule
//! in a test namespace, a routed and an unroutable destination, checked in probe's JSON.

use std::{net::UdpSocket, os::unix::fs::MetadataExt as _};

use probe_lab::{ProbeRun, TwoHosts, probe::json_lines, require_root};
use serde_json::Value;

const PORT: u16 = 7777;

fn udp_to(lab: &TwoHosts, dst: &str, port: u16, n: usize) -> Result<(), String> {
    let dst = dst.to_owned();
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
            for _ in 0..n {
                sock.send_to(b"probe", (dst.as_str(), port))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .unwrap()
}

fn netns_inode(name: &str) -> u64 {
    std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap()
        .ino()
}

#[test]
fn drop_rule_is_reported_as_netfilter_drop_with_place_and_packet() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    lab.b
        .exec(
            "iptables",
            &[
                "-A",
                "INPUT",
                "-p",
                "udp",
                "--dport",
                &PORT.to_string(),
                "-j",
                "DROP",
            ],
        )
        .unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--no-routes",
        "--json",
        "--events",
    ])
    .unwrap();
    let b = lab.b_addr.to_string();
    udp_to(&lab, &b, PORT, 3).unwrap();
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();

    let ifindex = lab.b.ifindex(TwoHosts::IFACE).unwrap();
    let drops: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["kind"] == "drop"
                && e["packet"]["ip"]["dst"] == b.as_str()
                && e["packet"]["ip"]["dport"] == PORT
        })
        .collect();
    assert_eq!(drops.len(), 3, "drops of our datagrams: {drops:#?}");
    for d in drops {
        assert_eq!(d["reason"], "NETFILTER_DROP", "{d}");
        assert_eq!(d["packet"]["ip"]["proto"], "udp");
        assert_eq!(d["packet"]["ip"]["src"], lab.a_addr.to_string());
        assert_eq!(d["ifindex"], ifindex);
        assert_eq!(d["netns"], netns_inode(lab.b.name()));
        assert!(d["skb"].as_u64().unwrap() != 0);
        if kernel_addresses_visible() {
            let at = d["location_sym"].as_str().expect("location symbolized");
            assert!(at.contains("+0x"), "{at}");
        }
    }
    // Drops in other namespaces are not shown by default.
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "drop")
            .all(|e| e["netns"] == netns_inode(lab.b.name()) || e["netns"] == 0),
        "drops from other namespaces leaked in"
    );
}

fn kernel_addresses_visible() -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|t| {
            t.lines()
                .next()
                .is_some_and(|l| !l.starts_with("0000000000000000"))
        })
        .unwrap_or(false)
}

#[test]
fn routing_decisions_show_table_device_gateway_and_errors() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    lab.a
        .ip(&[
            "route",
            "add",
            "10.250.0.0/16",
            "via",
            &lab.b_addr.to_string(),
        ])
        .unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--no-drops",
        "--json",
        "--events",
    ])
    .unwrap();
    udp_to(&lab, "10.250.1.1", PORT, 1).unwrap();
    // No route at all: the send fails, and the lookup that failed is reported.
    let unreachable = udp_to(&lab, "10.251.9.9", 53, 1);
    assert!(unreachable.is_err(), "10.251.9.9 should be unroutable");
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();

    let routed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "fib" && e["dst"] == "10.250.1.1" && e["dport"] == PORT)
        .collect();
    assert!(
        !routed.is_empty(),
        "no lookup for 10.250.1.1 in {events:#?}"
    );
    let ok = routed
        .iter()
        .find(|e| e["err"] == 0)
        .expect("a successful lookup");
    assert_eq!(ok["table"], 254);
    assert_eq!(ok["table_name"], "main");
    assert_eq!(ok["dev"], TwoHosts::IFACE);
    assert_eq!(ok["gateway"], lab.b_addr.to_string());
    assert_eq!(ok["proto"], "udp");
    // The raw tracepoint where BTF gives its offsets (every kernel of the matrix), which
    // reads the next hop's gateway; the ordinary one otherwise.
    assert!(
        ok["source"] == "raw_tracepoint:fib_table_lookup"
            || ok["source"] == "tracepoint:fib:fib_table_lookup",
        "{ok:#}"
    );
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert_eq!(ok["source"], "raw_tracepoint:fib_table_lookup");
    }

    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "fib" && e["dst"] == "10.251.9.9")
        .collect();
    assert!(!failed.is_empty(), "no lookup for 10.251.9.9");
    assert!(
        failed.iter().all(|e| e["err"].as_i64().unwrap() < 0),
        "{failed:#?}"
    );
    assert!(failed.iter().all(|e| e.get("dev").is_none()), "{failed:#?}");
}

#[test]
fn nothing_to_trace_is_an_error() {
    require_root();
    let out = std::process::Command::new(probe_lab::probe_binary())
        .args([
            "trace",
            "--no-tc",
            "--no-drops",
            "--no-routes",
            "--no-netfilter",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing to trace"), "{stderr}");
}
