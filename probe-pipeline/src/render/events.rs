//! `--events`: one line per sighting as it happens, for people (text) or programs (JSON Lines).

use std::io::Write;

use schemars::JsonSchema;
use serde::Serialize;

use super::{
    Format,
    clock::Clock,
    facts::{self, drop_text, fib_text, packet_text, rule_text},
};
use crate::{
    event::{Event, EventBody},
    topology::Topology,
};

pub struct Renderer {
    format: Format,
    clock: Clock,
}

pub const SCHEMA: &str = "probe.event/1";

/// One sighting (`probe trace --json --events`, `probe replay --json --events`).
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct JsonLine<'a> {
    #[schemars(schema_with = "line_name")]
    schema: &'static str,
    /// When it happened, RFC 3339 in UTC.
    #[schemars(extend("format" = "date-time"))]
    time: String,
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    ifname: Option<&'a str>,
    /// The Docker container the interface (or a drop's namespace) belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
}

fn line_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    crate::schema::const_name(SCHEMA)
}

/// The JSON Schema of an event line.
pub fn line_schema() -> schemars::Schema {
    crate::schema::line::<JsonLine>(SCHEMA)
}

/// The interface an event names first: where a packet was seen or dropped, a hook's output
/// device (else its input).
fn device(body: &EventBody) -> Option<u32> {
    match body {
        EventBody::Tc(tc) => Some(tc.ifindex),
        EventBody::Drop(d) => Some(d.ifindex),
        EventBody::Netfilter(v) if v.out_ifindex != 0 => Some(v.out_ifindex),
        EventBody::Netfilter(v) => Some(v.in_ifindex),
        EventBody::Rule(r) if r.oif != 0 => Some(r.oif),
        EventBody::Rule(r) => Some(r.iif),
        EventBody::Fib(_) | EventBody::Chain(_) | EventBody::FibRule(_) => None,
    }
}

impl Renderer {
    pub fn new(format: Format, clock: Clock) -> Self {
        Self { format, clock }
    }

    pub fn write(
        &self,
        out: &mut impl Write,
        event: &Event,
        topo: &Topology,
    ) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                let ifname = match &event.body {
                    EventBody::Rule(_) => None,
                    body => device(body)
                        .and_then(|i| topo.links.get(&i))
                        .map(|(n, _)| n.as_str()),
                };
                let line = JsonLine {
                    schema: SCHEMA,
                    time: self.clock.rfc3339(event.ts_ns),
                    event,
                    ifname,
                    container: facts::container(event, topo),
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")
            }
            Format::Text => writeln!(out, "{}", self.text(event, topo)),
        }
    }

    pub fn text(&self, event: &Event, topo: &Topology) -> String {
        let time = self.clock.time_of_day(event.ts_ns);
        let dev = || topo.name(device(&event.body).unwrap_or(0));
        match &event.body {
            EventBody::Tc(tc) => {
                let container = facts::container(event, topo)
                    .map(|c| format!("   (container {c})"))
                    .unwrap_or_default();
                format!(
                    "{time} {:<12} {:<7} {}{container}",
                    dev(),
                    tc.direction.as_str(),
                    packet_text(&tc.packet)
                )
            }
            EventBody::Drop(d) => format!("{time} {:<12} DROP    {}", dev(), drop_text(d)),
            EventBody::Fib(f) => format!("{time} {:<12} route   {}", "", fib_text(f)),
            EventBody::Rule(r) => format!("{time} {:<12} rule    {}", dev(), rule_text(r)),
            EventBody::Netfilter(v) => {
                let errno = v.errno.map(|e| format!(" (errno {e})")).unwrap_or_default();
                format!(
                    "{time} {:<12} {:<7} {} {} {}{errno} in {} out {} after {}us: {}",
                    dev(),
                    "hook",
                    v.family.kernel_name(),
                    v.hook.kernel_name(),
                    v.verdict.as_str().to_uppercase(),
                    topo.name(v.in_ifindex),
                    topo.name(v.out_ifindex),
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
                    c.engine.as_str(),
                    c.family.kernel_name(),
                    c.table,
                    c.hook.kernel_name(),
                    c.verdict.as_str().to_uppercase()
                )
            }
            EventBody::FibRule(r) => {
                let table = r.table_name.clone().unwrap_or_else(|| r.table.to_string());
                format!(
                    "{time} {:<12} ip-rule {} > {}: rule pref {} -> {} table {}",
                    "",
                    r.src,
                    r.dst,
                    r.pref,
                    r.action.as_str(),
                    table
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Direction, IpHeader, L4Header, Packet, TcSighting, TcpFlags, Transport};

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
                quoted: None,
                frame: None,
            }),
        }
    }

    fn topo() -> Topology {
        let mut t = Topology::default();
        t.links.insert(3, ("veth0".to_owned(), "veth".to_owned()));
        t
    }

    #[test]
    fn text_line_names_interface_and_tuple() {
        let r = Renderer::new(Format::Text, Clock::default());
        let line = r.text(&tcp_event(), &topo());
        assert!(
            line.ends_with(
                "veth0        ingress tcp 10.0.0.1:40000 > 10.0.0.2:80 [S] seq 9 len 74"
            ),
            "{line}"
        );
    }

    #[test]
    fn json_line_is_flat_and_complete() {
        let r = Renderer::new(Format::Json, Clock::default());
        let mut out = Vec::new();
        let mut topo = topo();
        topo.containers.interfaces.insert(3, "web".to_owned());
        r.write(&mut out, &tcp_event(), &topo).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["kind"], "tc");
        assert_eq!(v["ifname"], "veth0");
        assert_eq!(v["container"], "web");
        assert_eq!(v["direction"], "ingress");
        assert_eq!(v["packet"]["ip"]["proto"], "tcp");
        assert_eq!(v["packet"]["ip"]["sport"], 40000);
        assert_eq!(v["packet"]["ip"]["tcp_flags"], "S");
        assert_eq!(v["packet"]["ip"]["src"], "10.0.0.1");
    }
}
