//! Stories 2–4 of the design on the real Docker engine: real `docker run -p`, Docker's own
//! chains, real containers on test-created networks; probe names the containers by their Docker
//! names. Each test checks the incident and the healthy variant. Without a Docker engine, these
//! tests say so and pass without running (only these: the namespace lab covers the rest).
//!
//! Traffic stays between the test's own containers and a client namespace the test creates
//! (joined to the root namespace by its own veth, on its own subnet).

use std::{io::Write as _, time::Duration};

use probe_lab::{
    ProbeRun,
    docker::{self, Client, Container, Image, Network, NftTable, SERVER_PORT},
    probe::json_lines,
    require_root,
    traffic::udp_listen,
};
use serde_json::Value;

/// Root, and a Docker engine: else a clear note and None (the test then returns).
fn docker_here(test: &str) -> Option<Image> {
    require_root();
    if let Some(why) = docker::unavailable() {
        // Straight to the terminal: the test harness keeps eprintln! of passing tests to itself.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test} (tests/tests/docker.rs): Docker is not available here ({why})"
        );
        return None;
    }
    docker::sweep_stale();
    Some(Image::build().expect("test image builds offline from busybox"))
}

/// `probe trace --json --rules` on the test's interfaces (timelines, named containers).
fn trace(ifaces: &[&str]) -> ProbeRun {
    let list = ifaces.join(",");
    ProbeRun::start(&["trace", "--json", "--rules", "--iface", &list]).unwrap()
}

fn tuple_is(t: &Value, src: Option<&str>, dst: &str, dport: u16) -> bool {
    src.is_none_or(|s| t["src"] == s) && t["dst"] == dst && t["dport"] == dport
}

/// Journeys whose first sighting is `src` (if given) → `dst:dport`.
fn journeys<'a>(all: &'a [Value], src: Option<&str>, dst: &str, dport: u16) -> Vec<&'a Value> {
    all.iter()
        .filter(|j| tuple_is(&j["first"], src, dst, dport))
        .collect()
}

fn hops(j: &Value) -> &[Value] {
    j["hops"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn has_hop(j: &Value, f: impl Fn(&str, &str) -> bool) -> bool {
    hops(j).iter().any(|h| {
        f(
            h["where"].as_str().unwrap_or(""),
            h["what"].as_str().unwrap_or(""),
        )
    })
}

/// Whether a rule verdict at `place` whose text contains each of `texts` was seen for a packet
/// from source port `sport`, in any timeline.
fn rule_seen(all: &[Value], place: &str, texts: &[&str], sport: u16) -> bool {
    all.iter().flat_map(hops).any(|h| {
        h["where"] == place
            && h["tuple"]["sport"] == sport
            && h["what"]
                .as_str()
                .is_some_and(|w| texts.iter().all(|t| w.contains(t)))
    })
}

/// The hop where the packet went into (or came out of) `container`'s veth.
fn container_hop<'a>(j: &'a Value, container: &str, direction: &str) -> Option<&'a Value> {
    hops(j).iter().find(|h| {
        h["container"] == container
            && h["where"].as_str().is_some_and(|w| {
                w.starts_with("veth")
                    && w.ends_with(&format!(" (container {container}) {direction}"))
            })
    })
}

/// Story 2: `docker run -p HOSTPORT:80`; a client outside connects to the host's address on
/// that port. probe shows Docker's DNAT at PREROUTING (before → after), FORWARD's accept, the
/// delivery into the container's veth named after the container (started while probe runs:
/// names follow containers as they start), and the reply in the request's flow.
#[test]
fn published_port_reaches_the_named_container_and_the_reply_comes_back() {
    let Some(image) = docker_here("published port") else {
        return;
    };
    let _serial = probe_lab::one_lab_at_a_time();
    let net = Network::create(true).unwrap();
    let client = Client::new().unwrap();
    let port = docker::free_port().unwrap();
    let mut run = trace(&[&net.bridge, "veth*", &client.host_if]);
    let web = Container::run(&image, &net, "web", 2, Some(port)).unwrap();
    run.wait_for_stderr(&format!("probe: container {} is behind veth", web.name))
        .unwrap();

    let client_port = probe_lab::traffic::tcp_exchange(
        &client.ns,
        client.host_addr,
        port,
        Duration::from_secs(5),
    )
    .expect("the published port answers");
    // Story 4's other path: the host itself reaching the published port (on the test's own
    // address) meets Docker's DNAT at OUTPUT instead of PREROUTING.
    let local_port = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect_timeout(
            &(client.host_addr, port).into(),
            Duration::from_secs(5),
        )
        .expect("the host reaches its published port");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = [0u8; 3];
        s.read_exact(&mut answer)
            .expect("answered through OUTPUT's DNAT");
        s.local_addr().unwrap().port()
    };
    let (stdout, _) = run.stop().unwrap();
    let all = json_lines(&stdout).unwrap();
    let (host, web_ip, client_ip) = (
        client.host_addr.to_string(),
        web.addr.to_string(),
        client.addr.to_string(),
    );

    let request = journeys(&all, Some(&client_ip), &host, port)
        .into_iter()
        .find(|j| j["first"]["sport"] == client_port && has_hop(j, |_, what| what.contains("[S]")))
        .unwrap_or_else(|| panic!("no timeline of the SYN to {host}:{port} in {all:#?}"));
    // The rewrite, before → after.
    let rewrite = &request["rewrites"][0];
    assert!(
        tuple_is(&rewrite["before"], Some(&client_ip), &host, port),
        "{rewrite}"
    );
    assert!(
        tuple_is(&rewrite["after"], Some(&client_ip), &web_ip, SERVER_PORT),
        "{rewrite}"
    );
    // Docker's own chains decided: DNAT in nat/DOCKER from PREROUTING, accept in filter/DOCKER
    // from FORWARD. (Rule verdicts come over netlink, after the fact: on a busy machine one
    // may arrive after its packet's timeline ended and stand alone, so look in every timeline.)
    let dnat_to = format!("dnat to {web_ip}:{SERVER_PORT}");
    assert!(
        rule_seen(
            &all,
            "ip nat/DOCKER (prerouting)",
            &[&dnat_to, "-> accept"],
            client_port
        ),
        "no DNAT at PREROUTING for port {client_port}: {all:#?}"
    );
    let accept = format!("oifname \"{}\"", net.bridge);
    assert!(
        rule_seen(
            &all,
            "ip filter/DOCKER (forward)",
            &[&accept, "-> accept"],
            client_port
        ),
        "no accept at FORWARD for port {client_port}: {all:#?}"
    );
    // Into the container, through its veth, named after it.
    let into = container_hop(request, &web.name, "egress")
        .unwrap_or_else(|| panic!("no hop into {}'s veth: {request:#}", web.name));
    assert_eq!(into["tuple"]["dst"], web_ip.as_str());
    assert_eq!(request["outcome"], "delivered", "{request:#}");
    let diagnosis = request["diagnosis"].as_str().unwrap();
    assert!(
        diagnosis.starts_with(&format!(
            "delivered to {web_ip}:{SERVER_PORT} (container {}) through veth",
            web.name
        )) && diagnosis.ends_with(&format!(
            "after DNAT {host}:{port} → {web_ip}:{SERVER_PORT}"
        )),
        "{diagnosis}"
    );

    // The reply: out of the container's veth, un-NATed back to host:port, same flow.
    let reply = journeys(&all, Some(&web_ip), &client_ip, client_port)
        .into_iter()
        .find(|j| has_hop(j, |_, what| what.contains("[S.]")))
        .unwrap_or_else(|| panic!("no SYN-ACK timeline in {all:#?}"));
    assert_eq!(
        reply["flow"], request["flow"],
        "the reply joins the request's flow"
    );
    assert!(
        container_hop(reply, &web.name, "ingress").is_some(),
        "{reply:#}"
    );
    assert!(
        hops(reply)
            .iter()
            .any(|h| h["where"] == format!("{} egress", client.host_if)
                && h["tuple"]["src"] == host.as_str()
                && h["tuple"]["sport"] == port),
        "the reply leaves un-NATed, from {host}:{port}: {reply:#}"
    );

    // First seen on the bridge, already rewritten: the rule verdicts show where.
    let local = all
        .iter()
        .find(|j| {
            j["first"]["src"] == host.as_str()
                && j["first"]["sport"] == local_port
                && has_hop(j, |_, what| what.contains("[S]"))
        })
        .unwrap_or_else(|| panic!("no timeline of the host's own SYN in {all:#?}"));
    assert!(
        rule_seen(
            &all,
            "ip nat/DOCKER (output)",
            &[&dnat_to, "-> accept"],
            local_port
        ),
        "DNAT at OUTPUT for port {local_port}: {all:#?}"
    );
    assert!(
        container_hop(local, &web.name, "egress").is_some(),
        "{local:#}"
    );
    assert_eq!(local["outcome"], "delivered", "{local:#}");
}

/// Story 3: a firewalld-style table drops what the containers' network sends to the client;
/// probe shows the drop at FORWARD with the table, chain and rule, and the container that sent
/// it. Without the table, the datagram is forwarded, MASQUERADEd and arrives.
#[test]
fn firewalld_style_forward_drop_of_container_egress() {
    let Some(image) = docker_here("forward drop") else {
        return;
    };
    let _serial = probe_lab::one_lab_at_a_time();
    let net = Network::create(true).unwrap();
    let client = Client::new().unwrap();
    let app = Container::run(&image, &net, "app", 3, None).unwrap();
    let receiver = udp_listen(&client.ns, client.addr, 5353).unwrap();
    let firewalld = NftTable::load(
        "inet",
        "probe_firewalld",
        &format!(
            "chain filter_FORWARD {{ type filter hook forward priority filter + 10; policy accept;\n\
             ip saddr 172.30.{}.0/24 ip daddr {} udp dport 5353 drop\n}}",
            net.octet, client.addr
        ),
    )
    .unwrap();
    let ifaces = [net.bridge.as_str(), "veth*", client.host_if.as_str()];

    let run = trace(&ifaces);
    let sport = app.udp_send(client.addr, 5353).unwrap();
    let mut buf = [0u8; 64];
    assert!(receiver.recv_from(&mut buf).is_err(), "nothing arrives");
    let (stdout, _) = run.stop().unwrap();
    let all = json_lines(&stdout).unwrap();
    let (app_ip, client_ip) = (app.addr.to_string(), client.addr.to_string());
    let dropped = journeys(&all, Some(&app_ip), &client_ip, 5353)
        .into_iter()
        .find(|j| j["first"]["sport"] == sport)
        .unwrap_or_else(|| panic!("no timeline of the datagram in {all:#?}"));
    assert_eq!(dropped["outcome"], "dropped", "{dropped:#}");
    assert!(
        container_hop(dropped, &app.name, "ingress").is_some(),
        "{dropped:#}"
    );
    assert!(
        has_hop(dropped, |w, what| w.starts_with("drop on ")
            && what.contains("NETFILTER_DROP")),
        "{dropped:#}"
    );
    let diagnosis = dropped["diagnosis"].as_str().unwrap();
    let expected = format!(
        "dropped by inet {}/filter_FORWARD (forward) rule ",
        firewalld.name
    );
    assert!(
        diagnosis.starts_with(&expected)
            && diagnosis.contains("udp dport 5353 drop]")
            && diagnosis.contains("(reason NETFILTER_DROP)")
            && diagnosis.ends_with(&format!("from container {}", app.name)),
        "{diagnosis}"
    );

    // Healthy: the table gone, the same datagram leaves MASQUERADEd and arrives.
    drop(firewalld);
    let run = trace(&ifaces);
    let sport = app.udp_send(client.addr, 5353).unwrap();
    let (_, from) = receiver
        .recv_from(&mut buf)
        .expect("arrives without the table");
    assert_eq!(from.ip(), client.host_addr, "MASQUERADEd to the host side");
    let (stdout, _) = run.stop().unwrap();
    let all = json_lines(&stdout).unwrap();
    let delivered = journeys(&all, Some(&app_ip), &client_ip, 5353)
        .into_iter()
        .find(|j| j["first"]["sport"] == sport)
        .unwrap_or_else(|| panic!("no timeline of the datagram in {all:#?}"));
    assert_eq!(delivered["outcome"], "delivered", "{delivered:#}");
    assert!(
        delivered["diagnosis"].as_str().unwrap().contains(&format!(
            "through {} after SNAT {app_ip}:{sport}",
            client.host_if
        )),
        "{delivered:#}"
    );
    assert!(!has_hop(delivered, |w, _| w.starts_with("drop")));
}

/// Story 4: on a network created with `enable_icc=false`, Docker's `-i br -o br -j DROP` stops
/// container-to-container traffic (br_netfilter hands bridged packets to iptables); probe names
/// the rule and both containers. On an icc=true network the same connection is delivered.
#[test]
fn icc_false_network_drops_container_to_container_traffic() {
    let Some(image) = docker_here("isolation") else {
        return;
    };
    let _serial = probe_lab::one_lab_at_a_time();
    let isolated = Network::create(false).unwrap();
    let open = Network::create(true).unwrap();
    let db = Container::run(&image, &isolated, "db", 2, None).unwrap();
    let app = Container::run(&image, &isolated, "app", 3, None).unwrap();
    let db2 = Container::run(&image, &open, "db", 2, None).unwrap();
    let app2 = Container::run(&image, &open, "app", 3, None).unwrap();

    let run = trace(&[&isolated.bridge, &open.bridge, "veth*"]);
    let blocked = app.tcp_exchange(db.addr, SERVER_PORT, Duration::from_millis(700));
    assert!(blocked.is_err(), "icc=false blocks app → db");
    let delivered = app2
        .tcp_exchange(db2.addr, SERVER_PORT, Duration::from_secs(5))
        .expect("icc=true lets app → db through");
    let (stdout, _) = run.stop().unwrap();
    let all = json_lines(&stdout).unwrap();

    let db_ip = db.addr.to_string();
    let dropped = journeys(&all, Some(&app.addr.to_string()), &db_ip, SERVER_PORT)
        .into_iter()
        .find(|j| j["outcome"] == "dropped")
        .unwrap_or_else(|| panic!("no dropped SYN to {db_ip} in {all:#?}"));
    assert!(
        container_hop(dropped, &app.name, "ingress").is_some(),
        "{dropped:#}"
    );
    let diagnosis = dropped["diagnosis"].as_str().unwrap();
    let rule = format!(
        "iifname \"{0}\" oifname \"{0}\" counter drop]",
        isolated.bridge
    );
    assert!(
        diagnosis.starts_with("dropped by ip filter/FORWARD (forward) rule ")
            && diagnosis.contains(&rule)
            && diagnosis.contains("(reason NETFILTER_DROP)")
            && diagnosis.ends_with(&format!("container {} → container {}", app.name, db.name)),
        "{diagnosis}"
    );
    assert!(
        container_hop(dropped, &db.name, "egress").is_none(),
        "nothing reaches db: {dropped:#}"
    );

    // Healthy: icc=true, the same connection is bridged into db2's veth.
    let db2_ip = db2.addr.to_string();
    let syn = journeys(&all, Some(&app2.addr.to_string()), &db2_ip, SERVER_PORT)
        .into_iter()
        .find(|j| j["first"]["sport"] == delivered && has_hop(j, |_, what| what.contains("[S]")))
        .unwrap_or_else(|| panic!("no SYN to {db2_ip} in {all:#?}"));
    assert_eq!(syn["outcome"], "delivered", "{syn:#}");
    assert!(
        container_hop(syn, &app2.name, "ingress").is_some(),
        "{syn:#}"
    );
    assert!(container_hop(syn, &db2.name, "egress").is_some(), "{syn:#}");
    assert!(
        syn["diagnosis"].as_str().unwrap().starts_with(&format!(
            "delivered to {db2_ip}:{SERVER_PORT} (container {}) through veth",
            db2.name
        )),
        "{syn:#}"
    );
}

/// Story 4's host-local path: a connection to a published port on the root namespace's
/// loopback ends at docker-proxy, which opens its own connection to the container. The
/// timeline says so, with the proxy's pid and the container it forwards to.
#[test]
fn a_published_port_on_loopback_ends_at_docker_proxy_which_forwards_to_the_container() {
    let Some(image) = docker_here("docker-proxy") else {
        return;
    };
    let _serial = probe_lab::one_lab_at_a_time();
    let net = Network::create(true).unwrap();
    let port = docker::free_port().unwrap();
    let filter = format!("tcp port {port}");
    let mut run = ProbeRun::start(&["trace", "--json", "--iface", "lo", filter.as_str()]).unwrap();
    let web = Container::run(&image, &net, "web", 2, Some(port)).unwrap();
    run.wait_for_stderr(&format!("probe: container {} is behind veth", web.name))
        .unwrap();
    let local_port = probe_lab::traffic::tcp_request(
        std::net::Ipv4Addr::LOCALHOST,
        port,
        Duration::from_secs(5),
    )
    .expect("docker-proxy answers on loopback");
    let (stdout, stderr) = run.stop().unwrap();
    let all = json_lines(&stdout).unwrap();
    let syn = all
        .iter()
        .find(|t| t["first"]["sport"] == local_port && t["first"]["dport"] == port)
        .unwrap_or_else(|| panic!("no timeline of the SYN in {all:#?}\n{stderr}"));
    assert_eq!(syn["outcome"], "delivered", "{syn:#}");
    let d = syn["diagnosis"].as_str().unwrap();
    let proxy_pid = d
        .split("(process docker-proxy, pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("not delivered to docker-proxy: {d}\n{all:#?}"));
    let cmdline = std::fs::read(format!("/proc/{proxy_pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&web.addr.to_string()),
        "pid {proxy_pid} is not the proxy of {}",
        web.name
    );
    assert!(
        d.contains(&format!(
            "; forwarded by docker-proxy (pid {proxy_pid}) to {}:{SERVER_PORT}, container {}",
            web.addr, web.name
        )),
        "{d}"
    );
}
