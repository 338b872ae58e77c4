//! `probe trace --otlp`: timelines of real traffic on the story lab arrive at an OTLP/HTTP
//! receiver as traces, decoded with the official OpenTelemetry protobuf messages
//! (opentelemetry-proto, prost): the DNAT'd connection's first packet and the firewall's drop,
//! span by span, against the timelines probe printed in the same run. And a collector that
//! never answers neither stalls tracing nor goes unreported.
//!
//! The receiver listens on the root namespace's loopback (127.0.0.1, an ephemeral port):
//! probe's exporter starts before probe enters the lab namespace, so it reaches the host's
//! collector as it would in production.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value::Value},
    trace::v1::{Span, status::StatusCode},
};
use probe_lab::{
    HostLab, Netns, ProbeRun,
    probe::{json_lines, json_summary},
    require_root,
    traffic::{serve_tcp_once, tcp_exchange, udp_listen, udp_send},
};
use prost::Message as _;
use serde_json::Value as Json;

/// An OTLP/HTTP receiver: every request's path, content type and decoded spans.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<(String, String, ExportTraceServiceRequest)>>>,
    listener: Arc<TcpListener>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (l, got) = (listener.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while let Ok((conn, _)) = l.accept() {
                match answer(conn) {
                    Ok(Some(r)) => got.lock().unwrap().push(r),
                    Ok(None) => break,
                    Err(e) => panic!("bad OTLP request: {e}"),
                }
            }
        });
        Receiver {
            url,
            requests,
            listener,
            thread: Some(thread),
        }
    }

    /// Every span received, by trace (its root's `probe.packet.id`).
    fn traces(&self) -> HashMap<u64, Vec<Span>> {
        let mut by_trace: HashMap<Vec<u8>, Vec<Span>> = HashMap::new();
        for (path, content_type, req) in self.requests.lock().unwrap().iter() {
            assert_eq!(path, "/v1/traces");
            assert_eq!(content_type, "application/x-protobuf");
            for rs in &req.resource_spans {
                let resource = attrs(&rs.resource.as_ref().unwrap().attributes);
                assert_eq!(resource["service.name"], s("probe"));
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        by_trace
                            .entry(span.trace_id.clone())
                            .or_default()
                            .push(span.clone());
                    }
                }
            }
        }
        by_trace
            .into_values()
            .map(|spans| {
                let root = spans
                    .iter()
                    .find(|s| s.parent_span_id.is_empty())
                    .expect("every trace has a root");
                let Value::IntValue(id) = attrs(&root.attributes)["probe.packet.id"] else {
                    panic!("no packet id")
                };
                (id as u64, spans)
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // A connection with nothing in it ends the accept loop.
        let _ = TcpStream::connect(self.listener.local_addr().unwrap());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP request, answers 200 with an empty ExportTraceServiceResponse. None for a
/// connection that sent nothing (the receiver's own wake-up).
fn answer(conn: TcpStream) -> anyhow::Result<Option<(String, String, ExportTraceServiceRequest)>> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    anyhow::ensure!(parts.next() == Some("POST"), "not a POST: {line}");
    let path = parts.next().unwrap_or_default().to_owned();
    let (mut length, mut content_type) = (0usize, String::new());
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse()?,
            "content-type" => content_type = v.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    let req = ExportTraceServiceRequest::decode(body.as_slice())?;
    r.get_mut().write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\
          Connection: close\r\n\r\n",
    )?;
    Ok(Some((path, content_type, req)))
}

fn attrs(kv: &[KeyValue]) -> HashMap<&str, Value> {
    kv.iter()
        .map(|kv| {
            let v = kv.value.as_ref().and_then(|v| v.value.clone()).unwrap();
            (kv.key.as_str(), v)
        })
        .collect()
}

fn s(v: &str) -> Value {
    Value::StringValue(v.to_owned())
}

fn text<'a>(a: &'a HashMap<&str, Value>, key: &str) -> &'a str {
    match a.get(key) {
        Some(Value::StringValue(v)) => v,
        other => panic!("{key}: {other:?} in {a:#?}"),
    }
}

fn lab() -> HostLab {
    HostLab::new(&Netns::unique_prefix()).unwrap()
}

/// Asserts that a summary line (with its `otlp` counts) is what docs/schema publishes.
fn assert_published_summary(line: &Json) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/schema/probe.summary.json"
    );
    let schema: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(line).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}: {line:#}");
    assert!(line["otlp"].is_object(), "{line:#}");
}

/// Runs probe with `--json --otlp` around `traffic`: the timelines and the summary line.
fn trace(lab: &HostLab, url: &str, extra: &[&str], traffic: impl FnOnce()) -> (Vec<Json>, Json) {
    let mut args = vec![
        "trace",
        "--netns",
        lab.host().name(),
        "--json",
        "--otlp",
        url,
    ];
    args.extend_from_slice(extra);
    let run = ProbeRun::start(&args).unwrap();
    traffic();
    let (stdout, _) = run.stop().unwrap();
    let summary = json_summary(&stdout).unwrap();
    assert_published_summary(&summary);
    (json_lines(&stdout).unwrap(), summary)
}

/// The spans of timeline `j`, checked against it: a root named after the packet, one child
/// per timestamped hop named by its place, in order, each running to the next hop, with the
/// gaps the timeline printed. Returns (root, hop spans in order).
fn check_shape<'a>(j: &Json, spans: &'a [Span]) -> (&'a Span, Vec<&'a Span>) {
    let root = spans.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    let first = j["first"].clone();
    let timed: Vec<&Json> = j["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["untimed"] != true)
        .collect();
    assert_eq!(spans.len(), timed.len() + 1, "{j:#}\n{spans:#?}");
    let mut hops: Vec<&Span> = spans
        .iter()
        .filter(|s| !s.parent_span_id.is_empty())
        .collect();
    for h in &hops {
        assert_eq!(
            h.parent_span_id, root.span_id,
            "every hop is the root's child"
        );
        assert_eq!(h.trace_id, root.trace_id);
        assert_eq!(h.span_id.len(), 8);
    }
    hops.sort_by_key(|s| s.start_time_unix_nano);
    let names: Vec<&str> = hops.iter().map(|s| s.name.as_str()).collect();
    let places: Vec<&str> = timed.iter().map(|h| h["where"].as_str().unwrap()).collect();
    assert_eq!(names, places);
    assert_eq!(root.start_time_unix_nano, hops[0].start_time_unix_nano);
    assert_eq!(
        root.end_time_unix_nano,
        hops.last().unwrap().start_time_unix_nano
    );
    for (k, (span, hop)) in hops.iter().zip(&timed).enumerate() {
        let t = span.start_time_unix_nano - root.start_time_unix_nano;
        assert_eq!(t, hop["t_ns"].as_u64().unwrap(), "{hop:#}");
        let end = hops
            .get(k + 1)
            .map_or(span.start_time_unix_nano, |n| n.start_time_unix_nano);
        assert_eq!(span.end_time_unix_nano, end, "a hop runs to the next one");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
    // The trace id is the run's, then the packet's number.
    assert_eq!(root.trace_id.len(), 16);
    assert_eq!(
        root.trace_id[8..],
        j["id"].as_u64().unwrap().to_be_bytes(),
        "{first}"
    );
    let a = attrs(&root.attributes);
    assert_eq!(a["probe.diagnosis"], s(j["diagnosis"].as_str().unwrap()));
    assert_eq!(a["probe.outcome"], s(j["outcome"].as_str().unwrap()));
    (root, hops)
}

/// Story 2 as a trace: the SYN to the published port, DNAT'd to the container.
#[test]
fn a_dnat_packet_arrives_as_a_span_per_hop_with_the_rewrite() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let receiver = Receiver::start();
    let web = lab.web().addr;
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let mut client_port = 0;
    let (journeys, summary) = trace(
        &lab,
        &receiver.url,
        &["--iface", "eth0,veth-web", "--rules"],
        || {
            client_port = tcp_exchange(
                &lab.outside,
                HostLab::HOST_ADDR,
                HostLab::PUBLISHED_PORT,
                Duration::from_secs(5),
            )
            .unwrap();
        },
    );
    // Every timeline printed was exported.
    let otlp = &summary["otlp"];
    assert_eq!(otlp["timelines"], summary["timelines"], "{summary:#}");
    assert_eq!(otlp["exported"], summary["timelines"], "{summary:#}");
    assert_eq!(otlp["queue_full"], 0);
    let traces = receiver.traces();
    assert_eq!(traces.len() as u64, summary["timelines"].as_u64().unwrap());

    let syn = journeys
        .iter()
        .find(|j| {
            j["first"]["dport"] == HostLab::PUBLISHED_PORT
                && j["first"]["sport"] == client_port
                && j["hops"].as_array().unwrap().iter().any(|h| {
                    h["event"]["kind"] == "tc" && h["event"]["packet"]["ip"]["tcp_flags"] == "S"
                })
        })
        .unwrap_or_else(|| panic!("no SYN timeline in {journeys:#?}"));
    assert_eq!(syn["outcome"], "delivered");
    let spans = &traces[&syn["id"].as_u64().unwrap()];
    let (root, hops) = check_shape(syn, spans);
    assert_eq!(root.status.as_ref().unwrap().code, StatusCode::Unset as i32);
    let a = attrs(&root.attributes);
    let before = format!(
        "tcp {}:{client_port} > {}:{}",
        HostLab::OUTSIDE_ADDR,
        HostLab::HOST_ADDR,
        HostLab::PUBLISHED_PORT
    );
    let after = format!(
        "tcp {}:{client_port} > {web}:{}",
        HostLab::OUTSIDE_ADDR,
        HostLab::WEB_PORT
    );
    assert_eq!(text(&a, "probe.tuple.before_nat"), before);
    assert_eq!(text(&a, "probe.tuple.after_nat"), after);
    assert_eq!(
        text(&a, "probe.nat"),
        "DNAT 203.0.113.1:8080 → 172.17.0.2:80"
    );
    assert_eq!(a["destination.port"], Value::IntValue(8080));

    // First seen on the uplink before the rewrite, last on the container's veth after it.
    // (A routing lookup joined by destination and time may come before it.)
    let uplink = hops
        .iter()
        .find(|h| h.name == "eth0 ingress")
        .unwrap_or_else(|| panic!("not seen on the uplink: {hops:#?}"));
    let first = attrs(&uplink.attributes);
    assert_eq!(text(&first, "probe.tuple"), before);
    assert!(!first.contains_key("probe.nat"), "{first:#?}");
    let last = hops.last().unwrap();
    assert_eq!(last.name, "veth-web egress");
    let la = attrs(&last.attributes);
    assert_eq!(text(&la, "probe.tuple"), after);
    assert_eq!(text(&la, "destination.address"), web.to_string());
    assert_eq!(text(&la, "probe.tuple.before_nat"), before);
    assert_eq!(text(&la, "network.interface.name"), "veth-web");

    // The DNAT rule (no kernel time) is an event of the hop interval it happened in.
    let (span, dnat) = hops
        .iter()
        .find_map(|h| {
            h.events
                .iter()
                .find(|e| e.name == "ip nat/DOCKER (prerouting)")
                .map(|e| (h, e))
        })
        .unwrap_or_else(|| panic!("no DNAT rule event in {hops:#?}"));
    assert_eq!(dnat.time_unix_nano, span.start_time_unix_nano);
    let ea = attrs(&dnat.attributes);
    assert_eq!(ea["probe.untimed"], Value::BoolValue(true));
    assert!(
        text(&ea, "probe.rule").contains("dnat to 172.17.0.2:80"),
        "{ea:#?}"
    );
    assert_eq!(text(&ea, "probe.verdict"), "accept");
}

/// Story 3 as a trace: firewalld's FORWARD chain drops the container's datagram.
#[test]
fn a_dropped_packet_arrives_as_an_error_with_its_reason_rule_and_cause() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    lab.firewalld_forward_drop().unwrap();
    let receiver = Receiver::start();
    let mut sport = 0;
    let recording = probe_lab::TempFile::new("otlp-drop.probe");
    let extra = ["--rules", "--no-routes", "--record", recording.path()];
    let (journeys, summary) = trace(&lab, &receiver.url, &extra, || {
        sport = udp_send(&lab.web().ns, HostLab::OUTSIDE_ADDR, 53).unwrap();
    });
    assert_eq!(
        summary["otlp"]["exported"], summary["timelines"],
        "{summary:#}"
    );
    let dropped = journeys
        .iter()
        .find(|j| j["first"]["sport"] == sport && j["first"]["dport"] == 53)
        .unwrap_or_else(|| panic!("no timeline in {journeys:#?}"));
    assert_eq!(dropped["outcome"], "dropped");
    let traces = receiver.traces();
    let spans = &traces[&dropped["id"].as_u64().unwrap()];
    let (root, hops) = check_shape(dropped, spans);
    let status = root.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, dropped["diagnosis"].as_str().unwrap());
    let a = attrs(&root.attributes);
    let cause = dropped["cause"]["id"].as_str().unwrap();
    assert_eq!(text(&a, "probe.cause.id"), cause);
    assert_eq!(text(&a, "source.address"), lab.web().addr.to_string());
    assert_eq!(a["source.port"], Value::IntValue(i64::from(sport)));

    assert_eq!(hops[0].name, "veth-web ingress");
    let drop = hops.last().unwrap();
    assert!(drop.name.starts_with("drop "), "{drop:#?}");
    assert_eq!(drop.status.as_ref().unwrap().code, StatusCode::Error as i32);
    let da = attrs(&drop.attributes);
    assert_eq!(text(&da, "probe.drop.reason"), "NETFILTER_DROP");
    assert_eq!(text(&da, "probe.cause.id"), cause);
    assert_eq!(text(&da, "probe.kind"), "drop");
    // The rule that dropped it: an event before the drop, named by table and chain.
    let rule = hops
        .iter()
        .flat_map(|h| &h.events)
        .find(|e| e.name == "inet firewalld/filter_FORWARD (forward)")
        .unwrap_or_else(|| panic!("no rule event in {hops:#?}"));
    let ra = attrs(&rule.attributes);
    assert_eq!(text(&ra, "probe.verdict"), "drop");
    assert!(text(&ra, "probe.rule").ends_with("drop"), "{ra:#?}");

    // The recording, replayed without root or kernel, exports the same trace.
    let replayed = Receiver::start();
    let out = std::process::Command::new(probe_lab::probe_binary())
        .args(["replay", recording.path(), "--otlp", &replayed.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = replayed.traces();
    let names = |spans: &[Span]| {
        let mut n: Vec<String> = spans.iter().map(|s| s.name.clone()).collect();
        n.sort();
        n
    };
    let same = &again[&dropped["id"].as_u64().unwrap()];
    assert_eq!(names(same), names(spans));
    let replayed_root = same.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    assert_eq!(replayed_root.status, root.status);
    assert_eq!(
        replayed_root.start_time_unix_nano, root.start_time_unix_nano,
        "the recording keeps the kernel's times"
    );
}

/// A collector that accepts connections and never answers: every timeline is still printed,
/// probe stops promptly, and what could not be exported is counted and said.
#[test]
fn a_collector_that_never_answers_stalls_nothing_and_is_reported() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    // Accepts, then holds every connection open without reading or answering.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", silent.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = {
        let held = held.clone();
        let silent = silent.try_clone().unwrap();
        std::thread::spawn(move || {
            while let Ok((c, _)) = silent.accept() {
                let mut held = held.lock().unwrap();
                if held.len() >= 8 {
                    break;
                }
                held.push(c);
            }
        })
    };
    let outside = HostLab::OUTSIDE_ADDR;
    let _receiver = udp_listen(&lab.outside, outside, 53).unwrap();
    const DATAGRAMS: usize = 30;
    let mut sports = Vec::new();
    let run = ProbeRun::start(&[
        "trace",
        "--netns",
        lab.host().name(),
        "--json",
        "--iface",
        "veth-web,eth0",
        "--no-routes",
        "--otlp",
        &url,
        "--otlp-queue",
        "2",
    ])
    .unwrap();
    // One timeline first, and the rest once the exporter is stuck posting it (the collector
    // holds the connection): they can only queue, and a queue of 2 overflows.
    sports.push(udp_send(&lab.web().ns, outside, 53).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the exporter never connected");
        std::thread::yield_now();
    }
    for _ in 1..DATAGRAMS {
        sports.push(udp_send(&lab.web().ns, outside, 53).unwrap());
    }
    let stopped = Instant::now();
    let (stdout, stderr) = run.stop().unwrap();
    let took = stopped.elapsed();
    // The exporter waits a bounded time for the collector at exit.
    assert!(
        took < Duration::from_secs(20),
        "probe took {took:?} to stop"
    );
    let journeys = json_lines(&stdout).unwrap();
    let ours = journeys
        .iter()
        .filter(|j| {
            j["first"]["dport"] == 53
                && sports.iter().any(|p| j["first"]["sport"] == *p)
                && j["outcome"] == "left"
        })
        .count();
    assert_eq!(
        ours, DATAGRAMS,
        "every datagram's timeline is printed: {journeys:#?}"
    );
    let summary = json_summary(&stdout).unwrap();
    assert_published_summary(&summary);
    let otlp = &summary["otlp"];
    assert_eq!(otlp["exported"], 0, "{summary:#}");
    assert_eq!(otlp["timelines"], summary["timelines"], "{summary:#}");
    let queue_full = otlp["queue_full"].as_u64().unwrap();
    let failed = otlp["failed"].as_u64().unwrap();
    let unsent = otlp["unsent"].as_u64().unwrap();
    assert!(queue_full > 0, "a queue of 2 overflows: {summary:#}");
    assert_eq!(
        queue_full + failed + unsent,
        otlp["timelines"].as_u64().unwrap(),
        "every timeline accounted for: {summary:#}"
    );
    let said = stderr
        .lines()
        .find(|l| l.contains("timelines from"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    assert!(said.contains("LEFT OUT: the queue was full"), "{said}");
    assert!(
        said.contains(&format!("0 of {} timelines exported", otlp["timelines"])),
        "{said}"
    );
    drop(silent);
    let _ = TcpStream::connect(
        url.trim_start_matches("http://")
            .trim_end_matches("/v1/traces"),
    );
    held.lock().unwrap().clear();
    let _ = holder;
}

/// Nothing listening: the refusal is said, the trace goes on.
#[test]
fn an_unreachable_collector_is_reported() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    // A port that was free a moment ago: nobody listens there now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let outside = HostLab::OUTSIDE_ADDR;
    let _receiver = udp_listen(&lab.outside, outside, 53).unwrap();
    let mut sport = 0;
    let (journeys, summary) = trace(&lab, &url, &["--iface", "veth-web", "--no-routes"], || {
        sport = udp_send(&lab.web().ns, outside, 53).unwrap();
    });
    assert!(journeys.iter().any(|j| j["first"]["sport"] == sport));
    let otlp = &summary["otlp"];
    assert_eq!(otlp["exported"], 0, "{summary:#}");
    assert_eq!(otlp["failed"], summary["timelines"], "{summary:#}");
    assert!(
        otlp["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect to 127.0.0.1") && e.contains("refused")),
        "{summary:#}"
    );
}

/// A URL probe cannot send to is refused before anything is loaded, in one line.
#[test]
fn a_url_that_is_not_plain_http_is_refused_in_one_line() {
    for (url, said) in [
        ("https://collector:4318", "plain http://"),
        ("http://:4318", "no host in the URL"),
        ("http://collector:43x8", "is not a port number"),
    ] {
        let out = std::process::Command::new(probe_lab::probe_binary())
            .args(["trace", "--otlp", url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("probe: error: --otlp {url}")) && stderr.contains(said),
            "{stderr}"
        );
    }
}
