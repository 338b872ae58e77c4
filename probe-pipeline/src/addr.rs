//! Addresses as probe writes and compares them: `10.0.0.1:53`, `[fd00::1]:53`, subnets.

use std::{fmt, net::IpAddr};

/// An address and port, as `10.0.0.1:53` or `[fd00::1]:53`.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint(pub IpAddr, pub u16);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "[{v6}]:{}", self.1),
            v4 => write!(f, "{v4}:{}", self.1),
        }
    }
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
