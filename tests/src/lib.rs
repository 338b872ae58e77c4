//! A lab of network namespaces for probe's tests and demo, and a handle on a running `probe`.
//!
//! Everything here is created inside namespaces the lab owns; the root namespace is never
//! touched, and every object removes itself on drop (also when a test fails).

pub mod cmd;
pub mod docker;
pub mod doctor;
pub mod host_lab;
pub mod netns;
pub mod probe;
pub mod prometheus;
pub mod topology;
pub mod traffic;

pub use host_lab::HostLab;
pub use netns::{Netns, in_netns};
pub use probe::{ProbeRun, probe_binary};
pub use topology::{BridgeLab, Routed, TwoHosts};

/// A file in the temporary directory, named after this process, removed when dropped.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn new(name: &str) -> Self {
        TempFile(std::env::temp_dir().join(format!("probe-{}-{name}", std::process::id())))
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("temporary paths are UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Tests and the demo need root to create namespaces and load programs; say so plainly.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "these tests create network namespaces and load eBPF programs: run them as root \
             (`cargo xtask test` does)"
        );
    }
}

/// Gives a UDP socket a receive buffer large enough for a test's whole burst, so datagrams are
/// never lost to a slow reader (SO_RCVBUFFORCE: root may exceed net.core.rmem_max).
pub fn large_receive_buffer(socket: &std::net::UdpSocket, bytes: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt on a socket we own with a properly sized int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Routing lookups are reported for every namespace at once (the fib tracepoints carry no
/// namespace), and the story labs all use Docker's 172.17.0.0/16: tests that read routing
/// decisions for those addresses take this lock so that no other lab's lookups mix in, whether
/// the other lab belongs to this test binary or to another one running at the same time.
pub fn one_lab_at_a_time() -> LabLock {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/probe-lab.lock")
        .expect("cannot open /run/probe-lab.lock");
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor we own; the lock goes with the descriptor when it closes.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "flock: {err}");
    }
    LabLock {
        _file: file,
        _guard: guard,
    }
}

/// Held while a test owns the story lab's addresses (see [`one_lab_at_a_time`]).
pub struct LabLock {
    _file: std::fs::File,
    _guard: std::sync::MutexGuard<'static, ()>,
}
