//! What runs beside the traffic in each configuration: nothing (the baseline), probe in one of
//! its modes, or a tool users reach for instead (tcpdump, `nft monitor trace`, bpftrace).

use std::{process::Command, time::Duration};

use anyhow::Context as _;

use super::process::{Ready, Running, Stopped, in_ns};

/// A filter no bench packet matches (TEST-NET-1 is never used in the lab).
pub const MATCHES_NOTHING: &str = "host 192.0.2.1";
/// The nftables table the `nft monitor trace` configuration adds in the lab's host namespace.
const NFT_TABLE: &str = "probe_bench_trace";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Observer {
    None,
    /// `probe ARGS... --netns <host>`.
    Probe(&'static [&'static str]),
    Tcpdump,
    NftTrace,
    Bpftrace,
}

pub struct Config {
    pub name: &'static str,
    pub observer: Observer,
    /// Read the kernel's per-program accounting during this configuration's last round.
    pub account: bool,
}

pub const CONFIGS: &[Config] = &[
    Config {
        name: "baseline (no tracing)",
        observer: Observer::None,
        account: false,
    },
    Config {
        name: "probe trace: tc on both veths, drops, routes (timelines)",
        observer: Observer::Probe(&["trace", "--iface", "veth-c1,veth-c2"]),
        account: true,
    },
    Config {
        name: "probe trace: same, --events",
        observer: Observer::Probe(&["trace", "--iface", "veth-c1,veth-c2", "--events"]),
        account: false,
    },
    Config {
        name: "probe trace: same, --filter that matches nothing",
        observer: Observer::Probe(&[
            "trace",
            "--iface",
            "veth-c1,veth-c2",
            "--filter",
            MATCHES_NOTHING,
        ]),
        account: true,
    },
    Config {
        name: "probe latency: both veths, every packet, stages, --by container (histograms in the kernel)",
        observer: Observer::Probe(&["latency", "--iface", "veth-c1,veth-c2", "--by", "container"]),
        account: true,
    },
    Config {
        name: "probe watch: both veths, drops, routes (counted in the kernel, /metrics)",
        observer: Observer::Probe(&["watch", "--iface", "veth-c1,veth-c2"]),
        account: true,
    },
    Config {
        name: "tcpdump -i any -w /dev/null (host namespace)",
        observer: Observer::Tcpdump,
        account: false,
    },
    Config {
        name: "nft monitor trace, nftrace set on every bridged packet",
        observer: Observer::NftTrace,
        account: false,
    },
    Config {
        name: "bpftrace: rx/tx per device, kfree_skb, fib_table_lookup",
        observer: Observer::Bpftrace,
        account: false,
    },
];

/// The bpftrace script: the same tracepoints probe uses, and `net:netif_receive_skb` /
/// `net:net_dev_start_xmit` where probe uses tc (bpftrace cannot attach tc programs), each
/// counting into a map as a user measuring the path would.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:net:netif_receive_skb { @rx[str(args->name)] = count(); }
tracepoint:net:net_dev_start_xmit { @tx[str(args->name)] = count(); }
tracepoint:skb:kfree_skb { @drops[args->reason, args->location] = count(); }
tracepoint:fib:fib_table_lookup { @fib[args->tb_id, args->err] = count(); }
"#;

/// Why a peer cannot run on this machine, if it cannot (checked once, before the rounds).
pub fn unavailable(observer: Observer) -> Option<String> {
    let tool = match observer {
        Observer::Tcpdump => "tcpdump",
        Observer::NftTrace => "nft",
        Observer::Bpftrace => "bpftrace",
        Observer::None | Observer::Probe(_) => return None,
    };
    crate::setup::which(tool)
        .is_none()
        .then(|| format!("`{tool}` is not installed (`cargo xtask setup` installs it)"))
}

/// An observer started for one round.
pub struct Started {
    run: Option<Running>,
    /// For `nft monitor trace`: the host namespace whose table is removed on stop or drop.
    nft_ns: Option<String>,
}

impl Started {
    pub fn pid(&self) -> Option<u32> {
        self.run.as_ref().map(Running::pid)
    }

    /// Stops the observer and undoes what it set up; None for the baseline.
    pub fn stop(mut self) -> anyhow::Result<Option<Stopped>> {
        let stopped = self.run.take().map(Running::stop).transpose();
        self.remove_table();
        stopped
    }

    fn remove_table(&mut self) {
        if let Some(ns) = self.nft_ns.take() {
            let _ = in_ns(&ns, "nft", &["delete", "table", "bridge", NFT_TABLE])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        drop(self.run.take());
        self.remove_table();
    }
}

/// Starts `observer` against the lab whose host namespace is `host_ns`.
pub fn start(
    observer: Observer,
    probe: &std::path::Path,
    host_ns: &str,
) -> anyhow::Result<Started> {
    let mut started = Started {
        run: None,
        nft_ns: None,
    };
    started.run = match observer {
        Observer::None => None,
        Observer::Probe(args) => {
            let mut cmd = Command::new(probe);
            cmd.args(args).args(["--netns", host_ns]);
            Some(Running::start(cmd, false, Ready::Line("probe: tracing "))?)
        }
        Observer::Tcpdump => Some(Running::start(
            in_ns(host_ns, "tcpdump", &["-i", "any", "-w", "/dev/null"]),
            false,
            Ready::Line("listening on"),
        )?),
        Observer::NftTrace => {
            started.nft_ns = Some(host_ns.to_owned());
            // Bridged traffic meets the bridge family's hooks (inet ones only with br_netfilter).
            let ruleset = format!(
                "table bridge {NFT_TABLE} {{
  chain trace_all {{
    type filter hook prerouting priority -300; policy accept;
    meta nftrace set 1
  }}
  chain forwarded {{
    type filter hook forward priority 0; policy accept;
    counter
  }}
}}
"
            );
            let status = in_ns(host_ns, "nft", &["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write as _;
                    c.stdin
                        .take()
                        .expect("piped")
                        .write_all(ruleset.as_bytes())?;
                    c.wait()
                })
                .context("cannot run nft")?;
            anyhow::ensure!(
                status.success(),
                "nft could not add the trace table ({status})"
            );
            Some(Running::start(
                in_ns(host_ns, "nft", &["monitor", "trace"]),
                false,
                Ready::After(Duration::from_millis(500)),
            )?)
        }
        Observer::Bpftrace => {
            // Tracepoints are global: bpftrace runs in the root namespace (where tracefs is
            // mounted; `ip netns exec` would hide it) and only reads.
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", BPFTRACE_SCRIPT]);
            Some(Running::start(cmd, true, Ready::Line("Attaching"))?)
        }
    };
    if observer == Observer::Bpftrace {
        // "Attaching N probes..." comes before the probes are attached.
        std::thread::sleep(Duration::from_millis(1500));
    }
    Ok(started)
}
