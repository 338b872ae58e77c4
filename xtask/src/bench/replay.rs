//! Userspace speed: decode + correlate throughput and peak memory replaying a large recording.
//! A few seconds of the bench traffic are recorded by probe, then the recording's events are
//! repeated (each copy shifted later in time, past the correlator's linger) until the file holds
//! the wanted number of events, so the replay sees real packets and a long file.

use std::{
    io::{BufWriter, Read as _, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

const KIND_RAW: u8 = 1;
/// Gap between copies, beyond any linger, so copies never join.
const COPY_GAP_NS: u64 = 10_000_000_000;

/// How a recording was replayed.
#[derive(Default)]
pub struct ReplayRun {
    pub events: u64,
    /// CPU time (user + system) of the replaying process: its one-core cost, insensitive to
    /// other processes on a shared machine.
    pub cpu_s: f64,
    pub wall_s: f64,
    pub peak_rss_kib: u64,
}

impl ReplayRun {
    /// Events per CPU-second, without the CPU time of `startup` (a replay of no events).
    pub fn per_cpu_second(&self, startup: &ReplayRun) -> f64 {
        self.events as f64 / (self.cpu_s - startup.cpu_s).max(1e-6)
    }

    /// Events per wall-clock second, without the wall time of `startup`.
    pub fn per_wall_second(&self, startup: &ReplayRun) -> f64 {
        self.events as f64 / (self.wall_s - startup.wall_s).max(1e-6)
    }
}

/// Writes `out`: the recording `small` with its events repeated until there are at least
/// `want` of them; returns the number of events written and the number in `small`.
pub fn enlarge(small: &Path, out: &Path, want: u64) -> anyhow::Result<(u64, u64)> {
    let mut bytes = Vec::new();
    std::fs::File::open(small)?.read_to_end(&mut bytes)?;
    ensure!(
        bytes.len() >= 16 && &bytes[..8] == b"PROBEREC",
        "{} is not a recording",
        small.display()
    );
    let meta_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let body_at = 16 + meta_len;
    ensure!(bytes.len() >= body_at, "truncated recording");
    // Records: kind u8, length u32, payload.
    let mut records = Vec::new();
    let (mut first, mut last) = (u64::MAX, 0u64);
    let mut at = body_at;
    while at < bytes.len() {
        ensure!(at + 5 <= bytes.len(), "truncated record at {at}");
        let kind = bytes[at];
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let payload = at + 5..at + 5 + len;
        ensure!(payload.end <= bytes.len(), "truncated record at {at}");
        if kind == KIND_RAW {
            ensure!(len >= 8, "short event at {at}");
            let ts = u64::from_le_bytes(bytes[payload.start..payload.start + 8].try_into()?);
            first = first.min(ts);
            last = last.max(ts);
            records.push((kind, payload));
        } else if kind != 3 {
            bail!("the bench recording has a record of kind {kind}; only events are repeated");
        }
        at += 5 + len;
    }
    ensure!(!records.is_empty(), "the recording holds no events");
    let span = last - first + COPY_GAP_NS;
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    w.write_all(&bytes[..body_at])?;
    let mut written = 0u64;
    let mut copy = 0u64;
    while written < want {
        for (kind, payload) in &records {
            let p = &bytes[payload.clone()];
            let ts = u64::from_le_bytes(p[..8].try_into()?) + copy * span;
            w.write_all(&[*kind])?;
            w.write_all(&(p.len() as u32).to_le_bytes())?;
            w.write_all(&ts.to_le_bytes())?;
            w.write_all(&p[8..])?;
            written += 1;
        }
        copy += 1;
    }
    w.flush()?;
    Ok((written, records.len() as u64))
}

/// Replays `file` with `args` (after `replay FILE`) to /dev/null and measures it.
///
/// The replay is started by a fresh `xtask bench-rusage` process, not by this one: a child
/// spawned with a shared address space (posix_spawn) inherits its parent's peak resident size
/// at exec, so the bench's own memory would show as the replay's.
pub fn time(bin: &Path, file: &Path, args: &[&str], events: u64) -> anyhow::Result<ReplayRun> {
    let out = Command::new(std::env::current_exe()?)
        .arg("bench-rusage")
        .arg("--")
        .arg(bin)
        .arg("replay")
        .arg(file)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start the replay")?;
    ensure!(out.status.success(), "the replay failed ({})", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(cpu_s)), Some(Ok(wall_s)), Some(Ok(rss))) =
        (fields.next(), fields.next(), fields.next())
    else {
        bail!("unexpected output from bench-rusage: {text:?}");
    };
    Ok(ReplayRun {
        events,
        cpu_s,
        wall_s,
        peak_rss_kib: rss as u64,
    })
}

/// `xtask bench-rusage -- CMD ARGS...`: runs CMD with its output discarded and prints its CPU
/// seconds (user + system), wall seconds and peak resident KiB.
pub fn rusage(command: &[String]) -> anyhow::Result<()> {
    let (program, args) = command.split_first().context("no command")?;
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(rc == pid, "waiting for {program} failed");
    ensure!(status == 0, "{program} failed (status {status})");
    let wall = start.elapsed().as_secs_f64();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    println!("{cpu:.6} {wall:.6} {}", usage.ru_maxrss);
    Ok(())
}
