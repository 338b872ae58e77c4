//! Packet filter expressions, pcap style: `host 172.17.0.2 and tcp port 80`,
//! `src net 10.0.0.0/8 and not dst portrange 1-1023`, `(udp or icmp) and dst host 1.1.1.1`.
//!
//! Grammar: `or` of `and` of `not` of a primitive or a parenthesised expression. Primitives:
//! `[src|dst] host ADDR`, `[src|dst] net CIDR`, `[src|dst] port N`, `[src|dst] portrange A-B`,
//! `tcp`, `udp`, `icmp`, `icmp6`, `ip`, `ip6`, and `tcp|udp port N` (protocol and port). A bare
//! address means `host ADDR`. `&&`, `||` and `!` work too. Errors name the position.

use std::{collections::HashSet, net::IpAddr};

use thiserror::Error;

use crate::event::Transport;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("filter '{expr}' at position {position}: {message}")]
pub struct FilterError {
    pub message: String,
    /// Character position (0-based) in the expression.
    pub position: usize,
    expr: String,
}

/// Which end of a packet a primitive looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Src,
    Dst,
    Either,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Net(Dir, IpAddr, u8),
    Ports(Dir, u16, u16),
    Proto(ProtoMatch),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoMatch {
    Transport(Transport),
    Ipv4,
    Ipv6,
}

/// What a filter can look at in an event: the packet's tuple, or a route lookup's flow.
pub fn fields_of(event: &crate::event::Event) -> Option<Fields> {
    use crate::event::{EventBody, L4Header};
    let packet = match &event.body {
        EventBody::Tc(t) => Some(&t.packet),
        EventBody::Drop(d) => Some(&d.packet),
        EventBody::Netfilter(n) => Some(&n.packet),
        EventBody::Rule(r) => r.packet.as_ref(),
        EventBody::Fib(f) => {
            return Some(Fields {
                src: f.src,
                dst: f.dst,
                proto: f.proto,
                sport: f.sport,
                dport: f.dport,
            });
        }
        EventBody::FibRule(r) => {
            return Some(Fields {
                src: r.src,
                dst: r.dst,
                proto: Transport::Other(0),
                sport: 0,
                dport: 0,
            });
        }
        EventBody::Chain(_) => None,
    }?;
    let ip = packet.ip.as_ref()?;
    let (sport, dport) = match ip.l4 {
        Some(L4Header::Tcp { sport, dport, .. }) | Some(L4Header::Udp { sport, dport }) => {
            (sport, dport)
        }
        _ => (0, 0),
    };
    Some(Fields {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport,
        dport,
    })
}

/// A filter applied to a stream of events the way the kernel programs apply it: a packet
/// admitted once is followed through NAT (by what NAT leaves alone: protocol, IPv4 id, TCP
/// sequence), and its connection comes along in both directions, under every tuple it was seen
/// with.
pub struct Follower {
    filter: Filter,
    packets: HashSet<(u8, u16, u32)>,
    flows: HashSet<(IpAddr, u16, IpAddr, u16, u8)>,
}

/// Bound on what a follower remembers; past it, it starts over.
const FOLLOW_MAX: usize = 65536;

impl Follower {
    pub fn new(filter: Filter) -> Self {
        Follower {
            filter,
            packets: HashSet::new(),
            flows: HashSet::new(),
        }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Whether `event` belongs to what the filter admits.
    pub fn admits(&mut self, event: &crate::event::Event) -> bool {
        let key = packet_key(event);
        let fields = fields_of(event);
        let flow = fields.map(|f| (f.src, f.sport, f.dst, f.dport, f.proto.number()));
        let known = key.is_some_and(|k| self.packets.contains(&k))
            || flow.is_some_and(|f| self.flows.contains(&f));
        if !known && !fields.is_some_and(|f| self.filter.matches(&f)) {
            return false;
        }
        if self.packets.len() >= FOLLOW_MAX || self.flows.len() >= FOLLOW_MAX {
            self.packets.clear();
            self.flows.clear();
        }
        // Only sightings of a packet carry what it takes to follow it.
        if let Some(k) = key {
            self.packets.insert(k);
            if let Some((src, sport, dst, dport, proto)) = flow {
                self.flows.insert((src, sport, dst, dport, proto));
                self.flows.insert((dst, dport, src, sport, proto));
            }
        }
        true
    }
}

/// What NAT leaves alone in a packet.
fn packet_key(e: &crate::event::Event) -> Option<(u8, u16, u32)> {
    use crate::event::{EventBody, L4Header};
    let p = match &e.body {
        EventBody::Tc(t) => &t.packet,
        EventBody::Drop(d) => &d.packet,
        EventBody::Netfilter(n) => &n.packet,
        EventBody::Rule(r) => r.packet.as_ref()?,
        _ => return None,
    };
    let ip = p.ip.as_ref()?;
    let seq = match ip.l4 {
        Some(L4Header::Tcp { seq, .. }) => seq,
        _ => 0,
    };
    Some((ip.proto.number(), ip.ip_id, seq))
}

/// The fields a filter looks at.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Transport,
    pub sport: u16,
    pub dport: u16,
}

fn in_net(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Filter {
    pub fn matches(&self, f: &Fields) -> bool {
        match self {
            Filter::And(a, b) => a.matches(f) && b.matches(f),
            Filter::Or(a, b) => a.matches(f) || b.matches(f),
            Filter::Not(a) => !a.matches(f),
            Filter::Net(dir, net, len) => match dir {
                Dir::Src => in_net(f.src, *net, *len),
                Dir::Dst => in_net(f.dst, *net, *len),
                Dir::Either => in_net(f.src, *net, *len) || in_net(f.dst, *net, *len),
            },
            Filter::Ports(dir, lo, hi) => {
                let has_ports = matches!(f.proto, Transport::Tcp | Transport::Udp);
                let within = |p: u16| (*lo..=*hi).contains(&p);
                has_ports
                    && match dir {
                        Dir::Src => within(f.sport),
                        Dir::Dst => within(f.dport),
                        Dir::Either => within(f.sport) || within(f.dport),
                    }
            }
            Filter::Proto(p) => match p {
                ProtoMatch::Transport(t) => f.proto == *t,
                ProtoMatch::Ipv4 => f.src.is_ipv4(),
                ProtoMatch::Ipv6 => f.src.is_ipv6(),
            },
        }
    }

    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let tokens = tokenize(expr);
        let mut p = Parser {
            expr,
            tokens,
            pos: 0,
        };
        if p.tokens.is_empty() {
            return Err(p.error("empty expression", 0));
        }
        let f = p.or()?;
        if let Some((text, at)) = p.tokens.get(p.pos) {
            return Err(p.error(&format!("unexpected '{text}'"), *at));
        }
        Ok(f)
    }
}

/// Words and punctuation with their character positions.
fn tokenize(expr: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' || c == ')' || c == '!' {
            out.push((c.to_string(), i));
            i += 1;
        } else if (c == '&' || c == '|') && chars.get(i + 1) == Some(&c) {
            out.push((format!("{c}{c}"), i));
            i += 2;
        } else {
            let start = i;
            while i < chars.len()
                && !chars[i].is_whitespace()
                && !matches!(chars[i], '(' | ')' | '!')
                && !((chars[i] == '&' || chars[i] == '|') && chars.get(i + 1) == Some(&chars[i]))
            {
                i += 1;
            }
            out.push((chars[start..i].iter().collect(), start));
        }
    }
    out
}

struct Parser<'a> {
    expr: &'a str,
    tokens: Vec<(String, usize)>,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str, position: usize) -> FilterError {
        FilterError {
            message: message.to_owned(),
            position,
            expr: self.expr.to_owned(),
        }
    }

    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.pos).map(|(t, _)| t.as_str())
    }

    fn here(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map(|(_, p)| *p)
            .unwrap_or(self.expr.chars().count())
    }

    fn next(&mut self) -> Option<(String, usize)> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while matches!(self.peek(), Some("or") | Some("||")) {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.not()?;
        while matches!(self.peek(), Some("and") | Some("&&")) {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Filter, FilterError> {
        if matches!(self.peek(), Some("not") | Some("!")) {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, FilterError> {
        let at = self.here();
        let Some((word, _)) = self.next() else {
            return Err(self.error("expression ends too early", at));
        };
        match word.as_str() {
            "(" => {
                let inner = self.or()?;
                let close = self.here();
                match self.next() {
                    Some((t, _)) if t == ")" => Ok(inner),
                    _ => Err(self.error("expected ')'", close)),
                }
            }
            "src" => self.qualified(Dir::Src),
            "dst" => self.qualified(Dir::Dst),
            "host" | "net" | "port" | "portrange" => {
                self.pos -= 1;
                self.qualified(Dir::Either)
            }
            "tcp" | "udp" => {
                let t = if word == "tcp" {
                    Transport::Tcp
                } else {
                    Transport::Udp
                };
                let proto = Filter::Proto(ProtoMatch::Transport(t));
                // `tcp port 80` and `udp dst port 53`: the protocol qualifies the port.
                if matches!(self.peek(), Some("port" | "portrange" | "src" | "dst")) {
                    let port = match self.peek() {
                        Some("src") => {
                            self.pos += 1;
                            self.qualified(Dir::Src)?
                        }
                        Some("dst") => {
                            self.pos += 1;
                            self.qualified(Dir::Dst)?
                        }
                        _ => self.qualified(Dir::Either)?,
                    };
                    return Ok(Filter::And(Box::new(proto), Box::new(port)));
                }
                Ok(proto)
            }
            "icmp" => Ok(Filter::Proto(ProtoMatch::Transport(Transport::Icmp))),
            "icmp6" | "icmpv6" => Ok(Filter::Proto(ProtoMatch::Transport(Transport::Icmpv6))),
            "ip" => Ok(Filter::Proto(ProtoMatch::Ipv4)),
            "ip6" => Ok(Filter::Proto(ProtoMatch::Ipv6)),
            w => match w.parse::<IpAddr>() {
                Ok(a) => Ok(Filter::Net(Dir::Either, a, full_len(a))),
                Err(_) => Err(self.error(
                    &format!(
                        "unknown word '{w}' (expected host, net, port, portrange, src, dst, tcp, \
                         udp, icmp, not, or an address)"
                    ),
                    at,
                )),
            },
        }
    }

    /// After `src`/`dst` (or none): `host A`, `net C`, `port N`, `portrange A-B`, or an address.
    fn qualified(&mut self, dir: Dir) -> Result<Filter, FilterError> {
        let at = self.here();
        let Some((kind, _)) = self.next() else {
            return Err(self.error("expected host, net, port or portrange", at));
        };
        let value_at = self.here();
        let value = |p: &mut Self| -> Result<String, FilterError> {
            p.next()
                .map(|(v, _)| v)
                .ok_or_else(|| p.error(&format!("'{kind}' needs a value"), value_at))
        };
        match kind.as_str() {
            "host" => {
                let v = value(self)?;
                let a: IpAddr = v
                    .parse()
                    .map_err(|_| self.error(&format!("'{v}' is not an IP address"), value_at))?;
                Ok(Filter::Net(dir, a, full_len(a)))
            }
            "net" => {
                let v = value(self)?;
                let (addr, len) = v
                    .split_once('/')
                    .ok_or_else(|| self.error("a net is ADDRESS/LENGTH", value_at))?;
                let a: IpAddr = addr
                    .parse()
                    .map_err(|_| self.error(&format!("'{addr}' is not an IP address"), value_at))?;
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|&l| l <= full_len(a))
                    .ok_or_else(|| self.error(&format!("bad prefix length '{len}'"), value_at))?;
                Ok(Filter::Net(dir, a, len))
            }
            "port" => {
                let v = value(self)?;
                let p = v
                    .parse::<u16>()
                    .map_err(|_| self.error(&format!("'{v}' is not a port number"), value_at))?;
                Ok(Filter::Ports(dir, p, p))
            }
            "portrange" => {
                let v = value(self)?;
                let bad = || self.error(&format!("'{v}' is not a range like 8000-8080"), value_at);
                let (lo, hi) = v.split_once('-').ok_or_else(bad)?;
                let lo = lo.parse::<u16>().map_err(|_| bad())?;
                let hi = hi.parse::<u16>().map_err(|_| bad())?;
                if lo > hi {
                    return Err(bad());
                }
                Ok(Filter::Ports(dir, lo, hi))
            }
            other => match other.parse::<IpAddr>() {
                Ok(a) => Ok(Filter::Net(dir, a, full_len(a))),
                Err(_) => Err(self.error(
                    &format!("expected host, net, port or portrange, not '{other}'"),
                    at,
                )),
            },
        }
    }
}

/// A filter too large for the kernel's fixed-size program.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "the filter has {0} terms and operators; the kernel takes at most {max}",
    max = probe_common::MAX_FILTER_INSNS
)]
pub struct TooLong(pub usize);

impl Filter {
    /// The postfix program the kernel programs evaluate at a packet's first sighting (see
    /// `probe_common::filter_op`). It matches exactly what [`Filter::matches`] matches.
    pub fn compile(&self) -> Result<Vec<probe_common::FilterInsn>, TooLong> {
        let mut out = Vec::new();
        self.emit(&mut out);
        if out.len() > probe_common::MAX_FILTER_INSNS {
            return Err(TooLong(out.len()));
        }
        Ok(out)
    }

    fn emit(&self, out: &mut Vec<probe_common::FilterInsn>) {
        use probe_common::{FilterInsn, filter_dir, filter_op};
        let dir = |d: &Dir| match d {
            Dir::Src => filter_dir::SRC,
            Dir::Dst => filter_dir::DST,
            Dir::Either => filter_dir::EITHER,
        };
        let op = |op: u8| FilterInsn {
            op,
            ..Default::default()
        };
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                a.emit(out);
                b.emit(out);
                out.push(op(if matches!(self, Filter::And(..)) {
                    filter_op::AND
                } else {
                    filter_op::OR
                }));
            }
            Filter::Not(a) => {
                a.emit(out);
                out.push(op(filter_op::NOT));
            }
            Filter::Net(d, net, len) => {
                let (bytes, family): ([u8; 16], u8) = match net {
                    IpAddr::V4(a) => {
                        let mut b = [0; 16];
                        b[..4].copy_from_slice(&a.octets());
                        (b, probe_common::family::IPV4)
                    }
                    IpAddr::V6(a) => (a.octets(), probe_common::family::IPV6),
                };
                let mut mask = [0u8; 16];
                for (i, m) in mask.iter_mut().enumerate() {
                    let bits = (*len as usize).saturating_sub(i * 8).min(8);
                    *m = !(0xFFu16 >> bits) as u8;
                }
                let mut addr = bytes;
                for (a, m) in addr.iter_mut().zip(mask) {
                    *a &= m;
                }
                out.push(FilterInsn {
                    addr,
                    mask,
                    op: filter_op::NET,
                    dir: dir(d),
                    arg: family,
                    ..Default::default()
                });
            }
            Filter::Ports(d, lo, hi) => out.push(FilterInsn {
                port_lo: *lo,
                port_hi: *hi,
                op: filter_op::PORTS,
                dir: dir(d),
                ..Default::default()
            }),
            Filter::Proto(ProtoMatch::Transport(t)) => out.push(FilterInsn {
                op: filter_op::L4_PROTO,
                arg: t.number(),
                ..Default::default()
            }),
            Filter::Proto(p) => out.push(FilterInsn {
                op: filter_op::FAMILY,
                arg: if *p == ProtoMatch::Ipv4 {
                    probe_common::family::IPV4
                } else {
                    probe_common::family::IPV6
                },
                ..Default::default()
            }),
        }
    }
}

fn full_len(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(src: &str, sport: u16, dst: &str, dport: u16, proto: Transport) -> Fields {
        Fields {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            sport,
            dport,
        }
    }

    #[test]
    fn matches_like_pcap() {
        let f = fields("10.0.0.1", 40000, "172.17.0.2", 80, Transport::Tcp);
        for (expr, want) in [
            ("host 172.17.0.2", true),
            ("172.17.0.2", true),
            ("src host 172.17.0.2", false),
            ("dst net 172.17.0.0/16 and tcp port 80", true),
            ("udp port 80", false),
            ("tcp dst port 80", true),
            ("tcp src port 80", false),
            ("portrange 79-81 && !icmp", true),
            ("not (host 10.0.0.1 or host 1.1.1.1)", false),
            ("src 10.0.0.1 and dst portrange 1-1023", true),
            ("ip and tcp", true),
            ("ip6", false),
        ] {
            assert_eq!(Filter::parse(expr).unwrap().matches(&f), want, "{expr}");
        }
    }

    fn sighting(src: &str, sport: u16, dst: &str, dport: u16, ip_id: u16) -> crate::event::Event {
        use crate::event::*;
        Event {
            ts_ns: 0,
            cpu: 0,
            body: EventBody::Tc(TcSighting {
                ifindex: 2,
                direction: Direction::Ingress,
                netns_cookie: 0,
                mark: 0,
                packet: Packet {
                    ethertype: 0x0800,
                    len: 60,
                    ip: Some(IpHeader {
                        src: src.parse().unwrap(),
                        dst: dst.parse().unwrap(),
                        proto: Transport::Udp,
                        ip_id,
                        fragment: false,
                        l4: Some(L4Header::Udp { sport, dport }),
                    }),
                    truncated: false,
                },
            }),
        }
    }

    #[test]
    fn follower_keeps_a_packet_through_nat_and_its_replies() {
        let mut f = Follower::new(Filter::parse("udp dst port 8053").unwrap());
        // The request, before and after DNAT; then the reply, before and after un-NAT.
        assert!(f.admits(&sighting("10.0.0.9", 4000, "10.0.0.1", 8053, 7)));
        assert!(f.admits(&sighting("10.0.0.9", 4000, "172.17.0.2", 53, 7)));
        assert!(f.admits(&sighting("172.17.0.2", 53, "10.0.0.9", 4000, 99)));
        assert!(f.admits(&sighting("10.0.0.1", 8053, "10.0.0.9", 4000, 99)));
        // Another conversation is not.
        assert!(!f.admits(&sighting("10.0.0.9", 4001, "172.17.0.2", 53, 8)));
    }

    #[test]
    fn errors_name_the_position() {
        for (expr, position, words) in [
            ("host", 4, "needs a value"),
            ("host 300.1.1.1", 5, "not an IP address"),
            ("tcp and (port 80", 16, "expected ')'"),
            ("port eighty", 5, "not a port number"),
            ("hots 1.2.3.4", 0, "unknown word 'hots'"),
            ("net 10.0.0.0/33", 4, "bad prefix length"),
            ("portrange 90-80", 10, "not a range"),
            ("tcp port 80 extra", 12, "unexpected 'extra'"),
            ("", 0, "empty"),
        ] {
            let e = Filter::parse(expr).unwrap_err();
            assert_eq!(e.position, position, "{expr}: {e}");
            assert!(e.to_string().contains(words), "{expr}: {e}");
        }
    }
}
