//! Turning events into text lines for people or JSON Lines for programs.

use std::{collections::HashMap, io::Write};

use serde::Serialize;

use crate::docker::Containers;
use crate::event::{
    DropSighting, Event, EventBody, FibLookup, IpHeader, L4Header, Packet, RuleVerdict, Transport,
};

/// Interface names by index, for the namespace being traced.
pub type IfNames = HashMap<u32, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// CLOCK_MONOTONIC now, in ns: the clock the kernel programs stamp events with.
pub fn monotonic_now_ns() -> u64 {
    // SAFETY: plain syscall into a stack struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts CLOCK_MONOTONIC event times to wall-clock time of day.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let read = |id| {
            // SAFETY: plain syscall into a stack struct.
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            unsafe { libc::clock_gettime(id, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        let mono = read(libc::CLOCK_MONOTONIC);
        let real = read(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic_ns: real - mono,
        }
    }

    /// `HH:MM:SS.uuuuuu` in local time.
    pub fn time_of_day(&self, monotonic_ns: u64) -> String {
        let real = monotonic_ns as i128 + self.realtime_minus_monotonic_ns;
        let secs = real.div_euclid(1_000_000_000) as libc::time_t;
        let micros = real.rem_euclid(1_000_000_000) / 1000;
        // SAFETY: localtime_r writes into our struct only.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::localtime_r(&secs, &mut tm) };
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            tm.tm_hour, tm.tm_min, tm.tm_sec, micros
        )
    }
}

pub struct Renderer {
    format: Format,
    clock: Clock,
    names: IfNames,
    containers: Containers,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    ifname: Option<&'a str>,
    /// The Docker container the interface (or a drop's namespace) belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
}

impl Renderer {
    pub fn new(format: Format, clock: Clock, names: IfNames) -> Self {
        Self {
            format,
            clock,
            names,
            containers: Containers::default(),
        }
    }

    /// Interface names, updated as interfaces are attached during a trace.
    pub fn names_mut(&mut self) -> &mut IfNames {
        &mut self.names
    }

    /// Docker's container names, updated as containers start.
    pub fn set_containers(&mut self, containers: Containers) {
        self.containers = containers;
    }

    fn container(&self, body: &EventBody) -> Option<&str> {
        match body {
            EventBody::Tc(tc) => self.containers.by_ifindex(tc.ifindex),
            EventBody::Drop(d) => self
                .containers
                .by_netns(u64::from(d.netns))
                .or_else(|| self.containers.by_ifindex(d.ifindex)),
            _ => None,
        }
    }

    pub fn write(&self, out: &mut impl Write, event: &Event) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                let ifname = match &event.body {
                    EventBody::Tc(tc) => self.names.get(&tc.ifindex).map(String::as_str),
                    EventBody::Drop(d) => self.names.get(&d.ifindex).map(String::as_str),
                    EventBody::Netfilter(v) => {
                        let i = if v.out_ifindex != 0 {
                            v.out_ifindex
                        } else {
                            v.in_ifindex
                        };
                        self.names.get(&i).map(String::as_str)
                    }
                    EventBody::Fib(_)
                    | EventBody::Rule(_)
                    | EventBody::Chain(_)
                    | EventBody::FibRule(_) => None,
                };
                let container = self.container(&event.body);
                serde_json::to_writer(
                    &mut *out,
                    &JsonLine {
                        event,
                        ifname,
                        container,
                    },
                )?;
                out.write_all(b"\n")
            }
            Format::Text => writeln!(out, "{}", self.text(event)),
        }
    }

    pub fn text(&self, event: &Event) -> String {
        let time = self.clock.time_of_day(event.ts_ns);
        match &event.body {
            EventBody::Tc(tc) => {
                let ifname = self
                    .names
                    .get(&tc.ifindex)
                    .cloned()
                    .unwrap_or_else(|| format!("if{}", tc.ifindex));
                let container = self
                    .containers
                    .by_ifindex(tc.ifindex)
                    .map(|c| format!("   (container {c})"))
                    .unwrap_or_default();
                format!(
                    "{time} {ifname:<12} {:<7} {}{container}",
                    tc.direction.as_str(),
                    packet_text(&tc.packet)
                )
            }
            EventBody::Drop(d) => format!(
                "{time} {:<12} DROP    {}",
                self.ifname(d.ifindex),
                drop_text(d)
            ),
            EventBody::Fib(f) => format!("{time} {:<12} route   {}", "", fib_text(f)),
            EventBody::Rule(r) => {
                let dev = if r.oif != 0 { r.oif } else { r.iif };
                format!("{time} {:<12} rule    {}", self.ifname(dev), rule_text(r))
            }
            EventBody::Netfilter(v) => {
                let errno = v.errno.map(|e| format!(" (errno {e})")).unwrap_or_default();
                format!(
                    "{time} {:<12} {:<7} {} {} {}{errno} in {} out {} after {}us: {}",
                    self.ifname(if v.out_ifindex != 0 {
                        v.out_ifindex
                    } else {
                        v.in_ifindex
                    }),
                    "hook",
                    v.family,
                    v.hook,
                    v.verdict.to_uppercase(),
                    self.ifname(v.in_ifindex),
                    self.ifname(v.out_ifindex),
                    v.duration_ns / 1000,
                    packet_text(&v.packet)
                )
            }
            EventBody::Chain(c) => {
                let chain = if c.chain.is_empty() {
                    String::new()
                } else {
                    format!(" chain {}", c.chain)
                };
                format!(
                    "{time} {:<12} chain   {} {} table {}{chain} at {} -> {}",
                    "",
                    c.engine,
                    c.family,
                    c.table,
                    c.hook,
                    c.verdict.to_uppercase()
                )
            }
            EventBody::FibRule(r) => {
                let table = r.table_name.clone().unwrap_or_else(|| r.table.to_string());
                format!(
                    "{time} {:<12} ip-rule {} > {}: rule pref {} -> {} table {}",
                    "", r.src, r.dst, r.pref, r.action, table
                )
            }
        }
    }

    fn ifname(&self, ifindex: u32) -> String {
        match ifindex {
            0 => "-".to_owned(),
            i => self
                .names
                .get(&i)
                .cloned()
                .unwrap_or_else(|| format!("if{i}")),
        }
    }
}

/// `tcp a:1 > b:2 [S] seq 1 len 60 reason NETFILTER_DROP at nf_hook_slow+0x9a`
pub fn drop_text(d: &DropSighting) -> String {
    let reason = match &d.reason {
        Some(r) => r.clone(),
        None if d.reason_code == 0 => "unreported".to_owned(),
        None => format!("code {}", d.reason_code),
    };
    let mut s = format!("{} reason {reason}", packet_text(&d.packet));
    if let Some(at) = &d.location_sym {
        s.push_str(&format!(" at {at}"));
    }
    s
}

/// `ip filter FORWARD (forward) rule 12 [iifname ... drop] -> drop: udp a:1 > b:2`
pub fn rule_text(r: &RuleVerdict) -> String {
    let hook = r
        .hook
        .as_deref()
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    let packet = r
        .packet
        .as_ref()
        .map(|p| format!(": {}", packet_text(p)))
        .unwrap_or_default();
    format!(
        "{} {} {}{hook} {}{packet}",
        r.family,
        r.table,
        r.chain,
        r.decision()
    )
}

/// `table main: udp 10.0.0.1:5000 > 10.0.0.2:53 -> dev eth0 via 10.0.0.254` or `-> ENETUNREACH`
pub fn fib_text(f: &FibLookup) -> String {
    let table = match &f.table_name {
        Some(n) => n.clone(),
        None => f.table.to_string(),
    };
    let flow = match f.proto {
        Transport::Tcp | Transport::Udp => {
            let addr = |a: std::net::IpAddr, p: u16| match a {
                std::net::IpAddr::V6(v6) => format!("[{v6}]:{p}"),
                v4 => format!("{v4}:{p}"),
            };
            format!(
                "{} {} > {}",
                f.proto,
                addr(f.src, f.sport),
                addr(f.dst, f.dport)
            )
        }
        Transport::Other(0) => format!("{} > {}", f.src, f.dst),
        p => format!("{p} {} > {}", f.src, f.dst),
    };
    let result = match (&f.error, &f.dev) {
        (Some(e), _) => e.clone(),
        (None, Some(dev)) => match f.gateway {
            Some(gw) => format!("dev {dev} via {gw}"),
            None => format!("dev {dev}"),
        },
        (None, None) => "no device".to_owned(),
    };
    format!("table {table}: {flow} -> {result}")
}

/// tcpdump-like one-line summary of a packet.
pub fn packet_text(p: &Packet) -> String {
    let mut s = match &p.ip {
        Some(ip) => ip_text(ip),
        None => match p.ethertype {
            0x0806 => "arp".to_owned(),
            0x88cc => "lldp".to_owned(),
            other => format!("ethertype 0x{other:04x}"),
        },
    };
    s.push_str(&format!(" len {}", p.len));
    if p.truncated {
        s.push_str(" (truncated)");
    }
    s
}

fn ip_text(ip: &IpHeader) -> String {
    let addr = |a: std::net::IpAddr, port: u16| match a {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        v4 => format!("{v4}:{port}"),
    };
    match &ip.l4 {
        Some(L4Header::Tcp {
            sport,
            dport,
            seq,
            tcp_flags,
        }) => format!(
            "tcp {} > {} [{tcp_flags}] seq {seq}",
            addr(ip.src, *sport),
            addr(ip.dst, *dport)
        ),
        Some(L4Header::Udp { sport, dport }) => {
            format!("udp {} > {}", addr(ip.src, *sport), addr(ip.dst, *dport))
        }
        Some(L4Header::Icmp {
            icmp_type,
            icmp_code,
            icmp_id,
            icmp_seq,
        }) => {
            let what = icmp_name(ip.proto, *icmp_type, *icmp_code);
            let echo = matches!(
                (ip.proto, icmp_type),
                (Transport::Icmp, 0 | 8) | (Transport::Icmpv6, 128 | 129)
            );
            if echo {
                format!(
                    "{} {} > {} {what} id {icmp_id} seq {icmp_seq}",
                    ip.proto, ip.src, ip.dst
                )
            } else {
                format!("{} {} > {} {what}", ip.proto, ip.src, ip.dst)
            }
        }
        None => {
            let frag = if ip.fragment { " fragment" } else { "" };
            format!("{} {} > {}{frag}", ip.proto, ip.src, ip.dst)
        }
    }
}

fn icmp_name(proto: Transport, t: u8, code: u8) -> String {
    let name = match (proto, t) {
        (Transport::Icmp, 0) | (Transport::Icmpv6, 129) => "echo-reply",
        (Transport::Icmp, 8) | (Transport::Icmpv6, 128) => "echo-request",
        (Transport::Icmp, 3) | (Transport::Icmpv6, 1) => "unreachable",
        (Transport::Icmp, 11) | (Transport::Icmpv6, 3) => "time-exceeded",
        (Transport::Icmpv6, 135) => "neighbor-solicit",
        (Transport::Icmpv6, 136) => "neighbor-advert",
        (Transport::Icmpv6, 133) => "router-solicit",
        (Transport::Icmpv6, 134) => "router-advert",
        _ => return format!("type {t} code {code}"),
    };
    if code == 0 {
        name.to_owned()
    } else {
        format!("{name} code {code}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Direction, TcSighting, TcpFlags};

    fn tcp_event() -> Event {
        Event {
            ts_ns: 5,
            cpu: 0,
            body: EventBody::Tc(TcSighting {
                ifindex: 3,
                direction: Direction::Ingress,
                netns_cookie: 1,
                mark: 0,
                packet: Packet {
                    ethertype: 0x0800,
                    len: 74,
                    ip: Some(IpHeader {
                        src: "10.0.0.1".parse().unwrap(),
                        dst: "10.0.0.2".parse().unwrap(),
                        proto: Transport::Tcp,
                        ip_id: 1,
                        fragment: false,
                        l4: Some(L4Header::Tcp {
                            sport: 40000,
                            dport: 80,
                            seq: 9,
                            tcp_flags: TcpFlags(TcpFlags::SYN),
                        }),
                    }),
                    truncated: false,
                },
            }),
        }
    }

    #[test]
    fn text_line_names_interface_and_tuple() {
        let names = IfNames::from([(3, "veth0".to_owned())]);
        let r = Renderer::new(Format::Text, Clock::now(), names);
        let line = r.text(&tcp_event());
        assert!(
            line.ends_with(
                "veth0        ingress tcp 10.0.0.1:40000 > 10.0.0.2:80 [S] seq 9 len 74"
            ),
            "{line}"
        );
    }

    #[test]
    fn json_line_is_flat_and_complete() {
        let names = IfNames::from([(3, "veth0".to_owned())]);
        let r = Renderer::new(Format::Json, Clock::now(), names);
        let mut out = Vec::new();
        r.write(&mut out, &tcp_event()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kind"], "tc");
        assert_eq!(v["ifname"], "veth0");
        assert_eq!(v["direction"], "ingress");
        assert_eq!(v["packet"]["ip"]["proto"], "tcp");
        assert_eq!(v["packet"]["ip"]["sport"], 40000);
        assert_eq!(v["packet"]["ip"]["tcp_flags"], "S");
        assert_eq!(v["packet"]["ip"]["src"], "10.0.0.1");
    }
}
