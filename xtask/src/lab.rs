//! `cargo xtask lab up|down`: the demo's lab, left standing to explore by hand.

use clap::ValueEnum;
use probe_lab::BridgeLab;

use crate::privilege::{as_root, is_root};

/// Namespace names: `probe-lab-host`, `probe-lab-web`, `probe-lab-db`.
pub const PREFIX: &str = "probe-lab-";
pub const CONTAINERS: &[&str] = &["web", "db"];

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
            let lab = BridgeLab::new(PREFIX, CONTAINERS)?;
            println!("lab is up (remove it with `cargo xtask lab down`):");
            println!(
                "  {}: bridge {} {}/16",
                lab.host.name(),
                BridgeLab::BRIDGE,
                BridgeLab::GATEWAY
            );
            for c in &lab.containers {
                println!(
                    "  {}: eth0 {} (host side {})",
                    c.ns.name(),
                    c.addr,
                    c.host_if
                );
            }
            println!(
                "try: sudo target/debug/probe trace --netns {} --iface {}",
                lab.host.name(),
                BridgeLab::BRIDGE
            );
            lab.keep();
        }
        Action::Down => {
            let removed = BridgeLab::remove(PREFIX, CONTAINERS);
            println!("removed {removed} lab namespace(s)");
        }
    }
    Ok(())
}
