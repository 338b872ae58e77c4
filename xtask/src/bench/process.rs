//! Observers run as child processes: started, waited for until they say they are ready, stopped
//! with SIGINT (killed if they do not stop), and never left running when the bench ends early.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long an observer may take to start before it counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an observer may take to stop after SIGINT before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// When a started observer counts as ready.
pub enum Ready {
    /// A line (stdout or stderr) containing this text.
    Line(&'static str),
    /// After this long (for tools that say nothing when ready).
    After(Duration),
}

/// A running observer; its output lines are collected as they come.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// How an observer ended.
pub struct Stopped {
    /// It exited on its own before being stopped (e.g. `nft monitor` on a full socket buffer).
    pub died_early: bool,
    pub success: bool,
    pub output: Vec<String>,
}

fn forward(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

impl Running {
    /// Starts `cmd` (stdin from /dev/null; stdout kept only if `keep_stdout`, else /dev/null;
    /// stderr kept) and waits until it is ready.
    pub fn start(mut cmd: Command, keep_stdout: bool, ready: Ready) -> anyhow::Result<Self> {
        let what = format!("{:?}", cmd.get_program());
        cmd.stdin(Stdio::null())
            .stdout(if keep_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            forward(out, tx.clone());
        }
        forward(child.stderr.take().context("no stderr pipe")?, tx);
        let mut run = Self {
            child,
            lines: rx,
            seen: Vec::new(),
        };
        match ready {
            Ready::Line(text) => {
                let deadline = Instant::now() + READY_TIMEOUT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match run.lines.recv_timeout(left) {
                        Ok(line) => {
                            let found = line.contains(text);
                            run.seen.push(line);
                            if found {
                                break;
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                            "{what} did not say {text:?} within {READY_TIMEOUT:?}:\n{}",
                            run.seen.join("\n")
                        ),
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            let status = run.child.wait()?;
                            bail!("{what} exited ({status}):\n{}", run.seen.join("\n"))
                        }
                    }
                }
            }
            Ready::After(d) => {
                std::thread::sleep(d);
                if let Some(status) = run.child.try_wait()? {
                    run.seen.extend(run.lines.try_iter());
                    bail!("{what} exited ({status}):\n{}", run.seen.join("\n"));
                }
            }
        }
        Ok(run)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to `timeout`) until `count` more lines contain `text`; false on timeout.
    pub fn wait_for(&mut self, text: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut found = 0;
        while found < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    found += usize::from(line.contains(text));
                    self.seen.push(line);
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Sends SIGINT, waits (killing it after [`STOP_TIMEOUT`]) and collects its output.
    pub fn stop(mut self) -> anyhow::Result<Stopped> {
        let died_early = self.child.try_wait()?.is_some();
        if !died_early {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipes close with the process; take what is left.
        let end = Instant::now() + Duration::from_secs(2);
        while let Ok(line) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        Ok(Stopped {
            died_early,
            success: status.success(),
            output: std::mem::take(&mut self.seen),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `ip netns exec NS program args...`
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd
}
