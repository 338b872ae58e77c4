//! The smallest HTTP/1.1 responder that serves `/metrics`: one request per connection, read
//! with a size and time limit, answered and closed. Written on tokio, which probe already runs
//! on, rather than pulling in an HTTP framework: a scrape endpoint needs GET of one path, and
//! the few lines here are easier to bound than a server's defaults.
//!
//! Connections are read on their own tasks; the request is handed to the event loop, which
//! reads the kernel's maps and answers, so every scrape sees current counts.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

/// A request head larger than this is refused.
const MAX_HEAD: usize = 8192;
/// A client that sends no complete request head in this time is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot serve metrics on {addr}: the address is in use (another probe watch or \
         exporter?); choose another with --metrics ADDR:PORT"
    )]
    InUse { addr: SocketAddr },
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the listening socket now (in the caller's network namespace), before anything is
/// loaded, so a busy address is said at once.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::InUse { addr }
        } else {
            ServeError::Bind { addr, source }
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(listener)
}

/// What a client asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// A request waiting for the event loop's answer.
pub type Pending = (Request, oneshot::Sender<Response>);

/// Accepts connections and hands their requests to `requests`.
pub struct Server {
    listener: TcpListener,
    requests: mpsc::Sender<Pending>,
    open: Arc<AtomicUsize>,
}

impl Server {
    /// Must be called inside the runtime.
    pub fn new(
        listener: std::net::TcpListener,
    ) -> std::io::Result<(Self, mpsc::Receiver<Pending>)> {
        let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
        Ok((
            Self {
                listener: TcpListener::from_std(listener)?,
                requests: tx,
                open: Arc::new(AtomicUsize::new(0)),
            },
            rx,
        ))
    }

    /// Waits for the next connection and starts serving it on a task of its own.
    pub async fn accept(&self) {
        let (stream, peer) = match self.listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning on the error.
                log::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        if self.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            log::debug!("metrics: too many connections; closing the one from {peer}");
            return;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        let open = self.open.clone();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, requests).await {
                log::debug!("metrics: connection from {peer}: {e}");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve(mut stream: TcpStream, requests: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = match parse(&head) {
        None => Response::text("400 Bad Request", "bad request\n"),
        Some(request) => {
            let (tx, rx) = oneshot::channel();
            let head_only = request.method == "HEAD";
            if requests.send((request, tx)).await.is_err() {
                return Ok(());
            }
            match rx.await {
                Ok(mut r) => {
                    if head_only {
                        // HEAD: the same headers, no body.
                        let len = r.body.len();
                        r.body.clear();
                        return write(&mut stream, &r, len).await;
                    }
                    r
                }
                Err(_) => return Ok(()),
            }
        }
    };
    let len = response.body.len();
    write(&mut stream, &response, len).await
}

async fn write(stream: &mut TcpStream, r: &Response, len: usize) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        r.status, r.content_type
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(r.body.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > MAX_HEAD {
            return Ok(head);
        }
    }
}

/// The method and path of a request head (query string dropped); None when it is not HTTP.
pub fn parse(head: &[u8]) -> Option<Request> {
    if head.len() > MAX_HEAD {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some(Request {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or(target).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_to_method_and_path() {
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Request {
                method: "GET".into(),
                path: "/metrics".into()
            })
        );
        assert_eq!(parse(b"hello\r\n\r\n"), None);
        assert_eq!(parse(b"GET metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse(&[b'a'; MAX_HEAD + 1]), None);
    }
}
