//! The four container-host stories of the design, end to end on the namespace lab: each sets up
//! the incident, runs probe, and checks what probe reports; each also checks the healthy
//! variant. (With real Docker the same stories run in tests/tests/docker.rs when an engine is
//! present.)

use std::time::Duration;

use probe_lab::{
    HostLab, Netns, ProbeRun,
    probe::json_lines,
    require_root,
    traffic::{serve_tcp_once, tcp_exchange, udp_listen, udp_send},
};
use serde_json::Value;

fn lab() -> HostLab {
    HostLab::new(&Netns::unique_prefix()).unwrap()
}

fn trace(lab: &HostLab, extra: &[&str]) -> ProbeRun {
    let mut args = vec!["trace", "--netns", lab.host().name(), "--json", "--events"];
    args.extend_from_slice(extra);
    ProbeRun::start(&args).unwrap()
}

fn tc<'a>(events: &'a [Value], ifname: &str, dir: &str, dst: &str, dport: u16) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["kind"] == "tc"
                && e["ifname"] == ifname
                && e["direction"] == dir
                && e["packet"]["ip"]["dst"] == dst
                && e["packet"]["ip"]["dport"] == dport
        })
        .collect()
}

/// Story 1: a VPN's rule and table shadow the container subnet; the host's connection to a
/// container leaves through the tunnel. With the VPN down, it is delivered through docker0.
#[test]
fn vpn_shadows_the_container_subnet() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let web = lab.web().addr;
    lab.vpn_up().unwrap();
    let run = trace(&lab, &["--iface", "tun0,docker0,veth-web", "--no-drops"]);
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let failed = tcp_exchange(
        lab.host(),
        web,
        HostLab::WEB_PORT,
        Duration::from_millis(500),
    );
    assert!(
        failed.is_err(),
        "the VPN should have swallowed the connection"
    );
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let web_s = web.to_string();
    let routed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "fib" && e["dst"] == web_s.as_str() && e["err"] == 0)
        .collect();
    assert!(
        routed
            .iter()
            .any(|e| e["table"] == HostLab::VPN_TABLE && e["dev"] == HostLab::VPN_IF),
        "no route through the VPN for {web} in {routed:#?}"
    );
    assert!(
        routed.iter().all(|e| e["dev"] != "docker0"),
        "docker0 never chosen while the VPN is up: {routed:#?}"
    );
    // (Other tests' labs use the same addresses: the lock above keeps their lookups out.)
    assert!(
        tc(&events, "veth-web", "egress", &web_s, HostLab::WEB_PORT).is_empty(),
        "nothing reaches the container"
    );

    // Healthy: the VPN's rule gone, the same connection is routed to docker0 and delivered.
    lab.vpn_down().unwrap();
    let run = trace(&lab, &["--iface", "docker0,veth-web", "--no-drops"]);
    tcp_exchange(lab.host(), web, HostLab::WEB_PORT, Duration::from_secs(5))
        .expect("delivered without the VPN");
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    assert!(events.iter().any(|e| e["kind"] == "fib"
        && e["dst"] == web_s.as_str()
        && e["table_name"] == "main"
        && e["dev"] == "docker0"));
    assert!(!tc(&events, "veth-web", "egress", &web_s, HostLab::WEB_PORT).is_empty());
}

/// Story 2: `docker run -p 8080:80`: a client outside connects to host:8080; DNAT at
/// PREROUTING (Docker's DOCKER chain) sends it to web:80; replies are un-NATed.
#[test]
fn published_port_is_dnatted_to_the_container_and_back() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let web = lab.web().addr;
    let run = trace(
        &lab,
        &["--iface", "eth0,docker0,veth-web", "--rules", "--no-drops"],
    );
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    let client_port = tcp_exchange(
        &lab.outside,
        HostLab::HOST_ADDR,
        HostLab::PUBLISHED_PORT,
        Duration::from_secs(5),
    )
    .expect("published port reachable");
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let host = HostLab::HOST_ADDR.to_string();
    let web_s = web.to_string();
    let outside = HostLab::OUTSIDE_ADDR.to_string();

    // Before the rewrite: on the uplink, to host:8080. After: into the container, to web:80.
    let syn_in = tc(&events, "eth0", "ingress", &host, HostLab::PUBLISHED_PORT);
    assert!(
        syn_in
            .iter()
            .any(|e| e["packet"]["ip"]["sport"] == client_port)
    );
    let syn_out = tc(&events, "veth-web", "egress", &web_s, HostLab::WEB_PORT);
    assert!(
        syn_out
            .iter()
            .any(|e| e["packet"]["ip"]["src"] == outside.as_str()
                && e["packet"]["ip"]["sport"] == client_port)
    );
    // The reply leaves the uplink un-NATed: from host:8080, not from the container.
    assert!(events.iter().any(|e| e["kind"] == "tc"
        && e["ifname"] == "eth0"
        && e["direction"] == "egress"
        && e["packet"]["ip"]["src"] == host.as_str()
        && e["packet"]["ip"]["sport"] == HostLab::PUBLISHED_PORT
        && e["packet"]["ip"]["dport"] == client_port));
    // The rules that did it: DNAT in nat/DOCKER (reached from PREROUTING), accept in
    // filter/DOCKER (reached from FORWARD).
    let dnat = events
        .iter()
        .find(|e| {
            e["kind"] == "rule"
                && e["table"] == "nat"
                && e["chain"] == "DOCKER"
                && e["rule"]
                    .as_str()
                    .is_some_and(|r| r.contains("dnat to 172.17.0.2:80"))
        })
        .unwrap_or_else(|| panic!("no DNAT rule in {events:#?}"));
    assert_eq!(dnat["hook"], "prerouting");
    assert!(events.iter().any(|e| e["kind"] == "rule"
        && e["table"] == "filter"
        && e["chain"] == "DOCKER"
        && e["verdict"] == "accept"
        && e["hook"] == "forward"));
}

/// Story 3: firewalld's FORWARD chain drops container traffic to the network; probe names the
/// hook, verdict and rule. Without that table, the datagram leaves MASQUERADEd and arrives.
#[test]
fn firewalld_forward_chain_drops_container_egress() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    lab.firewalld_forward_drop().unwrap();
    let outside = HostLab::OUTSIDE_ADDR;
    let receiver = udp_listen(&lab.outside, outside, 53).unwrap();
    let run = trace(&lab, &["--rules", "--no-tc", "--no-routes"]);
    let sport = udp_send(&lab.web().ns, outside, 53).unwrap();
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let outside_s = outside.to_string();
    let ours = |e: &&Value| {
        e["packet"]["ip"]["dst"] == outside_s.as_str()
            && e["packet"]["ip"]["sport"] == sport
            && e["packet"]["ip"]["dport"] == 53
    };
    let drop = events
        .iter()
        .filter(ours)
        .find(|e| e["kind"] == "drop")
        .unwrap_or_else(|| panic!("no drop in {events:#?}"));
    assert_eq!(drop["reason"], "NETFILTER_DROP");
    let rule = events
        .iter()
        .filter(ours)
        .find(|e| e["kind"] == "rule" && e["verdict"] == "drop")
        .unwrap_or_else(|| panic!("no rule verdict in {events:#?}"));
    assert_eq!(rule["family"], "inet");
    assert_eq!(rule["table"], "firewalld");
    assert_eq!(rule["chain"], "filter_FORWARD");
    assert_eq!(rule["hook"], "forward");
    assert!(rule["rule"].as_str().unwrap().ends_with("drop"));
    let mut buf = [0u8; 64];
    assert!(
        receiver.recv_from(&mut buf).is_err(),
        "nothing arrives outside"
    );

    // Healthy: without firewalld's table the datagram is forwarded, MASQUERADEd, and arrives.
    lab.remove_firewalld().unwrap();
    let run = trace(&lab, &["--iface", "eth0", "--no-routes"]);
    let sport = udp_send(&lab.web().ns, outside, 53).unwrap();
    let (_, from) = receiver
        .recv_from(&mut buf)
        .expect("arrives without firewalld");
    assert_eq!(
        from.ip(),
        HostLab::HOST_ADDR,
        "masqueraded to the uplink address"
    );
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    assert!(
        events
            .iter()
            .all(|e| !(e["kind"] == "drop" && e["packet"]["ip"]["dport"] == 53))
    );
    let left = tc(&events, "eth0", "egress", &outside_s, 53);
    assert!(
        left.iter().any(
            |e| e["packet"]["ip"]["src"] == HostLab::HOST_ADDR.to_string()
                && e["packet"]["ip"]["sport"] == from.port()
        ),
        "left the uplink after MASQUERADE: {left:#?} (container source port {sport})"
    );
}

/// Story 4: `icc=false` drops container-to-container traffic only once br_netfilter hands
/// bridged packets to iptables; and the host reaching a published port on its own address goes
/// through OUTPUT's DNAT.
#[test]
fn icc_false_drops_bridged_traffic_only_with_br_netfilter() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let db = lab.db().addr;
    lab.icc_false(true).unwrap();
    let run = trace(&lab, &["--rules", "--no-tc", "--no-routes"]);
    let _server = serve_tcp_once(&lab.db().ns, db, 5432).unwrap();
    let blocked = tcp_exchange(&lab.web().ns, db, 5432, Duration::from_millis(500));
    assert!(
        blocked.is_err(),
        "icc=false with br_netfilter blocks web → db"
    );
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let db_s = db.to_string();
    let to_db = |e: &&Value| {
        e["packet"]["ip"]["dst"] == db_s.as_str() && e["packet"]["ip"]["dport"] == 5432
    };
    assert!(
        events
            .iter()
            .filter(to_db)
            .any(|e| e["kind"] == "drop" && e["reason"] == "NETFILTER_DROP")
    );
    let rule = events
        .iter()
        .filter(to_db)
        .find(|e| e["kind"] == "rule" && e["verdict"] == "drop")
        .unwrap_or_else(|| panic!("no rule verdict in {events:#?}"));
    assert_eq!(
        (rule["table"].as_str(), rule["chain"].as_str()),
        (Some("filter"), Some("FORWARD"))
    );
    let text = rule["rule"].as_str().unwrap();
    assert!(
        text.contains("iifname \"docker0\" oifname \"docker0\""),
        "{text}"
    );

    // Healthy: the same rule, but without br_netfilter bridged traffic never meets iptables.
    lab.icc_false(false).unwrap();
    let run = trace(&lab, &["--rules", "--no-tc", "--no-routes"]);
    tcp_exchange(&lab.web().ns, db, 5432, Duration::from_secs(5)).expect("bridged, unfiltered");
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    // (The blocked attempt's socket may still free its queued SYN now: not a netfilter drop.)
    assert!(
        events
            .iter()
            .filter(to_db)
            .all(|e| e["kind"] != "rule" && e["reason"] != "NETFILTER_DROP"),
        "no netfilter on the bridge path: {events:#?}"
    );
}

#[test]
fn host_reaching_its_published_port_goes_through_output_dnat() {
    require_root();
    let _serial = probe_lab::one_lab_at_a_time();
    let lab = lab();
    let web = lab.web().addr;
    let run = trace(
        &lab,
        &[
            "--iface",
            "docker0,veth-web",
            "--rules",
            "--no-drops",
            "--no-routes",
        ],
    );
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT).unwrap();
    tcp_exchange(
        lab.host(),
        HostLab::HOST_ADDR,
        HostLab::PUBLISHED_PORT,
        Duration::from_secs(5),
    )
    .expect("host reaches its own published port");
    let (stdout, _) = run.stop().unwrap();
    let events = json_lines(&stdout).unwrap();
    let dnat = events
        .iter()
        .find(|e| {
            e["kind"] == "rule"
                && e["chain"] == "DOCKER"
                && e["rule"]
                    .as_str()
                    .is_some_and(|r| r.contains("dnat to 172.17.0.2:80"))
        })
        .unwrap_or_else(|| panic!("no DNAT rule in {events:#?}"));
    assert_eq!(dnat["hook"], "output");
    assert!(
        !tc(
            &events,
            "veth-web",
            "egress",
            &web.to_string(),
            HostLab::WEB_PORT
        )
        .is_empty()
    );
}
