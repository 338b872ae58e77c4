//! A real Prometheus server inside a lab namespace, with its own configuration and data
//! directory, and a small client of its HTTP query API. The server is killed and its files
//! removed on drop.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::Netns;

/// How long Prometheus may take to start, and a query to show what is awaited.
pub const WAIT: Duration = Duration::from_secs(60);

/// Whether a `prometheus` server binary is on PATH (the VM guests have none).
pub fn installed() -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("prometheus").is_file())
    })
}

/// A Prometheus server in a namespace, scraping one target.
pub struct Prometheus {
    child: Child,
    ns: String,
    listen: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` in `ns`, listening on `listen` and scraping `target`'s /metrics
    /// every `interval`; returns once its `/-/ready` answers 200.
    pub fn start(
        ns: &Netns,
        listen: SocketAddr,
        target: SocketAddr,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "probe-{}-prometheus-{}",
            std::process::id(),
            ns.name()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let secs = interval.as_secs_f64();
        let config = format!(
            "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  \
             evaluation_interval: {secs}s\nscrape_configs:\n  - job_name: probe\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "prometheus"])
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("log"))?))
            .spawn()
            .context("cannot start prometheus (cargo xtask setup installs it)")?;
        let mut p = Self {
            child,
            ns: ns.name().to_owned(),
            listen,
            dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok((200, _)) = p.get("/-/ready") {
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", p.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus was not ready within {WAIT:?}:\n{}", p.log());
            }
            // Polling a readiness endpoint, not waiting for time to pass.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// GET `path` from the server (inside its namespace): (status, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(&self.ns, self.listen, path)
    }

    /// An instant query's result vector (`data.result`).
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(promql)))?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("query {promql}: not JSON ({status}): {body}"))?;
        if v["status"] != "success" {
            bail!("query {promql} failed: {body}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Runs `promql` until `accept` takes its result, up to [`WAIT`]; the last result on
    /// failure.
    pub fn query_until(
        &self,
        promql: &str,
        mut accept: impl FnMut(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let result = self.query(promql)?;
            if accept(&result) {
                return Ok(result);
            }
            if Instant::now() > deadline {
                bail!(
                    "query {promql} never gave the expected result within {WAIT:?}; last: \
                     {result:#?}\nprometheus targets: {}",
                    self.get("/api/v1/targets")
                        .map(|(_, b)| b)
                        .unwrap_or_default()
                );
            }
            // Each scrape adds a sample: ask again after the next one may have come.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of one vector element.
pub fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A plain HTTP/1.1 GET from inside namespace `ns`: (status, body).
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_owned();
    crate::in_netns(ns, move || -> anyhow::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP answer: {head}"))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, body))
    })?
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Loopback, where a lab namespace's Prometheus and probe meet.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
