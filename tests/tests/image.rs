//! The container image (`cargo xtask image`): the static probe in it sees the host's kernel as
//! the host's own binary does, traces a lab namespace from inside the container (tc, drops,
//! nftables rule tracing), and leaves nothing behind when the container stops.

use std::{io::Write as _, process::Command};

use probe_lab::{
    HostLab, Netns, ProbeRun,
    cmd::in_ns,
    docker::{self, docker},
    doctor::Doctor,
    probe::json_lines,
    require_root,
    traffic::{udp_listen, udp_send},
};
use serde_json::Value;

/// The image under test: `$PROBE_IMAGE`, which `cargo xtask test` sets after building it; None
/// (with a note) where no Docker engine runs.
fn image(test: &str) -> Option<String> {
    require_root();
    if let Some(why) = docker::unavailable() {
        // Straight to the terminal: the test harness keeps eprintln! of passing tests to itself.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test} (tests/tests/image.rs): Docker is not available here ({why})"
        );
        return None;
    }
    Some(std::env::var("PROBE_IMAGE").unwrap_or_else(|_| {
        panic!(
            "PROBE_IMAGE is not set: run the tests with `cargo xtask test`, which builds the image"
        )
    }))
}

/// `docker run` with the host's view of the kernel, its processes and its network namespaces,
/// and the capabilities probe needs (not `--privileged`), as the README says to run the image.
fn docker_run(image: &str, name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--name", name])
        .args(["--pid=host", "--net=host"])
        .args([
            "--cap-add",
            "SYS_ADMIN",
            "--cap-add",
            "NET_ADMIN",
            "--cap-add",
            "SYSLOG",
        ])
        .args(["-v", "/sys/kernel:/sys/kernel"])
        .args(["-v", "/run/probe:/run/probe"])
        .args(["-v", "/run/netns:/run/netns"])
        .arg(image)
        .args(args);
    cmd
}

/// Removes the container even when the test fails half way (killing the client leaves it).
struct Container(String);

impl Container {
    fn named(role: &str) -> Self {
        Self(format!("probe-image-test-{}-{role}", std::process::id()))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[test]
fn the_image_sees_the_kernel_as_the_host_binary_does() {
    let Some(image) = image("the_image_sees_the_kernel_as_the_host_binary_does") else {
        return;
    };
    let container = Container::named("doctor");
    let out = docker_run(&image, &container.0, &["doctor", "--json"])
        .output()
        .expect("cannot run docker");
    let inside: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "probe doctor in the image printed no JSON; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let inside = Doctor(inside);
    let host = Doctor::run().unwrap();
    assert_eq!(inside.0["kernel"], host.0["kernel"]);
    for point in [
        "tc on interfaces",
        "drops",
        "routing decisions",
        "rule verdicts (--rules)",
    ] {
        assert_eq!(
            inside.backend(point),
            host.backend(point),
            "{point}: the image and the host binary disagree"
        );
    }
    assert!(inside.backend("tc on interfaces").is_some(), "{}", inside.0);
}

#[test]
fn the_image_traces_a_lab_namespace_and_leaves_nothing_behind() {
    let Some(image) = image("the_image_traces_a_lab_namespace_and_leaves_nothing_behind") else {
        return;
    };
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    lab.firewalld_forward_drop().unwrap();
    let outside = HostLab::OUTSIDE_ADDR;
    let _receiver = udp_listen(&lab.outside, outside, 53).unwrap();
    let container = Container::named("trace");
    let host = lab.host().name();
    let run = ProbeRun::start_command(docker_run(
        &image,
        &container.0,
        &[
            "trace",
            "--netns",
            host,
            "--iface",
            "eth0,veth-web",
            "--rules",
            "--json",
        ],
    ))
    .unwrap();
    let sport = udp_send(&lab.web().ns, outside, 53).unwrap();
    // SIGINT to the client, which passes it on to probe in the container.
    let (stdout, stderr) = run.stop().unwrap();
    let timelines = json_lines(&stdout).unwrap();
    let ours = timelines
        .iter()
        .find(|t| t["first"]["sport"] == sport && t["first"]["dport"] == 53)
        .unwrap_or_else(|| panic!("no timeline of the datagram in {timelines:#?}\n{stderr}"));
    assert_eq!(ours["outcome"], "dropped", "{ours:#}");
    let diagnosis = ours["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.contains("firewalld/filter_FORWARD"),
        "{diagnosis}"
    );
    assert!(
        ours["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["event"]["kind"] == "tc" && h["where"] == "veth-web ingress"),
        "seen on veth-web: {ours:#}"
    );

    // Nothing is left: no container, no filters or qdiscs on the lab's interfaces, no nft
    // trace table, no ledger of the container's probe.
    let running = docker(&["ps", "-aq", "--filter", &format!("name={}", container.0)]).unwrap();
    assert!(running.trim().is_empty(), "container left: {running}");
    for dev in ["eth0", "veth-web"] {
        for dir in ["ingress", "egress"] {
            let filters = in_ns(host, "tc", &["filter", "show", "dev", dev, dir]).unwrap();
            assert!(filters.trim().is_empty(), "{dev} {dir}: {filters}");
        }
        let qdiscs = in_ns(host, "tc", &["qdisc", "show", "dev", dev]).unwrap();
        assert!(!qdiscs.contains("clsact"), "{dev}: {qdiscs}");
    }
    let tables = in_ns(host, "nft", &["list", "tables"]).unwrap();
    assert!(!tables.contains("probe_trace"), "{tables}");
    // Ledgers are `tc.<pid>`; any left must belong to a probe still running (another test's).
    let stale: Vec<String> = std::fs::read_dir("/run/probe")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|name: &String| {
            name.strip_prefix("tc.")
                .is_some_and(|pid| !std::path::Path::new("/proc").join(pid).exists())
        })
        .collect();
    assert!(
        stale.is_empty(),
        "ledgers of dead probes in /run/probe: {stale:?}"
    );
}
