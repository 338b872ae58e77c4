//! `cargo xtask lab up|down`: the demo's lab, left standing to explore by hand.

use clap::ValueEnum;
use probe_lab::{BridgeLab, HostLab};

use crate::privilege::{as_root, is_root};

/// Namespace names: `probe-lab-host`, `probe-lab-web`, `probe-lab-db`, `probe-lab-outside`.
pub const PREFIX: &str = "probe-lab-";
const NAMESPACES: &[&str] = &["web", "db", "outside"];

#[derive(Clone, Copy, ValueEnum)]
pub enum Action {
    Up,
    Down,
}

pub fn run(action: Action) -> anyhow::Result<()> {
    if !is_root() {
        // Re-run this very command as root.
        let exe = std::env::current_exe()?;
        let status = as_root(exe).args(std::env::args_os().skip(1)).status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    match action {
        Action::Up => {
            let lab = HostLab::new(PREFIX)?;
            println!("lab is up (remove it with `cargo xtask lab down`):");
            println!(
                "  {}: bridge {} {}/16, uplink {} {}, Docker's iptables chains, 8080 -> web:80",
                lab.host().name(),
                BridgeLab::BRIDGE,
                BridgeLab::GATEWAY,
                HostLab::UPLINK,
                HostLab::HOST_ADDR
            );
            for c in &lab.bridge.containers {
                println!(
                    "  {}: eth0 {} (host side {})",
                    c.ns.name(),
                    c.addr,
                    c.host_if
                );
            }
            println!("  {}: {}", lab.outside.name(), HostLab::OUTSIDE_ADDR);
            println!(
                "try: sudo target/debug/probe trace --netns {} --rules",
                lab.host().name()
            );
            println!(
                "     sudo ip netns exec {} wget -qO- http://{}:8080  (if the namespace has wget)",
                lab.outside.name(),
                HostLab::HOST_ADDR
            );
            lab.keep();
        }
        Action::Down => {
            let removed = BridgeLab::remove(PREFIX, NAMESPACES);
            println!("removed {removed} lab namespace(s)");
        }
    }
    Ok(())
}
