//! Rule-level netfilter verdicts on kernels without kprobes (`probe trace --rules`): the
//! mechanism behind `nft monitor trace`. probe adds a small table of its own whose only rules
//! set `nftrace` on packets, listens to the kernel's trace messages (NFNLGRP_NFTRACE) and names
//! the table, chain, rule and verdict, for native nftables (firewalld) and iptables-nft (Docker)
//! alike. The table is deleted on exit, and stale ones of dead probe processes on start.

/// As `probe doctor` lists this point.
pub const NAME: &str = "rule verdicts (--rules)";
/// Its only mechanism.
pub const BACKEND: &str = "nftables trace (NFNLGRP_NFTRACE)";

use std::{
    collections::HashMap,
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    process::{Command, Stdio},
};

use thiserror::Error;

use probe_pipeline::{
    bounded::BoundedMap,
    event::{DecidedBy, Event, EventBody, Family, Hook, Packet, RawHeaders, RuleVerdict, Verdict},
    packet,
};

use crate::host::rtnl::{attributes, c_string, messages};

#[derive(Debug, Error)]
pub enum NftraceError {
    #[error("--rules needs the nft command (package nftables): {0}")]
    NoNft(io::Error),
    #[error("cannot add probe's nftables trace table: {0}")]
    AddTable(String),
    #[error("cannot listen to nftables trace messages: {0}")]
    Socket(io::Error),
}

const TABLE_PREFIX: &str = "probe_trace_";
const NFNLGRP_NFTRACE: u32 = 9;
/// Ruleset changes (tables, chains, rules added or deleted).
const NFNLGRP_NFTABLES: u32 = 7;
const NFT_MSG_DELTABLE: u16 = 2;
const NFTA_TABLE_NAME: u16 = 1;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_TRACE: u16 = 17;
const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_MARK: u16 = 14;
const NFTA_TRACE_POLICY: u16 = 16;
const NFTA_VERDICT_CODE: u16 = 1;
const TRACETYPE_POLICY: u32 = 1;
const TRACETYPE_RETURN: u32 = 2;
const TRACETYPE_RULE: u32 = 3;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// Receive buffer for trace messages: a busy host emits many per packet.
const RCVBUF_BYTES: i32 = 16 << 20;

/// probe's own table: sets nftrace on every packet entering (prerouting) or leaving (output)
/// this namespace's stack, before anything else (priority -350, ahead of raw and conntrack).
pub struct TraceTable {
    name: String,
}

impl TraceTable {
    pub fn install() -> Result<Self, NftraceError> {
        for line in sweep_stale() {
            log::info!("{line}");
        }
        let table = Self {
            name: format!("{TABLE_PREFIX}{}", std::process::id()),
        };
        table.add()?;
        Ok(table)
    }

    /// Adds the table again, after something (`nft flush ruleset`, a firewall reload) removed
    /// it.
    pub fn reinstall(&self) -> Result<(), NftraceError> {
        self.add()
    }

    fn add(&self) -> Result<(), NftraceError> {
        let name = &self.name;
        let script = format!(
            "table inet {name} {{\n\
               chain prerouting {{ type filter hook prerouting priority -350; meta nftrace set 1; }}\n\
               chain output {{ type filter hook output priority -350; meta nftrace set 1; }}\n\
             }}\n"
        );
        nft_stdin(&script).map_err(NftraceError::AddTable)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "inet", &self.name]) {
            log::warn!("could not delete nftables table inet {}: {e}", self.name);
        }
    }
}

/// Deletes trace tables whose probe process is gone (killed before it could clean up);
/// returns what it removed, one line each.
pub fn sweep_stale() -> Vec<String> {
    let Ok(out) = nft(&["list", "tables", "inet"]) else {
        return Vec::new();
    };
    let mut said = Vec::new();
    for line in out.lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = name.strip_prefix(TABLE_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && nft(&["delete", "table", "inet", name]).is_ok()
        {
            said.push(format!(
                "removed nftables table inet {name} left by probe {pid}, which is gone"
            ));
        }
    }
    said
}

fn nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NftraceError::NoNft(e).to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn nft_stdin(script: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftraceError::NoNft(e).to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A netlink socket subscribed to nftables trace messages.
pub struct TraceSocket {
    fd: OwnedFd,
    /// Messages the kernel could not deliver (ENOBUFS), counted and survived.
    pub lost: u64,
    /// Tables deleted since the last look (a ruleset reload takes probe's with it).
    deleted_tables: Vec<String>,
}

impl AsRawFd for TraceSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl TraceSocket {
    pub fn open() -> Result<Self, NftraceError> {
        let err = || NftraceError::Socket(io::Error::last_os_error());
        // SAFETY: plain socket creation; owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(err());
        }
        // SAFETY: fd is fresh and valid.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let setopt = |level, name, value: i32| {
            // SAFETY: an int option on our socket.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    name,
                    (&value as *const i32).cast(),
                    size_of::<i32>() as u32,
                )
            }
        };
        // SAFETY: valid address struct.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        } != 0
        {
            return Err(err());
        }
        for group in [NFNLGRP_NFTRACE, NFNLGRP_NFTABLES] {
            if setopt(
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                group as i32,
            ) != 0
            {
                return Err(err());
            }
        }
        // Large buffer first (root may exceed rmem_max); a smaller one is not fatal.
        if setopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF_BYTES) != 0 {
            setopt(libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF_BYTES);
        }
        Ok(Self {
            fd,
            lost: 0,
            deleted_tables: Vec::new(),
        })
    }

    /// Everything received so far. ENOBUFS (the kernel dropped messages because we were slow)
    /// is counted and reading goes on: the socket never dies of it.
    pub fn receive(&mut self) -> Vec<RawTrace> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        self.lost += 1;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return out,
                }
            }
            for (ty, _, body) in messages(&buf[..n as usize]) {
                log::trace!("netfilter message type {ty:#x}, {} bytes", body.len());
                if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE {
                    out.extend(RawTrace::parse(body));
                } else if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE {
                    let name = body.get(4..).and_then(|attrs| {
                        attributes(attrs)
                            .find_map(|(t, p)| (t == NFTA_TABLE_NAME).then(|| c_string(p)))
                    });
                    self.deleted_tables.extend(name);
                }
            }
        }
    }
}

impl TraceSocket {
    /// Whether the table `name` was deleted since the last call.
    pub fn table_deleted(&mut self, name: &str) -> bool {
        let deleted = self.deleted_tables.iter().any(|t| t == name);
        self.deleted_tables.clear();
        deleted
    }
}

/// One NFT_MSG_TRACE message, as the kernel sent it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawTrace {
    pub nfproto: u8,
    pub id: u32,
    pub table: String,
    pub chain: String,
    pub rule_handle: Option<u64>,
    /// enum nft_trace_types: 1 policy, 2 return, 3 rule.
    pub trace_type: u32,
    pub verdict: Option<i32>,
    pub target: Option<String>,
    pub iif: u32,
    pub oif: u32,
    pub mark: u32,
    pub network: Option<Vec<u8>>,
    pub transport: Option<Vec<u8>>,
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

impl RawTrace {
    pub fn parse(body: &[u8]) -> Option<Self> {
        // struct nfgenmsg: family, version, resource id.
        let nfproto = *body.first()?;
        let mut t = RawTrace {
            nfproto,
            ..Default::default()
        };
        for (ty, p) in attributes(body.get(4..)?) {
            match ty {
                NFTA_TRACE_TABLE => t.table = c_string(p),
                NFTA_TRACE_CHAIN => t.chain = c_string(p),
                NFTA_TRACE_RULE_HANDLE => {
                    t.rule_handle = p
                        .get(..8)
                        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
                }
                NFTA_TRACE_TYPE => t.trace_type = be32(p).unwrap_or(0),
                NFTA_TRACE_ID => t.id = be32(p).unwrap_or(0),
                NFTA_TRACE_IIF => t.iif = be32(p).unwrap_or(0),
                NFTA_TRACE_OIF => t.oif = be32(p).unwrap_or(0),
                NFTA_TRACE_MARK => t.mark = be32(p).unwrap_or(0),
                NFTA_TRACE_NETWORK_HEADER => t.network = Some(p.to_vec()),
                // A base chain's policy comes as its own attribute, not as a verdict.
                NFTA_TRACE_POLICY => t.verdict = be32(p).map(|v| v as i32),
                NFTA_TRACE_TRANSPORT_HEADER => t.transport = Some(p.to_vec()),
                NFTA_TRACE_VERDICT => {
                    for (vty, vp) in attributes(p) {
                        match vty {
                            NFTA_VERDICT_CODE => t.verdict = be32(vp).map(|v| v as i32),
                            NFTA_VERDICT_CHAIN => t.target = Some(c_string(vp)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(t)
    }
}

/// What `nft` says about chains and rules, looked up lazily and cached.
#[derive(Default)]
pub struct Ruleset {
    /// (family, table, chain) → hook of a base chain.
    hooks: HashMap<(String, String, String), Hook>,
    /// (family, table, chain) → handle → rule text.
    rules: HashMap<(String, String, String), HashMap<u64, String>>,
    /// When each chain was last listed.
    listed_at: HashMap<(String, String, String), std::time::Instant>,
    hooks_loaded: bool,
}

impl Ruleset {
    fn hook(&mut self, key: &(String, String, String)) -> Option<Hook> {
        if !self.hooks.contains_key(key) && !self.hooks_loaded {
            self.load_hooks();
        }
        self.hooks.get(key).copied()
    }

    fn load_hooks(&mut self) {
        self.hooks_loaded = true;
        let Ok(json) = nft(&["-j", "list", "chains"]) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) else {
            return;
        };
        for item in v["nftables"].as_array().into_iter().flatten() {
            let c = &item["chain"];
            if let (Some(f), Some(t), Some(n), Some(h)) = (
                c["family"].as_str(),
                c["table"].as_str(),
                c["name"].as_str(),
                c["hook"].as_str(),
            ) {
                self.hooks
                    .insert((f.into(), t.into(), n.into()), Hook::from_nft(h));
            }
        }
    }

    fn rule(&mut self, key: &(String, String, String), handle: u64) -> Option<String> {
        let known = self.rules.get(key).is_some_and(|r| r.contains_key(&handle));
        // A handle the last listing lacked is a rule added since, or one gone already: list
        // the chain again, but at most once a second (each listing runs `nft`).
        let fresh = self
            .listed_at
            .get(key)
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
        if !known && !fresh {
            let listed = nft(&["-a", "list", "chain", &key.0, &key.1, &key.2]).unwrap_or_default();
            self.rules.insert(key.clone(), parse_rule_handles(&listed));
            self.listed_at
                .insert(key.clone(), std::time::Instant::now());
        }
        self.rules.get(key)?.get(&handle).cloned()
    }
}

/// `nft -a list chain` output → handle → rule text.
fn parse_rule_handles(listing: &str) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for line in listing.lines() {
        let line = line.trim();
        let Some((rule, handle)) = line.rsplit_once(" # handle ") else {
            continue;
        };
        if line.starts_with("chain ") || line.starts_with("table ") {
            continue;
        }
        if let Ok(h) = handle.trim().parse::<u64>() {
            out.insert(h, without_counter_values(rule.trim()));
        }
    }
    out
}

/// `counter packets 6 bytes 186 drop` → `counter drop`: the numbers change with every packet
/// and say nothing about the rule.
fn without_counter_values(rule: &str) -> String {
    let words: Vec<&str> = rule.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        out.push(words[i]);
        let counted = words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
            && words.get(i + 2).is_some_and(|w| w.parse::<u64>().is_ok())
            && words.get(i + 4).is_some_and(|w| w.parse::<u64>().is_ok());
        i += if counted { 5 } else { 1 };
    }
    out.join(" ")
}

/// Turns raw trace messages into events. Walks through probe's own table are dropped. The
/// kernel sends a packet's headers only with the first message of each chain it walks, so each
/// trace id remembers its packet and the hook of the base chain it is in.
pub struct Tracer {
    ruleset: Ruleset,
    walks: BoundedMap<u32, Walk>,
    own_table: String,
}

#[derive(Default)]
struct Walk {
    hook: Option<Hook>,
    packet: Option<Packet>,
    headers: Option<RawHeaders>,
}

/// Walks remembered at most; the oldest are forgotten first (their packets are long gone).
const MAX_WALKS: usize = 65536;

impl Tracer {
    pub fn new(own_table: &str) -> Self {
        Self {
            ruleset: Ruleset::default(),
            walks: BoundedMap::new(MAX_WALKS),
            own_table: own_table.to_owned(),
        }
    }

    pub fn event(&mut self, raw: RawTrace, ts_ns: u64) -> Option<Event> {
        let walk = self.walks.entry_or_insert_with(raw.id, Walk::default);
        if let Some(n) = raw.network.as_deref() {
            walk.packet = Some(packet::from_network_header(n, raw.transport.as_deref()));
            walk.headers = Some(RawHeaders {
                network: n.to_vec(),
                transport: raw.transport.clone(),
            });
        }
        // Messages from probe's trace tables (its own, and another probe's running alongside:
        // every walk passes both), and the one that opens each chain's walk (a "rule" message
        // without a rule: it only carries the packet's headers), decide nothing.
        if raw.table == self.own_table
            || raw.table.starts_with(TABLE_PREFIX)
            || (raw.trace_type == TRACETYPE_RULE && raw.rule_handle.is_none())
        {
            return None;
        }
        let family = Family::from_nfproto(raw.nfproto);
        let key = (
            family.nft_name().into_owned(),
            raw.table.clone(),
            raw.chain.clone(),
        );
        let hook = match self.ruleset.hook(&key) {
            Some(h) => {
                walk.hook = Some(h);
                Some(h)
            }
            None => walk.hook,
        };
        let packet = walk.packet.clone();
        let headers = walk.headers.clone();
        let rule = raw
            .rule_handle
            .filter(|_| raw.trace_type == TRACETYPE_RULE)
            .and_then(|h| self.ruleset.rule(&key, h));
        let verdict = raw.verdict.map_or(Verdict::None, Verdict::from_nft);
        Some(Event {
            ts_ns,
            cpu: 0,
            body: EventBody::Rule(Box::new(RuleVerdict {
                trace_id: raw.id,
                family,
                table: raw.table,
                chain: raw.chain,
                hook,
                decided_by: match raw.trace_type {
                    TRACETYPE_POLICY => DecidedBy::Policy,
                    TRACETYPE_RETURN => DecidedBy::Return,
                    TRACETYPE_RULE => DecidedBy::Rule,
                    _ => DecidedBy::Unknown,
                },
                rule_handle: raw.rule_handle.filter(|_| raw.trace_type == TRACETYPE_RULE),
                rule,
                verdict,
                target: raw.target,
                iif: raw.iif,
                oif: raw.oif,
                mark: raw.mark,
                packet,
                headers,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    #[test]
    fn parses_a_trace_message() {
        let mut body = vec![2, 0, 0, 0];
        body.extend(attr(NFTA_TRACE_TABLE, b"filter\0"));
        body.extend(attr(NFTA_TRACE_CHAIN, b"FORWARD\0"));
        body.extend(attr(NFTA_TRACE_RULE_HANDLE, &7u64.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_TYPE, &TRACETYPE_RULE.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_ID, &99u32.to_be_bytes()));
        let mut verdict = attr(NFTA_VERDICT_CODE, &(-3i32 as u32).to_be_bytes());
        verdict.extend(attr(NFTA_VERDICT_CHAIN, b"DOCKER-USER\0"));
        body.extend(attr(NFTA_TRACE_VERDICT | 0x8000, &verdict));
        let t = RawTrace::parse(&body).unwrap();
        assert_eq!(t.table, "filter");
        assert_eq!(t.chain, "FORWARD");
        assert_eq!(t.rule_handle, Some(7));
        assert_eq!(t.id, 99);
        assert_eq!(t.verdict, Some(-3));
        assert_eq!(Verdict::from_nft(t.verdict.unwrap()), Verdict::Jump);
        assert_eq!(t.target.as_deref(), Some("DOCKER-USER"));
        // Truncations never panic.
        for n in 0..body.len() {
            let _ = RawTrace::parse(&body[..n]);
        }
    }

    #[test]
    fn no_probe_trace_table_is_a_verdict() {
        let mut tracer = Tracer::new("probe_trace_100");
        for table in ["probe_trace_100", "probe_trace_200"] {
            let raw = RawTrace {
                nfproto: 1,
                id: 5,
                table: table.into(),
                chain: "mark".into(),
                rule_handle: Some(2),
                trace_type: TRACETYPE_RULE,
                verdict: Some(-1),
                ..RawTrace::default()
            };
            assert_eq!(tracer.event(raw, 0), None, "{table}");
        }
    }

    #[test]
    fn rule_handles_from_listing() {
        let listing = "table ip filter {\n\tchain FORWARD { # handle 2\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter packets 0 bytes 0 jump DOCKER-USER # handle 7\n\t\tiifname \"docker0\" oifname \"docker0\" counter packets 0 bytes 0 drop # handle 12\n\t}\n}\n";
        let rules = parse_rule_handles(listing);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[&12],
            "iifname \"docker0\" oifname \"docker0\" counter drop"
        );
        assert_eq!(rules[&7], "counter jump DOCKER-USER");
    }
}
