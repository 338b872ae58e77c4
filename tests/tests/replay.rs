//! `--record` then `probe replay`: the timelines rebuilt offline, without root, match those
//! printed live, for the story shapes (DNAT delivered, dropped by a rule, misrouted by a VPN);
//! a damaged recording is one clear error.

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use probe_lab::{
    HostLab, Netns, ProbeRun, TempFile,
    probe::json_lines,
    probe_binary, require_root,
    traffic::{serve_tcp_once, tcp_exchange, udp_send},
};
use serde_json::Value;

/// Records a live trace around `traffic`; returns the live timelines.
fn record(lab: &HostLab, file: &TempFile, extra: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    let mut args = vec![
        "trace",
        "--netns",
        lab.host().name(),
        "--json",
        "--record",
        file.path(),
    ];
    args.extend_from_slice(extra);
    let run = ProbeRun::start(&args).unwrap();
    traffic();
    let (stdout, _) = run.stop().unwrap();
    json_lines(&stdout).unwrap()
}

/// Replays as an unprivileged user.
fn replay(file: &TempFile) -> Vec<Value> {
    std::fs::set_permissions(&file.0, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new(probe_binary())
        .args(["replay", file.path(), "--json"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

fn summary(timelines: &[Value]) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = timelines
        .iter()
        .map(|t| (t["outcome"].to_string(), t["diagnosis"].to_string()))
        .collect();
    s.sort();
    s
}

#[test]
fn replayed_timelines_match_the_live_ones() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    let web = lab.web().addr;

    let dnat = TempFile::new("dnat.rec");
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let live = record(
        &lab,
        &dnat,
        &["--iface", "eth0,veth-web", "--rules"],
        || {
            tcp_exchange(
                &lab.outside,
                HostLab::HOST_ADDR,
                HostLab::PUBLISHED_PORT,
                Duration::from_secs(5),
            )
            .unwrap();
        },
    );
    let replayed = replay(&dnat);
    assert_eq!(summary(&live), summary(&replayed));
    assert!(replayed.iter().any(|t| {
        t["outcome"] == "delivered"
            && t["diagnosis"]
                .as_str()
                .unwrap()
                .contains("DNAT 203.0.113.1:8080 → 172.17.0.2:80")
    }));

    let dropped = TempFile::new("drop.rec");
    lab.firewalld_forward_drop().unwrap();
    let live = record(&lab, &dropped, &["--rules", "--no-routes"], || {
        udp_send(&lab.web().ns, HostLab::OUTSIDE_ADDR, 53).unwrap();
    });
    let replayed = replay(&dropped);
    assert_eq!(summary(&live), summary(&replayed));
    assert!(replayed.iter().any(|t| {
        t["outcome"] == "dropped"
            && t["diagnosis"]
                .as_str()
                .unwrap()
                .contains("firewalld/filter_FORWARD")
    }));
    lab.remove_firewalld().unwrap();

    let misrouted = TempFile::new("vpn.rec");
    lab.vpn_up().unwrap();
    let _server = serve_tcp_once(&lab.web().ns, web, 81).unwrap();
    let live = record(&lab, &misrouted, &["--no-drops"], || {
        assert!(tcp_exchange(lab.host(), web, 81, Duration::from_millis(500)).is_err());
    });
    let replayed = replay(&misrouted);
    assert_eq!(summary(&live), summary(&replayed));
    assert!(
        replayed
            .iter()
            .any(|t| t["diagnosis"].as_str().unwrap().contains("shadows"))
    );
}

#[test]
fn damaged_recordings_are_one_clear_error() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    let file = TempFile::new("cut.rec");
    record(&lab, &file, &["--iface", "veth-web"], || {
        udp_send(&lab.web().ns, HostLab::OUTSIDE_ADDR, 9).unwrap();
    });
    let bytes = std::fs::read(&file.0).unwrap();
    assert!(bytes.len() > 100, "something was recorded");
    let cut = TempFile::new("cut2.rec");
    std::fs::write(&cut.0, &bytes[..bytes.len() - 7]).unwrap();
    for (path, expected) in [
        (cut.path(), "offset"),
        ("/nonexistent/probe.rec", "cannot open"),
        ("/etc/passwd", "not a probe recording"),
    ] {
        let out = Command::new(probe_binary())
            .args(["replay", path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{path}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

/// A small tmpfs of the test's own, unmounted and removed however the test ends.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(kib: u32) -> Self {
        let dir = std::env::temp_dir().join(format!("probe-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "cannot mount a tmpfs");
        SmallDisk(dir)
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A disk that fills up stops the recording with a clear line; the trace goes on and ends
/// with its summary. A disk already full is said at start.
#[test]
fn a_full_disk_stops_the_recording_not_the_trace() {
    require_root();
    const N: usize = 2000;
    let lab = probe_lab::TwoHosts::new().unwrap();
    let disk = SmallDisk::new(64);
    let file = disk.file("trace.probe");
    let args = [
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        "veth0",
        "--no-routes",
        "--no-drops",
        "--events",
        "--json",
        "--record",
        &file,
    ];
    let run = ProbeRun::start(&args).unwrap();
    let b = lab.b_addr;
    lab.a
        .run(move || {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            for i in 0..N as u32 {
                sock.send_to(&i.to_be_bytes(), (b, 9)).unwrap();
            }
        })
        .unwrap();
    let (stdout, stderr) = run.stop().unwrap();
    assert!(
        stderr.contains("probe: warning: the recording stopped"),
        "{stderr}"
    );
    assert!(stderr.contains(" events"), "no summary: {stderr}");
    let shown = json_lines(&stdout)
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "tc" && e["direction"] == "egress" && e["packet"]["ip"]["dport"] == 9
        })
        .count();
    assert_eq!(shown, N, "every datagram is still shown");

    // Now full: a new recording cannot even start.
    std::fs::remove_file(&file).unwrap();
    let filler = disk.file("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    let out = Command::new(probe_binary()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot write the recording"), "{stderr}");
    assert!(
        !stderr.contains("tracing "),
        "said tracing before failing: {stderr}"
    );
}

/// `--color`: always and never as asked; auto follows NO_COLOR and CLICOLOR_FORCE (the output
/// here is a pipe, so auto alone means none).
#[test]
fn colour_follows_the_flag_and_the_conventions() {
    require_root();
    let lab = probe_lab::TwoHosts::new().unwrap();
    let file = TempFile::new("colour.probe");
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        "veth0",
        "--no-routes",
        "--record",
        file.path(),
    ])
    .unwrap();
    let b = lab.b_addr;
    lab.a
        .run(move || {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            sock.send_to(b"colour", (b, 9)).unwrap();
        })
        .unwrap();
    run.stop().unwrap();
    let replay = |args: &[&str], env: &[(&str, &str)]| -> bool {
        let mut cmd = Command::new(probe_binary());
        cmd.args(["replay", file.path()]).args(args);
        cmd.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("=> "), "no timeline: {text}");
        text.contains("\x1b[")
    };
    assert!(replay(&["--color", "always"], &[]));
    assert!(!replay(&["--color", "never"], &[("CLICOLOR_FORCE", "1")]));
    assert!(!replay(&[], &[]));
    assert!(replay(&[], &[("CLICOLOR_FORCE", "1")]));
    assert!(!replay(&[], &[("NO_COLOR", "1")]));
}

/// A recording keeps its machine's clock: a replay gives the times the events happened, as
/// RFC 3339 in JSON, whatever the replaying machine's clock says. (The recording's clock is
/// moved a day ahead here: the replay follows it.)
#[test]
fn replays_print_the_recorded_times() {
    require_root();
    let lab = probe_lab::TwoHosts::new().unwrap();
    let file = TempFile::new("times.probe");
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.a.name(),
        "--iface",
        "veth0",
        "--no-routes",
        "--events",
        "--json",
        "--record",
        file.path(),
    ])
    .unwrap();
    let b = lab.b_addr;
    lab.a
        .run(move || {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            sock.send_to(b"when", (b, 9)).unwrap();
        })
        .unwrap();
    let (live, _) = run.stop().unwrap();
    let sent = |lines: &[Value]| -> String {
        lines
            .iter()
            .find(|e| e["kind"] == "tc" && e["packet"]["ip"]["dport"] == 9)
            .unwrap_or_else(|| panic!("no sighting in {lines:#?}"))["time"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let live_time = sent(&json_lines(&live).unwrap());
    assert!(
        live_time.ends_with('Z') && live_time.len() == 30,
        "{live_time}"
    );

    // The header: magic, versions, metadata length, metadata (JSON).
    let mut bytes = std::fs::read(file.path()).unwrap();
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut meta: Value = serde_json::from_slice(&bytes[16..16 + len]).unwrap();
    let offset = meta["clock"]["realtime_minus_monotonic_ns"]
        .as_i64()
        .unwrap();
    meta["clock"]["realtime_minus_monotonic_ns"] = (offset + 86_400_000_000_000).into();
    let new_meta = serde_json::to_vec(&meta).unwrap();
    let mut patched = bytes[..12].to_vec();
    patched.extend_from_slice(&(new_meta.len() as u32).to_le_bytes());
    patched.extend_from_slice(&new_meta);
    patched.extend_from_slice(&bytes.split_off(16 + len));
    std::fs::write(file.path(), patched).unwrap();

    let out = Command::new(probe_binary())
        .args(["replay", file.path(), "--events", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = sent(&json_lines(&String::from_utf8_lossy(&out.stdout)).unwrap());
    // The same instant, a day later: the date moved, the time of day did not.
    assert_ne!(replayed[..10], live_time[..10], "{replayed} vs {live_time}");
    assert_eq!(replayed[10..], live_time[10..], "{replayed} vs {live_time}");
}
