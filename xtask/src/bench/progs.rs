//! The kernel's own accounting of a process's BPF programs (kernel.bpf_stats_enabled): run count
//! and run time per program, named by the name the program was loaded with.

use std::os::fd::{FromRawFd as _, OwnedFd};

/// One program's accounting.
pub struct ProgramCost {
    /// `<type> <name>` (the loaded name, at most 15 characters, or the tag if it has none).
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.run_time_ns as f64 / self.runs as f64
        }
    }
}

/// Turns kernel.bpf_stats_enabled on, and back to what it was when dropped.
pub struct StatsEnabled {
    was: String,
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsEnabled {
    pub fn new() -> anyhow::Result<Self> {
        let was = std::fs::read_to_string(STATS)
            .unwrap_or_else(|_| "0".into())
            .trim()
            .to_owned();
        std::fs::write(STATS, "1").map_err(|e| anyhow::anyhow!("cannot write {STATS}: {e}"))?;
        Ok(Self { was })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS, &self.was);
    }
}

/// The programs process `pid` holds open that ran at least once, from /proc/PID/fdinfo.
pub fn of_process(pid: u32) -> Vec<ProgramCost> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        let (Some(ty), Some(tag), Some(ns), Some(runs)) = (
            field("prog_type:"),
            field("prog_tag:"),
            field("run_time_ns:"),
            field("run_cnt:"),
        ) else {
            continue;
        };
        let kind = match ty.as_str() {
            "3" => "tc",
            "5" => "tracepoint",
            "17" => "raw tracepoint",
            "2" => "kprobe",
            "26" => "tracing",
            other => other,
        };
        let (Ok(ns), Ok(runs)) = (ns.parse::<u64>(), runs.parse::<u64>()) else {
            continue;
        };
        if runs == 0 {
            continue;
        }
        let name = field("prog_id:")
            .and_then(|id| id.parse().ok())
            .and_then(program_name)
            .unwrap_or(tag);
        out.push(ProgramCost {
            name: format!("{kind} {name}"),
            runs,
            run_time_ns: ns,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offset of `name[16]` in `struct bpf_prog_info` (stable UAPI).
const PROG_INFO_NAME: usize = 64;

/// A program's name, through BPF_PROG_GET_FD_BY_ID and BPF_OBJ_GET_INFO_BY_FD.
fn program_name(id: u32) -> Option<String> {
    // bpf_attr for GET_FD_BY_ID: prog_id u32, next_id u32, open_flags u32.
    let mut attr = [0u32; 4];
    attr[0] = id;
    // SAFETY: bpf(2) with a zeroed attr of adequate size; the fd returned is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = [0u8; PROG_INFO_NAME + 16];
    // bpf_attr for OBJ_GET_INFO_BY_FD: bpf_fd u32, info_len u32, info u64.
    #[repr(C)]
    struct InfoAttr {
        fd: u32,
        len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        return None;
    }
    let name = &info[PROG_INFO_NAME..];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    (end > 0).then(|| String::from_utf8_lossy(&name[..end]).into_owned())
}
