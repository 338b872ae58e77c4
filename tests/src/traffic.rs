//! Traffic for tests and the demo, sent from inside lab namespaces with ordinary sockets. Each
//! call waits for its answer (or a bounded failure), never for a fixed time.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use crate::Netns;

/// A TCP server answering one connection; dropping it closes the port even if nobody came.
pub struct OneShotServer {
    listener: Arc<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for OneShotServer {
    fn drop(&mut self) {
        // Wakes a thread blocked in accept() (it then fails), so the port is free again.
        // SAFETY: shutdown on a socket we own.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server in `ns` that answers one connection: reads a request, writes "ok\n".
pub fn serve_tcp_once(ns: &Netns, addr: Ipv4Addr, port: u16) -> anyhow::Result<OneShotServer> {
    let listener = Arc::new(ns.run(move || TcpListener::bind((addr, port)))??);
    let accepting = Arc::clone(&listener);
    let thread = std::thread::spawn(move || {
        if let Ok((mut conn, _)) = accepting.accept() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 64];
            if conn.read(&mut buf).is_ok() {
                let _ = conn.write_all(b"ok\n");
            }
        }
    });
    Ok(OneShotServer {
        listener,
        thread: Some(thread),
    })
}

/// Connects from `ns` to `dst:port`, sends a request and reads the answer. Returns the local
/// port on success.
pub fn tcp_exchange(
    ns: &Netns,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<u16> {
    ns.run(move || tcp_request(dst, port, timeout))?
        .map_err(Into::into)
}

/// Connects from the calling thread's namespace to `dst:port`, sends a request and reads the
/// answer; the local port. Labs run it inside their namespaces.
pub fn tcp_request(dst: Ipv4Addr, port: u16, timeout: Duration) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((dst, port)), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = [0u8; 3];
    s.read_exact(&mut answer)?;
    s.local_addr().map(|a| a.port())
}

/// A UDP socket in `ns` bound to `addr:port`, ready to receive.
pub fn udp_listen(ns: &Netns, addr: Ipv4Addr, port: u16) -> anyhow::Result<UdpSocket> {
    let sock = ns.run(move || UdpSocket::bind((addr, port)))??;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(sock)
}

/// Sends one datagram from `ns`; returns the source port used.
pub fn udp_send(ns: &Netns, dst: Ipv4Addr, port: u16) -> anyhow::Result<u16> {
    ns.run(move || udp_datagram(dst, port))?.map_err(Into::into)
}

/// Sends one datagram from the calling thread's namespace; the source port.
pub fn udp_datagram(dst: Ipv4Addr, port: u16) -> std::io::Result<u16> {
    let s = UdpSocket::bind(("0.0.0.0", 0))?;
    s.send_to(b"probe story", (dst, port))?;
    s.local_addr().map(|a| a.port())
}
