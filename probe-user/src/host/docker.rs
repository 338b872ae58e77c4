//! Docker's names for what the kernel only knows by number: which container a host-side veth
//! (or a network namespace, or an address) belongs to.
//!
//! A small client for the engine's API on its unix socket (HTTP/1.0 GET, JSON). For every
//! running container it reads the process id, enters the container's network namespace on a
//! short-lived thread and lists its interfaces: a container's veth knows its peer's index
//! (IFLA_LINK), which is the host-side veth in the traced namespace. When Docker is absent (no
//! socket, daemon down, no permission), nothing is named and nothing is reported as an error.

use std::{
    io::{Read, Write},
    net::IpAddr,
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use probe_pipeline::topology::Containers;

use super::{
    netlink::NetlinkError,
    netns,
    rtnl::{self, Link},
};

/// Where the engine listens unless DOCKER_HOST says `unix://...`.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long one API request may take before Docker counts as absent.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest API answer read (a list of many containers fits easily).
const MAX_RESPONSE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach Docker at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Docker API request {request} failed: {source}")]
    Io {
        request: String,
        source: std::io::Error,
    },
    #[error("Docker API request {request}: {what}")]
    Protocol { request: String, what: String },
}

/// What the engine says about one running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// Its init process in the host's pid namespace (0 when not running).
    pub pid: u32,
    /// The bind-mounted namespace file (`/var/run/docker/netns/...`), if any.
    pub sandbox_key: Option<PathBuf>,
    pub addresses: Vec<IpAddr>,
}

impl Container {
    /// From `GET /containers/{id}/json`.
    pub fn from_inspect(v: &Value) -> Option<Self> {
        let id = v["Id"].as_str()?.to_owned();
        let name = v["Name"]
            .as_str()
            .map(|n| n.trim_start_matches('/').to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id.chars().take(12).collect());
        let pid = v["State"]["Pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        let sandbox_key = v["NetworkSettings"]["SandboxKey"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let mut addresses = Vec::new();
        if let Some(nets) = v["NetworkSettings"]["Networks"].as_object() {
            for net in nets.values() {
                for key in ["IPAddress", "GlobalIPv6Address"] {
                    if let Some(a) = net[key].as_str().and_then(|s| s.parse().ok()) {
                        addresses.push(a);
                    }
                }
            }
        }
        Some(Self {
            id,
            name,
            pid,
            sandbox_key,
            addresses,
        })
    }

    /// Its network namespace file.
    fn netns_path(&self) -> Option<PathBuf> {
        if self.pid != 0 {
            let p = PathBuf::from(format!("/proc/{}/ns/net", self.pid));
            if p.exists() {
                return Some(p);
            }
        }
        self.sandbox_key.clone().filter(|p| p.exists())
    }
}

/// The engine's API socket: `DOCKER_HOST` when it names a unix socket, else the default.
pub fn socket_path() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// A client for the engine's API on a unix socket.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The client for this machine's engine, if its socket exists.
    pub fn local() -> Option<Self> {
        let path = socket_path();
        path.exists().then(|| Self::new(path))
    }

    /// GETs `request` (e.g. `/containers/json`) and parses the JSON answer.
    pub fn get(&self, request: &str) -> Result<Value, DockerError> {
        let mut s = UnixStream::connect(&self.path).map_err(|source| DockerError::Connect {
            path: self.path.clone(),
            source,
        })?;
        let io = |source| DockerError::Io {
            request: request.to_owned(),
            source,
        };
        s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        // HTTP/1.0: the engine answers and closes, so the answer ends where the stream does.
        s.write_all(format!("GET {request} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())
            .map_err(io)?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(io)?;
        if raw.len() > MAX_RESPONSE {
            return Err(DockerError::Protocol {
                request: request.to_owned(),
                what: format!("answer larger than {MAX_RESPONSE} bytes"),
            });
        }
        parse_response(&raw).map_err(|what| DockerError::Protocol {
            request: request.to_owned(),
            what,
        })
    }

    /// Whether the engine answers.
    pub fn ping(&self) -> Result<(), DockerError> {
        let mut s = UnixStream::connect(&self.path).map_err(|source| DockerError::Connect {
            path: self.path.clone(),
            source,
        })?;
        let io = |source| DockerError::Io {
            request: "/_ping".to_owned(),
            source,
        };
        s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .map_err(io)?;
        let mut raw = Vec::new();
        s.take(4096).read_to_end(&mut raw).map_err(io)?;
        let (status, _, _) = split_response(&raw).map_err(|what| DockerError::Protocol {
            request: "/_ping".to_owned(),
            what,
        })?;
        if status == 200 {
            Ok(())
        } else {
            Err(DockerError::Protocol {
                request: "/_ping".to_owned(),
                what: format!("status {status}"),
            })
        }
    }

    /// Every running container, with its process and addresses.
    pub fn running(&self) -> Result<Vec<Container>, DockerError> {
        let list = self.get("/containers/json")?;
        let mut out = Vec::new();
        for c in list.as_array().into_iter().flatten() {
            let Some(id) = c["Id"].as_str().filter(|id| is_hex_id(id)) else {
                continue;
            };
            // A container that stopped in between is simply left out.
            match self.get(&format!("/containers/{id}/json")) {
                Ok(v) => out.extend(Container::from_inspect(&v)),
                Err(e) => log::debug!("skipping container {id}: {e}"),
            }
        }
        Ok(out)
    }
}

fn is_hex_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Lower-cased header names and their values.
type Headers = Vec<(String, String)>;

/// (status, headers, body) of an HTTP/1.x answer.
fn split_response(raw: &[u8]) -> Result<(u16, Headers, &[u8]), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("answer without a header end")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "header is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, &raw[end + 4..]))
}

/// The JSON body of a successful answer (plain or chunked).
pub fn parse_response(raw: &[u8]) -> Result<Value, String> {
    let (status, headers, body) = split_response(raw)?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    if status != 200 {
        let msg = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        return Err(format!("status {status} {msg}").trim_end().to_owned());
    }
    serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk without a size line")?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("chunk shorter than its size".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

/// Links of the network namespace at `path`, listed from a thread that entered it.
fn links_in(path: &std::path::Path) -> Result<Vec<Link>, NetlinkError> {
    let file = std::fs::File::open(path)?;
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we own; it moves only this short-lived thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        rtnl::Socket::request_socket()?.links()
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace thread panicked"))?
}

fn inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Puts container names on interfaces of the traced namespace (`own_links`, whose namespace
/// inode is `own_netns`).
pub fn resolve(containers: &[Container], own_netns: Option<u64>, own_links: &[Link]) -> Containers {
    let mut out = Containers::default();
    for c in containers {
        for a in &c.addresses {
            out.addresses.entry(*a).or_insert_with(|| c.name.clone());
        }
        let Some(path) = c.netns_path() else { continue };
        let Some(ino) = inode(&path) else { continue };
        // Containers sharing a namespace (--network container:x): the first one names it.
        if out.netns.contains_key(&ino) {
            continue;
        }
        out.netns.insert(ino, c.name.clone());
        if Some(ino) == own_netns {
            for l in own_links.iter().filter(|l| !l.is_loopback()) {
                out.interfaces.insert(l.index, c.name.clone());
                out.ifnames.insert(l.index, l.name.clone());
            }
            continue;
        }
        let inside = match links_in(&path) {
            Ok(l) => l,
            Err(e) => {
                log::debug!("cannot list interfaces of container {}: {e}", c.name);
                continue;
            }
        };
        for l in inside.iter().filter(|l| !l.is_loopback()) {
            out.inside
                .entry(l.index)
                .or_insert_with(|| (c.name.clone(), l.name.clone()));
        }
        for l in inside.iter().filter(|l| l.kind.as_deref() == Some("veth")) {
            let Some(peer) = l.peer else { continue };
            // The peer index is in another namespace: it is ours only if that veth points back.
            if let Some(host) = own_links.iter().find(|h| {
                h.index == peer && h.kind.as_deref() == Some("veth") && h.peer == Some(l.index)
            }) {
                out.interfaces.insert(host.index, c.name.clone());
                out.ifnames.insert(host.index, host.name.clone());
            }
        }
    }
    out
}

/// Everything about the engine's containers as seen from the calling thread's namespace.
pub fn load(client: &Client) -> Result<Containers, DockerError> {
    let containers = client.running()?;
    let links = rtnl::Socket::request_socket()
        .and_then(|mut s| s.links())
        .unwrap_or_default();
    Ok(resolve(&containers, netns::own(), &links))
}

/// How long after a link appears probe keeps asking Docker (a container's veth exists a moment
/// before the engine reports the container as running).
const REFRESH_FOR: Duration = Duration::from_secs(5);
const REFRESH_EVERY: Duration = Duration::from_millis(300);

/// Keeps container names current while a trace runs: names are read at start, and again (on a
/// thread, never blocking the trace) for a few seconds after interfaces appear.
pub struct Watcher {
    client: Option<Client>,
    current: Containers,
    refresh_until: Option<Instant>,
    last: Option<Instant>,
    pending: Option<mpsc::Receiver<Result<Containers, DockerError>>>,
}

impl Watcher {
    /// Reads the names now; without Docker, a watcher that never names anything.
    pub fn start() -> Self {
        let client = Client::local();
        let current = match &client {
            Some(c) => match load(c) {
                Ok(names) => {
                    log::debug!(
                        "Docker: {} container interface(s) named",
                        names.interfaces.len()
                    );
                    names
                }
                Err(e) => {
                    log::debug!("no container names: {e}");
                    Containers::default()
                }
            },
            None => Containers::default(),
        };
        Self {
            client,
            current,
            refresh_until: None,
            last: None,
            pending: None,
        }
    }

    /// A watcher that never names anything.
    pub fn disabled() -> Self {
        Self {
            client: None,
            current: Containers::default(),
            refresh_until: None,
            last: None,
            pending: None,
        }
    }

    pub fn containers(&self) -> &Containers {
        &self.current
    }

    /// Interfaces changed: read the names again for a little while.
    pub fn links_changed(&mut self) {
        if self.client.is_some() {
            self.refresh_until = Some(Instant::now() + REFRESH_FOR);
        }
    }

    /// Call often: returns the new names when they changed.
    pub fn poll(&mut self) -> Option<&Containers> {
        let mut changed = false;
        if let Some(rx) = &self.pending {
            match rx.try_recv() {
                Ok(Ok(names)) => {
                    self.pending = None;
                    if names != self.current {
                        for (i, name) in &names.interfaces {
                            if self.current.interfaces.get(i) != Some(name) {
                                let ifname = names.ifnames.get(i).map_or("?", String::as_str);
                                log::info!("container {name} is behind {ifname}");
                            }
                        }
                        self.current = names;
                        changed = true;
                    }
                }
                Ok(Err(e)) => {
                    self.pending = None;
                    log::debug!("cannot refresh container names: {e}");
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.pending = None,
            }
        }
        let now = Instant::now();
        let due = self.refresh_until.is_some_and(|until| now < until)
            && self.last.is_none_or(|l| now - l >= REFRESH_EVERY);
        if due
            && self.pending.is_none()
            && let Some(client) = self.client.clone()
        {
            self.last = Some(now);
            let (tx, rx) = mpsc::channel();
            // The thread starts in the traced namespace, like the one that spawns it.
            std::thread::spawn(move || {
                let _ = tx.send(load(&client));
            });
            self.pending = Some(rx);
        }
        changed.then_some(&self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[{\"Id\":\"ab\"}]";
        assert_eq!(parse_response(plain).unwrap()[0]["Id"], "ab");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        5\r\n[{\"Id\r\n8\r\n\":\"ab\"}]\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap()[0]["Id"], "ab");
        let missing = b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: x\"}";
        assert_eq!(
            parse_response(missing).unwrap_err(),
            "status 404 No such container: x"
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab")
                .is_err()
        );
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n\r\n{not json").is_err());
    }

    #[test]
    fn reads_inspect_output() {
        let v: Value = serde_json::from_str(
            r#"{"Id":"9e54","Name":"/web","State":{"Pid":4242},
                "NetworkSettings":{"SandboxKey":"/var/run/docker/netns/3796",
                  "Networks":{"t":{"IPAddress":"172.30.9.2","GlobalIPv6Address":""}}}}"#,
        )
        .unwrap();
        let c = Container::from_inspect(&v).unwrap();
        assert_eq!(c.name, "web");
        assert_eq!(c.pid, 4242);
        assert_eq!(
            c.sandbox_key.as_deref(),
            Some(std::path::Path::new("/var/run/docker/netns/3796"))
        );
        assert_eq!(c.addresses, vec!["172.30.9.2".parse::<IpAddr>().unwrap()]);
        // Odd answers give what they can, never a panic.
        let odd: Value = serde_json::from_str(r#"{"Id":"0123456789abcdef","State":7}"#).unwrap();
        let c = Container::from_inspect(&odd).unwrap();
        assert_eq!((c.name.as_str(), c.pid), ("0123456789ab", 0));
        assert!(Container::from_inspect(&Value::Null).is_none());
    }

    #[test]
    fn absent_engine_is_an_error_not_a_panic() {
        let c = Client::new(PathBuf::from("/nonexistent/docker.sock"));
        assert!(matches!(c.ping(), Err(DockerError::Connect { .. })));
        assert!(matches!(
            c.get("/containers/json"),
            Err(DockerError::Connect { .. })
        ));
    }

    #[test]
    fn own_namespace_container_names_its_interfaces() {
        let own = netns::own().unwrap();
        let c = Container {
            id: "ab".into(),
            name: "inside".into(),
            pid: std::process::id(),
            sandbox_key: None,
            addresses: vec![],
        };
        let links = vec![Link {
            index: 7,
            name: "eth0".into(),
            hw_type: netlink_packet_route::link::LinkLayerType::Ether,
            kind: Some("veth".into()),
            master: None,
            peer: Some(12),
        }];
        let names = resolve(&[c], Some(own), &links);
        assert_eq!(names.by_ifindex(7), Some("inside"));
        assert_eq!(names.by_netns(own), Some("inside"));
    }
}
