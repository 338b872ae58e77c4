//! Journeys of the stories' shapes, converted to spans and back through protobuf.

use std::collections::HashMap;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value::Value},
    trace::v1::{Span, status::StatusCode},
};
use prost::Message as _;

use super::*;
use crate::{
    event::{
        DecidedBy, Direction, DropSighting, Event, EventBody, Family, FibLookup, Hook, IpHeader,
        L4Header, Mechanism, Packet, RuleVerdict, TcSighting, TcpFlags, Transport, Verdict,
    },
    timeline::{Correlator, Limits, diagnose},
};

/// 2026-12-01T00:00:00Z at monotonic time 0.
const CLOCK: Clock = Clock {
    realtime_minus_monotonic_ns: 1_796_083_200_000_000_000,
    utc_offset_s: 0,
};

fn run() -> Run {
    Run::new(b"host 1234 5678", CLOCK)
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
    Packet {
        ethertype: 0x0800,
        len: 60,
        ip: Some(IpHeader {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: Transport::Tcp,
            ip_id: 4242,
            fragment: false,
            l4: Some(L4Header::Tcp {
                sport,
                dport,
                seq: 7,
                tcp_flags: TcpFlags(TcpFlags::SYN),
            }),
        }),
        truncated: false,
    }
}

fn tc(ts: u64, ifindex: u32, direction: Direction, packet: Packet) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Tc(TcSighting {
            ifindex,
            direction,
            netns_cookie: 1,
            mark: 0,
            packet,
            quoted: None,
            frame: None,
        }),
    }
}

fn verdict(hook: Hook, table_chain: (&str, &str), rule: &str, v: Verdict, p: Packet) -> Event {
    Event {
        // The time probe received it: no kernel time.
        ts_ns: 999_999,
        cpu: 0,
        body: EventBody::Rule(Box::new(RuleVerdict {
            trace_id: 1,
            family: Family::Ipv4,
            table: table_chain.0.into(),
            chain: table_chain.1.into(),
            hook: Some(hook),
            decided_by: DecidedBy::Rule,
            rule_handle: Some(10),
            rule: Some(rule.into()),
            verdict: v,
            target: None,
            iif: 2,
            oif: 0,
            mark: 0,
            packet: Some(p),
            headers: None,
        })),
    }
}

fn route(ts: u64, dst: &str, dport: u16, dev: &str) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Fib(FibLookup {
            table: 254,
            table_name: Some("main".into()),
            err: 0,
            error: None,
            src: "0.0.0.0".parse().unwrap(),
            dst: dst.parse().unwrap(),
            gateway: None,
            dev: Some(dev.into()),
            oif: 0,
            iif: 0,
            proto: Transport::Tcp,
            sport: 0,
            dport,
            tos: 0,
            scope: 0,
            flags: 0,
            source: Mechanism::FibTracepoint,
            tried: Vec::new(),
            rule_pref: None,
            netns: 0,
        }),
    }
}

fn topo() -> Topology {
    let mut t = Topology::default();
    for (i, n, k) in [
        (2, "eth0", ""),
        (3, "docker0", "bridge"),
        (4, "veth-web", "veth"),
    ] {
        t.links.insert(i, (n.into(), k.into()));
    }
    t.bridge_subnets
        .push(("172.17.0.0".parse().unwrap(), 16, "docker0".into()));
    t.uplinks.push("eth0".into());
    t.containers.interfaces.insert(4, "web".into());
    t
}

fn one(events: Vec<Event>) -> Journey {
    let mut c = Correlator::new(Limits::default());
    for e in events {
        c.push(e);
    }
    let mut done = c.flush();
    assert_eq!(done.len(), 1, "{done:#?}");
    done.remove(0)
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

/// Through protobuf and back, as a collector receives it.
fn round_trip(spans: Vec<Span>) -> Vec<Span> {
    let origin = Origin {
        host: "lab".into(),
        kernel: "6.18".into(),
        version: "0.1.0".into(),
    };
    let body = encode(&request(&origin, spans));
    let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
    let rs = &req.resource_spans[0];
    let resource = attrs(&rs.resource.as_ref().unwrap().attributes);
    assert_eq!(resource["service.name"], s("probe"));
    assert_eq!(resource["host.name"], s("lab"));
    rs.scope_spans[0].spans.clone()
}

fn dnat_journey() -> Journey {
    let before = tcp("203.0.113.2", 41780, "203.0.113.1", 8080);
    let after = tcp("203.0.113.2", 41780, "172.17.0.2", 80);
    one(vec![
        verdict(
            Hook::Prerouting,
            ("nat", "DOCKER"),
            "tcp dport 8080 dnat to 172.17.0.2:80",
            Verdict::Accept,
            before.clone(),
        ),
        verdict(
            Hook::Forward,
            ("filter", "DOCKER"),
            "ip daddr 172.17.0.2 tcp dport 80 accept",
            Verdict::Accept,
            after.clone(),
        ),
        tc(1_000, 2, Direction::Ingress, before),
        route(3_000, "172.17.0.2", 80, "docker0"),
        tc(10_000, 4, Direction::Egress, after),
    ])
}

#[test]
fn a_dnat_journey_is_a_root_and_one_span_per_timed_hop() {
    let j = dnat_journey();
    let d = diagnose(&j, &topo());
    let spans = round_trip(spans(&j, &topo(), &d, &run()));
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "packet tcp 203.0.113.2:41780 > 203.0.113.1:8080",
            "eth0 ingress",
            "route table main",
            "veth-web (container web) egress",
        ]
    );
    let root = &spans[0];
    assert!(root.parent_span_id.is_empty());
    assert_eq!(root.trace_id, run().trace_id(j.id).to_vec());
    let t0 = CLOCK.realtime_minus_monotonic_ns as u64;
    assert_eq!(
        (root.start_time_unix_nano, root.end_time_unix_nano),
        (t0 + 1_000, t0 + 10_000)
    );
    // Each hop runs to the next timestamped one; the last has no length.
    let times: Vec<(u64, u64)> = spans[1..]
        .iter()
        .map(|s| (s.start_time_unix_nano - t0, s.end_time_unix_nano - t0))
        .collect();
    assert_eq!(times, [(1_000, 3_000), (3_000, 10_000), (10_000, 10_000)]);
    let mut ids: Vec<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    for s in &spans[1..] {
        assert_eq!(s.trace_id, root.trace_id);
        assert_eq!(s.parent_span_id, root.span_id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "span ids are unique");
    assert!(
        spans
            .iter()
            .all(|s| s.span_id.len() == 8 && s.span_id != [0; 8])
    );

    // Untimed verdicts: events of the interval their hook placed them in, at its start.
    let events =
        |i: usize| -> Vec<&str> { spans[i].events.iter().map(|e| e.name.as_str()).collect() };
    assert_eq!(events(1), ["ip nat/DOCKER (prerouting)"]);
    assert_eq!(events(2), ["ip filter/DOCKER (forward)"]);
    assert!(events(0).is_empty() && events(3).is_empty());
    let dnat = &spans[1].events[0];
    assert_eq!(dnat.time_unix_nano, spans[1].start_time_unix_nano);
    let a = attrs(&dnat.attributes);
    assert_eq!(a["probe.untimed"], Value::BoolValue(true));
    assert_eq!(a["probe.verdict"], s("accept"));
    assert_eq!(a["probe.rule"], s("tcp dport 8080 dnat to 172.17.0.2:80"));
    assert_eq!(a["probe.rule.handle"], Value::IntValue(10));

    // The root: the diagnosis, the tuple before and after NAT, the container.
    let a = attrs(&root.attributes);
    assert_eq!(a["probe.outcome"], s("delivered"));
    assert_eq!(a["probe.diagnosis"], s(&d.text));
    assert_eq!(a["source.address"], s("203.0.113.2"));
    assert_eq!(a["destination.port"], Value::IntValue(8080));
    assert_eq!(a["probe.nat"], s("DNAT 203.0.113.1:8080 → 172.17.0.2:80"));
    assert_eq!(
        a["probe.tuple.before_nat"],
        s("tcp 203.0.113.2:41780 > 203.0.113.1:8080")
    );
    assert_eq!(
        a["probe.tuple.after_nat"],
        s("tcp 203.0.113.2:41780 > 172.17.0.2:80")
    );
    assert!(matches!(&a["probe.containers"], Value::ArrayValue(v) if v.values.len() == 1));
    assert_eq!(root.status.as_ref().unwrap().code, StatusCode::Unset as i32);

    // The hop that first saw the rewritten tuple carries the rewrite.
    let a = attrs(&spans[3].attributes);
    assert_eq!(a["probe.nat"], s("DNAT 203.0.113.1:8080 → 172.17.0.2:80"));
    assert_eq!(a["destination.address"], s("172.17.0.2"));
    assert_eq!(a["probe.container"], s("web"));
    assert_eq!(a["network.interface.name"], s("veth-web"));
    assert_eq!(a["probe.direction"], s("egress"));
    let a = attrs(&spans[2].attributes);
    assert_eq!(a["probe.route.dev"], s("docker0"));
    assert_eq!(a["probe.route.table"], s("main"));
    assert!(!a.contains_key("probe.nat"));
}

#[test]
fn a_drop_is_an_error_with_its_reason_rule_and_cause() {
    let p = tcp("172.17.0.2", 5000, "203.0.113.2", 53);
    let j = one(vec![
        tc(1_000, 4, Direction::Ingress, p.clone()),
        Event {
            ts_ns: 5_000,
            cpu: 0,
            body: EventBody::Drop(DropSighting {
                skb: 77,
                reason_code: 12,
                reason: Some("NETFILTER_DROP".into()),
                location: 1,
                location_sym: Some("nft_do_chain+0x46f".into()),
                ifindex: 3,
                netns: 1,
                packet: p.clone(),
            }),
        },
        verdict(
            Hook::Forward,
            ("firewalld", "filter_FORWARD"),
            "ip saddr 172.17.0.0/16 drop",
            Verdict::Drop,
            p,
        ),
    ]);
    let d = diagnose(&j, &topo());
    let cause = d.cause.expect("a drop has a cause").id;
    let spans = round_trip(spans(&j, &topo(), &d, &run()));
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let root = &spans[0];
    let status = root.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, d.text);
    let a = attrs(&root.attributes);
    assert_eq!(a["probe.outcome"], s("dropped"));
    assert_eq!(a["probe.cause.id"], s(cause));
    let drop = &spans[2];
    assert_eq!(drop.name, "drop on docker0");
    assert_eq!(drop.status.as_ref().unwrap().code, StatusCode::Error as i32);
    let a = attrs(&drop.attributes);
    assert_eq!(a["probe.drop.reason"], s("NETFILTER_DROP"));
    assert_eq!(a["probe.drop.location"], s("nft_do_chain+0x46f"));
    assert_eq!(a["probe.cause.id"], s(cause));
    // The rule that dropped: an event of the interval before the drop.
    let rule = &spans[1].events[0];
    assert_eq!(rule.name, "ip firewalld/filter_FORWARD (forward)");
    assert_eq!(attrs(&rule.attributes)["probe.verdict"], s("drop"));
    assert_eq!(
        spans[1].status.as_ref().unwrap().code,
        StatusCode::Unset as i32
    );
}

#[test]
fn trace_ids_are_the_run_then_the_packet() {
    let a = run();
    let b = Run::new(b"host 1234 5679", CLOCK);
    assert_ne!(a.id, b.id);
    assert_eq!(a.id, run().id, "the same seed, the same run");
    let id = a.trace_id(12);
    assert_eq!(id[..8], a.id.to_be_bytes());
    assert_eq!(id[8..], 12u64.to_be_bytes());
    assert_ne!(a.span_id(12, 0), a.span_id(12, 1));
    assert_ne!(a.span_id(12, 1), a.span_id(13, 1));
}

#[test]
fn a_journey_of_verdicts_alone_says_its_times_are_untimed() {
    let p = tcp("10.0.0.1", 5000, "10.0.0.2", 80);
    let j = one(vec![verdict(
        Hook::Forward,
        ("fw", "fwd"),
        "accept",
        Verdict::Accept,
        p,
    )]);
    let spans = spans(&j, &topo(), &diagnose(&j, &topo()), &run());
    assert_eq!(spans.len(), 1);
    assert_eq!(
        attrs(&spans[0].attributes)["probe.untimed"],
        Value::BoolValue(true)
    );
    assert_eq!(spans[0].events.len(), 1);
}

/// The sink hands each timeline it shows to the exporter, after the filter.
#[test]
fn the_sink_exports_the_timelines_it_shows() {
    use std::{cell::RefCell, rc::Rc};
    struct Collect(Rc<RefCell<Vec<Vec<Span>>>>);
    impl SpanExport for Collect {
        fn export(&mut self, spans: Vec<Span>) {
            self.0.borrow_mut().push(spans);
        }
    }
    let got = Rc::new(RefCell::new(Vec::new()));
    let opts = crate::sink::SinkOptions {
        format: crate::render::Format::Json,
        events: false,
        color: false,
        filter: None,
        limit: None,
        netns: None,
        verdicts_join_sightings: true,
        clock: CLOCK,
    };
    let mut out = Vec::new();
    let mut sink = crate::sink::Sink::new(&mut out, opts, topo(), None);
    sink.otlp_to(Box::new(Collect(got.clone())), run());
    let p = tcp("203.0.113.2", 41780, "172.17.0.2", 80);
    sink.push(tc(1_000, 2, Direction::Ingress, p.clone()), None)
        .unwrap();
    sink.push(tc(2_000, 4, Direction::Egress, p), None).unwrap();
    let stats = sink.finish().unwrap();
    assert_eq!(stats.timelines, 1);
    let got = got.borrow();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 3);
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(
        got[0][0].trace_id,
        run().trace_id(line["id"].as_u64().unwrap())
    );
}

#[test]
fn an_icmp_error_and_its_packet_name_each_other() {
    let p = tcp("172.17.0.2", 5000, "203.0.113.2", 53);
    let mut error = tcp("172.17.0.1", 0, "172.17.0.2", 0);
    let ip = error.ip.as_mut().unwrap();
    ip.proto = Transport::Icmp;
    ip.l4 = Some(L4Header::Icmp {
        icmp_type: 3,
        icmp_code: 1,
        icmp_id: 0,
        icmp_seq: 0,
    });
    let mut e = tc(9_000, 4, Direction::Egress, error);
    if let EventBody::Tc(t) = &mut e.body {
        t.quoted = Some(p.clone());
    }
    let mut c = Correlator::new(Limits::default());
    c.push(tc(1_000, 4, Direction::Ingress, p));
    c.push(e);
    let done = c.flush();
    assert_eq!(done.len(), 2, "{done:#?}");
    let root = |j: &Journey| {
        let spans = round_trip(spans(j, &topo(), &diagnose(j, &topo()), &run()));
        attrs(&spans[0].attributes)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<HashMap<String, Value>>()
    };
    let packet = root(&done[0]);
    let Value::ArrayValue(errors) = &packet["probe.icmp_errors"] else {
        panic!("{packet:?}")
    };
    assert_eq!(
        errors.values[0].value,
        Some(s(&format!(
            "ICMP host unreachable to 172.17.0.2 (packet {})",
            done[1].id
        )))
    );
    assert_eq!(
        root(&done[1])["probe.answers"],
        Value::IntValue(done[0].id as i64)
    );
}
