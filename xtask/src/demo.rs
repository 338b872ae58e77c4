//! `cargo xtask demo`: the first thing a new user sees. Builds probe, makes a small Docker-like
//! host out of namespaces, sends traffic between two "containers" while probe traces the bridge
//! and both veths, prints what probe saw, and removes everything.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use probe_lab::{BridgeLab, ProbeRun};

use crate::privilege::{as_root, is_root};

const PREFIX: &str = "probe-demo-";
const POSTGRES_PORT: u16 = 5432;
const DNS_PORT: u16 = 53;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run(no_build: bool) -> anyhow::Result<()> {
    let bin = if no_build {
        probe_lab::probe_binary()
    } else {
        crate::tasks::build(false)?
    };
    if !is_root() {
        let exe = std::env::current_exe()?;
        let status = as_root(exe)
            .args(["demo", "--no-build"])
            .env("PROBE_BIN", &bin)
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    // SAFETY: installs an async-signal-safe handler (one atomic store). Ctrl-C then ends the
    // demo through the normal path, which removes the lab, instead of killing us mid-way.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    // SAFETY: as above; probe_lab finds the binary through PROBE_BIN.
    unsafe { std::env::set_var("PROBE_BIN", &bin) };
    story(&bin)
}

fn story(bin: &std::path::Path) -> anyhow::Result<()> {
    title("probe demo: one Docker-like host, two containers, every packet on the bridge");
    let lab = BridgeLab::new(PREFIX, &["web", "db"]).context("cannot build the lab")?;
    let web = lab.container("web");
    let db = lab.container("db");
    println!(
        "The lab (network namespaces, removed at the end):\n  \
         host namespace {host} with bridge {br} {gw}/16\n  \
         container web {web_addr} on veth {web_if}\n  \
         container db  {db_addr} on veth {db_if}",
        host = lab.host.name(),
        br = BridgeLab::BRIDGE,
        gw = BridgeLab::GATEWAY,
        web_addr = web.addr,
        web_if = web.host_if,
        db_addr = db.addr,
        db_if = db.host_if,
    );

    let ifaces = format!("{},{},{}", BridgeLab::BRIDGE, web.host_if, db.host_if);
    println!(
        "\nStarting: {} trace --netns {} --iface {ifaces}",
        bin.display(),
        lab.host.name()
    );
    let probe = ProbeRun::start(&["trace", "--netns", lab.host.name(), "--iface", &ifaces])?;

    println!(
        "\nTraffic: web opens a TCP connection to db:{POSTGRES_PORT} (\"Postgres\"), sends a \
         query and gets an answer;\n         web sends one UDP datagram to db:{DNS_PORT};\n         \
         the host itself sends one UDP datagram to web:{DNS_PORT} (as a published-port proxy would)."
    );
    let exchanged = traffic(&lab.host, web, db);
    // Stop probe whatever happened, so the lab is never traced half-way.
    let (stdout, _stderr) = probe.stop()?;
    exchanged?;
    ensure!(
        !INTERRUPTED.load(Ordering::SeqCst),
        "interrupted; the lab has been removed"
    );

    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(!lines.is_empty(), "probe saw no packets; that is a bug");
    title(&format!("What probe saw ({} sightings)", lines.len()));
    println!("  time            interface    dir     packet");
    for line in &lines {
        println!("  {line}");
    }
    println!(
        "\nHow to read it: on the host side of a container's veth, \"ingress\" is a packet \
         coming out of the\ncontainer and \"egress\" one going into it. A packet from web to db \
         shows up twice, ingress on\n{web_if} then egress on {db_if}, a few microseconds apart: \
         the bridge forwards between its ports\nwithout passing through the {br} device itself. \
         {br} sees what the host sends or receives\n(the datagram from the host leaves on {br} \
         egress, then enters web through {web_if} egress)\nand broadcasts such as the ARP query.",
        web_if = web.host_if,
        db_if = db.host_if,
        br = BridgeLab::BRIDGE,
    );
    drop(lab);
    println!("\nThe lab has been removed; nothing is left attached.");
    Ok(())
}

/// A small TCP exchange and one datagram from web to db, and one datagram from the host to web.
/// Waits for each reply or arrival rather than for time.
fn traffic(
    host: &probe_lab::Netns,
    web: &probe_lab::topology::Container,
    db: &probe_lab::topology::Container,
) -> anyhow::Result<()> {
    let web_addr = web.addr;
    let web_udp = web
        .ns
        .run(move || UdpSocket::bind((web_addr, DNS_PORT)))??;
    let db_addr = db.addr;
    let listener = db
        .ns
        .run(move || TcpListener::bind((db_addr, POSTGRES_PORT)))??;
    let udp = db.ns.run(move || UdpSocket::bind((db_addr, DNS_PORT)))??;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut query = [0u8; 8];
        conn.read_exact(&mut query)?;
        conn.write_all(b"1 row\n")?;
        Ok(())
    });
    web.ns.run(move || -> std::io::Result<()> {
        let mut conn = TcpStream::connect_timeout(
            &SocketAddr::from((db_addr, POSTGRES_PORT)),
            Duration::from_secs(5),
        )?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"SELECT 1")?;
        let mut answer = [0u8; 6];
        conn.read_exact(&mut answer)?;
        drop(conn);
        let sock = UdpSocket::bind(("0.0.0.0", 0))?;
        sock.send_to(b"demo.example. A?", (db_addr, DNS_PORT))?;
        Ok(())
    })??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the db server thread panicked"))??;
    udp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 64];
    udp.recv_from(&mut buf)
        .context("the datagram did not arrive")?;
    host.run(move || -> std::io::Result<()> {
        UdpSocket::bind(("0.0.0.0", 0))?.send_to(b"from the host", (web_addr, DNS_PORT))?;
        Ok(())
    })??;
    web_udp.set_read_timeout(Some(Duration::from_secs(5)))?;
    web_udp
        .recv_from(&mut buf)
        .context("the host's datagram did not arrive")?;
    Ok(())
}

fn title(text: &str) {
    println!("\n== {text} ==");
}
