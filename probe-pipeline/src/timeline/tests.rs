//! Correlation on hand-made event sequences: the shapes of the stories.

use std::net::IpAddr;

use super::*;
use crate::{
    event::{
        DecidedBy, Direction, DropSighting, Family, FibLookup, Hook, IpHeader, L4Header, Mechanism,
        Packet, RuleVerdict, TcSighting, TcpFlags, Transport, Verdict,
    },
    render::timeline::{render_json, render_text},
    topology::Topology,
};

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, seq: u32, flags: u8) -> Packet {
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
                seq,
                tcp_flags: TcpFlags(flags),
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

fn topo() -> Topology {
    let mut t = Topology::default();
    for (i, n, k) in [
        (2, "eth0", ""),
        (3, "docker0", "bridge"),
        (4, "veth-web", "veth"),
        (5, "tun0", "tun"),
    ] {
        t.links.insert(i, (n.into(), k.into()));
    }
    t.bridge_subnets
        .push(("172.17.0.0".parse().unwrap(), 16, "docker0".into()));
    t.uplinks.push("eth0".into());
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

#[test]
fn dnat_is_one_journey_with_the_rewrite() {
    let syn_in = tcp("203.0.113.2", 40000, "203.0.113.1", 8080, 7, TcpFlags::SYN);
    let syn_out = tcp("203.0.113.2", 40000, "172.17.0.2", 80, 7, TcpFlags::SYN);
    let j = one(vec![
        tc(1_000, 2, Direction::Ingress, syn_in),
        tc(41_000, 4, Direction::Egress, syn_out),
    ]);
    assert_eq!(j.hops.len(), 2);
    assert_eq!(j.rewrites.len(), 1);
    let Diagnosis { outcome, text, .. } = diagnose(&j, &topo());
    assert_eq!(outcome, diagnose::Outcome::Delivered);
    assert_eq!(
        text,
        "delivered to 172.17.0.2:80 through veth-web after DNAT 203.0.113.1:8080 → 172.17.0.2:80"
    );
    let block = render_text(&j, &topo(), false);
    assert!(block.contains("Δ40µs"), "{block}");
    let json: serde_json::Value = serde_json::from_str(&render_json(&j, &topo())).unwrap();
    assert_eq!(json["schema"], "probe.timeline/1");
    assert_eq!(json["outcome"], "delivered");
    assert_eq!(json["hops"][1]["dt_ns"], 40_000);
    assert_eq!(json["rewrites"][0]["after"]["dport"], 80);
}

/// An nftables verdict on `p` from `family table/chain` at FORWARD.
fn rule_verdict(
    family: Family,
    table_chain: (&str, &str),
    by: (DecidedBy, Option<u64>, Option<&str>),
    verdict: Verdict,
    p: Packet,
) -> Event {
    Event {
        ts_ns: 0,
        cpu: 0,
        body: EventBody::Rule(Box::new(RuleVerdict {
            trace_id: 1,
            family,
            table: table_chain.0.into(),
            chain: table_chain.1.into(),
            hook: Some(Hook::Forward),
            decided_by: by.0,
            rule_handle: by.1,
            rule: by.2.map(str::to_owned),
            verdict,
            target: None,
            iif: 3,
            oif: 2,
            mark: 0,
            packet: Some(p),
            headers: None,
        })),
    }
}

/// A drop of `p` by netfilter, on interface 3.
fn netfilter_drop(ts: u64, netns: u32, p: Packet) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Drop(DropSighting {
            skb: 77,
            reason_code: 12,
            reason: Some("NETFILTER_DROP".into()),
            location: 1,
            location_sym: Some("nft_do_chain+0x46f".into()),
            ifindex: 3,
            netns,
            packet: p,
        }),
    }
}

fn forward_accept(ts: u64, packet: Packet) -> Event {
    let mut e = rule_verdict(
        Family::Ipv4,
        ("filter", "FORWARD"),
        (
            DecidedBy::Rule,
            Some(12),
            Some("iifname \"docker0\" counter accept"),
        ),
        Verdict::Accept,
        packet,
    );
    e.ts_ns = ts;
    e.cpu = 1;
    e
}

#[test]
fn reply_whose_rule_verdict_is_read_first_still_joins_the_request_flow() {
    // nftables trace messages come over netlink, out of step with the ring buffer: the reply's
    // FORWARD verdict can be read before the sighting that shows the request's DNAT.
    let reply = tcp("172.17.0.2", 80, "203.0.113.2", 40000, 99, 0x12);
    let mut c = Correlator::new(Limits::default());
    c.push(tc(
        1_000,
        2,
        Direction::Ingress,
        tcp("203.0.113.2", 40000, "203.0.113.1", 8080, 7, 2),
    ));
    c.push(forward_accept(0, reply.clone()));
    c.push(tc(
        2_000,
        4,
        Direction::Egress,
        tcp("203.0.113.2", 40000, "172.17.0.2", 80, 7, 2),
    ));
    c.push(tc(9_000, 4, Direction::Ingress, reply));
    let done = c.flush();
    assert_eq!(done.len(), 2, "{done:#?}");
    assert_eq!(done[0].flow, done[1].flow, "request and reply are one flow");
    assert_ne!(done[0].flow, 0);
}

#[test]
fn reply_after_nat_joins_the_request_flow() {
    let mut c = Correlator::new(Limits::default());
    c.push(tc(
        1_000,
        2,
        Direction::Ingress,
        tcp("203.0.113.2", 40000, "203.0.113.1", 8080, 7, 2),
    ));
    c.push(tc(
        2_000,
        4,
        Direction::Egress,
        tcp("203.0.113.2", 40000, "172.17.0.2", 80, 7, 2),
    ));
    c.push(tc(
        9_000,
        4,
        Direction::Ingress,
        tcp("172.17.0.2", 80, "203.0.113.2", 40000, 99, 0x12),
    ));
    let done = c.flush();
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].flow, done[1].flow, "request and reply are one flow");
    assert_ne!(done[0].id, done[1].id);
}

#[test]
fn drop_names_the_rule() {
    let p = tcp("172.17.0.2", 5000, "172.17.0.3", 5432, 1, TcpFlags::SYN);
    let rule = rule_verdict(
        Family::Ipv4,
        ("filter", "FORWARD"),
        (
            DecidedBy::Rule,
            Some(20),
            Some("iifname \"docker0\" oifname \"docker0\" counter drop"),
        ),
        Verdict::Drop,
        p.clone(),
    );
    let drop = netfilter_drop(5_000, 1, p.clone());
    let j = one(vec![tc(1_000, 4, Direction::Ingress, p), drop, rule]);
    let Diagnosis { outcome, text, .. } = diagnose(&j, &topo());
    assert_eq!(outcome, diagnose::Outcome::Dropped);
    assert!(
        text.starts_with("dropped by ip filter/FORWARD (forward) rule 20"),
        "{text}"
    );
    assert!(text.ends_with("(reason NETFILTER_DROP)"), "{text}");
}

#[test]
fn drop_in_another_namespace_is_placed_by_its_name() {
    let p = tcp("10.0.0.2", 5000, "10.0.0.3", 80, 1, TcpFlags::SYN);
    let drop = |netns| Event {
        ts_ns: 5_000,
        cpu: 0,
        body: EventBody::Drop(DropSighting {
            skb: 77,
            reason_code: 2,
            reason: Some("NO_SOCKET".into()),
            location: 1,
            location_sym: None,
            ifindex: 2,
            netns,
            packet: p.clone(),
        }),
    };
    let mut topo = topo();
    topo.own_netns = 4026531840;
    topo.netns_names.insert(4026532999, "lab-b".into());
    let place = |netns| crate::render::facts::place(&drop(netns), &topo);
    assert_eq!(place(4026532999), "drop in netns lab-b");
    assert_eq!(place(4026533000), "drop in netns 4026533000");
    // In the traced namespace its interface names it.
    assert_eq!(place(4026531840), "drop on eth0");
}

fn fib(ts: u64, dst: &str, dport: u16, table: u32, dev: Option<&str>, err: i32) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Fib(FibLookup {
            table,
            table_name: None,
            err,
            error: FibLookup::error_name(err).map(str::to_owned),
            src: "0.0.0.0".parse().unwrap(),
            dst: dst.parse().unwrap(),
            gateway: None,
            dev: dev.map(str::to_owned),
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

#[test]
fn vpn_shadowing_is_diagnosed_from_the_route() {
    let syn = tcp("10.8.0.2", 5000, "172.17.0.2", 80, 1, TcpFlags::SYN);
    let j = one(vec![
        fib(1_000, "172.17.0.2", 80, 51820, Some("tun0"), 0),
        tc(3_000, 5, Direction::Egress, syn),
    ]);
    assert!(j.hops[0].inferred);
    let Diagnosis { text, .. } = diagnose(&j, &topo());
    assert!(text.starts_with("routed to tun0 by table 51820"), "{text}");
    assert!(text.contains("docker0's subnet"), "{text}");
}

/// A lookup in namespace `netns`, else as [`fib`].
fn fib_in(netns: u32, ts: u64, dst: &str, dport: u16, dev: &str) -> Event {
    let mut e = fib(ts, dst, dport, 254, Some(dev), 0);
    if let EventBody::Fib(f) = &mut e.body {
        f.netns = netns;
    }
    e
}

#[test]
fn another_namespaces_lookup_joins_only_as_the_decision_that_sent_the_packet() {
    let syn = tcp("172.17.0.2", 5000, "203.0.113.2", 80, 1, TcpFlags::SYN);
    let mut c = Correlator::new(Limits::default()).traced_in(5);
    // The container's own decision (namespace 9), then its packet here, then this namespace's
    // forwarding decision and a twin namespace's (7) for the same destination.
    c.push(fib_in(9, 1_000, "203.0.113.2", 80, "eth0"));
    c.push(tc(2_000, 4, Direction::Ingress, syn));
    c.push(fib_in(5, 3_000, "203.0.113.2", 80, "eth0"));
    c.push(fib_in(7, 3_500, "203.0.113.2", 80, "eth0"));
    let done = c.flush();
    assert_eq!(done.len(), 1, "{done:#?}");
    let namespaces: Vec<u32> = done[0]
        .hops
        .iter()
        .filter_map(|h| match &h.event.body {
            EventBody::Fib(f) => Some(f.netns),
            _ => None,
        })
        .collect();
    assert_eq!(namespaces, vec![9, 5], "{done:#?}");
}

#[test]
fn unroutable_lookup_stands_alone_and_ordinary_misses_do_not() {
    let mut c = Correlator::new(Limits::default());
    c.push(fib(
        1_000,
        "10.9.9.9",
        53,
        254,
        None,
        -crate::event::errno::EAGAIN,
    ));
    c.push(fib(
        2_000,
        "10.9.9.9",
        53,
        254,
        None,
        -crate::event::errno::ENETUNREACH,
    ));
    let done = c.flush();
    assert_eq!(done.len(), 1, "{done:#?}");
    let Diagnosis { outcome, text, .. } = diagnose(&done[0], &topo());
    assert_eq!(outcome, diagnose::Outcome::Unroutable);
    assert!(text.contains("ENETUNREACH"), "{text}");
}

#[test]
fn memory_is_bounded() {
    let mut c = Correlator::new(Limits {
        max_live: 8,
        ..Limits::default()
    });
    for i in 0..100u32 {
        let mut p = tcp("10.0.0.1", 1000, "10.0.0.2", 80, i, TcpFlags::ACK);
        if let Some(ip) = p.ip.as_mut() {
            ip.ip_id = i as u16;
        }
        c.push(tc(1_000 + i as u64, 4, Direction::Egress, p));
        assert!(c.live() <= 8);
    }
    let evicted = c.take_finished();
    assert_eq!(evicted.len(), 92);
    assert!(evicted.iter().all(|j| j.evicted));
    // Quiet journeys end by themselves.
    c.expire(10_000_000_000);
    assert_eq!(c.live(), 0);
    let _: Vec<IpAddr> = Vec::new();
}

#[test]
fn docker_names_the_containers_veth_and_what_is_seen_inside() {
    let mut t = topo();
    t.containers.interfaces.insert(4, "web".into());
    // The container's own eth0 (index 9 in its namespace), seen because probe attached to it
    // before Docker moved it into the container.
    t.containers.inside.insert(9, ("web".into(), "eth0".into()));
    let syn_in = tcp("203.0.113.2", 40000, "203.0.113.1", 8080, 7, TcpFlags::SYN);
    let syn_out = tcp("203.0.113.2", 40000, "172.17.0.2", 80, 7, TcpFlags::SYN);
    let j = one(vec![
        tc(1_000, 2, Direction::Ingress, syn_in),
        tc(41_000, 4, Direction::Egress, syn_out.clone()),
        tc(42_000, 9, Direction::Ingress, syn_out),
    ]);
    let Diagnosis { outcome, text, .. } = diagnose(&j, &t);
    assert_eq!(outcome, diagnose::Outcome::Delivered);
    assert_eq!(
        text,
        "delivered to 172.17.0.2:80 (container web) through veth-web after DNAT \
         203.0.113.1:8080 → 172.17.0.2:80"
    );
    let json: serde_json::Value = serde_json::from_str(&render_json(&j, &t)).unwrap();
    assert_eq!(json["hops"][0]["where"], "eth0 ingress");
    assert!(json["hops"][0].get("container").is_none());
    assert_eq!(json["hops"][1]["where"], "veth-web (container web) egress");
    assert_eq!(json["hops"][1]["container"], "web");
    assert_eq!(json["hops"][2]["where"], "eth0 in container web ingress");
    assert_eq!(json["hops"][2]["container"], "web");
    // Without Docker's names, the same journey reads as before.
    let Diagnosis { text: plain, .. } = diagnose(&j, &topo());
    assert!(
        plain.starts_with("routed") || plain.starts_with("last seen"),
        "{plain}"
    );
}

#[test]
fn drop_between_containers_names_both() {
    let mut t = topo();
    t.containers.interfaces.insert(4, "app".into());
    t.containers
        .addresses
        .insert("172.17.0.3".parse().unwrap(), "db".into());
    let syn = tcp("172.17.0.2", 40000, "172.17.0.3", 5432, 7, TcpFlags::SYN);
    let j = one(vec![
        tc(1_000, 4, Direction::Ingress, syn.clone()),
        Event {
            ts_ns: 2_000,
            cpu: 0,
            body: EventBody::Drop(DropSighting {
                skb: 1,
                reason_code: 6,
                reason: Some("NETFILTER_DROP".into()),
                location: 0,
                location_sym: None,
                ifindex: 3,
                netns: 0,
                packet: syn,
            }),
        },
    ]);
    let Diagnosis { outcome, text, .. } = diagnose(&j, &t);
    assert_eq!(outcome, diagnose::Outcome::Dropped);
    assert!(
        text.ends_with("(reason NETFILTER_DROP); container app → container db"),
        "{text}"
    );
}

/// A firewalld-style packet walk: no rule matched, the base chain's policy dropped it.
fn policy_drop_journey() -> Journey {
    let p = tcp("172.17.0.2", 5000, "10.9.9.9", 443, 1, TcpFlags::SYN);
    let policy = rule_verdict(
        Family::Inet,
        ("firewalld", "filter_FORWARD"),
        (DecidedBy::Policy, None, None),
        Verdict::Drop,
        p.clone(),
    );
    let drop = netfilter_drop(5_000, 0, p.clone());
    one(vec![tc(1_000, 4, Direction::Ingress, p), drop, policy])
}

#[test]
fn a_policy_drop_names_the_chain_and_its_policy() {
    let Diagnosis { outcome, text, .. } = diagnose(&policy_drop_journey(), &topo());
    assert_eq!(outcome, Outcome::Dropped);
    assert_eq!(
        text,
        "dropped by inet firewalld/filter_FORWARD (forward) policy drop (reason NETFILTER_DROP)"
    );
}

/// nf_hook_slow's verdict on `packet` (skb `skb`), as fexit reports it.
fn hook_verdict(ts: u64, hook: Hook, verdict: Verdict, skb: u64, packet: Packet) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Netfilter(crate::event::HookVerdict {
            hook,
            family: Family::Ipv4,
            verdict,
            errno: (verdict == Verdict::Drop).then_some(1),
            in_ifindex: 3,
            out_ifindex: 0,
            netns: 0,
            skb,
            duration_ns: 1_000,
            packet,
            source: Mechanism::FexitNfHookSlow,
        }),
    }
}

/// The kernel hands a freed skb's address to the next packet, often the reply: the reply's
/// hook verdicts are its own journey, not a rewrite of the request.
#[test]
fn a_reused_skb_address_names_a_new_packet() {
    let request = tcp("10.0.0.1", 40000, "10.0.0.2", 80, 7, TcpFlags::SYN);
    let mut reply = tcp(
        "10.0.0.2",
        80,
        "10.0.0.1",
        40000,
        99,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    if let Some(ip) = reply.ip.as_mut() {
        ip.ip_id = 0;
    }
    let mut c = Correlator::new(Limits::default());
    for e in [
        tc(1_000, 3, Direction::Ingress, request.clone()),
        hook_verdict(
            2_000,
            Hook::Prerouting,
            Verdict::Accept,
            77,
            request.clone(),
        ),
        hook_verdict(3_000, Hook::Input, Verdict::Accept, 77, request),
        // The reply, in the skb the request was freed from.
        hook_verdict(50_000, Hook::Output, Verdict::Accept, 77, reply.clone()),
        tc(60_000, 3, Direction::Egress, reply),
    ] {
        c.push(e);
    }
    let done = c.flush();
    assert_eq!(done.len(), 2, "{done:#?}");
    assert!(done.iter().all(|j| j.rewrites.is_empty()), "{done:#?}");
    assert_eq!((done[0].hops.len(), done[1].hops.len()), (3, 2));
}

/// nft_do_chain's verdict for inet fw/input on skb `skb` (no headers).
fn chain_verdict(ts: u64, verdict: Verdict, skb: u64) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Chain(crate::event::ChainVerdict {
            engine: crate::event::Engine::Nftables,
            table: "fw".into(),
            chain: "input".into(),
            hook: Hook::Input,
            family: Family::Inet,
            verdict,
            skb,
        }),
    }
}

/// Where nft_do_chain and nf_hook_slow are probed (6.1, 6.12), a hook that drops reports in
/// this order: the chain's verdict (skb only), the drop (nf_hook_slow frees the packet before
/// it returns), the hook's verdict, and the trace message read later. All are one journey.
#[test]
fn a_hook_drop_on_a_probed_kernel_is_one_journey_with_its_rule() {
    let p = tcp("10.0.0.1", 5000, "10.0.0.2", 7004, 1, TcpFlags::SYN);
    let chain = chain_verdict(3_000, Verdict::Drop, 77);
    let hook = hook_verdict(6_000, Hook::Input, Verdict::Drop, 77, p.clone());
    let mut policy = rule_verdict(
        Family::Inet,
        ("fw", "input"),
        (DecidedBy::Policy, None, None),
        Verdict::Drop,
        p.clone(),
    );
    if let EventBody::Rule(r) = &mut policy.body {
        r.hook = Some(Hook::Input);
    }
    // Read from the trace socket well after the packet's sightings.
    policy.ts_ns = 900_000_000;
    let mut c = Correlator::new(Limits::default());
    for e in [
        tc(1_000, 3, Direction::Ingress, p.clone()),
        chain,
        netfilter_drop(5_000, 0, p),
        hook,
        policy,
    ] {
        c.push(e);
    }
    let done = c.flush();
    assert_eq!(done.len(), 1, "{done:#?}");
    let kinds: Vec<&str> = done[0]
        .hops
        .iter()
        .map(|h| match h.event.body {
            EventBody::Tc(_) => "tc",
            EventBody::Chain(_) => "chain",
            EventBody::Drop(_) => "drop",
            EventBody::Netfilter(_) => "hook",
            EventBody::Rule(_) => "rule",
            _ => "other",
        })
        .collect();
    // The verdict sits by its hook, before the drop it caused.
    assert_eq!(kinds, ["tc", "chain", "rule", "drop", "hook"]);
    let Diagnosis { text, .. } = diagnose(&done[0], &topo());
    assert!(
        text.starts_with("dropped by inet fw/input (input) policy drop"),
        "{text}"
    );
}

/// A chain verdict whose packet no hook verdict names: where hook verdicts are seen it is a
/// packet not shown (another namespace's) and goes; where none are, it is a journey.
#[test]
fn a_chain_verdict_no_hook_names_is_kept_only_where_hooks_are_not_seen() {
    let p = tcp("10.0.0.1", 5000, "10.0.0.2", 80, 1, TcpFlags::SYN);
    let mut c = Correlator::new(Limits::default());
    c.push(hook_verdict(1_000, Hook::Input, Verdict::Accept, 77, p));
    c.push(chain_verdict(3_000, Verdict::Accept, 78));
    let done = c.flush();
    assert_eq!(done.len(), 1, "{done:#?}");
    assert!(matches!(
        done[0].hops[0].event.body,
        EventBody::Netfilter(_)
    ));
    let chain = chain_verdict(3_000, Verdict::Accept, 78);
    let j = one(vec![chain]);
    assert!(matches!(j.hops[0].event.body, EventBody::Chain(_)));
}

/// Every place, rewrite and outcome the JSON of a journey names is what its text says.
fn assert_text_and_json_agree(j: &Journey, t: &Topology) {
    let text = render_text(j, t, false);
    let json: serde_json::Value = serde_json::from_str(&render_json(j, t)).unwrap();
    let mut rows: Vec<&str> = text.lines().skip(1).collect();
    // A drop's cause adds its next step under the diagnosis.
    if let Some(next) = json["cause"]["next"].as_str() {
        let last = rows.pop().unwrap();
        assert_eq!(
            last.trim(),
            format!(
                "next: {next} (probe explain {})",
                json["cause"]["id"].as_str().unwrap()
            )
        );
    }
    // Facts read from the host come between the diagnosis and the next step.
    let host_facts = json["facts"]
        .as_array()
        .map_or(0, |f| f.iter().filter(|f| f["from"] == "host").count());
    for _ in 0..host_facts {
        rows.pop();
    }
    let hops = json["hops"].as_array().unwrap();
    assert_eq!(rows.len(), hops.len() + 1, "{text}");
    for (row, hop) in rows.iter().zip(hops) {
        let place = hop["where"].as_str().unwrap();
        let what = hop["what"].as_str().unwrap();
        assert!(
            row.contains(&format!(" {place} ")),
            "'{place}' not in '{row}'"
        );
        assert!(row.contains(what), "'{what}' not in '{row}'");
    }
    let diagnosis = json["diagnosis"].as_str().unwrap();
    assert_eq!(rows.last().unwrap().trim(), format!("=> {diagnosis}"));
    for r in json["rewrites"].as_array().unwrap() {
        let at = r["at_hop"].as_u64().unwrap() as usize;
        assert!(rows[at].contains("NAT "), "{text}");
    }
}

#[test]
fn text_and_json_name_the_same_places_rewrites_and_outcome() {
    let mut docker = topo();
    docker.containers.interfaces.insert(4, "web".into());
    docker
        .containers
        .inside
        .insert(9, ("web".into(), "eth0".into()));
    docker.containers.netns.insert(4026532111, "db".into());
    docker.own_netns = 4026531840;
    let syn_in = tcp("203.0.113.2", 40000, "203.0.113.1", 8080, 7, TcpFlags::SYN);
    let syn_out = tcp("203.0.113.2", 40000, "172.17.0.2", 80, 7, TcpFlags::SYN);
    let delivered = one(vec![
        tc(1_000, 2, Direction::Ingress, syn_in),
        forward_accept(2_000, syn_out.clone()),
        tc(41_000, 4, Direction::Egress, syn_out.clone()),
        tc(42_000, 9, Direction::Ingress, syn_out),
    ]);
    let p = tcp("172.17.0.2", 5000, "172.17.0.3", 5432, 2, TcpFlags::SYN);
    let dropped_inside = one(vec![
        tc(1_000, 4, Direction::Ingress, p.clone()),
        Event {
            ts_ns: 3_000,
            cpu: 0,
            body: EventBody::Drop(DropSighting {
                skb: 5,
                reason_code: 2,
                reason: Some("NO_SOCKET".into()),
                location: 0,
                location_sym: None,
                ifindex: 12,
                netns: 4026532111,
                packet: p,
            }),
        },
    ]);
    for t in [topo(), docker] {
        for j in [&delivered, &dropped_inside, &policy_drop_journey()] {
            assert_text_and_json_agree(j, &t);
        }
    }
    // The container labels are in the text too, not only in JSON.
    let mut t = topo();
    t.containers.inside.insert(9, ("web".into(), "eth0".into()));
    assert!(render_text(&delivered, &t, false).contains("eth0 in container web ingress"));
}

/// IPv6 neighbour solicitations to different solicited-node groups, all without an identity.
fn solicitation(ts: u64, target_group: &str) -> Event {
    let p = Packet {
        ethertype: 0x86dd,
        len: 86,
        ip: Some(IpHeader {
            src: "fe80::1".parse().unwrap(),
            dst: target_group.parse().unwrap(),
            proto: Transport::Icmpv6,
            ip_id: 0,
            fragment: false,
            l4: Some(L4Header::Icmp {
                icmp_type: 135,
                icmp_code: 0,
                icmp_id: 0,
                icmp_seq: 0,
            }),
        }),
        truncated: false,
    };
    tc(ts, 4, Direction::Egress, p)
}

#[test]
fn solicitations_are_not_joined_by_an_invented_rewrite() {
    let mut c = Correlator::new(Limits::default());
    c.push(solicitation(1_000, "ff02::1:ff00:2"));
    c.push(solicitation(2_000, "ff02::1:ff00:3"));
    let done = c.flush();
    assert_eq!(done.len(), 2, "{done:#?}");
    assert!(done.iter().all(|j| j.rewrites.is_empty()), "{done:#?}");
}

#[test]
fn lost_events_are_said_in_text_too() {
    let mut c = Correlator::new(Limits::default());
    c.push(tc(
        1_000,
        2,
        Direction::Ingress,
        tcp("10.0.0.1", 1, "10.0.0.2", 2, 3, TcpFlags::SYN),
    ));
    c.mark_loss();
    let j = c.flush().remove(0);
    assert!(j.events_lost);
    let text = render_text(&j, &topo(), false);
    assert!(text.contains("events were lost"), "{text}");
}

/// A drop the kernel gives no specific reason for is explained by where it happened: an
/// unreachable route's drop in ip_error reads as no route, with the failed lookup, and carries
/// its cause.
#[test]
fn a_drop_is_explained_from_the_knowledge_of_causes() {
    let syn = tcp("172.17.0.2", 41000, "10.9.9.9", 80, 1, TcpFlags::SYN);
    let j = one(vec![
        tc(1_000, 4, Direction::Ingress, syn.clone()),
        fib(1_500, "10.9.9.9", 80, 254, None, -113),
        Event {
            ts_ns: 2_000,
            cpu: 0,
            body: EventBody::Drop(DropSighting {
                skb: 1,
                reason_code: 2,
                reason: Some("NOT_SPECIFIED".into()),
                location: 0,
                location_sym: Some("ip_error+0x94".into()),
                ifindex: 4,
                netns: 0,
                packet: syn,
            }),
        },
    ]);
    let d = diagnose(&j, &topo());
    assert_eq!(d.outcome, diagnose::Outcome::Dropped);
    assert_eq!(d.cause.map(|c| c.id), Some("no-route"));
    assert!(
        d.text
            .starts_with("dropped in ip_error+0x94: no route leads where it was going"),
        "{}",
        d.text
    );
    assert!(
        d.text.contains(": EHOSTUNREACH) (reason NOT_SPECIFIED)"),
        "{}",
        d.text
    );
}

/// A verdict of `family table/chain` at `hook`, accepting `p`.
fn accept_at(hook: Hook, chain: &str, p: Packet) -> Event {
    let mut e = rule_verdict(
        Family::Inet,
        ("fw", chain),
        (DecidedBy::Policy, None, None),
        Verdict::Accept,
        p,
    );
    if let EventBody::Rule(r) = &mut e.body {
        r.hook = Some(hook);
    }
    // The receive time: not a kernel time, never to be shown.
    e.ts_ns = 999_999;
    e
}

#[test]
fn untimed_verdicts_sit_by_their_hook_and_show_no_time() {
    let p = tcp("10.0.0.1", 5000, "10.0.0.2", 80, 1, TcpFlags::SYN);
    // The verdicts are read before the sightings around them.
    let j = one(vec![
        accept_at(Hook::Postrouting, "post", p.clone()),
        accept_at(Hook::Forward, "fwd", p.clone()),
        accept_at(Hook::Prerouting, "pre", p.clone()),
        tc(1_000, 2, Direction::Ingress, p.clone()),
        fib(3_000, "10.0.0.2", 80, 254, Some("veth-web"), 0),
        tc(10_000, 4, Direction::Egress, p),
    ]);
    let order: Vec<String> = j
        .hops
        .iter()
        .map(|h| crate::render::facts::place(&h.event, &topo()))
        .collect();
    assert_eq!(
        order,
        [
            "eth0 ingress",
            "inet fw/pre (prerouting)",
            "route table 254",
            "inet fw/fwd (forward)",
            "inet fw/post (postrouting)",
            "veth-web egress"
        ]
    );
    let text = render_text(&j, &topo(), false);
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[2].starts_with("   (untimed)"), "{text}");
    assert!(!rows[2].contains('Δ') && !rows[2].contains("ms"), "{text}");
    // Δ of the row after an untimed one is measured from the timestamped row before it.
    assert!(rows[3].contains("Δ2µs"), "{text}");
    assert!(
        rows[6].contains("+0.009ms") && rows[6].contains("Δ7µs"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&render_json(&j, &topo())).unwrap();
    let hops = json["hops"].as_array().unwrap();
    let mut prev: Option<u64> = None;
    for h in hops {
        if h["untimed"] == true {
            assert!(h["t_ns"].is_null() && h["dt_ns"].is_null() && h["ts_ns"].is_null());
            assert!(h["event"]["ts_ns"].is_null(), "{h:#}");
            assert_eq!(h["approx_time"], true);
            continue;
        }
        let ts = h["ts_ns"].as_u64().unwrap();
        assert_eq!(h["t_ns"].as_u64().unwrap(), ts - 1_000);
        assert_eq!(h["dt_ns"].as_u64().unwrap(), ts - prev.unwrap_or(ts));
        prev = Some(ts);
    }
    assert_eq!(hops.iter().filter(|h| h["untimed"] == true).count(), 3);
}

/// A table lookup with a source address and a table name, as the kernel reports them.
fn lookup(ts: u64, src: &str, dst: &str, table: (u32, &str), dev: Option<&str>, err: i32) -> Event {
    let mut e = fib(ts, dst, 80, table.0, dev, err);
    if let EventBody::Fib(f) = &mut e.body {
        f.src = src.parse().unwrap();
        f.table_name = Some(table.1.into());
    }
    e
}

const LOCAL: (u32, &str) = (255, "local");
const MAIN: (u32, &str) = (254, "main");

fn route_rows(j: &Journey) -> Vec<&Hop> {
    j.hops
        .iter()
        .filter(|h| matches!(h.event.body, EventBody::Fib(_)))
        .collect()
}

#[test]
fn a_local_miss_then_a_main_hit_is_one_decision() {
    let eagain = -crate::event::errno::EAGAIN;
    let syn = tcp("10.0.0.1", 5000, "10.0.0.2", 80, 1, TcpFlags::SYN);
    let j = one(vec![
        lookup(1_000, "10.0.0.1", "10.0.0.2", LOCAL, None, eagain),
        lookup(1_500, "10.0.0.1", "10.0.0.2", MAIN, Some("eth0"), 0),
        tc(3_000, 2, Direction::Egress, syn),
    ]);
    let rows = route_rows(&j);
    assert_eq!(rows.len(), 1, "{j:#?}");
    let EventBody::Fib(f) = &rows[0].event.body else {
        unreachable!()
    };
    assert_eq!(f.table, 254);
    assert_eq!(f.tried.len(), 1);
    assert_eq!(f.tried[0].table, 255);
    let text = render_text(&j, &topo(), false);
    assert!(text.contains("route table main (after local) "), "{text}");
    assert!(!text.contains("no route"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&render_json(&j, &topo())).unwrap();
    assert_eq!(json["hops"][0]["where"], "route table main (after local)");
    assert_eq!(json["hops"][0]["event"]["tried"][0]["table_name"], "local");
    assert_eq!(json["hops"][0]["event"]["tried"][0]["err"], eagain);
    assert_eq!(json["outcome"], "left");
}

#[test]
fn ipv6_local_table_misses_around_source_selection_are_one_decision() {
    // ip6_dst_lookup_tail: local (empty: EHOSTUNREACH), main, then both again once the source
    // address is chosen.
    let unreach = -crate::event::errno::EHOSTUNREACH;
    let mut c = Correlator::new(Limits::default());
    for (ts, src, table, dev, err) in [
        (1_000, "::", LOCAL, None, unreach),
        (1_200, "::", MAIN, Some("eth0"), 0),
        (1_400, "fd00::1", LOCAL, None, unreach),
        (1_600, "fd00::1", MAIN, Some("eth0"), 0),
    ] {
        c.push(lookup(ts, src, "fd00::2", table, dev, err));
    }
    // No packet follows (it was not seen): the decision stands for nothing, and is no error.
    let done = c.flush();
    assert!(done.is_empty(), "{done:#?}");

    let mut c = Correlator::new(Limits::default());
    for (ts, src, table, dev, err) in [
        (1_000, "::", LOCAL, None, unreach),
        (1_200, "::", MAIN, Some("eth0"), 0),
        (1_400, "fd00::1", LOCAL, None, unreach),
        (1_600, "fd00::1", MAIN, Some("eth0"), 0),
    ] {
        c.push(lookup(ts, src, "fd00::2", table, dev, err));
    }
    let mut p = tcp("fd00::1", 5000, "fd00::2", 80, 1, TcpFlags::SYN);
    p.ethertype = 0x86dd;
    c.push(tc(3_000, 2, Direction::Egress, p));
    let done = c.flush();
    assert_eq!(done.len(), 1, "{done:#?}");
    let rows = route_rows(&done[0]);
    assert_eq!(rows.len(), 1, "{done:#?}");
    let EventBody::Fib(f) = &rows[0].event.body else {
        unreachable!()
    };
    assert_eq!(f.tried.len(), 3);
    assert_eq!(f.src, "fd00::1".parse::<IpAddr>().unwrap());
    let Diagnosis { outcome, .. } = diagnose(&done[0], &topo());
    assert_eq!(outcome, Outcome::Left);
}

#[test]
fn a_retry_after_source_selection_folds_but_the_next_packet_is_its_own_decision() {
    let mut c = Correlator::new(Limits::default());
    c.push(lookup(1_000, "0.0.0.0", "10.0.0.2", MAIN, Some("eth0"), 0));
    c.push(lookup(1_300, "10.0.0.1", "10.0.0.2", MAIN, Some("eth0"), 0));
    c.push(tc(
        2_000,
        2,
        Direction::Egress,
        tcp("10.0.0.1", 5000, "10.0.0.2", 80, 1, TcpFlags::SYN),
    ));
    // The next packet's own lookup (an unconnected socket routes every datagram).
    c.push(lookup(9_000, "0.0.0.0", "10.0.0.2", MAIN, Some("eth0"), 0));
    let mut second = tcp("10.0.0.1", 5000, "10.0.0.2", 80, 2, TcpFlags::ACK);
    if let Some(ip) = second.ip.as_mut() {
        ip.ip_id = 4343;
    }
    c.push(tc(10_000, 2, Direction::Egress, second));
    let done = c.flush();
    assert_eq!(done.len(), 2, "{done:#?}");
    for j in &done {
        assert_eq!(route_rows(j).len(), 1, "{j:#?}");
    }
    let EventBody::Fib(f) = &route_rows(&done[0])[0].event.body else {
        unreachable!()
    };
    assert_eq!(f.tried.len(), 1);
    assert!(f.tried[0].src.is_unspecified());
    // The same table tried twice is not "after" itself.
    assert!(render_text(&done[0], &topo(), false).contains("route table main "));
    assert!(!render_text(&done[0], &topo(), false).contains("(after"));
}

#[test]
fn no_route_in_any_table_is_unroutable() {
    let eagain = -crate::event::errno::EAGAIN;
    let mut c = Correlator::new(Limits::default());
    c.push(lookup(1_000, "0.0.0.0", "10.9.9.9", LOCAL, None, eagain));
    c.push(lookup(1_200, "0.0.0.0", "10.9.9.9", MAIN, None, eagain));
    let done = c.flush();
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!(route_rows(&done[0]).len(), 1);
    let Diagnosis { outcome, text, .. } = diagnose(&done[0], &topo());
    assert_eq!(outcome, Outcome::Unroutable);
    assert_eq!(
        text,
        "not routed: no route for 10.9.9.9 (tables tried: local, main)"
    );
    let mut tally = Tally::default();
    tally.add(&done[0], outcome, None);
    assert_eq!(tally.unroutable, 1);
}

#[test]
fn the_decision_after_a_dnat_joins_the_rewritten_packet() {
    let syn_in = tcp("203.0.113.2", 40000, "203.0.113.1", 8080, 7, TcpFlags::SYN);
    let syn_out = tcp("203.0.113.2", 40000, "172.17.0.2", 80, 7, TcpFlags::SYN);
    // The forwarding lookup is made for the new destination, before any sighting shows it.
    let mut forward = lookup(2_000, "203.0.113.2", "172.17.0.2", MAIN, Some("docker0"), 0);
    if let EventBody::Fib(f) = &mut forward.body {
        f.dport = 0;
        f.proto = Transport::Other(0);
    }
    let j = one(vec![
        tc(1_000, 2, Direction::Ingress, syn_in),
        forward,
        tc(3_000, 4, Direction::Egress, syn_out),
    ]);
    let places: Vec<String> = j
        .hops
        .iter()
        .map(|h| crate::render::facts::place(&h.event, &topo()))
        .collect();
    assert_eq!(
        places,
        ["eth0 ingress", "route table main", "veth-web egress"]
    );
    assert_eq!(j.rewrites[0].at_hop, 2);
}

#[test]
fn an_address_type_check_is_no_routing_row() {
    let syn = tcp("10.0.0.1", 5000, "10.0.0.2", 80, 1, TcpFlags::SYN);
    let j = one(vec![
        tc(1_000, 3, Direction::Ingress, syn.clone()),
        lookup(1_500, "10.0.0.1", "10.0.0.2", MAIN, Some("eth0"), 0),
        // inet_addr_type (an ICMP error choosing its source, nft `fib daddr type`): the local
        // table asked with a destination only.
        fib(
            1_700,
            "10.0.0.2",
            0,
            255,
            None,
            -crate::event::errno::EAGAIN,
        ),
        tc(2_000, 2, Direction::Egress, syn),
    ]);
    let rows = route_rows(&j);
    assert_eq!(rows.len(), 1, "{j:#?}");
    assert!(matches!(&rows[0].event.body, EventBody::Fib(f) if f.table == 254));
}

#[test]
fn a_frame_without_ip_is_headed_by_what_it_carries() {
    let arp = Packet {
        ethertype: 0x0806,
        len: 42,
        ip: None,
        truncated: false,
    };
    let j = one(vec![tc(1_000, 2, Direction::Ingress, arp)]);
    let text = render_text(&j, &topo(), false);
    assert!(text.lines().next().unwrap().ends_with(") arp"), "{text}");
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16, ip_id: u16) -> Packet {
    let mut p = tcp(src, sport, dst, dport, 0, 0);
    let ip = p.ip.as_mut().unwrap();
    ip.proto = Transport::Udp;
    ip.ip_id = ip_id;
    ip.l4 = Some(L4Header::Udp { sport, dport });
    p
}

/// An ICMP error from `src` to `dst`, quoting `quoted`, seen on tc `ifindex` egress.
fn icmp_error(
    ts: u64,
    ifindex: u32,
    (src, dst): (&str, &str),
    (t, code, mtu): (u8, u8, u16),
    quoted: Packet,
) -> Event {
    let mut p = tcp(src, 0, dst, 0, 0, 0);
    let ip = p.ip.as_mut().unwrap();
    ip.proto = Transport::Icmp;
    ip.ip_id = 999;
    ip.l4 = Some(L4Header::Icmp {
        icmp_type: t,
        icmp_code: code,
        icmp_id: 0,
        icmp_seq: mtu,
    });
    let mut e = tc(ts, ifindex, Direction::Egress, p);
    if let EventBody::Tc(t) = &mut e.body {
        t.quoted = Some(quoted);
    }
    e
}

#[test]
fn an_icmp_error_joins_the_packet_it_quotes_both_ways() {
    // A datagram DNATted to a container whose port is closed: the container's port
    // unreachable comes back through the bridge, and NAT translates its quote back to the
    // tuple the sender used.
    let sent = udp("203.0.113.2", 40000, "203.0.113.1", 8080, 31);
    let dnatted = udp("203.0.113.2", 40000, "172.17.0.2", 80, 31);
    let mut c = Correlator::new(Limits::default());
    c.push(tc(1_000, 2, Direction::Ingress, sent.clone()));
    c.push(tc(41_000, 4, Direction::Egress, dnatted));
    // Another datagram of the same socket and tuple, later: the error is about the first
    // one only where the quote says so (its IP id).
    c.push(tc(
        60_000,
        2,
        Direction::Ingress,
        udp("203.0.113.2", 40000, "203.0.113.1", 8080, 32),
    ));
    c.push(icmp_error(
        90_000,
        2,
        ("203.0.113.1", "203.0.113.2"),
        (3, 3, 0),
        sent,
    ));
    let done = c.flush();
    assert_eq!(done.len(), 3, "{done:#?}");
    let (packet, error) = (&done[0], &done[2]);
    assert_eq!(packet.icmp_errors.len(), 1, "{done:#?}");
    assert_eq!(packet.icmp_errors[0].journey, error.id);
    assert_eq!(error.answers, Some(packet.id));
    assert!(done[1].icmp_errors.is_empty() && done[1].answers.is_none());

    let t = topo();
    let d = diagnose(packet, &t);
    assert!(
        d.text.ends_with(&format!(
            "; the host answered with ICMP port unreachable to 203.0.113.2 (packet {})",
            error.id
        )),
        "{}",
        d.text
    );
    // The error is a row of the packet's timeline, at its own time; the packet's Δ are its own.
    let block = render_text(packet, &t, false);
    let rows: Vec<&str> = block.lines().collect();
    assert!(
        rows[3].starts_with("   +0.089ms   Δ49µs")
            && rows[3].contains("eth0 egress")
            && rows[3].contains("answered with ICMP port unreachable"),
        "{block}"
    );
    let json: serde_json::Value = serde_json::from_str(&render_json(packet, &t)).unwrap();
    let e = &json["icmp_errors"][0];
    assert_eq!(e["timeline"], error.id);
    assert_eq!(e["t_ns"], 89_000);
    assert_eq!(e["what"], "port unreachable");
    assert_eq!(
        (e["icmp_type"].as_u64(), e["icmp_code"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(e["to"], "203.0.113.2");
    let json: serde_json::Value = serde_json::from_str(&render_json(error, &t)).unwrap();
    assert_eq!(json["answers"], packet.id);
    assert!(
        render_text(error, &t, false).starts_with(&format!(
            "packet {} (flow {}) icmp 203.0.113.1 > 203.0.113.2 (ICMP error about packet {})",
            error.id, error.flow, packet.id
        )),
        "{}",
        render_text(error, &t, false)
    );
}

#[test]
fn fragmentation_needed_names_its_mtu_and_a_quote_of_no_known_packet_links_nothing() {
    let sent = udp("172.17.0.2", 5000, "198.51.100.7", 53, 77);
    let mut c = Correlator::new(Limits::default());
    c.push(tc(1_000, 4, Direction::Ingress, sent.clone()));
    c.push(icmp_error(
        20_000,
        4,
        ("172.17.0.1", "172.17.0.2"),
        (3, 4, 1280),
        sent,
    ));
    // An error quoting a packet never seen stays an error of its own.
    c.push(icmp_error(
        30_000,
        4,
        ("172.17.0.1", "172.17.0.2"),
        (3, 1, 0),
        udp("172.17.0.2", 5001, "198.51.100.7", 53, 78),
    ));
    let done = c.flush();
    assert_eq!(done.len(), 3, "{done:#?}");
    let e = &done[0].icmp_errors[0];
    assert_eq!(e.mtu(), Some(1280));
    assert_eq!(e.describe(), "fragmentation needed (mtu 1280)");
    assert!(done[2].answers.is_none(), "{done:#?}");
}

#[test]
fn a_packet_waiting_for_its_neighbour_stays_one_timeline() {
    // Routed out of eth0, then queued a second until the next hop's address resolved: one
    // timeline, however long the wait (up to the kernel's three solicitations).
    let syn = tcp("172.17.0.2", 40000, "198.51.100.7", 443, 9, TcpFlags::SYN);
    let mut c = Correlator::new(Limits::default());
    c.push(tc(1_000, 4, Direction::Ingress, syn.clone()));
    c.push(fib(5_000, "198.51.100.7", 443, 254, Some("eth0"), 0));
    // Another packet, seen and gone meanwhile, keeps the clock going.
    let other = tcp("172.17.0.3", 40001, "172.17.0.2", 80, 1, TcpFlags::SYN);
    c.push(tc(500_000_000, 3, Direction::Ingress, other.clone()));
    c.push(tc(500_010_000, 4, Direction::Egress, other));
    c.expire(1_000_000_000);
    c.push(tc(1_200_000_000, 2, Direction::Egress, syn));
    let done = c.flush();
    assert_eq!(done.len(), 2, "{done:#?}");
    let j = done
        .iter()
        .find(|j| j.hops.len() == 3)
        .expect("the waiting packet, whole");
    assert_eq!(diagnose(j, &topo()).outcome, diagnose::Outcome::Left);

    // A packet that was not routed out ends after the usual quiet.
    let mut c = Correlator::new(Limits::default());
    c.push(tc(
        1_000,
        4,
        Direction::Ingress,
        tcp("172.17.0.2", 1, "172.17.0.9", 2, 3, TcpFlags::SYN),
    ));
    c.expire(400_000_000);
    assert_eq!(c.take_finished().len(), 1);
}
