//! Network interfaces of the current namespace: names, indexes and link-layer type.
//!
//! Uses ioctls on a socket rather than /sys/class/net, because sysfs shows the namespace it was
//! mounted in, not the one this process has entered.

use std::{ffi::CString, io, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IfaceError {
    #[error("'{0}' is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)")]
    InvalidName(String),
    #[error("interface '{0}' not found in this network namespace")]
    NotFound(String),
    #[error("cannot query interface '{name}': {source}")]
    Query { name: String, source: io::Error },
}

/// How packets on an interface begin, which decides the classifier variant to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// 14-byte Ethernet header: bridges, veths, physical NICs, tap.
    Ethernet,
    /// No link-layer header, packets start at IP: tun, WireGuard, ipip.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub link_layer: LinkLayer,
}

const IFNAMSIZ: usize = 16;
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;

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

/// Looks up an interface by name in the current network namespace.
pub fn lookup(name: &str) -> Result<Iface, IfaceError> {
    validate_name(name)?;
    let cname = CString::new(name).map_err(|_| IfaceError::InvalidName(name.to_owned()))?;
    // SAFETY: cname is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => IfaceError::NotFound(name.to_owned()),
            _ => IfaceError::Query {
                name: name.to_owned(),
                source: err,
            },
        });
    }
    let hw_type = hardware_type(name).map_err(|source| IfaceError::Query {
        name: name.to_owned(),
        source,
    })?;
    let link_layer = match hw_type {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => LinkLayer::Ethernet,
        _ => LinkLayer::None,
    };
    Ok(Iface {
        name: name.to_owned(),
        index,
        link_layer,
    })
}

/// ARPHRD_* type of an interface (SIOCGIFHWADDR).
fn hardware_type(name: &str) -> io::Result<u16> {
    // SAFETY: plain socket creation; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name (name.len() < IFNAMSIZ).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR fills the hwaddr member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(validate_name("veth0").is_ok());
        assert!(validate_name("br-0123456789a").is_ok());
        for bad in ["", "a/b", "with space", "0123456789abcdef", "eth0:1", ".."] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn loopback_exists_and_missing_names_are_reported() {
        let lo = lookup("lo").unwrap();
        assert_eq!(lo.link_layer, LinkLayer::Ethernet);
        assert!(lo.index > 0);
        assert!(matches!(
            lookup("probe-nope0"),
            Err(IfaceError::NotFound(n)) if n == "probe-nope0"
        ));
    }
}
