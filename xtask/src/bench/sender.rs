//! The UDP sender of the loss search and the small-packet set: 64-byte frames (18 bytes of
//! payload) from several connected sockets, one thread each, so both cores send (one thread
//! peaked near 90 k packets/s on the AMD machines, short of the 200 k the loss target needs).
//! Each thread paces itself to its share of the rate, or sends as fast as it can.

use std::{
    net::{SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Threads (and sockets) per sender: one per core of these 2-core machines, and one more so a
/// thread preempted by the kernel's forwarding work on its core does not leave that core idle.
pub const THREADS: usize = 3;
/// UDP payload making a 64-byte Ethernet frame with its FCS (14 + 20 + 8 + 18 + 4).
const PAYLOAD: usize = 18;

/// Sends from namespace `ns` to `dst` at `rate` packets/s in total (`f64::INFINITY`: as fast
/// as it can) for `secs`; returns (packets sent, seconds taken by the slowest thread).
pub fn send(ns: &str, dst: SocketAddrV4, rate: f64, secs: f64) -> anyhow::Result<(u64, f64)> {
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let ns = ns.to_owned();
            std::thread::spawn(move || {
                probe_lab::in_netns(&ns, move || paced(dst, rate / THREADS as f64, secs))?
            })
        })
        .collect();
    let mut total = 0;
    let mut took: f64 = 0.0;
    for t in threads {
        let (n, s) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a sender thread panicked"))??;
        total += n;
        took = took.max(s);
    }
    Ok((total, took))
}

fn paced(dst: SocketAddrV4, rate: f64, secs: f64) -> anyhow::Result<(u64, f64)> {
    const BATCH: usize = 32;
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    // Connected, so the kernel numbers each datagram's IP id (unconnected ones with DF carry
    // id 0) and every packet has an identity of its own, as TCP segments do.
    sock.connect(dst)?;
    let payload = [0u8; PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    // SAFETY: plain data; every pointer below outlives the sendmmsg calls.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= secs {
            return Ok((sent, elapsed));
        }
        let due = if rate.is_finite() {
            (rate * elapsed) as u64
        } else {
            u64::MAX
        };
        // Paced: whole batches, sleeping until the next is due. Spinning instead would take a
        // core from probe (three threads on two cores), and single sends cost more per packet.
        if due < sent + BATCH as u64 {
            let next = (sent + BATCH as u64) as f64 / rate;
            std::thread::sleep(Duration::from_secs_f64((next - elapsed).clamp(1e-6, 0.01)));
            continue;
        }
        let n = (due - sent).min(BATCH as u64) as u32;
        // SAFETY: msgs points at live data (see above).
        let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n, 0) };
        if rc > 0 {
            sent += rc as u64;
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // ECONNREFUSED: the receiver's (rate-limited) port unreachable, reported on the
                // next send.
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED) => {}
                _ => return Err(e).context("sendmmsg"),
            }
        }
    }
}

/// IP packets the namespace `ns` has received so far (`Ip: InReceives`, its own /proc/net).
pub fn ip_in_receives(ns: &str) -> anyhow::Result<u64> {
    probe_lab::in_netns(ns, || {
        // thread-self: /proc/self/net would be the main thread's namespace.
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next(), ip.next());
        let (Some(names), Some(values)) = (names, values) else {
            anyhow::bail!("no Ip lines in /proc/net/snmp");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "InReceives")
            .and_then(|(_, v)| v.parse().ok())
            .context("no Ip InReceives in /proc/net/snmp")
    })?
}
