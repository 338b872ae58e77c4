//! The small-packet set: 64-byte UDP frames from c1 to c2 across the lab bridge, as fast as the
//! sender's threads go, counted where they arrive (c2's IP InReceives). TCP with GSO moves
//! 64 KiB per sighting; here every frame is a sighting, so per-packet cost shows.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use probe_lab::BridgeLab;

use super::sender;

/// The discard port in c2.
const PORT: u16 = 9;

/// A socket in c2 read by a thread of its own, so that datagrams are consumed, not dropped
/// (a full socket would drop every one, and each drop is a sighting of the drop tracepoint),
/// and no port-unreachable replies add packets. The same reader runs in every configuration.
pub struct Sink {
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    addr: Ipv4Addr,
}

impl Sink {
    pub fn new(lab: &BridgeLab) -> anyhow::Result<Self> {
        let c2 = lab.container("c2");
        let addr = c2.addr;
        let socket = c2.ns.run(move || UdpSocket::bind((addr, PORT)))??;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stopped.load(Ordering::Relaxed) {
                let _ = socket.recv(&mut buf);
            }
        });
        Ok(Self {
            stop,
            reader: Some(reader),
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

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
