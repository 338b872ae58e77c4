//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Output},
};

use probe_lab::{TwoHosts, probe_binary, require_root};

fn probe(args: &[&str]) -> Output {
    Command::new(probe_binary()).args(args).output().unwrap()
}

fn assert_one_line_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr}"
    );
}

#[test]
fn missing_interface() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let out = probe(&["trace", "--netns", lab.a.name(), "--iface", "nosuch0"]);
    assert_one_line_error(&out, "interface 'nosuch0' not found");
}

#[test]
fn malformed_interface_name() {
    require_root();
    let out = probe(&["trace", "--iface", "much-too-long-name0"]);
    assert_one_line_error(&out, "not a valid interface name");
}

#[test]
fn missing_namespace() {
    require_root();
    let out = probe(&["trace", "--netns", "probe-no-such-ns", "--iface", "eth0"]);
    assert_one_line_error(&out, "network namespace 'probe-no-such-ns' not found");
}

#[test]
fn malformed_arguments_are_usage_errors() {
    for args in [
        &["trace", "--iface", "lo", "--count", "0"][..],
        &["trace", "--iface", "lo", "--tc-backend", "xdp"][..],
        &["frobnicate"][..],
    ] {
        let out = probe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_ring_buffer_size() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let out = probe(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        "veth0",
        "--ringbuf-kib",
        "3",
    ]);
    assert_one_line_error(&out, "not a power of two");
}

#[test]
fn without_root() {
    require_root();
    let out = Command::new(probe_binary())
        .args(["trace", "--iface", "lo"])
        .env("PATH", "/usr/bin:/bin")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_one_line_error(&out, "probe needs root");
}

#[test]
fn help_has_examples() {
    for args in [&["--help"][..], &["trace", "--help"][..]] {
        let out = probe(args);
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Examples:"), "{stdout}");
        assert!(stdout.contains("probe trace --iface"), "{stdout}");
    }
}

#[test]
fn malformed_filter_names_the_position() {
    // No root needed to be told about a typo.
    let out = Command::new(probe_binary())
        .args(["trace", "--filter", "tcp and hots 10.0.0.1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_one_line_error(&out, "at position 8: unknown word 'hots'");
}

#[test]
fn a_ring_buffer_larger_than_the_machine_allows_is_refused() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    // The smallest power of two above a sixteenth of this machine's memory.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let kib = (total_kib / 16 + 1).next_power_of_two().to_string();
    let out = probe(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        "veth0",
        "--ringbuf-kib",
        &kib,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Past 4 GiB the size does not even fit the kernel's map size: refused as too large.
    let expected = if total_kib / 16 * 1024 >= u64::from(u32::MAX) {
        "is too large"
    } else {
        "more than a sixteenth of this machine's memory"
    };
    assert_one_line_error(&out, expected);
    assert!(stderr.contains("--ringbuf-kib"), "{stderr}");
}

#[test]
fn a_net_with_host_bits_is_refused_as_tcpdump_does() {
    let out = Command::new(probe_binary())
        .args(["trace", "--filter", "net 10.0.0.1/8"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_one_line_error(&out, "host bits set past /8 (the net is 10.0.0.0/8)");
}

#[test]
fn two_probes_cannot_record_into_one_file() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let dir = std::env::temp_dir().join(format!("probe-record-lock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shared.probe");
    let path = file.to_str().unwrap();
    let first = probe_lab::ProbeRun::start(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        "veth0",
        "--record",
        path,
    ])
    .unwrap();
    let out = probe(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        "veth0",
        "--record",
        path,
    ]);
    assert_one_line_error(&out, "is being recorded to by another probe");
    first.stop().unwrap();
    // The first probe's recording is whole: it replays.
    let replay = probe(&["replay", path]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ip netns del` of the traced namespace: probe says so and stops, instead of holding the
/// namespace open by itself.
#[test]
fn a_deleted_namespace_ends_the_trace() {
    require_root();
    let name = format!("probe-gone-{}", std::process::id());
    let ip = |args: &[&str]| Command::new("ip").args(args).status().unwrap();
    assert!(ip(&["netns", "add", &name]).success());
    let run = probe_lab::ProbeRun::start(&["trace", "--netns", &name, "--no-tc"]);
    let deleted = ip(&["netns", "del", &name]).success();
    let run = run.unwrap();
    assert!(deleted);
    // It ends on its own, with its summary.
    let (_, stderr) = run.finish().unwrap();
    assert!(
        stderr.contains(&format!(
            "the network namespace {name} was deleted; stopping"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("none lost"), "{stderr}");
}

/// The filter as trailing words, as tcpdump takes it: only the matching datagram is shown.
#[test]
fn the_filter_can_be_given_as_trailing_words() {
    require_root();
    let lab = TwoHosts::new().unwrap();
    let run = probe_lab::ProbeRun::start(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        "veth0",
        "--no-routes",
        "--no-drops",
        "--events",
        "--json",
        "--count",
        "1",
        "udp",
        "dst",
        "port",
        "9000",
    ])
    .unwrap();
    let b = lab.b_addr;
    lab.a
        .run(move || {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            for port in [9001, 9002, 9000] {
                sock.send_to(b"words", (b, port)).unwrap();
            }
        })
        .unwrap();
    let (stdout, _) = run.finish().unwrap();
    let events = probe_lab::probe::json_lines(&stdout).unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["schema"], "probe.event/1");
    assert_eq!(events[0]["packet"]["ip"]["dport"], 9000);
    // The run ends with its summary, as JSON too: the datagrams turned away are counted.
    let summary = probe_lab::probe::json_summary(&stdout).unwrap();
    assert_eq!(summary["events"], 1, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert!(
        summary["filtered_in_kernel"].as_u64().unwrap() >= 2,
        "{summary}"
    );
}

/// bash, given probe's completion script, completes subcommands and options.
#[test]
fn bash_completes_subcommands_and_options() {
    let complete = |words: &str, cword: usize| -> String {
        let script = format!(
            "source <({probe} completions bash); COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _probe probe \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[*]}}\"",
            probe = probe_binary().display()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(complete("probe tr", 1), "trace");
    assert_eq!(complete("probe trace --tc-b", 2), "--tc-backend");
    assert!(complete("probe la", 1).contains("latency"));
}

/// The man pages render with man(1), with the options and their help.
#[test]
fn man_pages_render() {
    for (page, expect) in [(None, "probe-trace"), (Some("trace"), "--tc-backend")] {
        let mut cmd = Command::new(probe_binary());
        cmd.arg("man").args(page);
        let roff = cmd.output().unwrap();
        assert!(roff.status.success());
        let file = std::env::temp_dir().join(format!(
            "probe-man-{}-{}.1",
            std::process::id(),
            page.unwrap_or("probe")
        ));
        std::fs::write(&file, &roff.stdout).unwrap();
        let out = Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        std::fs::remove_file(&file).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(expect), "{expect} not in {text}");
    }
}
