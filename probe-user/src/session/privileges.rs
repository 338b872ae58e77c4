//! Checking, before touching the kernel, that probe may load and attach programs.

use thiserror::Error;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
#[error(
    "probe needs root (or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to load eBPF \
     programs; run it with sudo"
)]
pub struct NotPermitted;

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Fails early, with one clear message, when the kernel would refuse us anyway.
pub fn check() -> Result<(), NotPermitted> {
    let Some(caps) = effective_caps() else {
        // Cannot tell: let the kernel decide.
        return Ok(());
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let bpf = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    let perfmon = has(CAP_PERFMON) || has(CAP_SYS_ADMIN);
    if bpf && perfmon && has(CAP_NET_ADMIN) {
        Ok(())
    } else {
        Err(NotPermitted)
    }
}
