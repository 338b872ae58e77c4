//! Just enough HTTP/1.1 for OTLP: one POST per connection (`Connection: close`), a status
//! line, headers, and a body by length, chunks or end of stream. Every step has a deadline.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UrlError {
    #[error(
        "{0}: probe sends OTLP over plain http:// (no TLS); point it at a collector or agent \
         on this host or network, e.g. http://127.0.0.1:4318"
    )]
    NotHttp(String),
    #[error("{0}: no host in the URL (e.g. http://collector:4318)")]
    NoHost(String),
    #[error("{url}: '{port}' is not a port number")]
    BadPort { url: String, port: String },
}

#[derive(Debug, Error)]
pub enum PostError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} answered with something that is not HTTP")]
    NotHttp(String),
}

/// Where to POST: `http://HOST[:PORT][/PATH]`, the path `/v1/traces` when none is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str, default_path: &str) -> Result<Self, UrlError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| UrlError::NotHttp(url.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            default_path.to_owned()
        } else {
            path.to_owned()
        };
        // [v6]:port, [v6], host:port, host
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => return Err(UrlError::NoHost(url.to_owned())),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(url.to_owned()));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| UrlError::BadPort {
                url: url.to_owned(),
                port: p.to_owned(),
            })?,
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `http://host:port/path`, for messages.
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            format!("http://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// An HTTP response: its status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The most of a response probe reads (an OTLP answer is a few bytes).
const MAX_RESPONSE: u64 = 1 << 20;

/// POSTs `body` to `to`, waiting at most `timeout` for each of connecting, writing and reading.
pub fn post(
    to: &Endpoint,
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, PostError> {
    let name = format!("{}:{}", to.host, to.port);
    let addrs: Vec<_> = (to.host.as_str(), to.port)
        .to_socket_addrs()
        .map_err(|e| PostError::Resolve(name.clone(), e))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        PostError::Connect(
            name.clone(),
            last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
        )
    })?;
    let io = |e| PostError::Io(name.clone(), e);
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let host = if to.host.contains(':') {
        format!("[{}]:{}", to.host, to.port)
    } else {
        format!("{}:{}", to.host, to.port)
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: probe/{}\r\nContent-Type: \
         {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        to.path,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    stream.flush().map_err(io)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(io)?;
    parse_response(&raw).ok_or(PostError::NotHttp(name))
}

/// Status and body of a complete response (`Connection: close`: it ends with the stream).
fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) => rest.get(..n)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Some(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("http://127.0.0.1:4318", "/v1/traces").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 4318));
        assert_eq!(e.path, "/v1/traces");
        assert_eq!(e.url(), "http://127.0.0.1:4318/v1/traces");
        let e = Endpoint::parse("http://collector/otlp/v1/traces", "/v1/traces").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("collector", 80));
        assert_eq!(e.path, "/otlp/v1/traces");
        let e = Endpoint::parse("http://[::1]:4318/", "/v1/traces").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 4318));
        assert_eq!(e.url(), "http://[::1]:4318/v1/traces");
        assert!(matches!(
            Endpoint::parse("https://c:4318", "/v1/traces"),
            Err(UrlError::NotHttp(_))
        ));
        assert!(matches!(
            Endpoint::parse("http://:4318", "/v1/traces"),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            Endpoint::parse("http://c:43a18", "/v1/traces"),
            Err(UrlError::BadPort { .. })
        ));
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabXX").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ab"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcd");
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\n").unwrap();
        assert_eq!(r.status, 503);
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_none());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_none());
    }
}
