//! Decoding real layouts, every truncation, and arbitrary bytes.

use super::*;

use crate::bytes_of;

fn udp_event() -> TcEvent {
    let mut packet = PacketInfo {
        sport: 40000,
        dport: 9000,
        l3_proto: 0x0800,
        l4_proto: 17,
        family: family::IPV4,
        ip_id: 0x1234,
        len: 60,
        ..Default::default()
    };
    packet.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    packet.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
    TcEvent {
        header: EventHeader {
            ts_ns: 123_456_789,
            kind: kind::TC,
            flags: 0,
            cpu: 1,
        },
        packet,
        netns_cookie: 4096,
        ifindex: 7,
        mark: 0,
        direction: direction::EGRESS,
        _pad: [0; 7],
    }
}

#[test]
fn decodes_a_udp_sighting() {
    let event = decode(&bytes_of(&udp_event())).unwrap();
    assert_eq!(event.ts_ns, 123_456_789);
    assert_eq!(event.cpu, 1);
    let EventBody::Tc(tc) = event.body else {
        panic!("not tc")
    };
    assert_eq!(tc.ifindex, 7);
    assert_eq!(tc.direction, Direction::Egress);
    assert_eq!(tc.netns_cookie, 4096);
    let ip = tc.packet.ip.unwrap();
    assert_eq!(ip.src, "10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(ip.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(ip.proto, Transport::Udp);
    assert_eq!(ip.ip_id, 0x1234);
    assert_eq!(
        ip.l4,
        Some(L4Header::Udp {
            sport: 40000,
            dport: 9000
        })
    );
    assert_eq!(tc.packet.len, 60);
}

#[test]
fn decodes_tcp_ipv6_with_flags() {
    let mut ev = udp_event();
    ev.direction = direction::INGRESS;
    ev.packet.family = family::IPV6;
    ev.packet.l3_proto = 0x86DD;
    ev.packet.l4_proto = 6;
    ev.packet.saddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
    ev.packet.daddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
    ev.packet.tcp_flags = TcpFlags::SYN | TcpFlags::ACK;
    ev.packet.tcp_seq = 77;
    let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
        panic!("not tc")
    };
    assert_eq!(tc.direction, Direction::Ingress);
    let ip = tc.packet.ip.unwrap();
    assert_eq!(ip.dst, "fd00::2".parse::<IpAddr>().unwrap());
    match ip.l4 {
        Some(L4Header::Tcp { seq, tcp_flags, .. }) => {
            assert_eq!(seq, 77);
            assert_eq!(tcp_flags.to_string(), "S.");
        }
        other => panic!("expected TCP, got {other:?}"),
    }
}

#[test]
fn decodes_icmp_echo_and_non_ip() {
    let mut ev = udp_event();
    ev.packet.l4_proto = 1;
    ev.packet.icmp_type = 8;
    ev.packet.sport = 5;
    ev.packet.dport = 9;
    let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
        panic!("not tc")
    };
    assert_eq!(
        tc.packet.ip.unwrap().l4,
        Some(L4Header::Icmp {
            icmp_type: 8,
            icmp_code: 0,
            icmp_id: 5,
            icmp_seq: 9
        })
    );

    let mut arp = udp_event();
    arp.packet = PacketInfo {
        l3_proto: 0x0806,
        len: 42,
        ..Default::default()
    };
    let EventBody::Tc(tc) = decode(&bytes_of(&arp)).unwrap().body else {
        panic!("not tc")
    };
    assert_eq!(tc.packet.ip, None);
    assert_eq!(tc.packet.ethertype, 0x0806);
}

#[test]
fn truncated_and_fragment_packets_have_no_transport_header() {
    let mut ev = udp_event();
    ev.packet.flags = packet_flags::TRUNCATED;
    let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
        panic!("not tc")
    };
    assert!(tc.packet.truncated);
    assert_eq!(tc.packet.ip.unwrap().l4, None);

    let mut ev = udp_event();
    ev.packet.flags = packet_flags::FRAGMENT;
    let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
        panic!("not tc")
    };
    let ip = tc.packet.ip.unwrap();
    assert!(ip.fragment);
    assert_eq!(ip.l4, None);
}

#[test]
fn rejects_every_truncation_of_a_tc_event() {
    let full = bytes_of(&udp_event());
    for len in 0..full.len() {
        let err = decode(&full[..len]).unwrap_err();
        if len < size_of::<EventHeader>() {
            assert_eq!(err, DecodeError::ShortHeader { need: 16, got: len });
        } else {
            assert_eq!(
                err,
                DecodeError::WrongSize {
                    kind: kind::TC,
                    expected: size_of::<TcEvent>(),
                    got: len
                }
            );
        }
    }
}

#[test]
fn rejects_oversized_and_unknown_events() {
    let mut long = bytes_of(&udp_event());
    long.extend_from_slice(&[0; 8]);
    assert!(matches!(
        decode(&long),
        Err(DecodeError::WrongSize { got: 104, .. })
    ));

    let mut unknown = udp_event();
    unknown.header.kind = 999;
    assert_eq!(
        decode(&bytes_of(&unknown)),
        Err(DecodeError::UnknownKind(999))
    );

    let mut bad_dir = udp_event();
    bad_dir.direction = 9;
    assert_eq!(
        decode(&bytes_of(&bad_dir)),
        Err(DecodeError::BadDirection(9))
    );
}

#[test]
fn decodes_a_drop() {
    let tc = udp_event();
    let ev = DropEvent {
        header: EventHeader {
            kind: kind::DROP,
            ..tc.header
        },
        packet: tc.packet,
        skb_addr: 0xffff_8880_0000_1000,
        location: 0xffff_ffff_8120_0123,
        netns_inum: 4026531840,
        ifindex: 3,
        reason: 12,
        protocol: 0x0800,
        _pad: 0,
    };
    let EventBody::Drop(d) = decode(&bytes_of(&ev)).unwrap().body else {
        panic!("not a drop")
    };
    assert_eq!(d.reason_code, 12);
    assert_eq!(d.skb, 0xffff_8880_0000_1000);
    assert_eq!(d.netns, 4026531840);
    assert_eq!(
        d.packet.ip.unwrap().dst,
        "10.0.0.2".parse::<IpAddr>().unwrap()
    );
    let full = bytes_of(&ev);
    assert!(decode(&full[..full.len() - 1]).is_err());
}

#[test]
fn decodes_a_fib_lookup() {
    let mut ev = FibEvent {
        header: EventHeader {
            kind: kind::FIB,
            ..Default::default()
        },
        table: 254,
        err: -crate::event::errno::ENETUNREACH,
        family: family::IPV4,
        proto: 17,
        source: fib_source::TP_FIB4,
        dport: 53,
        netns_inum: 4026532301,
        ..Default::default()
    };
    ev.dst[..4].copy_from_slice(&[10, 9, 9, 9]);
    ev.dev_name[..1].copy_from_slice(b"-");
    let EventBody::Fib(f) = decode(&bytes_of(&ev)).unwrap().body else {
        panic!("not a fib lookup")
    };
    assert_eq!(f.table, 254);
    assert_eq!(f.error.as_deref(), Some("ENETUNREACH"));
    assert_eq!(f.dst, "10.9.9.9".parse::<IpAddr>().unwrap());
    assert_eq!(f.dev, None);
    assert_eq!(f.gateway, None);
    assert_eq!(f.source, Mechanism::FibTracepoint);
    assert_eq!(f.netns, 4026532301);
    // Recordings from before lookups carried their namespace have zeros there: unknown.
    ev.netns_inum = 0;
    let EventBody::Fib(f) = decode(&bytes_of(&ev)).unwrap().body else {
        panic!("not a fib lookup")
    };
    assert_eq!(f.netns, 0);

    ev.family = 9;
    assert_eq!(decode(&bytes_of(&ev)), Err(DecodeError::BadFamily(9)));
}

#[test]
fn decodes_hook_chain_and_rule_verdicts() {
    let tc = udp_event();
    let nf = NfEvent {
        header: EventHeader {
            kind: kind::NF,
            ..tc.header
        },
        packet: tc.packet,
        skb_addr: 1,
        duration_ns: 1500,
        netns_inum: 7,
        in_ifindex: 3,
        out_ifindex: 4,
        ret: -1,
        hook: 2,
        pf: 2,
        source: probe_source::FEXIT,
        _pad: [0; 5],
    };
    let EventBody::Netfilter(v) = decode(&bytes_of(&nf)).unwrap().body else {
        panic!("not a hook verdict")
    };
    assert_eq!(
        (v.hook, v.family, v.verdict),
        (Hook::Forward, Family::Ipv4, Verdict::Drop)
    );
    assert_eq!(v.errno, Some(1));
    assert_eq!(v.source, Mechanism::FexitNfHookSlow);

    let mut chain = ChainEvent {
        header: EventHeader {
            kind: kind::CHAIN,
            ..tc.header
        },
        verdict: 0,
        hook: 2,
        pf: 2,
        engine: chain_engine::NFTABLES,
        source: probe_source::KRETPROBE,
        ..Default::default()
    };
    chain.table[..6].copy_from_slice(b"filter");
    chain.chain[..7].copy_from_slice(b"FORWARD");
    let EventBody::Chain(c) = decode(&bytes_of(&chain)).unwrap().body else {
        panic!("not a chain verdict")
    };
    assert_eq!((c.table.as_str(), c.chain.as_str()), ("filter", "FORWARD"));
    assert_eq!(c.verdict, Verdict::Drop);

    let mut rule = FibRuleEvent {
        header: EventHeader {
            kind: kind::FIB_RULE,
            ..tc.header
        },
        pref: 5209,
        table: 51820,
        action: 1,
        family: family::IPV4,
        ..Default::default()
    };
    rule.dst[..4].copy_from_slice(&[172, 18, 0, 2]);
    let EventBody::FibRule(r) = decode(&bytes_of(&rule)).unwrap().body else {
        panic!("not a rule match")
    };
    assert_eq!(
        (r.pref, r.table, r.action),
        (5209, 51820, RuleAction::ToTable)
    );
    assert_eq!(r.dst, "172.18.0.2".parse::<IpAddr>().unwrap());
}

/// `len` bytes from a xorshift generator: deterministic, varied.
fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: every length up to two events, with varied contents.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for len in 0..2 * size_of::<TcEvent>() {
        for _ in 0..64 {
            let buf = random_bytes(&mut seed, len);
            let _ = decode(&buf);
        }
    }
}

#[test]
fn any_field_values_under_a_valid_header_never_panic() {
    // Past the kind check: every event type with arbitrary contents (families, protocols,
    // names without a NUL, reasons and hooks out of range), at its own size and longer.
    use probe_common::{ChainEvent, DropEvent, FibEvent, FibRuleEvent, NfEvent, TcEvent, kind};
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let kinds = [
        (kind::TC, size_of::<TcEvent>()),
        (kind::DROP, size_of::<DropEvent>()),
        (kind::FIB, size_of::<FibEvent>()),
        (kind::NF, size_of::<NfEvent>()),
        (kind::CHAIN, size_of::<ChainEvent>()),
        (kind::FIB_RULE, size_of::<FibRuleEvent>()),
        (kind::TC_SNAP, size_of::<probe_common::TcSnapEvent>()),
        (kind::TC_QUOTE, size_of::<probe_common::TcQuoteEvent>()),
    ];
    for (k, size) in kinds {
        for extra in [0, 8] {
            for _ in 0..2000 {
                let mut buf = random_bytes(&mut seed, size + extra);
                buf[8..10].copy_from_slice(&k.to_ne_bytes());
                let _ = decode(&buf);
            }
        }
    }
}

fn snap_event(cap_len: u16, l2_len: u8) -> probe_common::TcSnapEvent {
    let mut tc = udp_event();
    tc.header.kind = kind::TC_SNAP;
    let mut data = [0u8; probe_common::MAX_SNAPLEN];
    for (i, b) in data.iter_mut().enumerate() {
        *b = i as u8;
    }
    probe_common::TcSnapEvent {
        tc,
        cap_len,
        l2_len,
        _pad: [0; 5],
        data,
    }
}

#[test]
fn a_sighting_with_bytes_keeps_exactly_the_copied_ones() {
    let event = decode(&bytes_of(&snap_event(42, 14))).unwrap();
    let EventBody::Tc(tc) = event.body else {
        panic!("not tc")
    };
    assert_eq!(tc.ifindex, 7);
    assert_eq!(tc.packet.ip.unwrap().ip_id, 0x1234);
    let frame = tc.frame.unwrap();
    assert_eq!(frame.link, LinkLayer::Ethernet);
    assert_eq!(frame.bytes, (0..42).collect::<Vec<u8>>());
    let EventBody::Tc(tc) = decode(&bytes_of(&snap_event(0, 0))).unwrap().body else {
        panic!("not tc")
    };
    assert_eq!(tc.frame.unwrap().link, LinkLayer::Ip);
}

#[test]
fn a_capture_length_or_link_layer_out_of_range_is_an_error() {
    let over = probe_common::MAX_SNAPLEN as u16 + 1;
    assert_eq!(
        decode(&bytes_of(&snap_event(over, 14))),
        Err(DecodeError::BadCaptureLength(over))
    );
    assert_eq!(
        decode(&bytes_of(&snap_event(10, 3))),
        Err(DecodeError::BadLinkLayer(3))
    );
    // Sized as the smaller event: refused, not read past.
    let mut short = bytes_of(&snap_event(10, 14));
    short.truncate(size_of::<TcEvent>());
    assert!(matches!(decode(&short), Err(DecodeError::WrongSize { .. })));
}

/// A port unreachable from 10.0.0.2 to 10.0.0.1, quoting the UDP datagram of `udp_event`.
fn port_unreachable() -> (PacketInfo, PacketInfo) {
    let quoted = udp_event().packet;
    let mut error = quoted;
    error.saddr = quoted.daddr;
    error.daddr = quoted.saddr;
    error.l4_proto = 1;
    error.icmp_type = 3;
    error.icmp_code = 3;
    (error, quoted)
}

#[test]
fn an_icmp_error_keeps_the_packet_it_quotes() {
    let (error, quoted) = port_unreachable();
    let mut tc = udp_event();
    tc.header.kind = kind::TC_QUOTE;
    tc.packet = error;
    let ev = probe_common::TcQuoteEvent { tc, quoted };
    let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
        panic!("not tc")
    };
    assert!(crate::packet::is_icmp_error(&tc.packet));
    let q = tc.quoted.expect("a quote").ip.unwrap();
    assert_eq!(
        (q.src.to_string(), q.dst.to_string()),
        ("10.0.0.1".into(), "10.0.0.2".into())
    );
    assert_eq!(
        q.l4,
        Some(L4Header::Udp {
            sport: 40000,
            dport: 9000
        })
    );
    // Sized as the plain sighting: refused, not read past.
    let mut short = bytes_of(&ev);
    short.truncate(size_of::<TcEvent>());
    assert!(matches!(decode(&short), Err(DecodeError::WrongSize { .. })));
}

#[test]
fn copied_bytes_of_an_icmp_error_give_its_quote_as_far_as_they_reach() {
    let (error, _) = port_unreachable();
    // Ethernet, the error's IPv4 and ICMP headers, then the quoted IPv4 and UDP headers.
    let mut frame = vec![0u8; 14];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&[
        0x45, 0, 0, 56, 0, 1, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
    ]);
    frame.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&[
        0x45, 0, 0, 28, 0x12, 0x34, 0x40, 0, 63, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    frame.extend_from_slice(&[0x9c, 0x40, 0x23, 0x28, 0, 8, 0, 0]);
    for cap in [frame.len(), 14 + 20 + 8 + 20 + 2, 14 + 20 + 8, 14 + 20 + 4] {
        let mut ev = snap_event(cap as u16, 14);
        ev.tc.packet = error;
        ev.data = [0; probe_common::MAX_SNAPLEN];
        ev.data[..cap].copy_from_slice(&frame[..cap]);
        let EventBody::Tc(tc) = decode(&bytes_of(&ev)).unwrap().body else {
            panic!("not tc")
        };
        let quote = tc.quoted.as_ref().and_then(|q| q.ip.as_ref());
        match cap {
            n if n == frame.len() => {
                let q = quote.expect("a whole quote");
                assert_eq!(q.ip_id, 0x1234);
                assert_eq!(
                    q.l4,
                    Some(L4Header::Udp {
                        sport: 40000,
                        dport: 9000
                    })
                );
            }
            // The quote's IP header without its ports: what was read, marked truncated.
            n if n == 14 + 20 + 8 + 20 + 2 => {
                assert_eq!(quote.expect("the quote's addresses").l4, None);
                assert!(tc.quoted.as_ref().unwrap().truncated);
            }
            _ => assert!(quote.is_none(), "cap {cap}: {:?}", tc.quoted),
        }
    }
}
