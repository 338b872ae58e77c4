//! Real Docker objects for tests, each removing itself on drop: an image built offline from
//! the host's static busybox, bridge networks with their own subnets, containers, and a client
//! namespace joined to the root namespace by a veth (the "outside" a published port serves).
//!
//! Names carry the test process id (`probe-test-<pid>-<n>-...`), so parallel and successive runs
//! never collide, and objects left by a killed run are swept by the next one. Addresses:
//! container networks 172.30.N.0/24, client links 172.31.N.0/24 (N unique per object).

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{Netns, cmd};

const PREFIX: &str = "probe-test-";
static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(role: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}-{role}", std::process::id())
}

/// Why Docker cannot be used here, or None when the engine answers.
pub fn unavailable() -> Option<String> {
    match cmd::run("docker", &["version", "--format", "{{.Server.Version}}"]) {
        Ok(v) if !v.trim().is_empty() => None,
        Ok(_) => Some("the Docker engine did not report a version".into()),
        Err(e) => Some(format!("{e:#}")),
    }
}

/// `docker args...`
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    cmd::run("docker", args)
}

/// Removes containers, networks and images left by test processes that no longer exist.
pub fn sweep_stale() {
    let dead = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.split(['-', ':']).next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let list = |args: &[&str]| -> Vec<String> {
        docker(args)
            .map(|o| o.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    for c in list(&["ps", "-a", "--format", "{{.Names}}"]) {
        if dead(&c) {
            let _ = docker(&["rm", "-f", &c]);
        }
    }
    for n in list(&["network", "ls", "--format", "{{.Name}}"]) {
        if dead(&n) {
            let _ = docker(&["network", "rm", &n]);
        }
    }
    for i in list(&["images", "--format", "{{.Repository}}:{{.Tag}}"]) {
        if let Some(tag) = i.strip_prefix("probe-test-busybox:")
            && dead(&format!("{PREFIX}{tag}"))
        {
            let _ = docker(&["rmi", "-f", &i]);
        }
    }
}

/// A statically linked busybox on this machine (Debian's busybox-static), for the image.
fn static_busybox() -> anyhow::Result<PathBuf> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let path = Path::new(p);
        if path.is_file() && !has_interpreter(path)? {
            return Ok(path.to_path_buf());
        }
    }
    bail!(
        "no statically linked busybox found (install Debian's busybox-static; `cargo xtask \
         setup` does)"
    )
}

/// Whether an ELF file asks for a dynamic loader (a PT_INTERP program header).
fn has_interpreter(path: &Path) -> anyhow::Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if data.get(0..4) != Some(b"\x7fELF") || data.get(4) != Some(&2) {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{} has a truncated ELF header", path.display());
    };
    Ok((0..phnum as usize).any(|i| {
        let at = phoff as usize + i * phentsize as usize;
        data.get(at..at + 4) == Some(&3u32.to_le_bytes())
    }))
}

/// A tiny image made offline: busybox and its applets, nothing else.
pub struct Image {
    pub tag: String,
}

impl Image {
    pub fn build() -> anyhow::Result<Self> {
        let busybox = static_busybox()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("probe-test-busybox:{}-{n}", std::process::id());
        let root = std::env::temp_dir().join(format!("{}-rootfs", tag.replace(':', "-")));
        let _ = std::fs::remove_dir_all(&root);
        let result = (|| -> anyhow::Result<()> {
            for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
                std::fs::create_dir_all(root.join(d))?;
            }
            std::fs::copy(&busybox, root.join("bin/busybox"))?;
            for applet in ["sh", "nc", "echo", "sleep", "cat", "ip"] {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
            }
            let tar = std::process::Command::new("tar")
                .args(["-C"])
                .arg(&root)
                .args(["-c", "."])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("cannot run tar")?;
            let out = std::process::Command::new("docker")
                .args(["import", "-", &tag])
                .stdin(tar.stdout.context("no tar output")?)
                .output()
                .context("cannot run docker import")?;
            if !out.status.success() {
                bail!(
                    "docker import failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&root);
        result?;
        Ok(Self { tag })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Err(e) = docker(&["rmi", "-f", &self.tag]) {
            eprintln!("warning: could not remove image {}: {e:#}", self.tag);
        }
    }
}

/// A Docker bridge network on 172.30.N.0/24 with a bridge named after it.
pub struct Network {
    pub name: String,
    /// The bridge device in the root namespace (at most 15 characters).
    pub bridge: String,
    /// N of 172.30.N.0/24.
    pub octet: u8,
}

impl Network {
    /// `icc`: whether containers on it may talk to each other (`enable_icc`).
    pub fn create(icc: bool) -> anyhow::Result<Self> {
        let name = unique("net");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let bridge = format!("pb{}-{n}", std::process::id() % 1_000_000);
        let icc_opt = format!("com.docker.network.bridge.enable_icc={icc}");
        let bridge_opt = format!("com.docker.network.bridge.name={bridge}");
        // Another network may hold a subnet: try the next.
        let start = (std::process::id() as usize * 7 + n as usize * 13) % 200;
        let mut last = None;
        for i in 0..32 {
            let octet = (20 + (start + i) % 230) as u8;
            let subnet = format!("172.30.{octet}.0/24");
            match docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &subnet,
                "-o",
                &icc_opt,
                "-o",
                &bridge_opt,
                &name,
            ]) {
                Ok(_) => {
                    return Ok(Self {
                        name,
                        bridge,
                        octet,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, self.octet, host)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(e) = docker(&["network", "rm", &self.name]) {
            eprintln!("warning: could not remove network {}: {e:#}", self.name);
        }
    }
}

/// A running container on a test network: busybox `nc` answering "ok" on port 80.
pub struct Container {
    pub name: String,
    pub addr: Ipv4Addr,
}

/// The port the containers' server listens on.
pub const SERVER_PORT: u16 = 80;

impl Container {
    /// `docker run -d` on `net` at address .`host`, publishing port 80 on `publish` if given.
    pub fn run(
        image: &Image,
        net: &Network,
        role: &str,
        host: u8,
        publish: Option<u16>,
    ) -> anyhow::Result<Self> {
        let name = unique(role);
        let addr = net.addr(host);
        let ip = addr.to_string();
        let port = publish.map(|p| format!("{p}:{SERVER_PORT}"));
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net.name,
            "--ip",
            &ip,
        ];
        if let Some(p) = &port {
            args.extend(["-p", p]);
        }
        let server_port = SERVER_PORT.to_string();
        args.extend([
            &image.tag,
            "/bin/busybox",
            "nc",
            "-ll",
            "-p",
            &server_port,
            "-e",
            "/bin/busybox",
            "echo",
            "ok",
        ]);
        let started = docker(&args);
        drop(args);
        // Dropping `c` on failure removes a half-started container too.
        let c = Self { name, addr };
        started?;
        c.pid()?;
        Ok(c)
    }

    /// The container's init process, as the host sees it.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let out = docker(&["inspect", "--format", "{{.State.Pid}}", &self.name])?;
        match out.trim().parse::<u32>() {
            Ok(pid) if pid != 0 => Ok(pid),
            _ => bail!(
                "container {} is not running (pid {:?})",
                self.name,
                out.trim()
            ),
        }
    }

    /// Runs `f` on a thread inside the container's network namespace (its sockets are the
    /// container's: packets leave through its eth0).
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/proc/{}/ns/net", self.pid()?);
        let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        std::thread::spawn(move || {
            // SAFETY: setns on a descriptor we own; it moves only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in container {} panicked", self.name))?
    }

    /// Connects from this container to `dst:port` and reads the answer; the local port.
    pub fn tcp_exchange(&self, dst: Ipv4Addr, port: u16, timeout: Duration) -> anyhow::Result<u16> {
        self.run_in(move || crate::traffic::tcp_request(dst, port, timeout))?
            .map_err(Into::into)
    }

    /// Sends one datagram from this container; the source port.
    pub fn udp_send(&self, dst: Ipv4Addr, port: u16) -> anyhow::Result<u16> {
        self.run_in(move || crate::traffic::udp_datagram(dst, port))?
            .map_err(Into::into)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = docker(&["rm", "-f", &self.name]) {
            eprintln!("warning: could not remove container {}: {e:#}", self.name);
        }
    }
}

/// A client outside Docker: its own namespace, joined to the root namespace by a veth on
/// 172.31.N.0/24 (host side .1, client .2, the client's default route via the host side).
pub struct Client {
    pub ns: Netns,
    /// The veth's end in the root namespace.
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    pub addr: Ipv4Addr,
}

impl Client {
    pub fn new() -> anyhow::Result<Self> {
        let ns = Netns::new("dclient")?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let host_if = format!("pc{}-{n}", std::process::id() % 1_000_000);
        let octet = ((std::process::id() as usize * 11 + n as usize * 17) % 230 + 20) as u8;
        let host_addr = Ipv4Addr::new(172, 31, octet, 1);
        let addr = Ipv4Addr::new(172, 31, octet, 2);
        let client = Self {
            ns,
            host_if,
            host_addr,
            addr,
        };
        cmd::run(
            "ip",
            &[
                "link",
                "add",
                &client.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                client.ns.name(),
            ],
        )?;
        cmd::run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{host_addr}/24"),
                "dev",
                &client.host_if,
            ],
        )?;
        cmd::run("ip", &["link", "set", &client.host_if, "up"])?;
        client
            .ns
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        client.ns.ip(&["link", "set", "eth0", "up"])?;
        client
            .ns
            .ip(&["route", "add", "default", "via", &host_addr.to_string()])?;
        Ok(client)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Deleting one end deletes both; the namespace goes with `ns`.
        if Path::new("/sys/class/net").join(&self.host_if).exists()
            && let Err(e) = cmd::run("ip", &["link", "del", &self.host_if])
        {
            eprintln!("warning: could not delete {}: {e:#}", self.host_if);
        }
    }
}

/// An nftables table in the root namespace, deleted on drop.
pub struct NftTable {
    pub family: String,
    pub name: String,
}

impl NftTable {
    /// Loads `body` (chains and rules) as `table <family> <name> { body }`.
    pub fn load(family: &str, role: &str, body: &str) -> anyhow::Result<Self> {
        let name = format!("{role}_{}", std::process::id());
        let table = Self {
            family: family.to_owned(),
            name,
        };
        let _ = cmd::run("nft", &["delete", "table", family, &table.name]);
        let script = format!("table {family} {} {{\n{body}\n}}\n", table.name);
        let path = std::env::temp_dir().join(format!("{}.nft", table.name));
        std::fs::write(&path, script)?;
        let loaded = cmd::run("nft", &["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        loaded?;
        Ok(table)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        if let Err(e) = cmd::run("nft", &["delete", "table", &self.family, &self.name]) {
            eprintln!("warning: could not delete nft table {}: {e:#}", self.name);
        }
    }
}

/// A port free on the host right now, for `-p`.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(("0.0.0.0", 0))?;
    Ok(l.local_addr()?.port())
}
