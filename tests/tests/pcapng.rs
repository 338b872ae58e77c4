//! `--pcapng FILE`: the timelines of a live trace, and of a replayed recording, as a pcapng
//! file that the real tcpdump and tshark read. Every block is read; the packet blocks are the
//! timelines' sightings, in order, their packet ids grouped as the timelines group them;
//! rebuilt headers decode as the protocol, addresses and ports the timeline shows; with
//! `--snaplen` the packet's real bytes (the datagram's payload) are in the file, also after a
//! replay. Bad arguments are clear errors.

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt as _,
    process::{Command, Output},
    time::Duration,
};

use probe_lab::{
    HostLab, Netns, ProbeRun, TempFile,
    probe::json_lines,
    probe_binary, require_root,
    traffic::{serve_tcp_once, tcp_exchange, udp_send},
};
use serde_json::Value;

/// What `udp_send` puts in its datagram.
const MARKER: &str = "probe story";

/// One packet block as a timeline says it must be: the packet id, and the addresses and ports
/// of the sighting (None for packets that are not IP).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sighting {
    id: u64,
    ip: Option<(String, String, String, String, String)>,
    kind: String,
}

/// The sightings that get a packet block (tc, drops, hook verdicts), in the order probe wrote
/// the timelines.
fn sightings(timelines: &[Value]) -> Vec<Sighting> {
    let mut out = Vec::new();
    for t in timelines {
        let id = t["id"].as_u64().unwrap();
        for h in t["hops"].as_array().unwrap() {
            let e = &h["event"];
            let kind = e["kind"].as_str().unwrap().to_owned();
            if !["tc", "drop", "netfilter"].contains(&kind.as_str()) {
                continue;
            }
            let ip = &e["packet"]["ip"];
            let ip = ip.is_object().then(|| {
                let port = |k: &str| match &ip[k] {
                    Value::Number(n) if ip["proto"] == "tcp" || ip["proto"] == "udp" => {
                        n.to_string()
                    }
                    _ => String::new(),
                };
                (
                    ip["proto"].as_str().unwrap_or("").to_uppercase(),
                    ip["src"].as_str().unwrap().to_owned(),
                    ip["dst"].as_str().unwrap().to_owned(),
                    port("sport"),
                    port("dport"),
                )
            });
            out.push(Sighting { id, ip, kind });
        }
    }
    out
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (cargo xtask setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// tshark's fields of every frame, one row per frame: the first occurrence of each field
/// (an ICMP error quotes another IP header), but every comment, joined by `|`.
fn tshark(file: &str, filter: Option<&str>, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec![
        "-r",
        file,
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
    ];
    if let Some(f) = filter {
        args.extend(["-Y", f]);
    }
    for f in fields {
        args.extend(["-e", f]);
    }
    let out = run("tshark", &args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.split('\t')
                .zip(fields)
                .map(|(v, f)| match *f {
                    "frame.comment" | "_ws.expert.message" => v.to_owned(),
                    _ => v.split('|').next().unwrap_or("").to_owned(),
                })
                .collect()
        })
        .collect()
}

/// Checks the file against the timelines: every block read by tcpdump and tshark, one packet
/// block per sighting in order, ids grouped as the timelines, each rebuilt or copied header
/// decoded as the timeline's protocol, addresses and ports, the diagnosis on each packet's
/// last block. Returns tshark's rows.
fn check_against_timelines(file: &str, timelines: &[Value]) -> Vec<Vec<String>> {
    let expected = sightings(timelines);
    assert!(!expected.is_empty(), "no sightings in {timelines:#?}");

    // tcpdump reads every block: one line per packet, no complaint.
    let out = run("tcpdump", &["-n", "-r", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("link-type EN10MB"), "{stderr}");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, expected.len(), "tcpdump frames vs sightings");

    let rows = tshark(
        file,
        None,
        &[
            "frame.packet_id",
            "_ws.col.Protocol",
            "ip.src",
            "ip.dst",
            "tcp.srcport",
            "tcp.dstport",
            "udp.srcport",
            "udp.dstport",
            "frame.comment",
            "frame.interface_name",
            "_ws.expert.message",
        ],
    );
    assert_eq!(rows.len(), expected.len(), "tshark frames vs sightings");
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(
            row[0],
            want.id.to_string(),
            "packet id of {row:?} ({want:?})"
        );
        if let Some((proto, src, dst, sport, dport)) = &want.ip {
            let (got_sport, got_dport) = if proto == "TCP" {
                (&row[4], &row[5])
            } else {
                (&row[6], &row[7])
            };
            assert_eq!((&row[2], &row[3]), (src, dst), "{row:?} vs {want:?}");
            // (An ICMP error's ports are those of the datagram it quotes.)
            if proto == "TCP" || proto == "UDP" {
                assert_eq!(
                    (got_sport, got_dport),
                    (sport, dport),
                    "{row:?} vs {want:?}"
                );
            }
            // Rebuilt headers carry no payload: tshark names the transport itself, and
            // finds nothing wrong with them.
            if row[8].contains("rebuilt") && ["TCP", "UDP", "ICMP"].contains(&proto.as_str()) {
                assert_eq!(&row[1], proto, "{row:?} vs {want:?}");
                assert!(
                    !row[10].to_lowercase().contains("malformed"),
                    "tshark found the rebuilt packet malformed: {row:?}"
                );
            }
        }
    }
    // The ids group exactly as the timelines do.
    let mut by_id: BTreeMap<u64, usize> = BTreeMap::new();
    for s in &expected {
        *by_id.entry(s.id).or_default() += 1;
    }
    let mut got: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &rows {
        *got.entry(r[0].parse().unwrap()).or_default() += 1;
    }
    assert_eq!(got, by_id);
    // Each packet's diagnosis is a comment of its last block, and of no other.
    for t in timelines {
        let id = t["id"].as_u64().unwrap().to_string();
        let blocks: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == id).collect();
        let Some((last, others)) = blocks.split_last() else {
            continue;
        };
        let diagnosis = format!("diagnosis: {}", t["diagnosis"].as_str().unwrap());
        assert!(
            last[8].contains(&diagnosis),
            "{diagnosis:?} not in {last:?}"
        );
        assert!(others.iter().all(|r| !r[8].contains("diagnosis: ")));
    }
    rows
}

/// A trace of `traffic` in the lab with `--json --pcapng FILE` (and `extra`); the timelines.
fn trace(lab: &HostLab, pcapng: &TempFile, extra: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    let mut args = vec![
        "trace",
        "--netns",
        lab.host().name(),
        "--json",
        "--pcapng",
        pcapng.path(),
    ];
    args.extend_from_slice(extra);
    let run = ProbeRun::start(&args).unwrap();
    traffic();
    let (stdout, stderr) = run.stop().unwrap();
    assert!(stderr.contains("packet blocks written to"), "{stderr}");
    json_lines(&stdout)
        .unwrap()
        .into_iter()
        .filter(|l| l["schema"] == "probe.timeline/1")
        .collect()
}

#[test]
fn a_traced_connection_through_dnat_reads_in_tcpdump_and_tshark() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    let web = lab.web().addr;
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let file = TempFile::new("dnat.pcapng");
    let timelines = trace(&lab, &file, &["--iface", "eth0,veth-web"], || {
        tcp_exchange(
            &lab.outside,
            HostLab::HOST_ADDR,
            HostLab::PUBLISHED_PORT,
            Duration::from_secs(5),
        )
        .unwrap();
    });
    let rows = check_against_timelines(file.path(), &timelines);
    // The SYN, before and after DNAT, as two blocks of one packet id.
    let syn = rows
        .iter()
        .find(|r| r[5] == HostLab::PUBLISHED_PORT.to_string())
        .unwrap_or_else(|| panic!("no block to port 8080 in {rows:#?}"));
    let after = rows
        .iter()
        .find(|r| r[0] == syn[0] && r[3] == web.to_string() && r[5] == "80")
        .unwrap_or_else(|| panic!("packet {} has no block after DNAT: {rows:#?}", syn[0]));
    assert!(after[9].contains("veth-web"), "{after:?}");
    assert!(syn[9].starts_with("eth0 ingress"), "{syn:?}");
    // Headers were rebuilt, and the file says so.
    assert!(syn[8].contains("rebuilt"), "{syn:?}");
    // The interfaces are described with their link kind and namespace.
    let descriptions = tshark(file.path(), None, &["frame.interface_description"]);
    let namespace = format!("namespace {}", lab.host().name());
    assert!(
        descriptions
            .iter()
            .all(|d| d[0].starts_with("tc ") && d[0].contains(&namespace)),
        "{descriptions:?}"
    );
    assert!(
        descriptions
            .iter()
            .any(|d| d[0] == format!("tc egress on veth-web (veth), {namespace}")),
        "{descriptions:?}"
    );
}

/// Replays as an unprivileged user, with `--pcapng`; the replayed timelines.
fn replay(recording: &TempFile, pcapng: &TempFile) -> Vec<Value> {
    std::fs::set_permissions(
        &recording.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new(probe_binary())
        .args([
            "replay",
            recording.path(),
            "--json",
            "--pcapng",
            pcapng.path(),
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&String::from_utf8_lossy(&out.stdout))
        .unwrap()
        .into_iter()
        .filter(|l| l["schema"] == "probe.timeline/1")
        .collect()
}

/// The blocks of the datagram to port 53: real frames, with the payload in them.
fn check_real_bytes(file: &str, timelines: &[Value], snaplen: usize) {
    let datagram = timelines
        .iter()
        .find(|t| t["first"]["dport"] == 53 && t["first"]["proto"] == "udp")
        .unwrap_or_else(|| panic!("no timeline of the datagram in {timelines:#?}"));
    let id = datagram["id"].as_u64().unwrap();
    let tc_hops = datagram["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["event"]["kind"] == "tc")
        .count();
    assert!(tc_hops >= 2, "{datagram:#}");
    let rows = tshark(
        file,
        Some(&format!(
            "frame.packet_id == {id} && frame contains \"{MARKER}\""
        )),
        &["eth.src", "frame.cap_len", "frame.len", "udp.dstport"],
    );
    assert_eq!(rows.len(), tc_hops, "blocks with the payload: {rows:?}");
    for r in &rows {
        assert_ne!(r[0], "00:00:00:00:00:00", "a real Ethernet header: {r:?}");
        assert_eq!(r[3], "53");
        let (cap, len): (usize, usize) = (r[1].parse().unwrap(), r[2].parse().unwrap());
        assert!(cap <= snaplen && cap <= len, "{r:?}");
    }
}

#[test]
fn snaplen_keeps_the_real_bytes_live_and_in_a_replayed_recording() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    let live_file = TempFile::new("live.pcapng");
    let recording = TempFile::new("snap.rec");
    let live = trace(
        &lab,
        &live_file,
        &[
            "--iface",
            "eth0,veth-web",
            "--snaplen",
            "96",
            "--record",
            recording.path(),
        ],
        || {
            udp_send(&lab.web().ns, HostLab::OUTSIDE_ADDR, 53).unwrap();
        },
    );
    // The verifier took the copying programs, and the bytes are in the file.
    check_against_timelines(live_file.path(), &live);
    check_real_bytes(live_file.path(), &live, 96);

    // The recording keeps the bytes: replayed without root, the file has them too.
    let replayed_file = TempFile::new("replayed.pcapng");
    let replayed = replay(&recording, &replayed_file);
    check_against_timelines(replayed_file.path(), &replayed);
    check_real_bytes(replayed_file.path(), &replayed, 96);

    // An output that cannot be written is one clear error.
    let out = Command::new(probe_binary())
        .args([
            "replay",
            recording.path(),
            "--pcapng",
            "/nonexistent-probe-dir/out.pcapng",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot create the pcapng file /nonexistent-probe-dir/out.pcapng"),
        "{stderr}"
    );
}

#[test]
fn bad_pcapng_and_snaplen_arguments_are_clear_errors() {
    require_root();
    let probe = |args: &[&str]| {
        let out = Command::new(probe_binary()).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for bad in ["0", "257"] {
        let (code, stderr) = probe(&["trace", "--snaplen", bad, "--pcapng", "/tmp/x.pcapng"]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("1..=256"), "{stderr}");
    }
    let (code, stderr) = probe(&["trace", "--snaplen", "64"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--pcapng or --record"), "{stderr}");
    let (code, stderr) = probe(&["trace", "--events", "--pcapng", "/tmp/x.pcapng"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--events"), "{stderr}");
    let (code, stderr) = probe(&["trace", "--pcapng", "/nonexistent-probe-dir/x.pcapng"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot create the pcapng file /nonexistent-probe-dir/x.pcapng"),
        "{stderr}"
    );
    let (code, stderr) = probe(&["trace", "--pcapng", "/tmp"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("is a directory"), "{stderr}");
}
