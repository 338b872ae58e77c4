//! What a diagnosis asks rtnetlink about a device: its MTU, the neighbour entries, its root
//! queueing discipline and counters (the rest of rtnetlink is in [`super::rtnl`]).

use std::net::IpAddr;

use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    tc::{TcAttribute, TcMessage},
};

use super::{
    netlink::NetlinkError,
    rtnl::{Socket, decoded, validate_name},
};

/// A neighbour (ARP/NDP) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// `REACHABLE`, `STALE`, `FAILED`, ... as `ip neigh` prints them.
    pub state: String,
    /// The link-layer address, `aa:bb:..`, when resolved.
    pub lladdr: Option<String>,
}

/// A device's root queueing discipline and its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub drops: u32,
    pub overlimits: u32,
    pub qlen: u32,
    pub backlog: u32,
}

/// TC_H_ROOT: the parent of a device's root qdisc.
const TC_H_ROOT: u32 = 0xFFFF_FFFF;

impl Socket {
    /// The MTU of the link named `name`.
    pub fn mtu(&mut self, name: &str) -> Option<u32> {
        validate_name(name).ok()?;
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let answer = self.0.ack(RouteNetlinkMessage::GetLink(request)).ok()?;
        decoded(answer).into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(mtu),
                _ => None,
            }),
            _ => None,
        })
    }

    /// Every neighbour entry, IPv4 and IPv6.
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetlinkError> {
        let answer = self.0.dump(RouteNetlinkMessage::GetNeighbour(
            NeighbourMessage::default(),
        ))?;
        Ok(decoded(answer)
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => neighbour(n),
                _ => None,
            })
            .collect())
    }

    /// The root qdisc of the interface `ifindex`.
    pub fn root_qdisc(&mut self, ifindex: u32) -> Result<Option<Qdisc>, NetlinkError> {
        let answer = self
            .0
            .dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))?;
        Ok(decoded(answer).into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q)
                if q.header.index == ifindex as i32 && u32::from(q.header.parent) == TC_H_ROOT =>
            {
                let mut out = Qdisc {
                    kind: String::new(),
                    drops: 0,
                    overlimits: 0,
                    qlen: 0,
                    backlog: 0,
                };
                for a in q.attributes {
                    match a {
                        TcAttribute::Kind(k) => out.kind = k,
                        TcAttribute::Stats(st) => {
                            out.drops = st.drops;
                            out.overlimits = st.overlimits;
                            out.qlen = st.qlen;
                            out.backlog = st.backlog;
                        }
                        _ => {}
                    }
                }
                Some(out)
            }
            _ => None,
        }))
    }
}

fn neighbour(n: NeighbourMessage) -> Option<Neighbour> {
    let mut addr = None;
    let mut lladdr = None;
    for a in n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(a.into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => addr = Some(a.into()),
            NeighbourAttribute::LinkLayerAddress(b) => {
                lladdr = Some(
                    b.iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                )
            }
            _ => {}
        }
    }
    let state = match n.header.state {
        NeighbourState::Incomplete => "INCOMPLETE".to_owned(),
        NeighbourState::Reachable => "REACHABLE".to_owned(),
        NeighbourState::Stale => "STALE".to_owned(),
        NeighbourState::Delay => "DELAY".to_owned(),
        NeighbourState::Probe => "PROBE".to_owned(),
        NeighbourState::Failed => "FAILED".to_owned(),
        NeighbourState::Noarp => "NOARP".to_owned(),
        NeighbourState::Permanent => "PERMANENT".to_owned(),
        NeighbourState::None => "NONE".to_owned(),
        NeighbourState::Other(v) => format!("state {v:#x}"),
        _ => "?".to_owned(),
    };
    Some(Neighbour {
        ifindex: n.header.ifindex,
        addr: addr?,
        state,
        lladdr,
    })
}
