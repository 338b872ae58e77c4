//! Every JSON line probe writes validates against the published schema its `schema` field
//! names (docs/schema/probe.KIND.json): live traces, sightings, replays of a recording, latency,
//! doctor and explain. The schemas are strict: a real line with a field removed, renamed or added, or
//! naming another schema version, fails.

use std::{collections::BTreeMap, net::UdpSocket, path::Path, process::Command, time::Duration};

use jsonschema::Validator;
use probe_lab::{
    BridgeLab, HostLab, Netns, ProbeRun, TempFile, probe_binary, require_root,
    traffic::{serve_tcp_once, tcp_exchange, udp_listen, udp_send},
};
use serde_json::Value;

/// The published schemas, by schema name (`probe.timeline/1`).
struct Schemas(BTreeMap<String, Validator>);

impl Schemas {
    fn load() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema");
        let mut all = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let schema: Value = serde_json::from_str(&text).unwrap();
            assert!(
                jsonschema::meta::is_valid(&schema),
                "{} is no valid JSON Schema",
                path.display()
            );
            let name = schema["title"].as_str().unwrap().to_owned();
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            all.insert(name, validator);
        }
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            [
                "probe.doctor/1",
                "probe.event/1",
                "probe.explain/1",
                "probe.latency/2",
                "probe.summary/1",
                "probe.timeline/1"
            ]
        );
        Self(all)
    }

    /// Why `line` does not validate against the schema it names (empty when it does).
    fn errors(&self, line: &Value) -> Vec<String> {
        match line["schema"].as_str() {
            Some(name) if self.0.contains_key(name) => self.errors_against(name, line),
            _ => vec![format!("no published schema is named {}", line["schema"])],
        }
    }

    /// Why `line` does not validate against schema `name` (empty when it does).
    fn errors_against(&self, name: &str, line: &Value) -> Vec<String> {
        self.0[name]
            .iter_errors(line)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect()
    }

    /// Asserts that `line`, changed as `what` says, fails schema `name`.
    fn assert_fails(&self, name: &str, what: &str, line: &Value) {
        let errors = self.errors_against(name, line);
        assert!(!errors.is_empty(), "{what}: still a valid {name}: {line}");
        eprintln!("{what}: {}", errors[0]);
    }

    /// Validates every line of `stdout`; how many lines of each schema there were.
    fn validate_lines(&self, stdout: &str) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for text in stdout.lines().filter(|l| !l.trim().is_empty()) {
            let line: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
            let errors = self.errors(&line);
            assert!(
                errors.is_empty(),
                "this line does not match its schema:\n{text}\n{}",
                errors.join("\n")
            );
            *seen
                .entry(line["schema"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        eprintln!("valid: {seen:?}");
        seen
    }
}

/// `probe trace --netns HOST --json ARGS` around `traffic`; its stdout.
fn trace(lab: &HostLab, extra: &[&str], traffic: impl FnOnce()) -> String {
    let mut args = vec!["trace", "--netns", lab.host().name(), "--json"];
    args.extend_from_slice(extra);
    let run = ProbeRun::start(&args).unwrap();
    traffic();
    run.stop().unwrap().0
}

/// `probe replay FILE --json ARGS`; its stdout.
fn replay(file: &TempFile, extra: &[&str]) -> String {
    let out = Command::new(probe_binary())
        .args(["replay", file.path(), "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn count(seen: &BTreeMap<String, usize>, schema: &str) -> usize {
    seen.get(schema).copied().unwrap_or(0)
}

/// The event kinds of the `probe.event/1` lines of `stdout`.
fn event_kinds(stdout: &str) -> Vec<String> {
    let mut kinds: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["schema"] == "probe.event/1")
        .map(|v| v["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

#[test]
fn trace_and_replay_lines_validate_and_a_changed_line_does_not() {
    require_root();
    let schemas = Schemas::load();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    let web = lab.web().addr;

    // DNAT to a container, with nftables rule verdicts: tc, route and rule hops, rewrites.
    let dnat = TempFile::new("dnat.rec");
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let stdout = trace(
        &lab,
        &[
            "--iface",
            "eth0,veth-web",
            "--rules",
            "--record",
            dnat.path(),
        ],
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
    let seen = schemas.validate_lines(&stdout);
    assert!(count(&seen, "probe.timeline/1") > 0, "{stdout}");
    assert_eq!(count(&seen, "probe.summary/1"), 1, "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let delivered = lines
        .iter()
        .find(|l| l["outcome"] == "delivered" && !l["rewrites"].as_array().unwrap().is_empty())
        .unwrap_or_else(|| panic!("no delivered timeline with a rewrite: {stdout}"));

    // Replayed, as timelines and as sightings.
    let seen = schemas.validate_lines(&replay(&dnat, &[]));
    assert!(count(&seen, "probe.timeline/1") > 0);
    assert_eq!(count(&seen, "probe.summary/1"), 1);
    let events = replay(&dnat, &["--events"]);
    let seen = schemas.validate_lines(&events);
    assert!(count(&seen, "probe.event/1") > 0);
    assert_eq!(count(&seen, "probe.summary/1"), 1);
    let kinds = event_kinds(&events);
    for kind in ["fib", "rule", "tc"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} among {kinds:?}");
    }

    // A drop by a firewall rule: drop sightings, a dropped timeline, drops by cause.
    lab.firewalld_forward_drop().unwrap();
    let dropped = TempFile::new("drop.rec");
    let stdout = trace(&lab, &["--rules", "--record", dropped.path()], || {
        udp_send(&lab.web().ns, HostLab::OUTSIDE_ADDR, 53).unwrap();
    });
    lab.remove_firewalld().unwrap();
    schemas.validate_lines(&stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        summary["outcomes"]["dropped"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let events = replay(&dropped, &["--events"]);
    schemas.validate_lines(&events);
    assert!(event_kinds(&events).iter().any(|k| k == "drop"));

    // A VPN route that shadows the container's: policy-rule and failed-route sightings.
    lab.vpn_up().unwrap();
    let _server = serve_tcp_once(&lab.web().ns, web, 81).unwrap();
    let stdout = trace(&lab, &["--no-drops"], || {
        assert!(tcp_exchange(lab.host(), web, 81, Duration::from_millis(500)).is_err());
    });
    let seen = schemas.validate_lines(&stdout);
    assert!(count(&seen, "probe.timeline/1") > 0, "{stdout}");

    // Strict enough to catch a changed line.
    let summary = lines.last().unwrap();
    let mut changed: Vec<(&str, Value)> = Vec::new();
    for field in ["outcome", "diagnosis", "hops", "schema", "time"] {
        let mut v = delivered.clone();
        v.as_object_mut().unwrap().remove(field);
        changed.push((field, v));
    }
    let mut v = delivered.clone();
    let d = v.as_object_mut().unwrap().remove("diagnosis").unwrap();
    v["diagnose"] = d;
    changed.push(("diagnosis renamed", v));
    let mut v = delivered.clone();
    v["extra"] = Value::Bool(true);
    changed.push(("a field added", v));
    let mut v = delivered.clone();
    v["schema"] = "probe.timeline/2".into();
    changed.push(("another version", v));
    let mut v = delivered.clone();
    v["outcome"] = "vanished".into();
    changed.push(("an unknown outcome", v));
    let mut v = delivered.clone();
    v["hops"][0].as_object_mut().unwrap().remove("where");
    changed.push(("a hop's where", v));
    let mut v = delivered.clone();
    v["hops"][0]["event"]
        .as_object_mut()
        .unwrap()
        .remove("kind");
    changed.push(("a hop event's kind", v));
    let mut v = delivered.clone();
    v["hops"][0]["event"]
        .as_object_mut()
        .unwrap()
        .remove("ts_ns");
    changed.push(("a hop event's ts_ns", v));
    let mut v = delivered.clone();
    v["rewrites"][0]["after"]
        .as_object_mut()
        .unwrap()
        .remove("dport");
    changed.push(("a rewrite's port", v));
    let mut v = delivered.clone();
    v["time"] = "yesterday".into();
    changed.push(("a time that is no RFC 3339", v));
    assert!(schemas.errors(delivered).is_empty());
    for (what, line) in &changed {
        schemas.assert_fails("probe.timeline/1", what, line);
    }
    let mut v = summary.clone();
    v.as_object_mut().unwrap().remove("events");
    schemas.assert_fails("probe.summary/1", "no events", &v);
    let mut v = summary.clone();
    v["outcomes"]
        .as_object_mut()
        .unwrap()
        .remove("drops_by_cause");
    schemas.assert_fails("probe.summary/1", "no drops_by_cause", &v);
    let mut v = summary.clone();
    v["lost_per_cpu"] = Value::from(3);
    schemas.assert_fails("probe.summary/1", "lost_per_cpu no list", &v);
}

#[test]
fn sighting_lines_validate() {
    require_root();
    let schemas = Schemas::load();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = HostLab::new(&Netns::unique_prefix()).unwrap();
    let web = lab.web().addr;
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let stdout = trace(&lab, &["--events", "--rules"], || {
        tcp_exchange(
            &lab.outside,
            HostLab::HOST_ADDR,
            HostLab::PUBLISHED_PORT,
            Duration::from_secs(5),
        )
        .unwrap();
    });
    let seen = schemas.validate_lines(&stdout);
    assert!(count(&seen, "probe.event/1") > 0, "{stdout}");
    assert_eq!(count(&seen, "probe.summary/1"), 1, "{stdout}");
    let kinds = event_kinds(&stdout);
    for kind in ["fib", "rule", "tc"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} among {kinds:?}");
    }
    // A sighting with a field renamed or removed fails.
    let tc: Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| {
            v["kind"] == "tc" && v["ifname"].is_string() && v["packet"]["ip"]["proto"] == "tcp"
        })
        .unwrap();
    let event = "probe.event/1";
    let mut v = tc.clone();
    let name = v.as_object_mut().unwrap().remove("ifname").unwrap();
    v["iface"] = name;
    schemas.assert_fails(event, "ifname renamed", &v);
    let mut v = tc.clone();
    v["packet"].as_object_mut().unwrap().remove("len");
    schemas.assert_fails(event, "no packet len", &v);
    let mut v = tc.clone();
    v["packet"]["ip"]["tcp_flags"] = "SYN".into();
    schemas.assert_fails(event, "flags not as tcpdump writes them", &v);
    let mut v = tc.clone();
    v["packet"]["ip"]["src"] = "10.0.0".into();
    schemas.assert_fails(event, "no IP address", &v);
    let mut v = tc;
    v["direction"] = "sideways".into();
    schemas.assert_fails(event, "an unknown direction", &v);
}

#[test]
fn latency_lines_validate() {
    require_root();
    let schemas = Schemas::load();
    const PORT: u16 = 7301;
    let lab = BridgeLab::new(&Netns::unique_prefix(), &["a", "b"]).unwrap();
    let (a, b) = (lab.container("a"), lab.container("b"));
    let receiver = udp_listen(&b.ns, b.addr, PORT).unwrap();
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
    let dst = b.addr;
    let sender =
        a.ns.run(move || -> std::io::Result<UdpSocket> {
            let sock = UdpSocket::bind(("0.0.0.0", 0))?;
            sock.connect((dst, PORT))?;
            Ok(sock)
        })
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 16];
    for i in 0..20u32 {
        sender.send(&i.to_be_bytes()).unwrap();
        receiver.recv(&mut buf).unwrap();
    }
    let (stdout, _) = run.stop().unwrap();
    let seen = schemas.validate_lines(&stdout);
    assert!(count(&seen, "probe.latency/2") > 0, "{stdout}");
    let line: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let mut v = line.clone();
    v["groups"][0]["stages"][0]["buckets"][0]
        .as_object_mut()
        .unwrap()
        .remove("lt_ns");
    schemas.assert_fails("probe.latency/2", "a bucket without lt_ns", &v);
    let mut v = line;
    v.as_object_mut().unwrap().remove("total");
    schemas.assert_fails("probe.latency/2", "no total", &v);
}

#[test]
fn doctor_report_validates() {
    require_root();
    let schemas = Schemas::load();
    let out = Command::new(probe_binary())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let errors = schemas.errors(&report);
    assert!(errors.is_empty(), "{report:#}\n{}", errors.join("\n"));
    let doctor = "probe.doctor/1";
    let mut v = report.clone();
    v["points"][0].as_object_mut().unwrap().remove("backend");
    schemas.assert_fails(doctor, "a point without backend", &v);
    let mut v = report;
    v["features"][0]["available"] = "yes".into();
    schemas.assert_fails(doctor, "available as a string", &v);
}

#[test]
fn explain_lines_validate() {
    let schemas = Schemas::load();
    // A reason probe knows, one it does not (cause null), and every reason of this kernel.
    let run = |args: &[&str]| {
        let out = Command::new(probe_binary())
            .arg("explain")
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let stdout = run(&["NO_SOCKET", "NOT_A_REASON"]);
    let seen = schemas.validate_lines(&stdout);
    assert_eq!(count(&seen, "probe.explain/1"), 2, "{stdout}");
    let all = run(&["--all"]);
    let seen = schemas.validate_lines(&all);
    assert!(count(&seen, "probe.explain/1") > 10, "{all}");
    let known: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert!(known["cause"].is_object(), "{known}");
    let explain = "probe.explain/1";
    let mut v = known.clone();
    v["cause"].as_object_mut().unwrap().remove("id");
    schemas.assert_fails(explain, "a cause without id", &v);
    let mut v = known.clone();
    v["cause"]["facts"] = serde_json::json!(["guesswork"]);
    schemas.assert_fails(explain, "an unknown fact", &v);
    let mut v = known;
    v.as_object_mut().unwrap().remove("cause");
    schemas.assert_fails(explain, "no cause at all", &v);
}
