//! The live host's answers to a diagnosis (the pipeline's `HostFacts`): sysctls from
//! /proc/sys, MTU, neighbours and qdiscs over rtnetlink, and the socket bound to an address
//! from /proc/net with the process holding it. Everything reads the traced namespace: probe's
//! thread entered it before the runtime started, and /proc/sys/net, /proc/net and an
//! rtnetlink socket all follow the reading thread's namespace.
//!
//! Readings are cached for a moment: a burst of drops of one kind asks the same questions,
//! and scanning every process's descriptors once per packet would cost the host.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

use probe_pipeline::{
    bounded::BoundedMap,
    event::Transport,
    host::{HostFacts, SocketOwner},
};

use super::rtnl;

/// How long a reading stands for the host's state.
const FRESH: Duration = Duration::from_secs(2);

/// Readings kept: the keys are the few places drops happen; past this, the oldest reading
/// makes room (a host with drops in many places asks again, it does not start over).
const READINGS: usize = 1024;

type Cached<T> = Mutex<BoundedMap<String, (Instant, T)>>;

pub struct LiveHost {
    sockets: Cached<Option<SocketOwner>>,
    links: Cached<Option<String>>,
}

impl Default for LiveHost {
    fn default() -> Self {
        LiveHost {
            sockets: Mutex::new(BoundedMap::new(READINGS)),
            links: Mutex::new(BoundedMap::new(READINGS)),
        }
    }
}

impl LiveHost {
    pub fn new() -> Self {
        Self::default()
    }
}

fn cached<T: Clone>(cache: &Cached<T>, key: String, read: impl FnOnce() -> T) -> T {
    let now = Instant::now();
    if let Ok(map) = cache.lock()
        && let Some((at, v)) = map.get(&key)
        && now.duration_since(*at) < FRESH
    {
        return v.clone();
    }
    let v = read();
    if let Ok(mut map) = cache.lock() {
        map.insert(key, (now, v.clone()));
    }
    v
}

impl HostFacts for LiveHost {
    fn sysctl(&self, path: &str) -> Option<String> {
        if path.contains("..") {
            return None;
        }
        fs::read_to_string(format!("/proc/sys/{path}"))
            .ok()
            .map(|v| v.trim().to_owned())
    }

    fn mtu(&self, dev: &str) -> Option<u32> {
        cached(&self.links, format!("mtu {dev}"), || {
            rtnl::Socket::request_socket()
                .ok()?
                .mtu(dev)
                .map(|m| m.to_string())
        })?
        .parse()
        .ok()
    }

    fn neighbour(&self, addr: IpAddr, dev: &str) -> Option<String> {
        cached(&self.links, format!("neigh {addr} {dev}"), || {
            let mut socket = rtnl::Socket::request_socket().ok()?;
            let ifindex = socket.link(dev).ok()?.index;
            let n = socket
                .neighbours()
                .ok()?
                .into_iter()
                .find(|n| n.addr == addr && n.ifindex == ifindex)?;
            Some(match n.lladdr {
                Some(ll) => format!("lladdr {ll} {}", n.state),
                None => n.state,
            })
        })
    }

    fn qdisc(&self, dev: &str) -> Option<String> {
        cached(&self.links, format!("qdisc {dev}"), || {
            let mut socket = rtnl::Socket::request_socket().ok()?;
            let ifindex = socket.link(dev).ok()?.index;
            let q = socket.root_qdisc(ifindex).ok()??;
            Some(format!(
                "{} (dropped {}, overlimits {}, backlog {}b {}p)",
                q.kind, q.drops, q.overlimits, q.backlog, q.qlen
            ))
        })
    }

    fn socket(
        &self,
        proto: Transport,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    ) -> Option<SocketOwner> {
        let key = format!("{proto:?} {local:?} {remote:?}");
        cached(&self.sockets, key, || find_socket(proto, local, remote))
    }
}

/// A socket from /proc/net/{tcp,udp}{,6}: the one connected to `remote`, else for TCP a
/// listener and for UDP an unconnected bound socket; the exact address first, then the
/// wildcard (and `::`, which dual-stack sockets listen on for IPv4 too).
fn find_socket(
    proto: Transport,
    (addr, port): (IpAddr, u16),
    remote: (IpAddr, u16),
) -> Option<SocketOwner> {
    let (name, wanted_state) = match proto {
        Transport::Tcp => ("tcp", 0x0A), // TCP_LISTEN
        Transport::Udp => ("udp", 0x07), // TCP_CLOSE: bound, not connected
        _ => return None,
    };
    let mut entries = Vec::new();
    for table in [name.to_owned(), format!("{name}6")] {
        if let Ok(text) = fs::read_to_string(format!("/proc/net/{table}")) {
            entries.extend(text.lines().skip(1).filter_map(parse_entry));
        }
    }
    let any = |a: &IpAddr| a.is_unspecified();
    let mapped = |a: &IpAddr| mapped_to(a, addr);
    let same = |a: &IpAddr, b: IpAddr| *a == b || mapped_to(a, b);
    // A socket in TIME_WAIT (inode 0) is no one's any more: not an answer.
    let connected = || {
        entries.iter().find(|e| {
            e.inode != 0
                && e.port == port
                && same(&e.addr, addr)
                && e.remote_port == remote.1
                && same(&e.remote, remote.0)
        })
    };
    let candidates = entries
        .iter()
        .filter(|e| e.port == port && e.state == wanted_state && e.remote_port == 0);
    let bound = || {
        candidates
            .clone()
            .find(|e| e.addr == addr || mapped(&e.addr))
            .or_else(|| {
                candidates.clone().find(|e| {
                    any(&e.addr) && (e.addr.is_ipv4() == addr.is_ipv4() || e.addr.is_ipv6())
                })
            })
    };
    // TCP: the listener is what the service is, also for packets of its accepted
    // connections. UDP: a connected socket (a client's) is more precise than a bound one.
    let best = if proto == Transport::Tcp {
        bound().or_else(connected)
    } else {
        connected().or_else(bound)
    }?;
    let process = holder(best.inode);
    let forwards_to = process
        .as_ref()
        .filter(|(name, _)| name == "docker-proxy")
        .and_then(|(_, pid)| proxy_target(*pid));
    Some(SocketOwner {
        addr: best.addr,
        port,
        process,
        forwards_to,
    })
}

/// An IPv4 address as a dual-stack socket shows it (`::ffff:a.b.c.d`).
fn mapped_to(a: &IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V6(v6), IpAddr::V4(v4)) => v6.to_ipv4_mapped() == Some(v4),
        _ => false,
    }
}

/// Where docker-proxy forwards: its `-container-ip` and `-container-port` arguments.
fn proxy_target(pid: u32) -> Option<(IpAddr, u16)> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&str> = cmdline
        .split(|&b| b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
    };
    Some((
        value("-container-ip")?.parse().ok()?,
        value("-container-port")?.parse().ok()?,
    ))
}

struct Entry {
    addr: IpAddr,
    port: u16,
    remote: IpAddr,
    remote_port: u16,
    state: u8,
    inode: u64,
}

/// `  0: 0100007F:1F90 00000000:0000 0A ... inode`: the kernel prints each 32-bit word of
/// the address in host order.
fn parse_entry(line: &str) -> Option<Entry> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (addr, port) = parse_endpoint(f.get(1)?)?;
    let (remote, remote_port) = parse_endpoint(f.get(2)?)?;
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let inode = f.get(9)?.parse().ok()?;
    Some(Entry {
        addr,
        port,
        remote,
        remote_port,
        state,
        inode,
    })
}

fn parse_endpoint(field: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let addr = match words.as_slice() {
        [a] => IpAddr::V4(Ipv4Addr::from(a.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((addr, u16::from_str_radix(port, 16).ok()?))
}

/// The first process with a descriptor on socket `inode`: name and pid.
fn holder(inode: u64) -> Option<(String, u32)> {
    if inode == 0 {
        return None;
    }
    let target = format!("socket:[{inode}]");
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                let name = fs::read_to_string(proc_entry.path().join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_else(|_| "?".into());
                return Some((name, pid));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_are_read_in_host_order() {
        let v4 = parse_entry(
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1",
        )
        .unwrap();
        assert_eq!(v4.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((v4.port, v4.state, v4.inode), (8080, 0x0A, 12345));
        let v6 = parse_entry(
            "   0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2",
        )
        .unwrap();
        assert_eq!(v6.addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(v6.port, 53);
        assert!(parse_entry("garbage").is_none());
        assert!(parse_entry("  0: 12:34 x zz").is_none());
    }
}
