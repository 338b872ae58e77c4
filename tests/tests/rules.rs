//! `probe trace --rules`: rule-level verdicts through nftables tracing, for iptables-nft rules
//! (what Docker writes) and native nftables tables (what firewalld writes), and the trace table
//! probe adds is gone afterwards, even after a kill.

use std::{
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use probe_lab::{ProbeRun, TwoHosts, doctor::Doctor, probe::json_lines, require_root};
use serde_json::Value;

fn send(lab: &TwoHosts, port: u16) {
    let dst = lab.b_addr;
    lab.a
        .run(move || {
            UdpSocket::bind(("0.0.0.0", 0))
                .unwrap()
                .send_to(b"rules", (dst, port))
                .unwrap();
        })
        .unwrap();
}

fn rule_events(events: &[Value], port: u16) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "rule" && e["packet"]["ip"]["dport"] == port)
        .collect()
}

fn probe_tables(lab: &TwoHosts) -> Vec<String> {
    lab.b
        .exec("nft", &["list", "tables"])
        .unwrap()
        .lines()
        .filter(|l| l.contains("probe_trace_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn iptables_and_nftables_rules_are_named_with_their_verdicts() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    // iptables-nft, as Docker writes it.
    lab.b
        .exec(
            "iptables",
            &["-A", "INPUT", "-p", "udp", "--dport", "7001", "-j", "DROP"],
        )
        .unwrap();
    // A native nftables table, as firewalld writes it.
    lab.b
        .exec(
            "nft",
            &["add table inet fw; \
                 add chain inet fw input { type filter hook input priority 10; policy accept; }; \
                 add rule inet fw input udp dport 7002 counter drop"],
        )
        .unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--rules",
        "--no-tc",
        "--no-routes",
        "--json",
        "--events",
    ])
    .unwrap();
    assert_eq!(
        probe_tables(&lab).len(),
        1,
        "trace table present while tracing"
    );
    send(&lab, 7001);
    send(&lab, 7002);
    send(&lab, 7003);
    // probe drains pending trace messages on the way out.
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();

    let ipt = rule_events(&events, 7001);
    let drop = ipt
        .iter()
        .find(|e| e["verdict"] == "drop")
        .unwrap_or_else(|| panic!("no drop verdict for 7001 in {ipt:#?}"));
    assert_eq!(drop["family"], "ip");
    assert_eq!(drop["table"], "filter");
    assert_eq!(drop["chain"], "INPUT");
    assert_eq!(drop["hook"], "input");
    assert_eq!(drop["decided_by"], "rule");
    assert!(drop["rule_handle"].as_u64().is_some());
    let text = drop["rule"].as_str().unwrap();
    assert!(text.contains("7001") && text.ends_with("drop"), "{text}");

    let nft = rule_events(&events, 7002);
    let drop = nft
        .iter()
        .find(|e| e["verdict"] == "drop")
        .unwrap_or_else(|| panic!("no drop verdict for 7002 in {nft:#?}"));
    assert_eq!(drop["family"], "inet");
    assert_eq!(drop["table"], "fw");
    assert_eq!(drop["chain"], "input");
    assert_eq!(drop["rule"], "udp dport 7002 counter drop");

    // The healthy packet is accepted by both chains' policies, never dropped.
    let ok = rule_events(&events, 7003);
    assert!(!ok.is_empty(), "no verdicts for 7003");
    assert!(ok.iter().all(|e| e["verdict"] != "drop"), "{ok:#?}");
    assert!(
        ok.iter()
            .any(|e| e["decided_by"] == "policy" && e["verdict"] == "accept" && e["table"] == "fw"),
        "{ok:#?}"
    );
    // probe's own table never shows up, and is gone after exit.
    assert!(events.iter().all(|e| {
        e["table"]
            .as_str()
            .is_none_or(|t| !t.starts_with("probe_trace_"))
    }));
    assert!(probe_tables(&lab).is_empty(), "{:?}", probe_tables(&lab));
}

/// A killed probe leaves no trace table: the kernel removes a table created with the owner flag
/// when probe's socket closes (Linux 5.12+); on older kernels the next probe sweeps it.
#[test]
fn a_killed_probes_trace_table_is_gone() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let args = [
        "trace",
        "--netns",
        lab.b.name(),
        "--rules",
        "--no-tc",
        "--no-routes",
        "--no-drops",
    ];
    let owned = Doctor::run().unwrap().kernel_version().unwrap() >= (5, 12);
    let killed = ProbeRun::start(&args).unwrap();
    assert_eq!(probe_tables(&lab).len(), 1, "the table while probe runs");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(killed.pid() as i32, libc::SIGKILL) };
    drop(killed);
    if owned {
        assert!(
            probe_tables(&lab).is_empty(),
            "the kernel removed the owned table with its socket: {:?}",
            probe_tables(&lab)
        );
    } else {
        assert_eq!(probe_tables(&lab).len(), 1, "a kill leaves the table here");
    }
    let next = ProbeRun::start(&args).unwrap();
    assert_eq!(
        probe_tables(&lab).len(),
        1,
        "only the running probe's table remains"
    );
    next.stop().unwrap();
    assert!(probe_tables(&lab).is_empty());
}

/// A base chain whose policy dropped the packet (no rule matched it): the diagnosis names the
/// chain and says its policy decided, rather than an empty rule.
#[test]
fn a_chain_policy_drop_is_diagnosed_as_the_policy() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    lab.b
        .exec(
            "nft",
            &["add table inet fw; \
                 add chain inet fw input { type filter hook input priority 10; policy drop; }; \
                 add rule inet fw input udp dport != 7004 accept"],
        )
        .unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--rules",
        "--no-routes",
        "--json",
        "-f",
        "udp port 7004",
    ])
    .unwrap();
    // Connected, so the datagram carries an IP id that tells it apart from any other.
    let dst = lab.b_addr;
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            sock.connect((dst, 7004)).unwrap();
            sock.send(b"policy").unwrap();
        })
        .unwrap();
    let (stdout, _) = run.stop().unwrap();
    let timelines = json_lines(&stdout).unwrap();
    let dropped = timelines
        .iter()
        .find(|t| t["first"]["dport"] == 7004 && t["outcome"] == "dropped")
        .unwrap_or_else(|| panic!("no dropped timeline for 7004 in {timelines:#?}"));
    let diagnosis = dropped["diagnosis"].as_str().unwrap();
    // Kernels before 5.17 give no drop reasons (5.10 in the matrix).
    let expected = if Doctor::run().unwrap().kernel_version().unwrap() >= (5, 17) {
        "dropped by inet fw/input (input) policy drop (reason NETFILTER_DROP)"
    } else {
        "dropped by inet fw/input (input) policy drop"
    };
    assert!(diagnosis.starts_with(expected), "{diagnosis}");
    // The verdict itself is one of the packet's hops.
    assert!(
        dropped["hops"].as_array().unwrap().iter().any(|h| {
            h["event"]["kind"] == "rule"
                && h["event"]["decided_by"] == "policy"
                && h["event"]["verdict"] == "drop"
        }),
        "{dropped:#}"
    );
}

/// probe's own marking table is walked like any other table where nft_do_chain is probed
/// (6.1 and 6.12 in the matrix): the observer's footprint, never one of the packet's hops.
/// Where nothing probes nft_do_chain (this host, 5.10) no such row can arise.
#[test]
fn probes_own_trace_table_is_no_hop_of_a_timeline() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--rules",
        "--no-routes",
        "--json",
        "-f",
        "udp port 7008",
    ])
    .unwrap();
    send(&lab, 7008);
    let (stdout, stderr) = run.stop().unwrap();
    let timelines = json_lines(&stdout).unwrap();
    let hops: Vec<&Value> = timelines
        .iter()
        .filter(|t| t["first"]["dport"] == 7008)
        .flat_map(|t| t["hops"].as_array().unwrap())
        .collect();
    assert!(
        !hops.is_empty(),
        "no timeline of the datagram: {timelines:#?}\n{stderr}"
    );
    let own: Vec<&&Value> = hops
        .iter()
        .filter(|h| {
            h["where"]
                .as_str()
                .is_some_and(|w| w.contains("probe_trace_"))
        })
        .collect();
    assert!(own.is_empty(), "probe's own table as a hop: {own:#?}");
}

/// A ruleset reload (`nft flush ruleset`, what an nftables service restart does) leaves probe's
/// owned trace table alone (5.12+); where it takes the table with it, probe puts it back and says
/// so. Either way verdicts keep coming.
#[test]
fn the_trace_table_comes_back_after_a_ruleset_flush() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let add_fw = || {
        lab.b
            .exec(
                "nft",
                &["add table inet fw; \
                     add chain inet fw input { type filter hook input priority 10; policy accept; }; \
                     add rule inet fw input udp dport 7005 counter drop"],
            )
            .unwrap()
    };
    add_fw();
    let mut run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--rules",
        "--no-tc",
        "--no-routes",
        "--json",
        "--events",
    ])
    .unwrap();
    send(&lab, 7005);
    lab.b.exec("nft", &["flush ruleset"]).unwrap();
    if Doctor::run().unwrap().kernel_version().unwrap() < (5, 12) {
        run.wait_for_stderr("probe: warning: the nftables ruleset was replaced")
            .unwrap();
        assert_eq!(probe_tables(&lab).len(), 1, "trace table re-created");
    } else {
        // A flush leaves tables owned by a socket alone: probe's is never gone.
        assert_eq!(
            probe_tables(&lab).len(),
            1,
            "the owned table survives a flush"
        );
    }
    // The firewall's own reload brings its table back.
    add_fw();
    send(&lab, 7005);
    let (stdout, stderr) = run.stop().unwrap();
    let drops: Vec<Value> = json_lines(&stdout)
        .unwrap()
        .into_iter()
        .filter(|e| {
            e["kind"] == "rule" && e["packet"]["ip"]["dport"] == 7005 && e["verdict"] == "drop"
        })
        .collect();
    assert_eq!(
        drops.len(),
        2,
        "one drop verdict before and one after: {drops:#?}"
    );
    assert!(!stderr.contains("could not delete"), "{stderr}");
    assert!(probe_tables(&lab).is_empty());
}

/// Under a flood, rule verdicts still join their packets' timelines: none is shown as a
/// timeline of its own (which would read like a firewall problem); those that cannot join are
/// counted in the summary.
#[test]
fn a_flood_under_rules_shows_no_verdict_only_timelines() {
    require_root();
    // Under emulation (the kernel matrix) each datagram costs many times its host time: a
    // third of the flood keeps the matrix's time down, and still comes faster than the
    // verdicts can be read there.
    let n: u32 = if std::env::var_os("PROBE_EXPECT_KERNEL_FUNCTIONS").is_some() {
        1000
    } else {
        3000
    };
    let lab = TwoHosts::new().unwrap();
    // A firewall whose rule decides about every datagram of the flood.
    lab.b
        .exec(
            "nft",
            &["add table inet fw; \
                 add chain inet fw input { type filter hook input priority 10; policy accept; }; \
                 add rule inet fw input udp dport 7009 counter accept"],
        )
        .unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--iface",
        TwoHosts::IFACE,
        "--rules",
        "--no-routes",
        "--json",
    ])
    .unwrap();
    let dst = lab.b_addr;
    lab.a
        .run(move || {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            sock.connect((dst, 7009)).unwrap();
            for i in 0..n {
                let _ = sock.send(&i.to_be_bytes());
            }
        })
        .unwrap();
    let (stdout, stderr) = run.stop().unwrap();
    let timelines = json_lines(&stdout).unwrap();
    assert!(!timelines.is_empty(), "{stderr}");
    let verdict_only: Vec<&Value> = timelines
        .iter()
        .filter(|t| {
            t["hops"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["event"]["kind"] == "rule")
        })
        .collect();
    assert!(
        verdict_only.is_empty(),
        "{:#?}",
        &verdict_only[..verdict_only.len().min(3)]
    );
    // The flood's datagrams that reached the trace carry their verdicts.
    let with_verdicts = timelines
        .iter()
        .filter(|t| t["first"]["dport"] == 7009)
        .filter(|t| {
            t["hops"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["event"]["kind"] == "rule")
        })
        .count();
    assert!(with_verdicts > 0, "{stderr}");
}

/// With a filter, probe's trace table marks only what the filter admits: the packets it
/// matches, and the replies of their connections (by conntrack's tuples). `nft monitor trace`,
/// which shows every packet marked for tracing, is the witness.
#[test]
fn with_a_filter_only_admitted_packets_are_marked_for_tracing() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    // Something to trace: a firewall counting both ports.
    lab.b
        .exec(
            "nft",
            &["add table inet fw; \
                 add chain inet fw input { type filter hook input priority 10; policy accept; }; \
                 add rule inet fw input udp dport { 7005, 7006 } counter accept"],
        )
        .unwrap();
    let mut monitor = Command::new("ip")
        .args(["netns", "exec", lab.b.name(), "nft", "monitor", "trace"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let out = monitor.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--rules",
        "--no-tc",
        "--no-routes",
        "--json",
        "--events",
        "udp dst port 7005",
    ])
    .unwrap();
    // An echo on 7005 in b: its reply (source port 7005) is admitted only through conntrack.
    let echo = lab
        .b
        .run(|| UdpSocket::bind(("0.0.0.0", 7005)).unwrap())
        .unwrap();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            let (n, from) = echo.recv_from(&mut buf).unwrap();
            echo.send_to(&buf[..n], from).unwrap();
        }
    });
    let exchange = |port: u16| {
        let dst = lab.b_addr;
        lab.a
            .run(move || {
                let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.send_to(b"marked?", (dst, port)).unwrap();
                let sport = s.local_addr().unwrap().port();
                if port == 7005 {
                    let mut buf = [0u8; 64];
                    s.recv_from(&mut buf).expect("the echo answers");
                }
                sport
            })
            .unwrap()
    };
    // The monitor is subscribed once it shows a first marked packet; then 7006, then 7005
    // again: the monitor prints in order, so 7006 would show before the second 7005.
    let wait_for = |what: &str| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("nft monitor trace never showed {what}: {seen:#?}"));
            let found = line.contains(what);
            seen.push(line);
            if found {
                return seen;
            }
        }
    };
    let first = exchange(7005);
    wait_for(&format!("udp sport {first} udp dport 7005"));
    let other = exchange(7006);
    let second = exchange(7005);
    let between = wait_for(&format!("udp sport 7005 udp dport {second}"));
    let (stdout, _) = run.stop().unwrap();
    let _ = monitor.kill();
    let _ = monitor.wait();
    echo_thread.join().unwrap();
    assert!(
        !between.iter().any(|l| l.contains("udp dport 7006")),
        "7006 was marked (source port {other}): {between:#?}"
    );
    assert!(
        between
            .iter()
            .any(|l| l.contains(&format!("udp sport {second} udp dport 7005"))),
        "{between:#?}"
    );
    // probe names the firewall's verdict for the admitted datagrams.
    let events = json_lines(&stdout).unwrap();
    let accepted = rule_events(&events, 7005)
        .into_iter()
        .filter(|e| e["table"] == "fw" && e["verdict"] == "accept")
        .count();
    assert_eq!(accepted, 2, "{events:#?}");
    assert!(rule_events(&events, 7006).is_empty());
}

/// nftables trace verdicts carry no kernel time: a `--rules` timeline shows none for them,
/// places them by their hook after the packet's arrival, and measures every Δ between the
/// kernel's own timestamps.
#[test]
fn untimed_verdicts_show_no_time_and_leave_the_deltas_to_kernel_times() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    lab.b
        .exec(
            "nft",
            &["add table inet fw; \
                 add chain inet fw pre { type filter hook prerouting priority 10; policy accept; }; \
                 add chain inet fw input { type filter hook input priority 10; policy accept; }; \
                 add rule inet fw input udp dport 7010 counter accept"],
        )
        .unwrap();
    let send_one = || {
        let dst = lab.b_addr;
        lab.a
            .run(move || {
                let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
                sock.connect((dst, 7010)).unwrap();
                sock.send(b"untimed").unwrap();
            })
            .unwrap();
    };
    let trace = |json: bool| {
        let mut args = vec![
            "trace",
            "--netns",
            lab.b.name(),
            "--rules",
            "-f",
            "udp port 7010",
        ];
        if json {
            args.push("--json");
        }
        let run = ProbeRun::start(&args).unwrap();
        send_one();
        run.stop().unwrap().0
    };

    let stdout = trace(true);
    let timelines = json_lines(&stdout).unwrap();
    let t = timelines
        .iter()
        .find(|t| {
            t["first"]["dport"] == 7010
                && t["hops"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["event"]["kind"] == "rule")
        })
        .unwrap_or_else(|| panic!("no timeline with verdicts for 7010 in {timelines:#?}"));
    let hops = t["hops"].as_array().unwrap();
    let mut first: Option<u64> = None;
    let mut prev: Option<u64> = None;
    let mut untimed = 0;
    for h in hops {
        if h["event"]["kind"] == "rule" {
            untimed += 1;
            assert_eq!(h["untimed"], true, "{h:#}");
            for field in ["t_ns", "dt_ns", "ts_ns"] {
                assert!(h[field].is_null(), "{field} of an untimed hop: {h:#}");
            }
            assert!(h["event"]["ts_ns"].is_null(), "{h:#}");
            // Rules run after the packet arrived: a timestamped sighting comes first.
            assert!(prev.is_some(), "a verdict before any sighting: {t:#}");
            continue;
        }
        assert!(h.get("untimed").is_none(), "{h:#}");
        let ts = h["ts_ns"].as_u64().unwrap();
        let start = *first.get_or_insert(ts);
        assert_eq!(h["t_ns"].as_u64().unwrap(), ts - start, "{t:#}");
        assert_eq!(
            h["dt_ns"].as_u64().unwrap(),
            ts - prev.unwrap_or(ts),
            "{t:#}"
        );
        prev = Some(ts);
    }
    assert!(untimed >= 2, "prerouting and input verdicts: {t:#}");

    let text = trace(false);
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("inet fw/")).collect();
    assert!(rows.len() >= 2, "{text}");
    for row in rows {
        assert!(row.starts_with("   (untimed) "), "{row}");
        assert!(!row.contains('Δ') && !row.contains("ms "), "{row}");
    }
}

/// Rules are read by a thread of their own, never by the event loop: a chain and rule added
/// while probe traces (as Docker adds them when a container starts) are named with their text
/// and hook once the kernel says they were added.
#[test]
fn a_rule_added_while_tracing_is_named_with_its_text() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.b.name(),
        "--rules",
        "--no-tc",
        "--no-routes",
        "--json",
        "--events",
    ])
    .unwrap();
    lab.b
        .exec(
            "nft",
            &["add table inet late; \
                 add chain inet late input { type filter hook input priority 20; policy accept; }; \
                 add rule inet late input udp dport 7012 counter drop"],
        )
        .unwrap();
    send(&lab, 7012);
    let (stdout, stderr) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let verdicts = rule_events(&events, 7012);
    let drop = verdicts
        .iter()
        .find(|e| e["table"] == "late" && e["verdict"] == "drop")
        .unwrap_or_else(|| panic!("no drop verdict for 7012 in {verdicts:#?}\n{stderr}"));
    assert_eq!(drop["chain"], "input");
    assert_eq!(drop["hook"], "input");
    assert_eq!(drop["rule"], "udp dport 7012 counter drop", "{drop:#}");
}
