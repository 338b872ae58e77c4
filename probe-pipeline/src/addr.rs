//! Addresses as probe writes and compares them: `10.0.0.1:53`, `[fd00::1]:53`, subnets.

use std::{fmt, net::IpAddr};

/// An address and port, as `10.0.0.1:53` or `[fd00::1]:53`.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint(pub IpAddr, pub u16);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "[{v6}]:{}", self.1),
            IpAddr::V4(v4) => {
                // Written by hand into one buffer: every text timeline line names endpoints,
                // and the formatting machinery cost more than the rest of the line.
                let mut buf = [0u8; 21]; // "255.255.255.255:65535"
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    n += decimal(&mut buf[n..], u32::from(octet));
                }
                buf[n] = b':';
                n += 1;
                n += decimal(&mut buf[n..], u32::from(self.1));
                f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
            }
        }
    }
}

/// Writes `v` (at most 65535) in decimal at the start of `out`; returns the digits written.
fn decimal(out: &mut [u8], v: u32) -> usize {
    let mut digits = [0u8; 5];
    let (mut v, mut len) = (v, 0);
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 || len == digits.len() {
            break;
        }
    }
    for (slot, d) in out.iter_mut().zip(digits[..len].iter().rev()) {
        *slot = *d;
    }
    len
}

/// `addr` with every bit past the prefix cleared.
pub fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

/// Whether `addr` lies in `net/len` (false across address families).
pub fn in_subnet(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_endpoints() {
        let a: IpAddr = "172.17.0.2".parse().unwrap();
        assert!(in_subnet(a, "172.17.0.0".parse().unwrap(), 16));
        assert!(!in_subnet(a, "172.18.0.0".parse().unwrap(), 16));
        assert!(in_subnet(a, "0.0.0.0".parse().unwrap(), 0));
        assert!(in_subnet(a, a, 32));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert!(in_subnet(v6, "fd00::".parse().unwrap(), 64));
        assert!(!in_subnet(v6, "172.17.0.0".parse().unwrap(), 0));
        assert_eq!(Endpoint(v6, 53).to_string(), "[fd00::1]:53");
        assert_eq!(Endpoint(a, 80).to_string(), "172.17.0.2:80");
    }
}
