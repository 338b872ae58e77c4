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
