//! Hop timelines from live traffic on the story lab: one journey per packet, request and reply
//! linked across NAT, rewrites shown, a diagnosis that names what happened.

use std::time::Duration;

use probe_lab::{
    HostLab, Netns, ProbeRun,
    probe::json_lines,
    require_root,
    traffic::{serve_tcp_once, tcp_exchange, udp_send},
};
use serde_json::Value;

fn lab() -> HostLab {
    HostLab::new(&Netns::unique_prefix()).unwrap()
}

fn timelines(lab: &HostLab, extra: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    timelines_and_summary(lab, extra, traffic).0
}

/// The timelines and probe's exit summary line.
fn timelines_and_summary(
    lab: &HostLab,
    extra: &[&str],
    traffic: impl FnOnce(),
) -> (Vec<Value>, String) {
    let mut args = vec!["trace", "--netns", lab.host().name(), "--json"];
    args.extend_from_slice(extra);
    let run = ProbeRun::start(&args).unwrap();
    traffic();
    let (stdout, stderr) = run.stop().unwrap();
    let summary = stderr
        .lines()
        .find(|l| l.contains("timelines from"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"))
        .to_owned();
    let lines = json_lines(&stdout).unwrap();
    assert!(lines.iter().all(|l| l["schema"] == "probe.timeline/1"));
    (lines, summary)
}

#[test]
fn dnat_connection_is_one_flow_with_the_rewrite_and_the_reply_linked() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let web = lab.web().addr;
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let mut client_port = 0;
    let journeys = timelines(&lab, &["--iface", "eth0,veth-web", "--rules"], || {
        client_port = tcp_exchange(
            &lab.outside,
            HostLab::HOST_ADDR,
            HostLab::PUBLISHED_PORT,
            Duration::from_secs(5),
        )
        .unwrap();
    });
    let has_flags =
        |j: &Value, flags: &str| {
            j["hops"].as_array().unwrap().iter().any(|h| {
                h["event"]["kind"] == "tc" && h["event"]["packet"]["ip"]["tcp_flags"] == flags
            })
        };
    let syn = journeys
        .iter()
        .find(|j| {
            j["first"]["dport"] == HostLab::PUBLISHED_PORT
                && j["first"]["sport"] == client_port
                && has_flags(j, "S")
        })
        .unwrap_or_else(|| panic!("no SYN timeline in {journeys:#?}"));
    assert_eq!(syn["outcome"], "delivered", "{syn:#}");
    assert_eq!(
        syn["rewrites"][0]["before"]["dst"],
        HostLab::HOST_ADDR.to_string()
    );
    assert_eq!(syn["rewrites"][0]["after"]["dst"], web.to_string());
    assert_eq!(syn["rewrites"][0]["after"]["dport"], HostLab::WEB_PORT);
    let diagnosis = syn["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.contains("DNAT 203.0.113.1:8080 → 172.17.0.2:80"),
        "{diagnosis}"
    );
    // The DNAT rule is part of the journey.
    assert!(
        syn["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["event"]["kind"] == "rule"
                && h["event"]["chain"] == "DOCKER"
                && h["event"]["table"] == "nat")
    );
    // Hops are in time order with their gaps.
    let hops = syn["hops"].as_array().unwrap();
    let mut last = 0;
    for h in hops {
        let t = h["t_ns"].as_u64().unwrap();
        assert!(t >= last);
        last = t;
    }

    let syn_ack = journeys
        .iter()
        .find(|j| {
            j["first"]["sport"] == HostLab::WEB_PORT
                && j["first"]["dport"] == client_port
                && has_flags(j, "S.")
        })
        .unwrap_or_else(|| panic!("no SYN-ACK timeline in {journeys:#?}"));
    assert_eq!(
        syn_ack["flow"], syn["flow"],
        "reply linked to its request: {syn:#} {syn_ack:#}"
    );
    assert_eq!(syn_ack["outcome"], "left");
    assert_eq!(
        syn_ack["rewrites"][0]["after"]["src"],
        HostLab::HOST_ADDR.to_string(),
        "un-NATed on the way out"
    );
}

#[test]
fn dropped_packet_ends_with_the_rule_and_the_reason() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    lab.firewalld_forward_drop().unwrap();
    let mut sport = 0;
    let (journeys, summary) = timelines_and_summary(&lab, &["--rules", "--no-routes"], || {
        sport = udp_send(&lab.web().ns, HostLab::OUTSIDE_ADDR, 53).unwrap();
    });
    // The exit summary counts the drop by reason and the function that dropped it.
    assert!(
        summary.contains("1 dropped (1 NETFILTER_DROP in n"),
        "{summary}"
    );
    let dropped = journeys
        .iter()
        .find(|j| j["first"]["sport"] == sport && j["first"]["dport"] == 53)
        .unwrap_or_else(|| panic!("no timeline in {journeys:#?}"));
    assert_eq!(dropped["outcome"], "dropped");
    let d = dropped["diagnosis"].as_str().unwrap();
    assert!(d.contains("inet firewalld/filter_FORWARD (forward)"), "{d}");
    assert!(d.ends_with("(reason NETFILTER_DROP)"), "{d}");
    let first = &dropped["hops"][0];
    assert_eq!(
        first["event"]["kind"], "tc",
        "first seen entering the host: {first}"
    );
    assert_eq!(
        first["event"]["ifname"].as_str().or(Some("veth-web")),
        Some("veth-web")
    );
}

#[test]
fn vpn_misroute_is_diagnosed() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let web = lab.web().addr;
    lab.vpn_up().unwrap();
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let journeys = timelines(&lab, &["--no-drops"], || {
        let r = tcp_exchange(
            lab.host(),
            web,
            HostLab::WEB_PORT,
            Duration::from_millis(500),
        );
        assert!(r.is_err());
    });
    let misrouted = journeys
        .iter()
        .find(|j| j["first"]["dst"] == web.to_string() && j["first"]["dport"] == HostLab::WEB_PORT)
        .unwrap_or_else(|| panic!("no timeline in {journeys:#?}"));
    let d = misrouted["diagnosis"].as_str().unwrap();
    assert!(d.starts_with("routed to tun0 by table 51820"), "{d}");
    assert!(d.contains("shadows"), "{d}");
    assert!(
        misrouted["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["inferred"] == true)
    );
}
