//! rtnetlink, typed by netlink-packet-route, for what aya does not offer: the namespace's
//! interfaces (all, or one by name), their events (for hot attach), tc filters on the clsact
//! hooks and their deletion, deleting the clsact qdisc probe created, and the routes the
//! topology reads. Interface names are checked here too, so a typo gets a precise message.
//!
//! Like the socket it uses, everything reads the namespace of the calling thread (sysfs and
//! `/proc/net` may show another one).

use std::net::IpAddr;

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkHeader, LinkInfo, LinkLayerType, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};
use thiserror::Error;

use super::netlink::{self, NETLINK_ROUTE, NetlinkError, Undecoded};

/// The clsact qdisc's ingress and egress hooks, as filter parents.
pub const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
pub const CLSACT_EGRESS: u32 = 0xFFFF_FFF3;
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// Multicast group of link changes (RTNLGRP_LINK).
const RTNLGRP_LINK: u32 = 1;
/// Container churn announces hundreds of links at once: room for them.
const MONITOR_RCVBUF: usize = 8 << 20;
const IFNAMSIZ: usize = 16;

#[derive(Debug, Error)]
pub enum IfaceError {
    #[error("'{0}' is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)")]
    InvalidName(String),
    #[error("interface '{0}' not found in this network namespace")]
    NotFound(String),
    #[error("cannot query interface '{name}': {source}")]
    Query { name: String, source: NetlinkError },
}

/// Checks a name the way the kernel would, so a typo gets a precise message.
pub fn validate_name(name: &str) -> Result<(), IfaceError> {
    let ok = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(IfaceError::InvalidName(name.to_owned()))
    }
}

/// How packets on an interface begin, which decides the classifier variant to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// 14-byte Ethernet header: bridges, veths, physical NICs, tap.
    Ethernet,
    /// No link-layer header, packets start at IP: tun, WireGuard, ipip.
    None,
}

/// A network interface as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// ARPHRD_* hardware type.
    pub hw_type: LinkLayerType,
    /// Driver kind from IFLA_INFO_KIND: bridge, veth, tun, wireguard, ... (None for physical).
    pub kind: Option<String>,
    /// Index of the bridge (or bond) it is enslaved to.
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, its peer's index (in the peer's namespace).
    pub peer: Option<u32>,
}

impl Link {
    fn from_message(m: LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            hw_type: m.header.link_layer_type,
            kind: None,
            master: None,
            peer: None,
        };
        for attr in m.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(i) => link.master = Some(i),
                LinkAttribute::Link(i) => link.peer = Some(i),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|i| match i {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_loopback(&self) -> bool {
        self.hw_type == LinkLayerType::Loopback
    }

    pub fn link_layer(&self) -> LinkLayer {
        match self.hw_type {
            LinkLayerType::Ether | LinkLayerType::Loopback => LinkLayer::Ethernet,
            _ => LinkLayer::None,
        }
    }
}

/// A change seen on the link multicast group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    New(Link),
    Removed { index: u32 },
}

/// A tc filter as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFilter {
    pub parent: u32,
    pub handle: u32,
    /// Priority << 16 | protocol, as the kernel keys filters.
    pub info: u32,
    /// `bpf`, `u32`, `matchall`, ... (empty for a filter the decoder could not read).
    pub kind: String,
    /// A bpf filter's program name.
    pub name: Option<String>,
}

impl TcFilter {
    fn from_message(m: TcMessage) -> Self {
        let mut f = Self::from_header(&m.header);
        for attr in m.attributes {
            match attr {
                TcAttribute::Kind(kind) => f.kind = kind,
                TcAttribute::Options(options) => {
                    f.name = options.into_iter().find_map(|o| match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        f
    }

    fn from_header(h: &TcHeader) -> Self {
        TcFilter {
            parent: h.parent.into(),
            handle: h.handle.into(),
            info: h.info,
            kind: String::new(),
            name: None,
        }
    }
}

/// A route of any table and family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    /// The destination (the family's unspecified address for a default route).
    pub destination: IpAddr,
    pub prefix_len: u8,
    /// Forwards packets (not unreachable, blackhole, local, broadcast, ...).
    pub unicast: bool,
    /// An address of this host (a `local` route of the local table).
    pub local: bool,
    /// Output interfaces: one, or each next hop's of a multipath route.
    pub devices: Vec<u32>,
}

impl Route {
    fn from_message(m: RouteMessage) -> Option<Self> {
        let mut destination = match m.header.address_family {
            AddressFamily::Inet => IpAddr::from([0u8; 4]),
            AddressFamily::Inet6 => IpAddr::from([0u8; 16]),
            _ => return None,
        };
        let mut table = u32::from(m.header.table);
        let mut devices = Vec::new();
        for attr in m.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => destination = a.into(),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => destination = a.into(),
                // Tables past 255 are only in the attribute.
                RouteAttribute::Table(t) => table = t,
                RouteAttribute::Oif(i) => devices.push(i),
                RouteAttribute::MultiPath(hops) => {
                    devices.extend(hops.iter().map(|h| h.interface_index))
                }
                _ => {}
            }
        }
        Some(Route {
            table,
            destination,
            prefix_len: m.header.destination_prefix_length,
            unicast: m.header.kind == RouteType::Unicast,
            local: m.header.kind == RouteType::Local,
            devices,
        })
    }

    pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;
}

/// An rtnetlink socket in the calling thread's network namespace.
pub struct Socket(pub(super) netlink::Socket);

impl std::os::fd::AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Keeps what the decoder read; what it could not is logged and left out.
pub(super) fn decoded(
    messages: Vec<Result<RouteNetlinkMessage, Undecoded>>,
) -> Vec<RouteNetlinkMessage> {
    messages
        .into_iter()
        .filter_map(|m| {
            m.map_err(|u| log::debug!("an rtnetlink message was not understood: {}", u.error))
                .ok()
        })
        .collect()
}

impl Socket {
    /// A blocking socket for requests.
    pub fn request_socket() -> Result<Self, NetlinkError> {
        Ok(Self(netlink::Socket::request(NETLINK_ROUTE)?))
    }

    /// A non-blocking socket that receives link changes.
    pub fn link_monitor() -> Result<Self, NetlinkError> {
        Ok(Self(netlink::Socket::subscribe(
            NETLINK_ROUTE,
            &[RTNLGRP_LINK],
            MONITOR_RCVBUF,
        )?))
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answer = self
            .0
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(decoded(answer)
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`.
    pub fn link(&mut self, name: &str) -> Result<Link, IfaceError> {
        validate_name(name)?;
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let answer = match self.0.ack(RouteNetlinkMessage::GetLink(request)) {
            Ok(a) => a,
            Err(e) if e.errno() == Some(libc::ENODEV) => {
                return Err(IfaceError::NotFound(name.to_owned()));
            }
            Err(source) => {
                return Err(IfaceError::Query {
                    name: name.to_owned(),
                    source,
                });
            }
        };
        decoded(answer)
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .ok_or_else(|| IfaceError::NotFound(name.to_owned()))
    }

    /// Link changes received so far (monitor socket). [`NetlinkError::Overflow`] means
    /// notifications were lost: the caller re-lists links to catch up (what was still queued
    /// predates that list, and was read away).
    pub fn changes(&mut self) -> Result<Vec<LinkChange>, NetlinkError> {
        let mut out = Vec::new();
        for m in self.0.pending::<RouteNetlinkMessage>()? {
            match m {
                Ok(RouteNetlinkMessage::NewLink(l)) => {
                    out.push(LinkChange::New(Link::from_message(l)))
                }
                Ok(RouteNetlinkMessage::DelLink(l)) => out.push(LinkChange::Removed {
                    index: l.header.index,
                }),
                Ok(_) => {}
                // A link that went away must be forgotten even when the decoder cannot read
                // its description: the header says which.
                Err(u) if u.message_type == libc::RTM_DELLINK => {
                    out.extend(
                        LinkHeader::parse(&u.payload)
                            .map(|h| LinkChange::Removed { index: h.index }),
                    );
                }
                Err(u) => log::debug!("a link event was not understood: {}", u.error),
            }
        }
        Ok(out)
    }

    /// The tc filters under `parent` (a clsact hook) of interface `ifindex`.
    pub fn tc_filters(&mut self, ifindex: u32, parent: u32) -> Result<Vec<TcFilter>, NetlinkError> {
        let mut request = TcMessage::default();
        request.header.index = ifindex as i32;
        request.header.parent = TcHandle::from(parent);
        match self.0.dump(RouteNetlinkMessage::GetTrafficFilter(request)) {
            Ok(answer) => Ok(answer
                .into_iter()
                .filter_map(|m| match m {
                    Ok(RouteNetlinkMessage::NewTrafficFilter(f)) => Some(TcFilter::from_message(f)),
                    Ok(_) => None,
                    // Still a filter, of no kind probe deletes: it keeps its qdisc in use.
                    Err(u) => TcHeader::parse(&u.payload)
                        .ok()
                        .map(|h| TcFilter::from_header(&h)),
                })
                // The dump also lists each chain head (handle 0): not a filter.
                .filter(|f| f.handle != 0)
                .collect()),
            // No qdisc there (or no device): no filters.
            Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes one tc filter.
    pub fn delete_tc_filter(&mut self, ifindex: u32, f: &TcFilter) -> Result<(), NetlinkError> {
        let mut request = TcMessage::with_index(ifindex as i32);
        request.header.handle = f.handle.into();
        request.header.parent = f.parent.into();
        request.header.info = f.info;
        request.attributes.push(TcAttribute::Kind(f.kind.clone()));
        self.0
            .ack(RouteNetlinkMessage::DelTrafficFilter(request))
            .map(drop)
    }

    /// Deletes the clsact qdisc (and with it every tc filter under it) from interface `ifindex`.
    pub fn delete_clsact(&mut self, ifindex: u32) -> Result<(), NetlinkError> {
        let mut request = TcMessage::with_index(ifindex as i32);
        request.header.handle = CLSACT_HANDLE.into();
        request.header.parent = TC_H_CLSACT.into();
        request.attributes.push(TcAttribute::Kind("clsact".into()));
        self.0
            .ack(RouteNetlinkMessage::DelQueueDiscipline(request))
            .map(drop)
    }

    /// Every IPv4 and IPv6 route, of every table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let answer = self
            .0
            .dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))?;
        Ok(decoded(answer)
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .collect())
    }
}

/// Looks up an interface by name in the calling thread's network namespace.
pub fn lookup(name: &str) -> Result<Link, IfaceError> {
    validate_name(name)?;
    Socket::request_socket()
        .map_err(|source| IfaceError::Query {
            name: name.to_owned(),
            source,
        })?
        .link(name)
}

#[cfg(test)]
mod tests {
    use std::{io::Write, process::Command};

    use super::*;

    /// Runs `f` on a thread of its own in a fresh network namespace, which goes away with the
    /// thread (and everything the test made in it), pass or fail.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: moves only this thread, which ends with the test.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// iproute2 commands, one a line, run in the calling thread's namespace.
    fn batch(program: &str, commands: &str) {
        let mut child = Command::new(program)
            .args(["-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{program}: {commands}");
    }

    #[test]
    fn validates_names() {
        assert!(validate_name("veth0").is_ok());
        assert!(validate_name("br-0123456789a").is_ok());
        for bad in ["", "a/b", "with space", "0123456789abcdef", "eth0:1", ".."] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_namespace_lists_its_bridge_and_veths_with_kinds_masters_and_peers() {
        let (links, lo, missing, uplinks, routes) = in_new_netns(|| {
            batch(
                "ip",
                "link add br-t type bridge\n\
                 link add vt-a type veth peer name vt-b\n\
                 link set vt-a master br-t\n\
                 tuntap add tun-t mode tun\n\
                 link set lo up\n\
                 link set br-t up\n\
                 addr add 10.77.0.1/24 dev br-t\n\
                 route add default dev br-t\n",
            );
            let mut sock = Socket::request_socket().unwrap();
            let links = sock.links().unwrap();
            let routes = sock.routes().unwrap();
            (
                links,
                lookup("lo").unwrap(),
                lookup("nope-t0").unwrap_err(),
                crate::host::uplinks(&routes),
                routes,
            )
        });
        let by_name = |n: &str| links.iter().find(|l| l.name == n).unwrap();
        let (br, a, b, tun) = (
            by_name("br-t"),
            by_name("vt-a"),
            by_name("vt-b"),
            by_name("tun-t"),
        );
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert_eq!(a.kind.as_deref(), Some("veth"));
        assert_eq!(tun.kind.as_deref(), Some("tun"));
        assert_eq!(a.master, Some(br.index));
        assert_eq!(b.master, None);
        assert_eq!((a.peer, b.peer), (Some(b.index), Some(a.index)));
        assert_eq!(br.link_layer(), LinkLayer::Ethernet);
        assert_eq!(tun.link_layer(), LinkLayer::None);
        assert!(lo.is_loopback() && lo.link_layer() == LinkLayer::Ethernet);
        assert_eq!(by_name("lo"), &lo);
        assert!(matches!(missing, IfaceError::NotFound(n) if n == "nope-t0"));
        assert_eq!(uplinks, [br.index]);
        assert!(routes.iter().any(|r| r.table == Route::MAIN_TABLE
            && r.destination == IpAddr::from([10, 77, 0, 0])
            && r.prefix_len == 24
            && r.devices == [br.index]));
    }

    #[test]
    fn filters_are_listed_and_deleted_and_the_kernel_errno_is_reported() {
        let (before, after, no_device, no_qdisc) = in_new_netns(|| {
            batch("ip", "link add vt-a type veth peer name vt-b\n");
            batch(
                "tc",
                "qdisc add dev vt-a clsact\n\
                 filter add dev vt-a ingress pref 7 handle 0x2a bpf bytecode '1,6 0 0 0,'\n",
            );
            let mut sock = Socket::request_socket().unwrap();
            let index = sock.link("vt-a").unwrap().index;
            let before = sock.tc_filters(index, CLSACT_INGRESS).unwrap();
            for f in &before {
                sock.delete_tc_filter(index, f).unwrap();
            }
            let after = sock.tc_filters(index, CLSACT_INGRESS).unwrap();
            sock.delete_clsact(index).unwrap();
            let no_device = sock.delete_tc_filter(0x7fff_fff0, &before[0]).unwrap_err();
            let no_qdisc = sock.delete_clsact(index).unwrap_err();
            (before, after, no_device, no_qdisc)
        });
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(before[0].kind, "bpf");
        assert_eq!(before[0].handle, 0x2a);
        assert_eq!(before[0].parent, CLSACT_INGRESS);
        assert_eq!(before[0].info >> 16, 7);
        assert!(after.is_empty(), "{after:?}");
        assert!(matches!(no_device, NetlinkError::Refused { errno } if errno == libc::ENODEV));
        assert_eq!(
            no_device.to_string(),
            std::io::Error::from_raw_os_error(libc::ENODEV).to_string()
        );
        assert!(
            matches!(no_qdisc, NetlinkError::Refused { .. }),
            "{no_qdisc:?}"
        );
    }

    #[test]
    fn link_events_arrive_and_an_overflow_is_drained() {
        let (events, overflow, after) = in_new_netns(|| {
            let mut monitor = Socket::link_monitor().unwrap();
            batch(
                "ip",
                "link add vt-a type veth peer name vt-b\nlink del vt-a\n",
            );
            let events = monitor.changes().unwrap();
            // A receive buffer too small for a burst of new links.
            let mut small =
                Socket(netlink::Socket::subscribe(NETLINK_ROUTE, &[RTNLGRP_LINK], 1).unwrap());
            let burst: String = (0..40)
                .map(|i| format!("link add vo-{i} type veth peer name vp-{i}\n"))
                .collect();
            batch("ip", &burst);
            let overflow = small.changes().unwrap_err();
            (events, overflow, small.changes().unwrap())
        });
        let news: Vec<&str> = events
            .iter()
            .filter_map(|c| match c {
                LinkChange::New(l) => Some(l.name.as_str()),
                LinkChange::Removed { .. } => None,
            })
            .collect();
        assert!(
            news.contains(&"vt-a") && news.contains(&"vt-b"),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|c| matches!(c, LinkChange::Removed { .. })),
            "{events:?}"
        );
        assert!(matches!(overflow, NetlinkError::Overflow), "{overflow:?}");
        // What was queued before the overflow was read away with it: no stale news.
        assert!(after.is_empty(), "{after:?}");
    }
}
