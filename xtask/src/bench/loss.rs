//! Loss under load: the highest UDP packet rate at which probe's default ring buffer loses
//! nothing while every packet is seen six times. c1 sends to a namespace behind a second bridge,
//! so the lab host routes each packet: tc ingress on veth-c1 and docker0, the host's FIB lookup,
//! tc egress on br-out and veth-out, and the receiving namespace's own lookup (routing
//! tracepoints are not limited to one namespace).
//! There a socket that is never read takes the packets (and drops them once its buffer is full)
//! so no port-unreachable replies add sightings. The count per packet is measured, not assumed.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use probe_lab::{BridgeLab, Netns, topology::sysctl};

use super::process::{Ready, Running};

const OUT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// The discard port, where a socket that is never read sits.
const PORT: u16 = 9;
pub const IFACES: &str = "veth-c1,docker0,br-out,veth-out";
/// The target: 200 k packets/s without loss.
pub const TARGET_PPS: f64 = 200_000.0;

/// The routed second network: `br-out` (10.99.0.1/24) in the lab host and a namespace on it.
pub struct RoutedOut {
    _sink: UdpSocket,
    _out: Netns,
}

impl RoutedOut {
    pub fn new(lab: &BridgeLab, prefix: &str) -> anyhow::Result<Self> {
        let out = Netns::named(&format!("{prefix}out"))?;
        // No IPv6 chatter (router solicitations, MLD) among the counted sightings.
        sysctl(&out, "net.ipv6.conf.default.disable_ipv6", "1")?;
        sysctl(&out, "net.ipv6.conf.all.disable_ipv6", "1")?;
        let host = &lab.host;
        host.ip(&["link", "add", "br-out", "type", "bridge"])?;
        host.ip(&["addr", "add", "10.99.0.1/24", "dev", "br-out"])?;
        host.ip(&["link", "set", "br-out", "up"])?;
        host.veth_to("veth-out", &out, "eth0")?;
        host.ip(&["link", "set", "veth-out", "master", "br-out", "up"])?;
        out.ip(&["addr", "add", &format!("{OUT_ADDR}/24"), "dev", "eth0"])?;
        out.ip(&["link", "set", "eth0", "up"])?;
        out.ip(&["route", "add", "default", "via", "10.99.0.1"])?;
        sysctl(host, "net.ipv4.ip_forward", "1")?;
        let sink = out.run(|| UdpSocket::bind((OUT_ADDR, PORT)))??;
        Ok(Self {
            _sink: sink,
            _out: out,
        })
    }
}

/// One trial: what was sent and what probe said.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    pub target_pps: f64,
    pub sent_pps: f64,
    pub packets: u64,
    pub events: u64,
    pub lost: u64,
}

impl Trial {
    fn kept_up(&self) -> bool {
        self.sent_pps >= 0.95 * self.target_pps
    }
}

/// The search's outcome.
pub struct LossResult {
    /// How probe ran ("timelines", "--events").
    pub mode: &'static str,
    pub trials: Vec<Trial>,
    /// Highest rate sent with nothing lost.
    pub lossless_pps: f64,
    /// Lowest rate sent with a loss, if any.
    pub first_loss_pps: Option<f64>,
    /// Highest rate the sender reached (unpaced trial).
    pub sender_max_pps: f64,
    pub sightings_per_packet: f64,
}

/// "probe: N timelines from M events, none lost" / "...; K LOST because ..." → (M, K).
fn parse_summary(lines: &[String]) -> Option<(u64, u64)> {
    let line = lines.iter().rev().find(|l| {
        l.starts_with("probe: ") && (l.contains("none lost") || l.contains(" LOST because"))
    })?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let events = words
        .iter()
        .position(|w| w.trim_end_matches(',') == "events" || w.starts_with("events"))
        .and_then(|i| words.get(i.checked_sub(1)?))
        .and_then(|n| n.parse().ok())?;
    let lost = words
        .iter()
        .position(|w| *w == "LOST")
        .and_then(|i| words.get(i.checked_sub(1)?))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some((events, lost))
}

fn trial(
    probe: &Path,
    lab: &BridgeLab,
    extra: &[&str],
    rate: f64,
    secs: f64,
) -> anyhow::Result<Trial> {
    let mut cmd = std::process::Command::new(probe);
    cmd.args(["trace", "--netns", lab.host.name(), "--iface", IFACES])
        .args(extra);
    let run = Running::start(cmd, false, Ready::Line("probe: tracing "))?;
    let sender = lab.container("c1").ns.name().to_owned();
    let sent = super::sender::send(&sender, SocketAddrV4::new(OUT_ADDR, PORT), rate, secs);
    // Let probe drain what the ring still holds before it is stopped.
    std::thread::sleep(Duration::from_millis(300));
    let stopped = run.stop()?;
    let (packets, took) = sent?;
    let (events, lost) = parse_summary(&stopped.output).with_context(|| {
        format!(
            "probe printed no summary line:\n{}",
            stopped.output.join("\n")
        )
    })?;
    let t = Trial {
        target_pps: rate,
        sent_pps: packets as f64 / took,
        packets,
        events,
        lost,
    };
    eprintln!(
        "loss: target {:>9} pps, sent {:>9.0} pps, {:>9} events, {} lost",
        if rate.is_finite() {
            format!("{rate:.0}")
        } else {
            "max".into()
        },
        t.sent_pps,
        t.events,
        t.lost
    );
    if t.lost > 0
        && let Some(line) = stopped
            .output
            .iter()
            .rev()
            .find(|l| l.contains(" LOST because"))
    {
        // Which CPUs lost, for telling a slow reader from a burst on one CPU.
        eprintln!("loss:   {line}");
    }
    Ok(t)
}

/// Steps the rate up until probe loses events or the sender cannot keep up, then bisects.
pub fn search(
    probe: &Path,
    lab: &BridgeLab,
    mode: &'static str,
    extra: &[&str],
    secs: f64,
    bisections: usize,
) -> anyhow::Result<LossResult> {
    let interrupted = || {
        anyhow::ensure!(
            !crate::interrupt::happened(),
            "interrupted; the lab has been removed"
        );
        Ok(())
    };
    let mut trials = Vec::new();
    // A slow trial first: how many sightings each packet makes.
    let first = trial(probe, lab, extra, 10_000.0, secs.min(1.0))?;
    let sightings_per_packet = first.events as f64 / first.packets.max(1) as f64;
    trials.push(first);
    let mut good: Option<Trial> = (first.lost == 0).then_some(first);
    let mut bad: Option<Trial> = (first.lost > 0).then_some(first);
    let mut rate = 50_000.0;
    while bad.is_none() {
        interrupted()?;
        let t = trial(probe, lab, extra, rate, secs)?;
        trials.push(t);
        if t.lost > 0 {
            bad = Some(t);
        } else if !t.kept_up() {
            // The sender's ceiling: try once flat out.
            let t = trial(probe, lab, extra, f64::INFINITY, secs)?;
            trials.push(t);
            if t.lost > 0 {
                bad = Some(t);
            } else {
                good = Some(t);
            }
            break;
        } else {
            good = Some(t);
            rate *= 2.0;
        }
    }
    if let (Some(_), Some(_)) = (good, bad) {
        for _ in 0..bisections {
            interrupted()?;
            let (g, b) = (good.unwrap(), bad.unwrap());
            let mid = (g.sent_pps + b.sent_pps) / 2.0;
            if b.sent_pps - g.sent_pps < 0.05 * g.sent_pps {
                break;
            }
            let t = trial(probe, lab, extra, mid, secs)?;
            trials.push(t);
            if t.lost > 0 {
                bad = Some(t);
            } else {
                good = Some(t);
            }
        }
    }
    let sender_max_pps = trials.iter().map(|t| t.sent_pps).fold(0.0, f64::max);
    Ok(LossResult {
        mode,
        lossless_pps: good.map_or(0.0, |t| t.sent_pps),
        first_loss_pps: bad.map(|t| t.sent_pps),
        sender_max_pps,
        sightings_per_packet,
        trials,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_lines() {
        let l = |s: &str| vec![s.to_owned()];
        assert_eq!(
            super::parse_summary(&l("probe: 12 timelines from 345 events, none lost")),
            Some((345, 0))
        );
        assert_eq!(
            super::parse_summary(&l(
                "probe: 9 events; 77 LOST because the ring buffer was full (cpu0 77; try ...)"
            )),
            Some((9, 77))
        );
    }
}
