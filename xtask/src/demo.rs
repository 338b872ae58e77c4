//! `cargo xtask demo`: the first thing a new user sees. Builds probe, makes a Docker-like host
//! out of network namespaces (docker0, two containers, Docker's iptables chains, a published
//! port, an uplink to an "outside" network), and tells the four stories of the design: for each,
//! what was done, what probe printed, and how to read it. Everything is removed at the end.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use probe_lab::{
    HostLab, ProbeRun,
    traffic::{serve_tcp_once, tcp_exchange, udp_listen, udp_send},
};

use crate::privilege::{as_root, is_root};

const PREFIX: &str = "probe-demo-";

/// One chapter: sets up its incident on the lab, runs probe, explains the output.
type Story = fn(&HostLab) -> anyhow::Result<()>;

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
    crate::interrupt::install();
    // SAFETY: single-threaded at this point; probe_lab finds the binary through PROBE_BIN.
    unsafe { std::env::set_var("PROBE_BIN", &bin) };

    println!("probe demo: where did my packet go on this host, and why?\n");
    let lab = HostLab::new(PREFIX).context("cannot build the demo lab")?;
    println!(
        "The lab, in network namespaces (all removed at the end):\n  \
         host     {host}: bridge docker0 172.17.0.1/16, uplink eth0 {up}, Docker's iptables \
         chains,\n           port 8080 published to web:80 (as `docker run -p 8080:80`)\n  \
         web      {web} on veth-web      db  {db} on veth-db\n  \
         outside  {out}: the network behind the uplink",
        host = lab.host().name(),
        up = HostLab::HOST_ADDR,
        web = lab.web().addr,
        db = lab.db().addr,
        out = HostLab::OUTSIDE_ADDR,
    );
    let stories: [(&str, Story); 4] = [
        ("1/4  The VPN that ate the container subnet", vpn),
        ("2/4  The published port", published_port),
        (
            "3/4  The firewall that dropped forwarded traffic",
            firewalld,
        ),
        ("4/4  Inter-container isolation and the bridge path", icc),
    ];
    for (title, story) in stories {
        ensure!(
            !crate::interrupt::happened(),
            "interrupted; the lab has been removed"
        );
        if color() {
            println!("\n\x1b[1m== Story {title} ==\x1b[0m");
        } else {
            println!("\n== Story {title} ==");
        }
        story(&lab).with_context(|| format!("story {title}"))?;
    }
    if color() {
        println!("\n\x1b[1m== And for performance work: per-stage latency on the bridge ==\x1b[0m");
    } else {
        println!("\n== And for performance work: per-stage latency on the bridge ==");
    }
    bridge_latency(&lab).context("the latency chapter")?;
    drop(lab);
    println!("\nThe lab has been removed; nothing is left attached. Try it on your host:");
    println!(
        "  sudo target/debug/probe trace                 # every datapath interface, drops, routes"
    );
    println!(
        "  sudo target/debug/probe trace --rules --no-tc # which nftables/iptables rule decided"
    );
    println!(
        "  sudo target/debug/probe latency --iface 'veth*' # where bridge forwarding spends time"
    );
    println!("  sudo target/debug/probe doctor                # what this kernel lets probe see");
    Ok(())
}

/// Arguments as a shell would need them typed: quoted where they hold spaces or globs.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains([' ', '*', '?', '[', '\'', '"', '>', '<', '|', '&', ';']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                (*a).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bold titles on a terminal, plain text when piped or NO_COLOR is set.
fn color() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Runs probe in the lab's host namespace around `traffic`, and prints the timelines it
/// printed for the story's packets (those mentioning `needle`), at most `max`.
fn observe(
    lab: &HostLab,
    args: &[&str],
    needle: &[&str],
    max: usize,
    traffic: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut full = vec!["trace", "--netns", lab.host().name()];
    full.extend_from_slice(args);
    println!("\n  $ probe {}", shell_words(&full));
    let run = ProbeRun::start(&full)?;
    let result = traffic();
    let (stdout, _) = run.stop()?;
    result?;
    // Timelines are blocks that start with "packet N"; keep the story's.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("packet ") || blocks.is_empty() {
            blocks.push(Vec::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push(line);
        }
    }
    let ours: Vec<&Vec<&str>> = blocks
        .iter()
        .filter(|b| b.iter().any(|l| needle.iter().any(|n| l.contains(n))))
        .collect();
    ensure!(
        !ours.is_empty(),
        "probe saw none of the story's packets; that is a bug"
    );
    for block in ours.iter().take(max) {
        for line in block.iter() {
            println!("  {line}");
        }
    }
    if ours.len() > max {
        println!(
            "  ... and {} more timelines of the same flow",
            ours.len() - max
        );
    }
    Ok(())
}

fn vpn(lab: &HostLab) -> anyhow::Result<()> {
    let web = lab.web().addr;
    println!(
        "A VPN client on the host added routing table {t} with 172.17.0.0/24 via tun0, and the\n\
         rule `to 172.17.0.0/24 lookup {t} pref {p}`. The host then connects to web:80.",
        t = HostLab::VPN_TABLE,
        p = HostLab::VPN_RULE_PREF
    );
    lab.vpn_up()?;
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT)?;
    observe(
        lab,
        &["--iface", "tun0,docker0,veth-web", "--no-drops"],
        &["> 172.17.0.2"],
        6,
        || {
            let r = tcp_exchange(
                lab.host(),
                web,
                HostLab::WEB_PORT,
                Duration::from_millis(700),
            );
            ensure!(r.is_err(), "the connection should fail while the VPN is up");
            Ok(())
        },
    )?;
    println!(
        "\n  (Each block is one packet: time since its first sighting, time since the previous\n  \
         hop, where, what; `~` marks routing lookups joined to the packet by destination and\n  \
         time, `=>` is probe's diagnosis.)"
    );
    println!(
        "\n  Reading it: the routing decision for 172.17.0.2 came from table {} and chose tun0;\n  \
         nothing reached veth-web. The VPN's /24 beats docker0's /16: the container subnet is\n  \
         shadowed by the VPN. (Kernels with kprobes also name the ip rule, pref {}.)",
        HostLab::VPN_TABLE,
        HostLab::VPN_RULE_PREF
    );
    lab.vpn_down()?;
    Ok(())
}

fn published_port(lab: &HostLab) -> anyhow::Result<()> {
    let web = lab.web().addr;
    println!(
        "A client outside connects to the host's published port {}:{} (`-p 8080:80`).",
        HostLab::HOST_ADDR,
        HostLab::PUBLISHED_PORT
    );
    let _server = serve_tcp_once(&lab.web().ns, web, HostLab::WEB_PORT)?;
    observe(
        lab,
        &[
            "--iface",
            "eth0,veth-web",
            "--rules",
            "--no-drops",
            "--no-routes",
        ],
        &["[S]", "[S.]", "dnat", "filter DOCKER"],
        10,
        || {
            tcp_exchange(
                &lab.outside,
                HostLab::HOST_ADDR,
                HostLab::PUBLISHED_PORT,
                Duration::from_secs(5),
            )
            .context("the published port should answer")?;
            Ok(())
        },
    )?;
    println!(
        "\n  Reading it: the SYN enters eth0 for {h}:8080; nat/DOCKER (from PREROUTING) rewrites it\n  \
         to 172.17.0.2:80 and filter/DOCKER (from FORWARD) accepts it; it leaves veth-web into\n  \
         the container with the new destination. The SYN-ACK comes back from 172.17.0.2:80 and\n  \
         leaves eth0 as {h}:8080: conntrack undid the rewrite.",
        h = HostLab::HOST_ADDR
    );
    Ok(())
}

fn firewalld(lab: &HostLab) -> anyhow::Result<()> {
    let outside = HostLab::OUTSIDE_ADDR;
    println!(
        "firewalld's table (inet firewalld, chain filter_FORWARD) drops container traffic to the\n\
         network. web sends a DNS query to {outside}:53."
    );
    lab.firewalld_forward_drop()?;
    let receiver = udp_listen(&lab.outside, outside, 53)?;
    observe(
        lab,
        &["--rules", "--no-tc", "--no-routes"],
        &["> 203.0.113.2:53"],
        6,
        || {
            udp_send(&lab.web().ns, outside, 53)?;
            Ok(())
        },
    )?;
    let mut buf = [0u8; 64];
    ensure!(
        receiver.recv_from(&mut buf).is_err(),
        "the query should not arrive"
    );
    println!(
        "\n  Reading it: dropped at the forward hook by table firewalld, chain filter_FORWARD, with\n  \
         the rule itself, and the kernel's own drop reason NETFILTER_DROP: no LOG rules, no\n  \
         TRACE, no \"No buffer space available\"."
    );
    lab.remove_firewalld()?;
    Ok(())
}

fn icc(lab: &HostLab) -> anyhow::Result<()> {
    let db = lab.db().addr;
    println!(
        "Docker with icc=false adds `FORWARD -i docker0 -o docker0 -j DROP`, which bridged\n\
         traffic only meets when br_netfilter is on. web connects to db:5432, first with\n\
         br_netfilter on."
    );
    lab.icc_false(true)?;
    let _server = serve_tcp_once(&lab.db().ns, db, 5432)?;
    observe(
        lab,
        &["--rules", "--no-tc", "--no-routes"],
        &["> 172.17.0.3:5432"],
        4,
        || {
            let r = tcp_exchange(&lab.web().ns, db, 5432, Duration::from_millis(700));
            ensure!(r.is_err(), "icc=false should block web → db");
            Ok(())
        },
    )?;
    println!("\n  Then with br_netfilter off (bridge-nf-call-iptables=0), the same connection:");
    lab.icc_false(false)?;
    let _server = serve_tcp_once(&lab.db().ns, db, 5433)?;
    observe(
        lab,
        &["--iface", "veth-web,veth-db", "--no-routes"],
        &["> 172.17.0.3:5433"],
        2,
        || {
            tcp_exchange(&lab.web().ns, db, 5433, Duration::from_secs(5))
                .context("without br_netfilter the bridge forwards")?;
            Ok(())
        },
    )?;
    println!(
        "\n  Reading it: with br_netfilter, the bridged packet met filter/FORWARD and its docker0 →\n  \
         docker0 DROP rule; without it, the bridge forwarded veth-web → veth-db and iptables\n  \
         never saw the packet."
    );
    Ok(())
}

fn bridge_latency(lab: &HostLab) -> anyhow::Result<()> {
    const N: usize = 200;
    const PORT: u16 = 7400;
    let (web, db) = (lab.web().addr, lab.db().addr);
    println!(
        "`probe latency` follows every packet by its kernel buffer (skb) through tc and the\n\
         stages inside the path, and adds the time of each stage to a histogram in the kernel:\n\
         no event per packet. web sends {N} datagrams to db:{PORT} across docker0 while db sends\n\
         {N} to web; db's veth gets a 20 Mbit/s queue (tbf), as a shaped or congested link has."
    );
    lab.icc_false(false)?;
    let tbf = [
        "qdisc", "add", "dev", "veth-db", "root", "tbf", "rate", "20mbit", "burst", "1600",
        "limit", "200000",
    ];
    lab.host().exec("tc", &tbf)?;
    let chapter = (|| -> anyhow::Result<()> {
        let at_db = udp_listen(&lab.db().ns, db, PORT)?;
        let at_web = udp_listen(&lab.web().ns, web, PORT)?;
        let connect = |to: std::net::Ipv4Addr| {
            move || -> std::io::Result<std::net::UdpSocket> {
                let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
                s.connect((to, PORT))?;
                Ok(s)
            }
        };
        let from_web = lab.web().ns.run(connect(db))??;
        let from_db = lab.db().ns.run(connect(web))??;
        let mut buf = [0u8; 1000];
        from_web.send(b"warm")?;
        at_db.recv(&mut buf)?;
        from_db.send(b"warm")?;
        at_web.recv(&mut buf)?;
        let filter = format!("udp port {PORT}");
        let args = [
            "latency",
            "--netns",
            lab.host().name(),
            "--iface",
            "veth-web,veth-db",
            "--filter",
            &filter,
            "--by",
            "container",
            "--interval",
            "60",
        ];
        println!("\n  $ probe {}", shell_words(&args));
        let run = ProbeRun::start(&args)?;
        // Bursts of 10, as a batch job sends them: the queue on veth-db fills and drains.
        for _ in 0..N / 10 {
            for _ in 0..10 {
                from_web.send(&[7u8; 1000])?;
                from_db.send(&[7u8; 1000])?;
            }
            for _ in 0..10 {
                at_db.recv(&mut buf)?;
                at_web.recv(&mut buf)?;
            }
        }
        let (stdout, _) = run.stop()?;
        for line in stdout.lines() {
            println!("  {line}");
        }
        Ok(())
    })();
    let removed = lab
        .host()
        .exec("tc", &["qdisc", "del", "dev", "veth-db", "root"]);
    chapter?;
    removed?;
    println!(
        "\n  Reading it: one block per container (by the veth its packets entered through; on a\n  \
         Docker host, by the container's name). Each line is a stage of the path, in order:\n  \
         forwarding (tc ingress on the sender's veth to tc egress on the receiver's: the bridge),\n  \
         the qdisc (enqueue to dequeue: time in the queue), the hand-off to the veth's peer and\n  \
         its backlog (softirq). The share says where the time went: web's packets spend it in\n  \
         veth-db's queue, db's have none. `measured` says how many sightings found their\n  \
         packet's previous one; `slowest` names the packets behind the p99."
    );
    Ok(())
}
