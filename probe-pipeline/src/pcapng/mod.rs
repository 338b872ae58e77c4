//! Timelines as a pcapng file for Wireshark and tcpdump (`--pcapng FILE`). One interface
//! description per observation point (`veth-web egress`, `docker0 ingress`, `drop on eth0`,
//! `netfilter FORWARD`), and one enhanced packet block per sighting that carries the packet
//! itself: tc sightings, drops and netfilter hook verdicts. A block holds the packet's real
//! bytes where the trace copied them (`--snaplen`), else headers rebuilt from the decoded
//! fields ([`rebuild`]); all of them as Ethernet frames (libpcap reads only files of one link
//! type).
//!
//! Every block of one packet has the timeline's packet number as its `epb_packetid`, so
//! Wireshark's `frame.packet_id` groups them as the timeline does. Hops without a packet of
//! their own (routing lookups, policy rules, chain and rule verdicts) become comments on the
//! packet's block before them (or the first one, when they come first); verdicts and drop
//! reasons are comments too, and the diagnosis is a comment on the last block. Timestamps are
//! nanoseconds (if_tsresol 9) of wall time, from the monotonic event times and the recording
//! machine's clock.

pub mod block;
pub mod rebuild;

use std::{
    collections::HashMap,
    io::{self, Write},
};

use crate::{
    event::{Direction, EventBody, Frame, Hook, LinkLayer, Packet},
    render::{
        Clock,
        facts::{container, place, what},
    },
    timeline::{Hop, Journey, diagnose},
    topology::Topology,
};

/// Writes journeys as pcapng blocks, interfaces described as they are first needed.
pub struct PcapngWriter<W: Write> {
    out: W,
    clock: Clock,
    /// Interface name → interface id, in the order the IDBs were written.
    interfaces: HashMap<String, u32>,
    /// Packet blocks written.
    packets: u64,
}

/// Who wrote the file, for the section header.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// `probe 0.1.0`.
    pub application: String,
    /// `Linux 6.18.0`.
    pub os: String,
    /// The host name of the machine traced.
    pub host: String,
}

impl<W: Write> PcapngWriter<W> {
    pub fn new(mut out: W, clock: Clock, origin: &Origin) -> io::Result<Self> {
        let hardware = if origin.host.is_empty() {
            String::new()
        } else {
            format!("host {}", origin.host)
        };
        out.write_all(&block::section_header(
            &origin.application,
            &origin.os,
            &hardware,
        ))?;
        Ok(Self {
            out,
            clock,
            interfaces: HashMap::new(),
            packets: 0,
        })
    }

    /// Packet blocks written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The blocks of one finished journey.
    pub fn write_journey(&mut self, j: &Journey, topo: &Topology) -> io::Result<()> {
        let carriers: Vec<usize> = (0..j.hops.len())
            .filter(|&i| carries_packet(&j.hops[i]))
            .collect();
        let Some(&first) = carriers.first() else {
            // Nothing but routing lookups or verdicts: no packet to show.
            return Ok(());
        };
        // Comments per carrier hop: its own facts, then the hops without a packet that
        // follow it (those before the first carrier go on the first).
        let mut comments: HashMap<usize, Vec<String>> = HashMap::new();
        // The first block names the packet before anything else is said.
        comments.insert(first, own_comments(j, first, &j.hops[first], topo));
        let mut owner = first;
        for (i, hop) in j.hops.iter().enumerate() {
            if i == first {
                continue;
            }
            if carriers.contains(&i) {
                owner = i;
                comments
                    .entry(i)
                    .or_default()
                    .extend(own_comments(j, i, hop, topo));
            } else {
                comments.entry(owner).or_default().push(format!(
                    "{}: {}",
                    place(&hop.event, topo),
                    what(&hop.event)
                ));
            }
        }
        let last = carriers[carriers.len() - 1];
        let diagnosis = diagnose(j, topo);
        comments
            .entry(last)
            .or_default()
            .push(format!("diagnosis: {}", diagnosis.text));
        if j.evicted {
            comments
                .entry(last)
                .or_default()
                .push("cut short: too many packets in flight".into());
        }
        if j.events_lost {
            comments
                .entry(last)
                .or_default()
                .push("events were lost while this packet was in flight".into());
        }
        for &i in &carriers {
            let hop = &j.hops[i];
            let Some((packet, frame)) = packet_of(hop) else {
                continue;
            };
            let b = packet_bytes(packet, frame);
            let name = place(&hop.event, topo);
            let interface = self.interface(&name, hop, topo)?;
            let mut notes = comments.remove(&i).unwrap_or_default();
            if b.rebuilt {
                notes.push(format!(
                    "headers rebuilt from the decoded fields (packet length {})",
                    packet.len
                ));
            }
            let unix = self.clock.unix_ns(hop.ts_ns).max(0);
            let bytes = block::enhanced_packet(&block::Packet {
                interface,
                ts_ns: u64::try_from(unix).unwrap_or(u64::MAX),
                data: &b.data,
                original_len: b.original_len,
                flags: direction_flags(hop),
                packet_id: j.id,
                comments: &notes,
            });
            self.out.write_all(&bytes)?;
            self.packets += 1;
        }
        Ok(())
    }

    /// The id of the interface block for an observation point, written the first time.
    fn interface(&mut self, name: &str, hop: &Hop, topo: &Topology) -> io::Result<u32> {
        if let Some(&id) = self.interfaces.get(name) {
            return Ok(id);
        }
        let id = self.interfaces.len() as u32;
        self.out.write_all(&block::interface(
            block::LINKTYPE_ETHERNET,
            name,
            &describe(hop, topo),
        ))?;
        self.interfaces.insert(name.to_owned(), id);
        Ok(id)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The packet a hop saw, and its bytes when they were copied; None for hops without a packet
/// of their own (routing lookups and verdicts).
fn packet_of(h: &Hop) -> Option<(&Packet, Option<&Frame>)> {
    match &h.event.body {
        EventBody::Tc(t) => Some((&t.packet, t.frame.as_ref())),
        EventBody::Drop(d) => Some((&d.packet, None)),
        EventBody::Netfilter(n) => Some((&n.packet, None)),
        _ => None,
    }
}

/// A hop that sees the packet itself (and so gets a packet block).
fn carries_packet(h: &Hop) -> bool {
    packet_of(h).is_some()
}

/// What goes into a packet's block.
struct Bytes {
    /// An Ethernet frame.
    data: Vec<u8>,
    original_len: u32,
    /// Rebuilt from the decoded fields, not copied.
    rebuilt: bool,
}

fn packet_bytes(packet: &Packet, frame: Option<&Frame>) -> Bytes {
    if let Some(f) = frame {
        return match f.link {
            LinkLayer::Ethernet => Bytes {
                data: f.bytes.clone(),
                original_len: packet.len,
                rebuilt: false,
            },
            // From a device without a link layer (tun, WireGuard): behind a zero-address
            // Ethernet header, the one link type of the file.
            LinkLayer::Ip => Bytes {
                data: rebuild::ethernet(&f.bytes, packet.ethertype),
                original_len: packet.len.saturating_add(14),
                rebuilt: false,
            },
        };
    }
    let data = rebuild::rebuild(packet);
    Bytes {
        original_len: data.len() as u32,
        data,
        rebuilt: true,
    }
}

/// What the packet's own block says: the packet number, the rewrite seen here, and for drops
/// and hook verdicts the verdict and the reason.
fn own_comments(j: &Journey, i: usize, hop: &Hop, topo: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    if i == j.hops.iter().position(carries_packet).unwrap_or(0) {
        let head = j.first.map(|t| t.to_string()).unwrap_or_default();
        out.push(format!("probe packet {} (flow {}) {head}", j.id, j.flow));
    }
    if let Some(r) = j.rewrites.iter().find(|r| r.at_hop == i) {
        out.push(format!("rewritten here: {}", r.note()));
    }
    match &hop.event.body {
        EventBody::Drop(d) => {
            let reason = d
                .reason
                .clone()
                .unwrap_or_else(|| d.reason_code.to_string());
            let at = d
                .location_sym
                .as_ref()
                .map(|l| format!(" in {l}"))
                .unwrap_or_default();
            out.push(format!("verdict: drop; drop reason: {reason}{at}"));
        }
        EventBody::Netfilter(_) => {
            out.push(format!("verdict: {}", what(&hop.event)));
        }
        _ => {}
    }
    if let Some(c) = container(&hop.event, topo) {
        out.push(format!("container {c}"));
    }
    out
}

/// The interface's description: the observation point, its link kind, namespace and
/// container.
fn describe(hop: &Hop, topo: &Topology) -> String {
    let mut parts = Vec::new();
    match &hop.event.body {
        EventBody::Tc(t) => {
            let kind = topo.kind(t.ifindex);
            parts.push(format!(
                "tc {} on {}{}",
                t.direction.as_str(),
                topo.name(t.ifindex),
                if kind.is_empty() {
                    String::new()
                } else {
                    format!(" ({kind})")
                }
            ));
            match topo.containers.inside(t.ifindex) {
                Some((c, _)) if topo.is_inside(t.ifindex) => {
                    parts.push(format!("in the namespace of container {c}"))
                }
                _ => parts.push(own_namespace(topo)),
            }
        }
        EventBody::Drop(d) => {
            parts.push("packets the kernel freed as dropped (skb:kfree_skb)".into());
            match topo.foreign_netns(u64::from(d.netns)) {
                Some(ns) => parts.push(format!("namespace {ns}")),
                None => parts.push(own_namespace(topo)),
            }
        }
        EventBody::Netfilter(n) => {
            parts.push(format!(
                "netfilter {} hook verdicts (nf_hook_slow)",
                n.hook.kernel_name()
            ));
            parts.push(own_namespace(topo));
        }
        _ => {}
    }
    if let Some(c) = container(&hop.event, topo) {
        parts.push(format!("container {c}"));
    }
    parts.retain(|p| !p.is_empty());
    parts.join(", ")
}

fn own_namespace(topo: &Topology) -> String {
    match topo.netns_names.get(&topo.own_netns) {
        Some(name) => format!("namespace {name}"),
        None if topo.own_netns != 0 => format!("namespace {}", topo.own_netns),
        None => String::new(),
    }
}

/// `epb_flags` direction: tc's, or the hook's side of routing.
fn direction_flags(h: &Hop) -> u32 {
    match &h.event.body {
        EventBody::Tc(t) => match t.direction {
            Direction::Ingress => block::FLAG_INBOUND,
            Direction::Egress => block::FLAG_OUTBOUND,
        },
        EventBody::Netfilter(n) => match n.hook {
            Hook::Prerouting | Hook::Input => block::FLAG_INBOUND,
            Hook::Output | Hook::Postrouting => block::FLAG_OUTBOUND,
            _ => 0,
        },
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
