//! The formatted facts of one sighting, shared by every renderer: where it happened (in the
//! namespace's own terms, with Docker's names), which container it concerns, and what
//! happened there. Text and JSON timelines, and event lines, all take their words from here.

use std::{fmt::Write as _, net::IpAddr};

use crate::{
    addr::Endpoint,
    event::{
        DropSighting, Event, EventBody, FibLookup, IpHeader, L4Header, Packet, RuleVerdict,
        Transport,
    },
    topology::Topology,
};

/// Where a hop happened, appended to `out` (the common cases without allocating).
pub fn write_place(out: &mut String, e: &Event, topo: &Topology) {
    match &e.body {
        EventBody::Tc(t) => {
            topo.write_label(out, t.ifindex);
            out.push(' ');
            out.push_str(t.direction.as_str());
        }
        EventBody::Drop(d) => write_drop_place(out, d, topo),
        EventBody::Fib(f) => {
            out.push_str("route table ");
            write_table(out, f.table, f.table_name.as_deref());
            // One row per decision: the tables tried before the deciding one, and the rule.
            let before = f.tables_before();
            let rule = f.rule_pref.map(|p| format!("rule pref {p}"));
            if !before.is_empty() || rule.is_some() {
                out.push_str(" (");
                if !before.is_empty() {
                    let _ = write!(out, "after {}", before.join(", "));
                }
                if let Some(rule) = rule {
                    if !before.is_empty() {
                        out.push_str("; ");
                    }
                    out.push_str(&rule);
                }
                out.push(')');
            }
            // Made in another namespace (--all-netns): its devices are that namespace's.
            write_foreign_netns(out, f.netns, topo);
        }
        EventBody::FibRule(r) => {
            let _ = write!(out, "ip rule pref {}", r.pref);
        }
        EventBody::Rule(r) => {
            let _ = write!(out, "{} {}/{}", r.family.nft_name(), r.table, r.chain);
            if let Some(h) = r.hook {
                let _ = write!(out, " ({})", h.nft_name());
            }
        }
        EventBody::Netfilter(n) => {
            let _ = write!(out, "netfilter {}", n.hook.kernel_name());
        }
        EventBody::Chain(c) => {
            let _ = write!(
                out,
                "{} {}/{} ({})",
                c.engine.as_str(),
                c.table,
                c.chain,
                c.hook.kernel_name()
            );
        }
    }
}

/// Where a hop happened, in the namespace's own terms.
pub fn place(e: &Event, topo: &Topology) -> String {
    let mut s = String::new();
    write_place(&mut s, e, topo);
    s
}

fn write_drop_place(out: &mut String, d: &DropSighting, topo: &Topology) {
    let netns = u64::from(d.netns);
    match topo.containers.by_netns(netns) {
        // Dropped inside a container's own namespace: its interface index means nothing here.
        Some(c) if topo.container_of(d.ifindex) != Some(c) => {
            let _ = write!(out, "drop in container {c}");
        }
        _ if topo.container_of(d.ifindex).is_some() => {
            out.push_str("drop on ");
            topo.write_label(out, d.ifindex);
        }
        // Dropped in another namespace (--all-netns): name it, not its interface index.
        _ => match topo.foreign_netns(netns) {
            Some(name) => {
                let _ = write!(out, "drop in netns {name}");
            }
            None => {
                out.push_str("drop on ");
                topo.write_name(out, d.ifindex);
            }
        },
    }
}

/// ` in container web`, ` in netns lab-b` or ` in netns 4026532301` for a namespace other than
/// the traced one; nothing for the traced one or an unknown one.
fn write_foreign_netns(out: &mut String, netns: u32, topo: &Topology) {
    let netns = u64::from(netns);
    if netns == 0 || netns == topo.own_netns {
        return;
    }
    if let Some(c) = topo.containers.by_netns(netns) {
        let _ = write!(out, " in container {c}");
    } else if let Some(name) = topo.foreign_netns(netns) {
        let _ = write!(out, " in netns {name}");
    }
}

fn write_table(out: &mut String, id: u32, name: Option<&str>) {
    match name {
        Some(n) => out.push_str(n),
        None => {
            let _ = write!(out, "{id}");
        }
    }
}

/// The container a hop's interface (or namespace) belongs to, if Docker named one.
pub fn container<'a>(e: &Event, topo: &'a Topology) -> Option<&'a str> {
    match &e.body {
        EventBody::Tc(t) => topo.container_of(t.ifindex),
        EventBody::Drop(d) => topo
            .containers
            .by_netns(u64::from(d.netns))
            .or_else(|| topo.container_of(d.ifindex)),
        EventBody::Fib(f) => topo.containers.by_netns(u64::from(f.netns)),
        _ => None,
    }
}

/// What happened at a hop.
pub fn what(e: &Event) -> String {
    match &e.body {
        EventBody::Tc(t) => packet_text(&t.packet),
        EventBody::Drop(d) => format!(
            "DROP reason {}{}",
            d.reason
                .clone()
                .unwrap_or_else(|| d.reason_code.to_string()),
            d.location_sym
                .as_ref()
                .map(|l| format!(" in {l}"))
                .unwrap_or_default()
        ),
        EventBody::Fib(f) => format!("{} -> {}", fib_flow(f), fib_result(f)),
        EventBody::FibRule(r) => format!(
            "{} table {}",
            r.action.as_str(),
            r.table_name.clone().unwrap_or_else(|| r.table.to_string())
        ),
        EventBody::Rule(r) => r.decision(),
        EventBody::Netfilter(n) => format!(
            "{}{} ({}µs in the hook)",
            n.verdict.as_str().to_uppercase(),
            n.errno.map(|e| format!(" errno {e}")).unwrap_or_default(),
            n.duration_ns / 1000
        ),
        EventBody::Chain(c) => format!("-> {}", c.verdict.as_str().to_uppercase()),
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
        let _ = write!(s, " at {at}");
    }
    s
}

/// `ip filter FORWARD (forward) rule 12 [iifname ... drop] -> drop: udp a:1 > b:2`
pub fn rule_text(r: &RuleVerdict) -> String {
    let hook = r
        .hook
        .map(|h| format!(" ({})", h.nft_name()))
        .unwrap_or_default();
    let packet = r
        .packet
        .as_ref()
        .map(|p| format!(": {}", packet_text(p)))
        .unwrap_or_default();
    format!(
        "{} {} {}{hook} {}{packet}",
        r.family.nft_name(),
        r.table,
        r.chain,
        r.decision()
    )
}

/// `table main: udp 10.0.0.1:5000 > 10.0.0.2:53 -> dev eth0 via 10.0.0.254` or `-> ENETUNREACH`
pub fn fib_text(f: &FibLookup) -> String {
    let mut table = String::new();
    write_table(&mut table, f.table, f.table_name.as_deref());
    format!("table {table}: {} -> {}", fib_flow(f), fib_result(f))
}

/// The flow a routing lookup was made for: `udp 10.0.0.1:5000 > 10.0.0.2:53`.
fn fib_flow(f: &FibLookup) -> String {
    match f.proto {
        Transport::Tcp | Transport::Udp => format!(
            "{} {} > {}",
            f.proto,
            Endpoint(f.src, f.sport),
            Endpoint(f.dst, f.dport)
        ),
        Transport::Other(0) => format!("{} > {}", f.src, f.dst),
        p => format!("{p} {} > {}", f.src, f.dst),
    }
}

/// What a routing lookup found: `dev eth0 via 10.0.0.254`, or its error.
fn fib_result(f: &FibLookup) -> String {
    match (&f.error, &f.dev) {
        (Some(e), _) => e.clone(),
        (None, Some(dev)) => match f.gateway {
            Some(gw) => format!("dev {dev} via {gw}"),
            None => format!("dev {dev}"),
        },
        (None, None) => "no device".to_owned(),
    }
}

/// What a frame without an IP header carries, by its EtherType.
pub fn non_ip_kind(ethertype: u16) -> String {
    match ethertype {
        0x0806 => "arp".to_owned(),
        0x88cc => "lldp".to_owned(),
        other => format!("ethertype 0x{other:04x}"),
    }
}

/// tcpdump-like one-line summary of a packet.
pub fn packet_text(p: &Packet) -> String {
    let mut s = String::with_capacity(64);
    write_packet(&mut s, p);
    s
}

/// [`packet_text`], appended to `out`: TCP and UDP without allocating (a text timeline writes
/// one per hop).
pub fn write_packet(out: &mut String, p: &Packet) {
    match &p.ip {
        Some(ip) => write_ip(out, ip),
        None => out.push_str(&non_ip_kind(p.ethertype)),
    }
    out.push_str(" len ");
    push_decimal(out, u64::from(p.len));
    if p.truncated {
        out.push_str(" (truncated)");
    }
}

/// What happened at a hop ([`what`]), appended to `out`; a tc sighting without allocating.
pub fn write_what(out: &mut String, e: &Event) {
    match &e.body {
        EventBody::Tc(t) => write_packet(out, &t.packet),
        _ => out.push_str(&what(e)),
    }
}

/// `v` in decimal (what `write!(out, "{v}")` gives, without the formatting machinery).
pub fn push_decimal(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// `10.0.0.1:53` or `[fd00::1]:53`, as [`Endpoint`] shows it.
fn push_endpoint(out: &mut String, addr: IpAddr, port: u16) {
    match addr {
        IpAddr::V4(v4) => {
            push_ipv4(out, v4);
            out.push(':');
            push_decimal(out, u64::from(port));
        }
        v6 => {
            let _ = write!(out, "{}", Endpoint(v6, port));
        }
    }
}

fn push_ipv4(out: &mut String, a: std::net::Ipv4Addr) {
    for (i, octet) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(out, u64::from(octet));
    }
}

fn write_ip(out: &mut String, ip: &IpHeader) {
    match &ip.l4 {
        Some(L4Header::Tcp {
            sport,
            dport,
            seq,
            tcp_flags,
        }) => {
            out.push_str("tcp ");
            push_endpoint(out, ip.src, *sport);
            out.push_str(" > ");
            push_endpoint(out, ip.dst, *dport);
            let _ = write!(out, " [{tcp_flags}] seq ");
            push_decimal(out, u64::from(*seq));
        }
        Some(L4Header::Udp { sport, dport }) => {
            out.push_str("udp ");
            push_endpoint(out, ip.src, *sport);
            out.push_str(" > ");
            push_endpoint(out, ip.dst, *dport);
        }
        _ => out.push_str(&ip_text(ip)),
    }
}

fn ip_text(ip: &IpHeader) -> String {
    match &ip.l4 {
        Some(L4Header::Tcp { .. }) | Some(L4Header::Udp { .. }) => {
            let mut s = String::with_capacity(48);
            write_ip(&mut s, ip);
            s
        }
        Some(L4Header::Icmp {
            icmp_type,
            icmp_code,
            icmp_id,
            icmp_seq,
        }) => {
            let what = crate::timeline::icmp_error_name(
                ip.proto, *icmp_type, *icmp_code, *icmp_id, *icmp_seq,
            )
            .unwrap_or_else(|| icmp_name(ip.proto, *icmp_type, *icmp_code));
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
    use std::net::IpAddr;

    use super::*;
    use crate::event::TcpFlags;

    fn packet(src: &str, dst: &str, l4: L4Header, len: u32, truncated: bool) -> Packet {
        let src: IpAddr = src.parse().unwrap();
        let dst: IpAddr = dst.parse().unwrap();
        Packet {
            ethertype: if src.is_ipv4() { 0x0800 } else { 0x86dd },
            len,
            ip: Some(IpHeader {
                src,
                dst,
                proto: match l4 {
                    L4Header::Tcp { .. } => Transport::Tcp,
                    _ => Transport::Udp,
                },
                ip_id: 7,
                fragment: false,
                l4: Some(l4),
            }),
            truncated,
        }
    }

    /// The allocation-free writer says what the formatting machinery said.
    #[test]
    fn packet_text_matches_the_formatted_form() {
        let tcp = L4Header::Tcp {
            sport: 40_000,
            dport: 80,
            seq: u32::MAX,
            tcp_flags: TcpFlags(TcpFlags::SYN),
        };
        let udp = L4Header::Udp { sport: 0, dport: 9 };
        for (p, expected) in [
            (
                packet("172.17.0.2", "255.0.10.1", tcp.clone(), 60, false),
                format!(
                    "tcp {} > {} [{}] seq {} len 60",
                    Endpoint("172.17.0.2".parse().unwrap(), 40_000),
                    Endpoint("255.0.10.1".parse().unwrap(), 80),
                    TcpFlags(TcpFlags::SYN),
                    u32::MAX
                ),
            ),
            (
                packet("0.0.0.0", "10.99.0.2", udp.clone(), 0, true),
                "udp 0.0.0.0:0 > 10.99.0.2:9 len 0 (truncated)".to_owned(),
            ),
            (
                packet("fd00::1", "fd00::2", udp, 4_294_967_295, false),
                "udp [fd00::1]:0 > [fd00::2]:9 len 4294967295".to_owned(),
            ),
        ] {
            assert_eq!(packet_text(&p), expected);
        }
    }

    #[test]
    fn decimals() {
        for v in [0, 9, 10, 255, 65_535, u64::MAX] {
            let mut s = String::new();
            push_decimal(&mut s, v);
            assert_eq!(s, v.to_string());
        }
    }
}
