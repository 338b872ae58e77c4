//! `probe explain`: the knowledge behind diagnoses covers every drop reason of the running
//! kernel (read from it, as trace reads them), and a term it does not know is a clear error.

use std::{net::UdpSocket, process::Command};

use probe_lab::{
    ProbeRun, TwoHosts, doctor::Doctor, probe::json_lines, probe_binary, require_root,
};

fn explain(args: &[&str]) -> std::process::Output {
    Command::new(probe_binary())
        .arg("explain")
        .args(args)
        .output()
        .expect("cannot run probe explain")
}

#[test]
fn every_drop_reason_of_this_kernel_is_explained() {
    require_root();
    let (major, minor) = Doctor::run().unwrap().kernel_version().unwrap();
    let out = explain(&["--all", "--json"]);
    if (major, minor) < (5, 17) {
        // No reasons before 5.17: drops are explained by the function that freed them.
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("kernels before 5.17"), "{stderr}");
        let by_function = explain(&["ip_error+0x94", "nf_hook_slow"]);
        let text = String::from_utf8_lossy(&by_function.stdout);
        assert!(by_function.status.success(), "{text}");
        assert!(text.contains("ip_error+0x94: no-route"), "{text}");
        assert!(text.contains("nf_hook_slow: netfilter"), "{text}");
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout)).unwrap();
    // The kernel's own list, as the tracepoint prints it.
    let format =
        std::fs::read_to_string("/sys/kernel/tracing/events/skb/kfree_skb/format").unwrap();
    let in_kernel = format
        .split("print fmt")
        .nth(1)
        .unwrap()
        .matches("{ ")
        .count();
    assert!(lines.len() > 50, "{} reasons", lines.len());
    assert!(
        lines.len() + 2 >= in_kernel,
        "{} of {in_kernel}",
        lines.len()
    );
    let unexplained: Vec<&str> = lines
        .iter()
        .filter(|l| l["cause"].is_null())
        .map(|l| l["term"].as_str().unwrap())
        .collect();
    assert!(unexplained.is_empty(), "not explained: {unexplained:?}");
    for l in &lines {
        assert_eq!(l["schema"], "probe.explain/1");
        let cause = &l["cause"];
        assert!(cause["id"].as_str().is_some_and(|id| !id.is_empty()), "{l}");
        assert!(cause["next"].as_str().is_some_and(|n| n.len() > 20), "{l}");
    }
}

#[test]
fn a_reason_is_explained_in_words_and_an_unknown_one_is_an_error() {
    let out = explain(&["NO_SOCKET", "ip_rpfilter"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("NO_SOCKET: no-socket"), "{text}");
    assert!(text.contains("ip_rpfilter: rp-filter"), "{text}");
    assert!(text.contains("next "), "{text}");
    let out = explain(&["NO_SUCH_REASON"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("probe: error: no explanation for NO_SUCH_REASON"),
        "{stderr}"
    );
    // Nothing to explain is a usage error.
    assert_eq!(explain(&[]).status.code(), Some(2));
}

/// A datagram to a port nobody listens on: its timeline ends with the cause in plain words,
/// its id in JSON, and the next step in text.
#[test]
fn a_drop_reads_as_its_cause_with_a_next_step() {
    require_root();
    let (major, minor) = Doctor::run().unwrap().kernel_version().unwrap();
    let lab = TwoHosts::new().unwrap();
    let args = |json: bool| {
        let mut a = vec![
            "trace".to_owned(),
            "--netns".into(),
            lab.b.name().into(),
            "--iface".into(),
            TwoHosts::IFACE.into(),
            "udp port 7999".into(),
        ];
        if json {
            a.push("--json".into());
        }
        a
    };
    for json in [true, false] {
        let args = args(json);
        let run = ProbeRun::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let dst = lab.b_addr;
        lab.a
            .run(move || {
                UdpSocket::bind(("0.0.0.0", 0))
                    .unwrap()
                    .send_to(b"anyone?", (dst, 7999))
                    .unwrap();
            })
            .unwrap();
        let (stdout, stderr) = run.stop().unwrap();
        if json {
            let timelines = json_lines(&stdout).unwrap();
            let dropped = timelines
                .iter()
                .find(|t| t["outcome"] == "dropped")
                .unwrap_or_else(|| panic!("no drop in {timelines:#?}\n{stderr}"));
            assert_eq!(dropped["cause"]["id"], "no-socket", "{dropped:#}");
            let d = dropped["diagnosis"].as_str().unwrap();
            assert!(d.contains("no socket listens on"), "{d}");
            // Before 5.17 the kernel names no reason: the cause comes from where it dropped.
            if (major, minor) >= (5, 17) {
                assert!(d.contains("(reason NO_SOCKET)"), "{d}");
            } else {
                assert!(
                    d.contains("in __udp4_lib_rcv") && !d.contains("(reason"),
                    "{d}"
                );
            }
        } else {
            assert!(
                stdout.contains("     next: check that the service runs")
                    && stdout.contains("(probe explain no-socket)"),
                "{stdout}"
            );
        }
    }
}
