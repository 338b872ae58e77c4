//! Who owns which clsact attachment, so that a probe that died (SIGKILL, OOM) leaves nothing
//! for good. tcx links die with their process; clsact filters and qdiscs outlive it. Each
//! probe writes a ledger, `/run/probe/tc.<pid>`, of the filters it attached (their handle is
//! its pid) and the qdiscs it created, per network namespace; the next probe to start there,
//! or `probe cleanup`, removes what dead probes' ledgers list. A live probe's attachments and
//! any other tool's filters are never touched: only what a dead probe wrote down is.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use probe_common::names;

use crate::host::{
    netns,
    rtnl::{CLSACT_EGRESS, CLSACT_INGRESS, Socket},
};

const DIR: &str = "/run/probe";

/// The tc handle of this process's filters: its pid.
pub fn own_handle() -> u32 {
    std::process::id()
}

/// The program names of probe's classifiers, as the kernel shows them on a filter.
fn is_probe_program(name: Option<&str>) -> bool {
    name.is_some_and(|n| {
        [
            names::TC_INGRESS,
            names::TC_EGRESS,
            names::TC_INGRESS_L3,
            names::TC_EGRESS_L3,
        ]
        .contains(&n)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    /// Filters with this probe's handle on the interface's clsact hooks.
    Filters { netns: u64, ifindex: u32 },
    /// A clsact qdisc this probe created.
    Qdisc { netns: u64, ifindex: u32 },
}

impl Entry {
    fn line(&self) -> String {
        match self {
            Entry::Filters { netns, ifindex } => format!("filters {netns} {ifindex}"),
            Entry::Qdisc { netns, ifindex } => format!("qdisc {netns} {ifindex}"),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let mut it = line.split_whitespace();
        let (what, netns, ifindex) = (
            it.next()?,
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
        );
        match what {
            "filters" => Some(Entry::Filters { netns, ifindex }),
            "qdisc" => Some(Entry::Qdisc { netns, ifindex }),
            _ => None,
        }
    }
}

/// This probe's ledger; removed when probe exits with nothing left to hand on.
pub struct Ledger {
    path: PathBuf,
    netns: u64,
    /// The namespace's cookie (0: the kernel has none), written beside its inode.
    cookie: u64,
    entries: BTreeSet<Entry>,
    /// Said once: without a ledger, a killed probe's filters stay until `tc filter del`.
    warned: bool,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    pub fn new() -> Self {
        Ledger {
            path: Path::new(DIR).join(format!("tc.{}", std::process::id())),
            netns: netns::own().unwrap_or(0),
            cookie: own_cookie(),
            entries: BTreeSet::new(),
            warned: false,
        }
    }

    pub fn filters(&mut self, ifindex: u32) {
        let netns = self.netns;
        self.add(Entry::Filters { netns, ifindex });
    }

    pub fn qdisc(&mut self, ifindex: u32) {
        let netns = self.netns;
        self.add(Entry::Qdisc { netns, ifindex });
    }

    /// The interface is gone, and everything on it.
    pub fn forget(&mut self, ifindex: u32) {
        let before = self.entries.len();
        self.entries.retain(|e| match e {
            Entry::Filters { ifindex: i, .. } | Entry::Qdisc { ifindex: i, .. } => *i != ifindex,
        });
        if self.entries.len() != before {
            self.write();
        }
    }

    fn add(&mut self, e: Entry) {
        if self.entries.insert(e) {
            self.write();
        }
    }

    fn write(&mut self) {
        if self.entries.is_empty() {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let mut text: String = self.entries.iter().map(|e| e.line() + "\n").collect();
        if self.cookie != 0 {
            text.push_str(&format!("cookie {} {}\n", self.netns, self.cookie));
        }
        let written = std::fs::create_dir_all(DIR).and_then(|()| std::fs::write(&self.path, text));
        if let Err(e) = written
            && !std::mem::replace(&mut self.warned, true)
        {
            log::warn!(
                "cannot write {}: {e}; if probe is killed, its tc filters stay until removed \
                 by hand",
                self.path.display()
            );
        }
    }
}

impl Ledger {
    /// probe is exiting and its filters are gone: only the qdiscs in `kept` (created by probe,
    /// still used by another probe's or tool's filters) stay written down, for whoever finds
    /// them empty later.
    pub fn finish(&mut self, kept: &[u32]) {
        self.entries
            .retain(|e| matches!(e, Entry::Qdisc { ifindex, .. } if kept.contains(ifindex)));
        self.write();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if self.entries.is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The calling thread's network namespace cookie (SO_NETNS_COOKIE, Linux 5.14+). Unlike the
/// namespace's inode, the kernel never gives a cookie to another namespace while it runs: a
/// ledger whose namespace is gone cannot be taken for a new namespace with the same inode
/// (and the same interface numbers, as labs and containers made alike have). 0 where the
/// kernel has no cookies.
fn own_cookie() -> u64 {
    // SAFETY: a socket this function owns and closes; getsockopt writes at most `len` bytes
    // into `cookie`.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return 0;
        }
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        libc::close(fd);
        if rc == 0 { cookie } else { 0 }
    }
}

/// `cookie INODE COOKIE` lines of a ledger: the cookie of each namespace it names.
fn cookies(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "cookie").then_some(())?;
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// Whether process `pid` is a running probe (a reused pid of another program is not).
fn is_live_probe(pid: u32) -> bool {
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    match (comm(&pid.to_string()), comm("self")) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => false,
    }
}

/// Removes what dead probes left in this network namespace; returns what was removed, one
/// line each.
pub fn sweep() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(DIR) else {
        return Vec::new();
    };
    let own = netns::own().unwrap_or(0);
    let own_cookie = own_cookie();
    let mut said = Vec::new();
    for file in dir.flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("tc.").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || is_live_probe(pid) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(file.path()) else {
            continue;
        };
        let entries: Vec<Entry> = text.lines().filter_map(Entry::parse).collect();
        let (here, elsewhere): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| {
            matches!(e, Entry::Filters { netns, .. } | Entry::Qdisc { netns, .. } if *netns == own)
        });
        // Written in a namespace with this inode but another cookie: that namespace is gone,
        // and this one only reuses its number. Nothing here is the dead probe's.
        let reused = cookies(&text)
            .iter()
            .any(|&(inode, cookie)| inode == own && own_cookie != 0 && cookie != own_cookie);
        if !reused {
            said.extend(remove(pid, &here));
        }
        // What lies in other namespaces waits for a probe there.
        let _ = if elsewhere.is_empty() {
            std::fs::remove_file(file.path())
        } else {
            std::fs::write(
                file.path(),
                elsewhere
                    .iter()
                    .map(|e| e.line() + "\n")
                    .chain(
                        cookies(&text)
                            .iter()
                            .filter(|&&(inode, _)| inode != own)
                            .map(|(inode, cookie)| format!("cookie {inode} {cookie}\n")),
                    )
                    .collect::<String>(),
            )
        };
    }
    said
}

fn remove(pid: u32, entries: &[Entry]) -> Vec<String> {
    let Ok(mut sock) = Socket::request_socket() else {
        return Vec::new();
    };
    let links = sock.links().unwrap_or_default();
    let name = |ifindex: u32| {
        links
            .iter()
            .find(|l| l.index == ifindex)
            .map(|l| l.name.clone())
    };
    let mut said = Vec::new();
    for e in entries {
        if let Entry::Filters { ifindex, .. } = *e
            && let Some(iface) = name(ifindex)
        {
            let mut n = 0;
            for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
                for f in sock.tc_filters(ifindex, parent).unwrap_or_default() {
                    if f.handle == pid
                        && f.kind == "bpf"
                        && is_probe_program(f.name.as_deref())
                        && sock.delete_tc_filter(ifindex, &f).is_ok()
                    {
                        n += 1;
                    }
                }
            }
            if n > 0 {
                said.push(format!(
                    "removed {n} tc filter(s) on {iface} left by probe {pid}, which is gone"
                ));
            }
        }
    }
    for e in entries {
        if let Entry::Qdisc { ifindex, .. } = *e
            && let Some(iface) = name(ifindex)
            && is_empty(&mut sock, ifindex)
            && sock.delete_clsact(ifindex).is_ok()
        {
            said.push(format!(
                "removed the clsact qdisc on {iface} that probe {pid} created (nothing was left \
                 on it)"
            ));
        }
    }
    said
}

/// Whether another probe's filters are on the interface's clsact hooks.
pub fn has_probe_filters(sock: &mut Socket, ifindex: u32) -> bool {
    [CLSACT_INGRESS, CLSACT_EGRESS].iter().any(|&parent| {
        sock.tc_filters(ifindex, parent)
            .is_ok_and(|f| f.iter().any(|f| is_probe_program(f.name.as_deref())))
    })
}

/// Whether no filter at all (probe's or anyone's) is left on the interface's clsact hooks.
pub fn is_empty(sock: &mut Socket, ifindex: u32) -> bool {
    [CLSACT_INGRESS, CLSACT_EGRESS]
        .iter()
        .all(|&parent| sock.tc_filters(ifindex, parent).is_ok_and(|f| f.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_lines_round_trip() {
        for e in [
            Entry::Filters {
                netns: 4026531840,
                ifindex: 7,
            },
            Entry::Qdisc {
                netns: 1,
                ifindex: 2,
            },
        ] {
            assert_eq!(Entry::parse(&e.line()), Some(e));
        }
        assert_eq!(Entry::parse("qdisc x 2"), None);
        assert_eq!(Entry::parse(""), None);
    }

    #[test]
    fn this_process_is_a_live_probe_of_its_own_kind() {
        assert!(is_live_probe(std::process::id()));
        assert!(!is_live_probe(u32::MAX));
    }
}
