//! The small-packet set: 64-byte UDP frames from c1 to c2 across the lab bridge, as fast as the
//! sender's threads go, counted where they arrive (c2's IP InReceives). TCP with GSO moves
//! 64 KiB per sighting; here every frame is a sighting, so per-packet cost shows.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use probe_lab::BridgeLab;

use super::sender;

/// The discard port in c2.
const PORT: u16 = 9;

/// A socket in c2 that is never read: it takes the datagrams (dropping them once its buffer is
/// full) so that no port-unreachable replies add packets.
pub struct Sink {
    _socket: UdpSocket,
    addr: Ipv4Addr,
}

impl Sink {
    pub fn new(lab: &BridgeLab) -> anyhow::Result<Self> {
        let c2 = lab.container("c2");
        let addr = c2.addr;
        let socket = c2.ns.run(move || UdpSocket::bind((addr, PORT)))??;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    /// Packets per second that reached c2 in `seconds` of sending flat out from c1.
    pub fn measure(&self, lab: &BridgeLab, seconds: u32) -> anyhow::Result<f64> {
        let c2 = lab.container("c2").ns.name();
        let before = sender::ip_in_receives(c2)?;
        let (_, took) = sender::send(
            lab.container("c1").ns.name(),
            SocketAddrV4::new(self.addr, PORT),
            f64::INFINITY,
            f64::from(seconds),
        )?;
        let after = sender::ip_in_receives(c2)?;
        Ok(after.saturating_sub(before) as f64 / took.max(1e-3))
    }
}
