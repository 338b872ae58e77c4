//! Entering a network namespace before anything else starts.
//!
//! `ip netns exec` remounts /sys, which breaks tracefs for the programs that need it, so probe
//! enters a namespace itself with setns(2), on the main thread, before the async runtime spawns
//! threads (threads inherit the namespace of the thread that creates them).

use std::{fs::File, os::fd::AsRawFd, path::PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network namespace '{name}' not found (looked for {path})")]
    NotFound { name: String, path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a namespace given by name or path lives: a bare name is one `ip netns add` created
/// (under /run/netns); anything with a `/` is a path such as /proc/PID/ns/net.
pub fn resolve(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        PathBuf::from("/run/netns").join(spec)
    }
}

/// Moves the calling thread into the network namespace `spec`.
pub fn enter(spec: &str) -> Result<(), NetnsError> {
    let path = resolve(spec);
    let file = File::open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            NetnsError::NotFound {
                name: spec.to_owned(),
                path: path.clone(),
            }
        } else {
            NetnsError::Open {
                path: path.clone(),
                source,
            }
        }
    })?;
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Enter {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    if let Some(inode) = own() {
        let _ = ENTERED.set(Entered {
            spec: spec.to_owned(),
            path,
            inode,
        });
    }
    Ok(())
}

/// The namespace probe entered, to notice when it is deleted under it.
struct Entered {
    spec: String,
    path: PathBuf,
    inode: u64,
}

static ENTERED: std::sync::OnceLock<Entered> = std::sync::OnceLock::new();

/// The name of the namespace probe entered, once it was deleted (`ip netns del`) or its
/// process went: probe alone would be keeping it alive.
pub fn entered_is_gone() -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt as _;
    let e = ENTERED.get()?;
    let still = std::fs::metadata(&e.path).is_ok_and(|m| m.ino() == e.inode);
    (!still).then_some(e.spec.as_str())
}

/// Namespaces `ip netns add` created, by inode (as drop events report them): their names.
pub fn named() -> std::collections::BTreeMap<u64, String> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|e| {
            let ino = std::fs::metadata(e.path()).ok()?.ino();
            Some((ino, e.file_name().to_str()?.to_owned()))
        })
        .collect()
}

/// Inode of the calling thread's network namespace.
pub fn own() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}
