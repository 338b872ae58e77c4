//! A packet's addresses, ports and protocol at one point of its way: what a filter matches,
//! what a rewrite changes, and what a flow is made of.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    addr::Endpoint,
    event::{Event, EventBody, L4Header, Packet, Transport},
    identity,
};

/// Source and destination of a packet at one point of its journey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Tuple {
    pub proto: Transport,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    pub fn of(p: &Packet) -> Option<Self> {
        let ip = p.ip.as_ref()?;
        let (sport, dport) = match ip.l4 {
            Some(L4Header::Tcp { sport, dport, .. }) | Some(L4Header::Udp { sport, dport }) => {
                (sport, dport)
            }
            _ => (0, 0),
        };
        Some(Tuple {
            proto: ip.proto,
            src: ip.src,
            dst: ip.dst,
            sport,
            dport,
        })
    }

    /// What an event is about: its packet's tuple, or the flow a routing lookup was made for.
    pub fn of_event(e: &Event) -> Option<Self> {
        match &e.body {
            EventBody::Fib(f) => Some(Tuple {
                proto: f.proto,
                src: f.src,
                dst: f.dst,
                sport: f.sport,
                dport: f.dport,
            }),
            EventBody::FibRule(r) => Some(Tuple {
                proto: Transport::Other(0),
                src: r.src,
                dst: r.dst,
                sport: 0,
                dport: 0,
            }),
            _ => identity::packet_of(e).and_then(Tuple::of),
        }
    }

    pub fn reversed(&self) -> Self {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.proto {
            Transport::Tcp | Transport::Udp => {
                write!(
                    f,
                    "{} {} > {}",
                    self.proto,
                    Endpoint(self.src, self.sport),
                    Endpoint(self.dst, self.dport)
                )
            }
            p => write!(f, "{p} {} > {}", self.src, self.dst),
        }
    }
}
