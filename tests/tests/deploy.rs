//! The deployment files: deploy/kubernetes/daemonset.yaml checked against the Kubernetes JSON
//! schemas (kubernetes-validate, strict) and for what probe needs (host network and
//! processes, the capabilities, /sys/kernel, the metrics port and its scrape annotation); the
//! DaemonSet's capabilities tried on this kernel with the host's binary (without SYS_ADMIN, to
//! show what the others alone allow); and deploy/docker-compose.yaml checked with
//! `docker-compose config`, then run with the image `cargo xtask test` builds.

use std::{path::PathBuf, process::Command};

use probe_lab::{Netns, ProbeRun, probe::json_lines, probe_binary, require_root};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest() -> PathBuf {
    repo().join("deploy/kubernetes/daemonset.yaml")
}

fn compose_file() -> PathBuf {
    repo().join("deploy/docker-compose.yaml")
}

/// kubernetes-validate: `$PROBE_K8S_VALIDATE` (set by `cargo xtask test`), else where
/// `cargo xtask setup` installs it.
fn validator() -> PathBuf {
    let path = std::env::var_os("PROBE_K8S_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/probe/venv/bin/kubernetes-validate")
        });
    assert!(
        path.is_file(),
        "{} is missing: `cargo xtask setup` installs kubernetes-validate (PyPI) there",
        path.display()
    );
    path
}

/// The manifest's documents as JSON, read by the validator's own YAML parser (PyYAML, in the
/// same virtualenv).
fn documents() -> Vec<Value> {
    let python = validator().with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(manifest())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn validate(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "--no-warn"])
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_daemonset_matches_the_kubernetes_schema_and_what_probe_needs() {
    let (ok, said) = validate(&manifest());
    assert!(ok, "{said}");
    assert!(
        said.contains("passed for resource daemonset/probe"),
        "{said}"
    );
    // The validator does reject: the same manifest with a field of the wrong type and one
    // that does not exist.
    let broken = probe_lab::TempFile::new("daemonset-broken.yaml");
    let text = std::fs::read_to_string(manifest()).unwrap();
    std::fs::write(
        &broken.0,
        text.replace(
            "hostPID: true",
            "hostPID: \"yes\"\n      hostProcesses: true",
        ),
    )
    .unwrap();
    let (ok, said) = validate(&broken.0);
    assert!(!ok, "a broken manifest passed: {said}");

    let docs = documents();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9464");
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["hostPID"], true);
    let c = &spec["containers"][0];
    assert_eq!(
        c["args"],
        serde_json::json!(["watch", "--metrics", "0.0.0.0:9464"])
    );
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false, "capabilities, not full privilege");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let caps = daemonset_caps();
    for needed in ["BPF", "PERFMON", "NET_ADMIN"] {
        assert!(caps.iter().any(|c| c == needed), "{needed} in {caps:?}");
    }
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/sys/kernel"), "{mounts:?}");
    assert!(mounts.contains(&"/run/probe"), "{mounts:?}");
    let host_paths: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["hostPath"]["path"].as_str().unwrap())
        .collect();
    assert!(host_paths.contains(&"/sys/kernel"), "{host_paths:?}");
}

/// The capabilities the DaemonSet adds.
fn daemonset_caps() -> Vec<String> {
    let docs = documents();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

/// Runs the host's probe with exactly `caps` (bounding, inheritable and ambient sets).
fn with_caps(caps: &[&str]) -> Command {
    let set = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set",
        &set,
        "--inh-caps",
        &set,
        "--ambient-caps",
        &set,
    ])
    .arg(probe_binary());
    cmd
}

fn doctor(mut cmd: Command) -> Value {
    let out = cmd.args(["doctor", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The DaemonSet's capabilities other than SYS_ADMIN (kept there for namespaces, tracefs and
/// older runtimes) are enough for `probe doctor` to find what root finds, and for a trace of
/// drops and routing lookups; without NET_ADMIN probe refuses.
#[test]
fn the_daemonsets_capabilities_suffice_on_this_kernel() {
    require_root();
    let caps = daemonset_caps();
    let without_sys_admin: Vec<&str> = caps
        .iter()
        .map(String::as_str)
        .filter(|c| *c != "SYS_ADMIN")
        .collect();
    let as_root = doctor(Command::new(probe_binary()));
    let with = doctor(with_caps(&without_sys_admin));
    assert_eq!(with["points"], as_root["points"], "{with:#}");
    assert_eq!(with["can_trace"], true, "{with:#}");
    let fewer: Vec<&str> = without_sys_admin
        .iter()
        .copied()
        .filter(|c| *c != "NET_ADMIN")
        .collect();
    let out = with_caps(&fewer)
        .args(["trace", "--no-tc", "--count", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CAP_NET_ADMIN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A real drop in a namespace of this test, traced from the root namespace (--all-netns).
    let ns = Netns::new("caps").unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let filter = format!("udp and dst port {port}");
    let mut cmd = with_caps(&without_sys_admin);
    cmd.args([
        "trace",
        "--no-tc",
        "--all-netns",
        "--json",
        "--count",
        "1",
        "-f",
        &filter,
    ]);
    let run = ProbeRun::start_command(cmd).unwrap();
    ns.run(move || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"nobody listens", ("127.0.0.1", port)).unwrap();
    })
    .unwrap();
    let (stdout, _) = run.finish().unwrap();
    let timelines = json_lines(&stdout).unwrap();
    assert_eq!(timelines.len(), 1, "{stdout}");
    assert_eq!(timelines[0]["outcome"], "dropped", "{stdout}");
    assert_eq!(timelines[0]["first"]["dport"], port);
}

#[test]
fn the_compose_file_is_valid_and_runs_probe_with_its_capabilities() {
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(compose_file())
        .args(["config", "--quiet"])
        .output()
        .expect("docker-compose (`cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Ok(image) = std::env::var("PROBE_IMAGE") else {
        eprintln!(
            "SKIPPED running the compose service (tests/tests/deploy.rs): PROBE_IMAGE is not \
             set (`cargo xtask test` builds the image where Docker runs)"
        );
        return;
    };
    require_root();
    let project = format!("probe-deploy-test-{}", std::process::id());
    let compose = |args: &[&str]| {
        Command::new("docker-compose")
            .arg("-f")
            .arg(compose_file())
            .args(["-p", &project])
            .args(args)
            .env("PROBE_IMAGE", &image)
            .output()
            .unwrap()
    };
    struct Down<'a>(&'a dyn Fn(&[&str]) -> std::process::Output);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["down", "--remove-orphans"]);
        }
    }
    let _down = Down(&compose);
    let out = compose(&["run", "--rm", "-T", "probe", "doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let host = doctor(Command::new(probe_binary()));
    assert_eq!(report["can_trace"], true, "{report:#}");
    assert_eq!(report["kernel"], host["kernel"]);
    assert_eq!(report["points"], host["points"], "{report:#}");
}
