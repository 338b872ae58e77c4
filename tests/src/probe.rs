//! Running the real `probe` binary against a lab and collecting what it prints.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};

/// The probe binary under test: `$PROBE_BIN`, else `target/debug/probe` of this workspace.
pub fn probe_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PROBE_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug/probe");
    assert!(
        path.is_file(),
        "{} does not exist: build it first (`cargo build -p probe-user`; `cargo xtask test` \
         does it) or set PROBE_BIN",
        path.display()
    );
    path
}

/// A running `probe trace`, stopped with SIGINT by [`ProbeRun::stop`] or killed on drop.
pub struct ProbeRun {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

/// How long probe may take to load and attach before a test gives up. Generous: a guest of
/// the kernel matrix under software emulation takes over a minute at times, and a probe
/// given up on is killed, leaving what a killed probe leaves for the next to clean.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

impl ProbeRun {
    /// Starts `probe <args>` and waits until it reports that it is tracing.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(probe_binary());
        cmd.args(args);
        Self::start_command(cmd)
    }

    /// Starts `cmd`, a command that runs probe (e.g. inside a container), and waits until
    /// probe reports that it is tracing.
    pub fn start_command(mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start probe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut run = Self {
            child,
            stderr_lines: rx,
            stderr_seen: Vec::new(),
        };
        run.wait_for_stderr("probe: tracing ")?;
        Ok(run)
    }

    /// Waits (up to [`READY_TIMEOUT`]) for a stderr line starting with `prefix`.
    pub fn wait_for_stderr(&mut self, prefix: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.starts_with(prefix);
                    self.stderr_seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "probe did not print {prefix:?} within {READY_TIMEOUT:?}; stderr:\n{}",
                        self.stderr_seen.join("\n")
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "probe exited ({status}) before printing {prefix:?}; stderr:\n{}",
                        self.stderr_seen.join("\n")
                    )
                }
            }
        }
    }

    /// Sends SIGINT, waits for exit, and returns (stdout, stderr). Fails if probe failed.
    pub fn stop(self) -> anyhow::Result<(String, String)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.finish()
    }

    /// Waits for probe to exit on its own (e.g. `--count`).
    pub fn finish(mut self) -> anyhow::Result<(String, String)> {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .context("no stdout pipe")?
            .read_to_string(&mut stdout)?;
        let status = self.child.wait()?;
        self.stderr_seen.extend(self.stderr_lines.iter());
        let stderr = self.stderr_seen.join("\n");
        if !status.success() {
            bail!("probe failed ({status}); stderr:\n{stderr}");
        }
        Ok((stdout, stderr))
    }

    /// Stderr lines read so far.
    pub fn stderr_so_far(&self) -> &[String] {
        &self.stderr_seen
    }

    /// The process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProbeRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses JSON Lines output into values (every line must be JSON).
pub fn json_lines(stdout: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let all: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<anyhow::Result<_>>()?;
    // The run's closing summary line is not a sighting or a timeline.
    Ok(all
        .into_iter()
        .filter(|v| v["schema"] != "probe.summary/1")
        .collect())
}

/// The `probe.summary/1` line a `--json` run ends with.
pub fn json_summary(stdout: &str) -> anyhow::Result<serde_json::Value> {
    let last = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .context("no output")?;
    let v: serde_json::Value = serde_json::from_str(last)?;
    anyhow::ensure!(
        v["schema"] == "probe.summary/1",
        "the last line is no summary: {last}"
    );
    Ok(v)
}
