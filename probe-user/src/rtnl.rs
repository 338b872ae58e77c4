//! The one rtnetlink request aya does not offer: deleting the clsact qdisc probe created.

use std::{io, mem::size_of, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

const RTM_DELQDISC: u16 = 37;
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const TCA_KIND: u16 = 1;

/// Deletes the clsact qdisc (and with it every tc filter under it) from interface `ifindex`.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut msg = Vec::with_capacity(64);
    // struct nlmsghdr, length patched below.
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_DELQDISC.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    // struct tcmsg
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&CLSACT_HANDLE.to_ne_bytes());
    msg.extend_from_slice(&TC_H_CLSACT.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // TCA_KIND = "clsact\0", padded to 4 bytes.
    let kind = b"clsact\0";
    msg.extend_from_slice(&((4 + kind.len()) as u16).to_ne_bytes());
    msg.extend_from_slice(&TCA_KIND.to_ne_bytes());
    msg.extend_from_slice(kind);
    msg.resize(msg.len().next_multiple_of(4), 0);
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());

    // SAFETY: plain socket creation; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and valid.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zero means "the kernel".
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and addr outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buf is writable for its whole length.
    let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // The answer is an NLMSG_ERROR whose error field (after the 16-byte header) is 0 on success.
    let got = got as usize;
    if got >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(-errno));
        }
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "unexpected rtnetlink answer",
    ))
}
