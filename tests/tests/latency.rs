//! `probe latency`: per-hop latency histograms computed in the kernel, one count per packet
//! for each pair of consecutive observation points it crossed.

use std::net::UdpSocket;

use probe_lab::{BridgeLab, Netns, ProbeRun, probe::json_lines, require_root, traffic::udp_listen};
use serde_json::Value;

#[test]
fn bridged_packets_are_counted_once_per_hop_pair() {
    require_root();
    const N: usize = 300;
    const PORT: u16 = 7300;
    let lab = BridgeLab::new(&Netns::unique_prefix(), &["a", "b"]).unwrap();
    let (a, b) = (lab.container("a"), lab.container("b"));
    let receiver = udp_listen(&b.ns, b.addr, PORT).unwrap();
    probe_lab::large_receive_buffer(&receiver, 4 << 20).unwrap();
    let dst = b.addr;
    let sender =
        a.ns.run(move || -> std::io::Result<UdpSocket> {
            // Connected, so the kernel numbers each datagram's IPv4 id (unconnected sockets
            // send id 0 with DF set, and such packets cannot be told apart).
            let sock = UdpSocket::bind(("0.0.0.0", 0))?;
            sock.connect((dst, PORT))?;
            Ok(sock)
        })
        .unwrap()
        .unwrap();
    // One datagram before measuring, so neighbour resolution holds none of the burst back.
    let mut buf = [0u8; 16];
    sender.send(b"warm").unwrap();
    receiver.recv(&mut buf).unwrap();
    let ifaces = format!("{},{}", a.host_if, b.host_if);
    let filter = format!("udp port {PORT}");
    let run = ProbeRun::start(&[
        "latency",
        "--netns",
        lab.host.name(),
        "--iface",
        &ifaces,
        "--filter",
        &filter,
        "--json",
        "--interval",
        "60",
    ])
    .unwrap();
    for i in 0..N {
        sender.send(&(i as u32).to_be_bytes()).unwrap();
    }
    // Every datagram has crossed the bridge once it is received.
    for _ in 0..N {
        receiver.recv(&mut buf).unwrap();
    }
    let (stdout, stderr) = run.stop().unwrap();
    let lines = json_lines(&stdout).unwrap();
    let totals: Vec<&Value> = lines.iter().filter(|l| l["total"] == true).collect();
    let pair = |from: &str, to: &str| {
        totals
            .iter()
            .find(|l| l["from"] == from && l["to"] == to)
            .copied()
    };
    let from = format!("{} ingress", a.host_if);
    let to = format!("{} egress", b.host_if);
    let hop = pair(&from, &to).unwrap_or_else(|| panic!("no {from} → {to}: {lines:#?}\n{stderr}"));
    assert_eq!(hop["count"], N as u64, "{hop:#}");
    let in_buckets: u64 = hop["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(in_buckets, N as u64);
    assert!(hop["p50_le_ns"].as_u64().unwrap() <= hop["p99_le_ns"].as_u64().unwrap());
    // The filter kept everything else out: no packet went the other way.
    assert!(
        pair(
            &to.replace("egress", "ingress"),
            &from.replace("ingress", "egress")
        )
        .is_none()
    );
    assert_eq!(totals.len(), 1, "{totals:#?}");
}
