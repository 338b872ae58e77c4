//! Named network namespaces that delete themselves.

use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

use crate::cmd;

const PREFIX: &str = "probe-";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace with a unique name `probe-<pid>-<n>-<role>` and loopback up.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::named(&format!("{PREFIX}{}-{n}-{role}", std::process::id()))
    }

    /// A prefix `probe-<pid>-<n>-` for labs that name several namespaces themselves; stale
    /// ones are swept like those of [`Netns::new`].
    pub fn unique_prefix() -> String {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{PREFIX}{}-{n}-", std::process::id())
    }

    /// A namespace with exactly this name (an existing one is replaced).
    pub fn named(name: &str) -> anyhow::Result<Self> {
        if std::path::Path::new("/run/netns").join(name).exists() {
            let _ = cmd::run("ip", &["netns", "del", name]);
        }
        cmd::run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's inode, as probe reports it (`netns` of a route row or a drop).
    pub fn inode(&self) -> anyhow::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(std::fs::metadata(std::path::Path::new("/run/netns").join(&self.name))?.ino())
    }

    /// Leaves the namespace in place (for `cargo xtask lab up`).
    pub fn keep(self) {
        std::mem::forget(self);
    }

    /// Deletes a namespace by name if it exists; true if it did.
    pub fn remove(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
            && cmd::run("ip", &["netns", "del", name]).is_ok()
    }

    /// `ip -n <this> args...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        cmd::ip(&self.name, args)
    }

    /// A veth pair: `name` here, `peer_name` in `peer`.
    pub fn veth_to(&self, name: &str, peer: &Netns, peer_name: &str) -> anyhow::Result<()> {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name(),
        ])
        .map(drop)
    }

    /// Runs a tool that acts on the current namespace (tc, iptables, nft) inside this one.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        cmd::in_ns(&self.name, program, args)
    }

    /// The index of interface `name` inside this namespace.
    pub fn ifindex(&self, name: &str) -> anyhow::Result<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", name])?;
        out.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .with_context(|| format!("cannot read the index of {name} in {}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live here).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cmd::run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: could not delete namespace {}: {e:#}", self.name);
        }
    }
}

/// Runs `f` on a new thread inside network namespace `name` and returns its result.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace {name} panicked"))?
}

/// Deletes namespaces left by test processes that no longer exist (killed runs).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = cmd::run("ip", &["netns", "del", &name]);
        }
    }
}
