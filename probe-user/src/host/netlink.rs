//! probe's one netlink socket, for every protocol it speaks (rtnetlink in [`super::rtnl`], the
//! nftables trace in `points::rules`): a request and its answer (a dump read to NLMSG_DONE,
//! or an ack), with the kernel's errno made an error; and subscriptions to multicast groups,
//! with a large receive buffer and the kernel's overflow (ENOBUFS) told apart.
//!
//! Messages are framed and typed by netlink-packet-core; the socket is netlink-sys's. A socket
//! belongs to the network namespace of the thread that opened it.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
pub use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};

/// Room for one datagram: a dump part or a burst of notifications.
const DATAGRAM_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket itself failed (opening, sending, receiving).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The kernel answered the request with an error; shown as the errno's own text.
    #[error("{}", io::Error::from_raw_os_error(*errno))]
    Refused { errno: i32 },
    /// The kernel dropped notifications for this socket (its receive buffer was full).
    #[error("netlink notifications were lost: the receive buffer overflowed")]
    Overflow,
}

impl NetlinkError {
    /// The errno behind the error, whether the socket's or the kernel's answer.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io(e) => e.raw_os_error(),
            NetlinkError::Refused { errno } => Some(*errno),
            NetlinkError::Overflow => Some(libc::ENOBUFS),
        }
    }
}

/// A message the decoder could not type: its type, its body, and why.
#[derive(Debug)]
pub struct Undecoded {
    pub message_type: u16,
    pub payload: Vec<u8>,
    pub error: String,
}

pub struct Socket {
    inner: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Socket {
    /// A blocking socket for requests.
    pub fn request(protocol: isize) -> io::Result<Self> {
        let mut inner = netlink_sys::Socket::new(protocol)?;
        inner.bind_auto()?;
        Ok(Self {
            inner,
            seq: 0,
            buf: Vec::with_capacity(DATAGRAM_BYTES),
        })
    }

    /// A non-blocking socket subscribed to `groups`, with a receive buffer of `rcvbuf` bytes:
    /// bursts (container churn, a busy trace) must fit, or notifications are lost. Root may
    /// exceed rmem_max; otherwise the ordinary limit applies, which is not fatal.
    pub fn subscribe(protocol: isize, groups: &[u32], rcvbuf: usize) -> io::Result<Self> {
        let sock = Self::request(protocol)?;
        for &group in groups {
            sock.inner.add_membership(group)?;
        }
        sock.inner.set_non_blocking(true)?;
        let bytes = i32::try_from(rcvbuf).unwrap_or(i32::MAX);
        // SAFETY: an int option on our own socket.
        let forced = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const i32).cast(),
                size_of::<i32>() as u32,
            )
        };
        if forced != 0 {
            let _ = sock.inner.set_rx_buf_sz(bytes);
        }
        Ok(sock)
    }

    fn send<I: NetlinkSerializable>(&mut self, flags: u16, message: I) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.inner.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Reads one datagram; Ok(None) when a non-blocking socket has nothing more.
    pub fn recv(&mut self) -> Result<Option<&[u8]>, NetlinkError> {
        self.buf.clear();
        match self.inner.recv(&mut self.buf, 0) {
            Ok(_) => Ok(Some(&self.buf)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(NetlinkError::Overflow),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads away everything queued (after an overflow: what is still there predates the
    /// caller's catching up, and would be taken for news afterwards).
    fn drain(&mut self) {
        while let Ok(Some(_)) | Err(NetlinkError::Overflow) = self.recv() {}
    }

    /// Sends a dump request and returns every message of the answer, until NLMSG_DONE.
    pub fn dump<I>(&mut self, request: I) -> Result<Vec<Result<I, Undecoded>>, NetlinkError>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(NLM_F_DUMP, request)?;
        let mut out = Vec::new();
        while !self.answer(seq, &mut out)? {}
        Ok(out)
    }

    /// Sends a request and waits for the kernel's ack; returns what it answered before it
    /// (a get's reply).
    pub fn ack<I>(&mut self, request: I) -> Result<Vec<Result<I, Undecoded>>, NetlinkError>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(NLM_F_ACK, request)?;
        let mut out = Vec::new();
        while !self.answer(seq, &mut out)? {}
        Ok(out)
    }

    /// Reads one datagram of the answer to `seq` into `out`; true once the answer is over.
    fn answer<I: NetlinkDeserializable>(
        &mut self,
        seq: u32,
        out: &mut Vec<Result<I, Undecoded>>,
    ) -> Result<bool, NetlinkError> {
        let Some(datagram) = self.recv()? else {
            return Ok(false);
        };
        for frame in frames(datagram) {
            if frame.sequence_number() != seq {
                continue;
            }
            let payload = frame.payload();
            let code = match frame.message_type() {
                NLMSG_ERROR => ErrorBuffer::new_checked(&payload)
                    .map_or(-libc::EIO, |e| e.code().map_or(0, |c| c.get())),
                // A dump that failed part-way says so in its NLMSG_DONE (which may be empty).
                NLMSG_DONE if payload.is_empty() => 0,
                NLMSG_DONE => DoneBuffer::new_checked(&payload).map_or(-libc::EIO, |d| d.code()),
                _ => {
                    out.push(decode(&frame));
                    continue;
                }
            };
            return match code {
                0 => Ok(true),
                code => Err(NetlinkError::Refused { errno: -code }),
            };
        }
        Ok(false)
    }

    /// Sends `datagram`, messages framed already (an nftables batch), and waits for the acks
    /// of `seqs`; the first error the kernel returns for one of them is the result. Answers to
    /// other sequence numbers (the rest of an earlier, failed batch) are passed over.
    pub fn send_acked(&mut self, datagram: &[u8], seqs: &[u32]) -> Result<(), NetlinkError> {
        self.inner.send(datagram, 0)?;
        let mut pending = seqs.to_vec();
        while !pending.is_empty() {
            let Some(datagram) = self.recv()? else {
                continue;
            };
            for frame in frames(datagram) {
                let seq = frame.sequence_number();
                if frame.message_type() != NLMSG_ERROR || !pending.contains(&seq) {
                    continue;
                }
                let code = ErrorBuffer::new_checked(&frame.payload())
                    .map_or(-libc::EIO, |e| e.code().map_or(0, |c| c.get()));
                if code != 0 {
                    return Err(NetlinkError::Refused { errno: -code });
                }
                pending.retain(|s| *s != seq);
            }
        }
        Ok(())
    }

    /// The typed messages of every datagram queued on a subscribed socket.
    pub fn pending<I: NetlinkDeserializable>(
        &mut self,
    ) -> Result<Vec<Result<I, Undecoded>>, NetlinkError> {
        let mut out = Vec::new();
        loop {
            match self.recv() {
                Ok(Some(datagram)) => out.extend(
                    frames(datagram)
                        .filter(|f| !matches!(f.message_type(), NLMSG_DONE | NLMSG_ERROR))
                        .map(|f| decode(&f)),
                ),
                Ok(None) => return Ok(out),
                Err(NetlinkError::Overflow) => {
                    self.drain();
                    return Err(NetlinkError::Overflow);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn decode<I: NetlinkDeserializable>(frame: &NetlinkBuffer<&[u8]>) -> Result<I, Undecoded> {
    let undecoded = |error: String| Undecoded {
        message_type: frame.message_type(),
        payload: frame.payload().to_vec(),
        error,
    };
    match NetlinkMessage::<I>::deserialize(frame.buffer) {
        Ok(NetlinkMessage {
            payload: NetlinkPayload::InnerMessage(m),
            ..
        }) => Ok(m),
        Ok(other) => Err(undecoded(format!("unexpected {:?}", other.header))),
        Err(e) => Err(undecoded(e.to_string())),
    }
}

/// The messages of a datagram, each length-checked; stops at the first malformed one.
pub fn frames(datagram: &[u8]) -> impl Iterator<Item = NetlinkBuffer<&[u8]>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let frame = NetlinkBuffer::new_checked(rest).ok()?;
        let len = frame.length() as usize;
        let frame = NetlinkBuffer::new(&rest[..len]);
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some(frame)
    })
}
