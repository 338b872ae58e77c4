//! Packet filter expressions, pcap style: `host 172.17.0.2 and tcp port 80`,
//! `src net 10.0.0.0/8 and not dst portrange 1-1023`, `(udp or icmp) and dst host 1.1.1.1`.
//!
//! Grammar: `or` of `and` of `not` of a primitive or a parenthesised expression. Primitives:
//! `[src|dst] host ADDR`, `[src|dst] net CIDR`, `[src|dst] port N`, `[src|dst] portrange A-B`,
//! `tcp`, `udp`, `icmp`, `icmp6`, `ip`, `ip6`, and `tcp|udp port N` (protocol and port). A bare
//! address means `host ADDR`. `&&`, `||` and `!` work too. Errors name the position.

mod clauses;
mod compile;
mod follow;

use std::net::IpAddr;

use thiserror::Error;

pub use clauses::{End, Literal, Test};
pub use compile::TooLong;
pub use follow::Follower;

use crate::{addr::in_subnet, event::Transport, tuple::Tuple};

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

impl Filter {
    pub fn matches(&self, f: &Tuple) -> bool {
        match self {
            Filter::And(a, b) => a.matches(f) && b.matches(f),
            Filter::Or(a, b) => a.matches(f) || b.matches(f),
            Filter::Not(a) => !a.matches(f),
            Filter::Net(dir, net, len) => match dir {
                Dir::Src => in_subnet(f.src, *net, *len),
                Dir::Dst => in_subnet(f.dst, *net, *len),
                Dir::Either => in_subnet(f.src, *net, *len) || in_subnet(f.dst, *net, *len),
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
                // As tcpdump: bits past the prefix are a typo for a host or a shorter net.
                if crate::addr::network(a, len) != a {
                    return Err(self.error(
                        &format!(
                            "'{v}' has host bits set past /{len} (the net is {}/{len})",
                            crate::addr::network(a, len)
                        ),
                        value_at,
                    ));
                }
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

fn full_len(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(src: &str, sport: u16, dst: &str, dport: u16, proto: Transport) -> Tuple {
        Tuple {
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
            (
                "net 10.0.0.1/8",
                4,
                "host bits set past /8 (the net is 10.0.0.0/8)",
            ),
            ("net fd00::1/64", 4, "the net is fd00::/64"),
            ("tcp port 80 extra", 12, "unexpected 'extra'"),
            ("", 0, "empty"),
        ] {
            let e = Filter::parse(expr).unwrap_err();
            assert_eq!(e.position, position, "{expr}: {e}");
            assert!(e.to_string().contains(words), "{expr}: {e}");
        }
    }
}
