//! A small rtnetlink client for what aya does not offer: listing links, following link events
//! (for hot attach), listing and deleting tc filters, and deleting the clsact qdisc probe
//! created.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
/// The clsact qdisc's ingress and egress hooks, as filter parents.
pub const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
pub const CLSACT_EGRESS: u32 = 0xFFFF_FFF3;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const TCA_KIND: u16 = 1;
/// Multicast group of link changes (RTMGRP_LINK).
const RTMGRP_LINK: u32 = 1;

/// A network interface as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// ARPHRD_* hardware type.
    pub hw_type: u16,
    /// IFF_* flags.
    pub flags: u32,
    /// Driver kind from IFLA_INFO_KIND: bridge, veth, tun, wireguard, ... (None for physical).
    pub kind: Option<String>,
    /// Index of the bridge (or bond) it is enslaved to.
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, its peer's index (in the peer's namespace).
    pub peer: Option<u32>,
}

/// A change seen on the link multicast group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    New(Link),
    Removed { index: u32 },
}

/// An rtnetlink socket in the current network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Socket {
    /// A socket for requests; with `groups`, also subscribed to those multicast groups.
    fn open(groups: u32, nonblocking: bool) -> io::Result<Self> {
        let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        if nonblocking {
            ty |= libc::SOCK_NONBLOCK;
        }
        // SAFETY: plain socket creation; the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, ty, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and valid.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = groups;
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// A blocking socket for requests.
    pub fn request_socket() -> io::Result<Self> {
        Self::open(0, false)
    }

    /// A non-blocking socket that receives link changes.
    pub fn link_monitor() -> io::Result<Self> {
        let sock = Self::open(RTMGRP_LINK, true)?;
        // Container churn announces hundreds of links at once: room for them, so that
        // notifications are not lost (root may exceed rmem_max; else the ordinary limit).
        let bytes: i32 = 8 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: an int option on our socket.
            let rc = unsafe {
                libc::setsockopt(
                    sock.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&bytes as *const i32).cast(),
                    size_of::<i32>() as u32,
                )
            };
            if rc == 0 {
                break;
            }
        }
        Ok(sock)
    }

    fn send(&mut self, msg_type: u16, flags: u16, payload: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut msg = Vec::with_capacity(len as usize);
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&msg_type.to_ne_bytes());
        msg.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: msg is valid for its length.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Reads one datagram; Ok(None) when a non-blocking socket has nothing.
    fn recv(&self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        buf.resize(64 * 1024, 0);
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        self.dump(RTM_GETLINK, &[0u8; IFINFOMSG_LEN], RTM_NEWLINK, parse_link)
    }

    /// The tc filters under `parent` (a clsact hook) of interface `ifindex`.
    pub fn tc_filters(&mut self, ifindex: u32, parent: u32) -> io::Result<Vec<TcFilter>> {
        let filters = self.dump(
            RTM_GETTFILTER,
            &tcmsg(ifindex, 0, parent, 0),
            RTM_NEWTFILTER,
            // The dump also lists each chain head (handle 0): not a filter.
            |body| parse_tc_filter(body).filter(|f| f.handle != 0),
        );
        match filters {
            // No qdisc there (or no device): no filters.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
                ) =>
            {
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// A dump request: every `want` message of the answer, parsed, until NLMSG_DONE.
    fn dump<T>(
        &mut self,
        request: u16,
        payload: &[u8],
        want: u16,
        parse: impl Fn(&[u8]) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        let seq = self.send(request, libc::NLM_F_DUMP as u16, payload)?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            let Some(n) = self.recv(&mut buf)? else {
                continue;
            };
            for (ty, msg_seq, body) in messages(&buf[..n]) {
                if msg_seq != seq {
                    continue;
                }
                match ty {
                    t if t == libc::NLMSG_DONE as u16 => return Ok(out),
                    t if t == libc::NLMSG_ERROR as u16 => {
                        let e = ack_error(body);
                        return if e.raw_os_error() == Some(0) {
                            Ok(out)
                        } else {
                            Err(e)
                        };
                    }
                    t if t == want => out.extend(parse(body)),
                    _ => {}
                }
            }
        }
    }

    /// Deletes one tc filter.
    pub fn delete_tc_filter(&mut self, ifindex: u32, f: &TcFilter) -> io::Result<()> {
        let mut msg = tcmsg(ifindex, f.handle, f.parent, f.info);
        push_attr(&mut msg, TCA_KIND, f.kind.as_bytes());
        let seq = self.send(RTM_DELTFILTER, libc::NLM_F_ACK as u16, &msg)?;
        self.expect_ack(seq)
    }

    /// Link changes received so far (non-blocking socket).
    pub fn changes(&mut self) -> io::Result<Vec<LinkChange>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match self.recv(&mut buf) {
                Ok(Some(n)) => {
                    for (ty, _, body) in messages(&buf[..n]) {
                        match ty {
                            RTM_NEWLINK => out.extend(parse_link(body).map(LinkChange::New)),
                            RTM_DELLINK => out.extend(
                                parse_link(body).map(|l| LinkChange::Removed { index: l.index }),
                            ),
                            _ => {}
                        }
                    }
                }
                Ok(None) => return Ok(out),
                // The kernel dropped notifications: the caller re-lists links to catch up.
                // What is still queued predates that list: read it all away first, or it
                // would be taken for news afterwards (and the socket left readable unseen).
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    loop {
                        match self.recv(&mut buf) {
                            Ok(Some(_)) => {}
                            Err(again) if again.raw_os_error() == Some(libc::ENOBUFS) => {}
                            Ok(None) | Err(_) => break,
                        }
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn expect_ack(&mut self, seq: u32) -> io::Result<()> {
        let mut buf = Vec::new();
        loop {
            let Some(n) = self.recv(&mut buf)? else {
                continue;
            };
            for (ty, msg_seq, body) in messages(&buf[..n]) {
                if msg_seq == seq && ty == libc::NLMSG_ERROR as u16 {
                    let e = ack_error(body);
                    return if e.raw_os_error() == Some(0) {
                        Ok(())
                    } else {
                        Err(e)
                    };
                }
            }
        }
    }
}

/// Splits a datagram into (type, sequence, body) messages, stopping at anything malformed.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        let body = &buf[NLMSG_HDRLEN..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((ty, seq, body))
    })
}

/// The errno in an NLMSG_ERROR body (0 means success).
fn ack_error(body: &[u8]) -> io::Error {
    let errno = body
        .get(0..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(-libc::EIO);
    io::Error::from_raw_os_error(-errno)
}

/// Attributes (type, payload) following a fixed header.
pub(crate) fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((ty, payload))
    })
}

pub(crate) fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_link(body: &[u8]) -> Option<Link> {
    if body.len() < IFINFOMSG_LEN {
        return None;
    }
    let hw_type = u16::from_ne_bytes([body[2], body[3]]);
    let index = i32::from_ne_bytes(body[4..8].try_into().ok()?) as u32;
    let flags = u32::from_ne_bytes(body[8..12].try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        hw_type,
        flags,
        kind: None,
        master: None,
        peer: None,
    };
    for (ty, payload) in attributes(&body[IFINFOMSG_LEN..]) {
        match ty {
            IFLA_IFNAME => link.name = c_string(payload),
            IFLA_MASTER if payload.len() >= 4 => {
                link.master = Some(u32::from_ne_bytes(payload[..4].try_into().ok()?))
            }
            IFLA_LINK if payload.len() >= 4 => {
                link.peer = Some(u32::from_ne_bytes(payload[..4].try_into().ok()?))
            }
            IFLA_LINKINFO => {
                for (ity, ipayload) in attributes(payload) {
                    if ity == IFLA_INFO_KIND {
                        link.kind = Some(c_string(ipayload));
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

/// A tc filter as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFilter {
    pub parent: u32,
    pub handle: u32,
    /// Priority << 16 | protocol, as the kernel keys filters.
    pub info: u32,
    /// `bpf`, `u32`, `matchall`, ...
    pub kind: String,
    /// A bpf filter's program name.
    pub name: Option<String>,
}

/// A `struct tcmsg`.
fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&handle.to_ne_bytes());
    m.extend_from_slice(&parent.to_ne_bytes());
    m.extend_from_slice(&info.to_ne_bytes());
    m
}

/// Appends one attribute, with its string's NUL, padded.
fn push_attr(m: &mut Vec<u8>, ty: u16, text: &[u8]) {
    m.extend_from_slice(&((4 + text.len() + 1) as u16).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(text);
    m.push(0);
    m.resize(m.len().next_multiple_of(4), 0);
}

const TCMSG_LEN: usize = 20;

fn parse_tc_filter(body: &[u8]) -> Option<TcFilter> {
    let u32_at = |o: usize| {
        body.get(o..o + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut f = TcFilter {
        handle: u32_at(8)?,
        parent: u32_at(12)?,
        info: u32_at(16)?,
        kind: String::new(),
        name: None,
    };
    for (ty, payload) in attributes(body.get(TCMSG_LEN..)?) {
        match ty {
            TCA_KIND => f.kind = c_string(payload),
            TCA_OPTIONS => {
                for (oty, opayload) in attributes(payload) {
                    if oty == TCA_BPF_NAME {
                        f.name = Some(c_string(opayload));
                    }
                }
            }
            _ => {}
        }
    }
    Some(f)
}

/// Deletes the clsact qdisc (and with it every tc filter under it) from interface `ifindex`.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut msg = tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0);
    push_attr(&mut msg, TCA_KIND, b"clsact");
    let mut sock = Socket::request_socket()?;
    let seq = sock.send(RTM_DELQDISC, libc::NLM_F_ACK as u16, &msg)?;
    sock.expect_ack(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback() {
        let links = Socket::request_socket().unwrap().links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo listed");
        assert_eq!(lo.hw_type, 772);
        assert!(lo.index > 0);
    }

    #[test]
    fn malformed_messages_are_ignored() {
        assert_eq!(messages(&[]).count(), 0);
        assert_eq!(messages(&[0xff; 15]).count(), 0);
        // A length larger than the buffer stops parsing.
        let mut m = vec![0u8; 16];
        m[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert_eq!(messages(&m).count(), 0);
        assert!(parse_link(&[0; 8]).is_none());
        // Attributes with bad lengths are skipped, not panicked on.
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body.extend_from_slice(&[200, 0, 3, 0, b'x']);
        let link = parse_link(&body).unwrap();
        assert_eq!(link.name, "");
        for n in 0..40 {
            let _ = parse_tc_filter(&vec![0xA5; n]);
        }
    }
}
