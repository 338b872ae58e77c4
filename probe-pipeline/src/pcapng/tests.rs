//! The writer on hand-made journeys, read back with a small pcapng reader: framing, one
//! interface per observation point and link type, packet ids, comments, captured bytes, and
//! the edges (no packet at all, an output that fails, times before the epoch).

use super::*;
use crate::{
    event::{DropSighting, Event, FibLookup, IpHeader, L4Header, Mechanism, TcSighting, Transport},
    timeline::{Correlator, Limits},
};

/// (block type, body) of every block, after checking each one's framing.
fn blocks(file: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < file.len() {
        let ty = u32::from_ne_bytes(file[at..at + 4].try_into().unwrap());
        let len = u32::from_ne_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
        assert_eq!(len % 4, 0, "block at {at} of length {len}");
        let trailer = u32::from_ne_bytes(file[at + len - 4..at + len].try_into().unwrap());
        assert_eq!(trailer as usize, len);
        out.push((ty, file[at + 8..at + len - 4].to_vec()));
        at += len;
    }
    assert_eq!(at, file.len());
    out
}

/// The options after `fixed` bytes of a block body: (code, value).
fn options(body: &[u8], fixed: usize) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = fixed;
    loop {
        let code = u16::from_ne_bytes([body[at], body[at + 1]]);
        let len = u16::from_ne_bytes([body[at + 2], body[at + 3]]) as usize;
        if code == 0 {
            assert_eq!(at + 4, body.len(), "options end the block");
            return out;
        }
        out.push((code, body[at + 4..at + 4 + len].to_vec()));
        at += 4 + len.next_multiple_of(4);
    }
}

struct Epb {
    interface: u32,
    ts: u64,
    data: Vec<u8>,
    original: u32,
    id: u64,
    flags: u32,
    comments: Vec<String>,
}

fn epbs(file: &[u8]) -> (Vec<(u16, String, String)>, Vec<Epb>) {
    let mut idbs = Vec::new();
    let mut packets = Vec::new();
    for (ty, body) in blocks(file) {
        match ty {
            0x0A0D0D0A => {}
            1 => {
                let link = u16::from_ne_bytes([body[0], body[1]]);
                let opts = options(&body, 8);
                let text = |c| {
                    opts.iter()
                        .find(|(code, _)| *code == c)
                        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
                        .unwrap_or_default()
                };
                assert!(opts.contains(&(9, vec![9])), "if_tsresol 9");
                idbs.push((link, text(2), text(3)));
            }
            6 => {
                let word = |i: usize| u32::from_ne_bytes(body[i..i + 4].try_into().unwrap());
                let cap = word(12) as usize;
                let opts = options(&body, 20 + cap.next_multiple_of(4));
                let mut e = Epb {
                    interface: word(0),
                    ts: (u64::from(word(4)) << 32) | u64::from(word(8)),
                    data: body[20..20 + cap].to_vec(),
                    original: word(16),
                    id: 0,
                    flags: 0,
                    comments: Vec::new(),
                };
                for (code, v) in opts {
                    match code {
                        1 => e.comments.push(String::from_utf8(v).unwrap()),
                        2 => e.flags = u32::from_ne_bytes(v.try_into().unwrap()),
                        5 => e.id = u64::from_ne_bytes(v.try_into().unwrap()),
                        other => panic!("unexpected option {other}"),
                    }
                }
                packets.push(e);
            }
            other => panic!("unexpected block type {other:#x}"),
        }
    }
    (idbs, packets)
}

fn udp(ip_id: u16) -> crate::event::Packet {
    crate::event::Packet {
        ethertype: 0x0800,
        len: 42,
        ip: Some(IpHeader {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: Transport::Udp,
            ip_id,
            fragment: false,
            l4: Some(L4Header::Udp {
                sport: 4000,
                dport: 53,
            }),
        }),
        truncated: false,
    }
}

fn tc(ts: u64, ifindex: u32, direction: Direction, ip_id: u16, frame: Option<Frame>) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Tc(TcSighting {
            ifindex,
            direction,
            netns_cookie: 0,
            mark: 0,
            packet: udp(ip_id),
            quoted: None,
            frame,
        }),
    }
}

fn fib(ts: u64) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Fib(FibLookup {
            table: 254,
            table_name: Some("main".into()),
            err: 0,
            error: None,
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            gateway: None,
            dev: Some("veth-b".into()),
            oif: 0,
            iif: 2,
            proto: Transport::Udp,
            sport: 4000,
            dport: 53,
            tos: 0,
            scope: 0,
            flags: 0,
            source: Mechanism::FibTracepoint,
            rule_pref: None,
            tried: Vec::new(),
            netns: 0,
        }),
    }
}

fn dropped(ts: u64, ip_id: u16) -> Event {
    Event {
        ts_ns: ts,
        cpu: 0,
        body: EventBody::Drop(DropSighting {
            skb: 0xffff_8880_0000_1000,
            reason_code: 6,
            reason: Some("NETFILTER_DROP".into()),
            location: 0,
            location_sym: Some("nf_hook_slow+0x9a".into()),
            ifindex: 3,
            netns: 0,
            packet: udp(ip_id),
        }),
    }
}

fn topo() -> Topology {
    let mut t = Topology::default();
    t.links.insert(2, ("veth-a".into(), "veth".into()));
    t.links.insert(3, ("veth-b".into(), "veth".into()));
    t.containers.interfaces.insert(3, "web".into());
    t.own_netns = 4026531840;
    t.netns_names.insert(4026531840, "lab-host".into());
    t
}

fn journeys(events: Vec<Event>) -> Vec<Journey> {
    let mut c = Correlator::new(Limits::default());
    for e in events {
        c.push(e);
    }
    let mut done = c.take_finished();
    done.extend(c.flush());
    done.sort_by_key(|j| j.id);
    done
}

fn write(journeys: &[Journey], clock: Clock) -> Vec<u8> {
    let mut file = Vec::new();
    let mut w = PcapngWriter::new(&mut file, clock, &Origin::default()).unwrap();
    for j in journeys {
        w.write_journey(j, &topo()).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    file
}

#[test]
fn one_block_per_sighting_grouped_by_packet_id() {
    let js = journeys(vec![
        tc(1_000, 2, Direction::Ingress, 7, None),
        fib(1_500),
        tc(2_000, 3, Direction::Egress, 7, None),
        tc(10_000, 2, Direction::Ingress, 8, None),
        dropped(11_000, 8),
    ]);
    assert_eq!(js.len(), 2);
    let clock = Clock {
        realtime_minus_monotonic_ns: 1_700_000_000_000_000_000,
        utc_offset_s: 0,
    };
    let (idbs, packets) = epbs(&write(&js, clock));
    assert_eq!(packets.len(), 4, "fib lookups get no block of their own");
    let ids: Vec<u64> = packets.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![js[0].id, js[0].id, js[1].id, js[1].id]);
    assert_eq!(packets[0].ts, 1_700_000_000_000_001_000);
    assert_eq!(
        (packets[0].flags, packets[1].flags, packets[3].flags),
        (block::FLAG_INBOUND, block::FLAG_OUTBOUND, 0)
    );
    // veth-a ingress is described once and used by both packets.
    let names: Vec<&str> = idbs.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "veth-a ingress",
            "veth-b (container web) egress",
            "drop on veth-b (container web)"
        ]
    );
    assert_eq!(packets[0].interface, packets[2].interface);
    assert!(
        idbs.iter()
            .all(|(link, _, _)| *link == block::LINKTYPE_ETHERNET)
    );
    assert!(idbs[1].2.contains("namespace lab-host") && idbs[1].2.contains("container web"));
    // The routing lookup is a comment on the block before it; the diagnosis on the last.
    assert!(
        packets[0]
            .comments
            .iter()
            .any(|c| c.starts_with("route table main")),
        "{:?}",
        packets[0].comments
    );
    assert!(
        packets[1]
            .comments
            .iter()
            .any(|c| c.starts_with("diagnosis: "))
    );
    assert!(
        !packets[0]
            .comments
            .iter()
            .any(|c| c.starts_with("diagnosis: "))
    );
    let drop_notes = packets[3].comments.join("\n");
    assert!(
        drop_notes.contains("drop reason: NETFILTER_DROP in nf_hook_slow+0x9a"),
        "{drop_notes}"
    );
    // Rebuilt headers: Ethernet + IPv4 + UDP, 42 bytes, said so.
    assert_eq!(packets[0].data.len(), 42);
    assert_eq!(packets[0].original, 42);
    assert_eq!(&packets[0].data[12..14], &[0x08, 0x00]);
    assert_eq!(&packets[0].data[26..34], &[10, 0, 0, 1, 10, 0, 0, 2]);
    assert!(packets[0].comments.iter().any(|c| c.contains("rebuilt")));
}

#[test]
fn captured_bytes_are_written_as_they_were_on_an_ethernet_interface() {
    let frame = Frame {
        link: LinkLayer::Ethernet,
        bytes: (0..61).collect(),
    };
    let js = journeys(vec![tc(
        1_000,
        2,
        Direction::Egress,
        7,
        Some(frame.clone()),
    )]);
    let (idbs, packets) = epbs(&write(&js, Clock::default()));
    assert_eq!(idbs[0].0, block::LINKTYPE_ETHERNET);
    assert_eq!(packets[0].data, frame.bytes);
    // The packet was 42 bytes long on the skb: never below what was captured.
    assert_eq!(packets[0].original, 61);
    assert!(!packets[0].comments.iter().any(|c| c.contains("rebuilt")));
}

#[test]
fn bytes_copied_from_a_device_without_a_link_layer_get_an_ethernet_header() {
    let ip: Vec<u8> = [0x45u8, 0, 0, 28].into_iter().chain(0..24).collect();
    let frame = Frame {
        link: LinkLayer::Ip,
        bytes: ip.clone(),
    };
    let js = journeys(vec![tc(1_000, 2, Direction::Egress, 7, Some(frame))]);
    let (idbs, packets) = epbs(&write(&js, Clock::default()));
    assert_eq!(idbs[0].0, block::LINKTYPE_ETHERNET);
    assert_eq!(&packets[0].data[12..14], &[0x08, 0x00]);
    assert_eq!(&packets[0].data[14..], &ip[..]);
    assert_eq!(packets[0].original, 42 + 14);
}

#[test]
fn journeys_without_a_packet_write_no_block() {
    let mut js = journeys(vec![tc(1_000, 2, Direction::Ingress, 7, None), fib(1_500)]);
    assert_eq!(js.len(), 1);
    // As a walk of routing lookups or verdicts alone would be.
    js[0].hops.retain(|h| !carries_packet(h));
    assert_eq!(js[0].hops.len(), 1);
    let file = write(&js, Clock::default());
    let (idbs, packets) = epbs(&file);
    assert!(idbs.is_empty() && packets.is_empty());
    // The section header alone is a valid file.
    assert_eq!(blocks(&file).len(), 1);
}

#[test]
fn times_before_the_epoch_are_clamped_not_wrapped() {
    let js = journeys(vec![tc(1_000, 2, Direction::Egress, 7, None)]);
    let clock = Clock {
        realtime_minus_monotonic_ns: -5_000,
        utc_offset_s: 0,
    };
    let (_, packets) = epbs(&write(&js, clock));
    assert_eq!(packets[0].ts, 0);
}

#[test]
fn a_failing_output_is_an_error() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    assert!(PcapngWriter::new(Full, Clock::default(), &Origin::default()).is_err());
}
