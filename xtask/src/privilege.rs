//! Running the parts that need root (loading programs, creating namespaces) under sudo when
//! xtask itself is not root, so builds stay owned by the user.

use std::{ffi::OsStr, process::Command};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` as root: directly when we are root, else through `sudo`, keeping PATH (for cargo
/// and the tools) and the environment.
pub fn as_root(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("--preserve-env").arg("env");
        if let Some(path) = std::env::var_os("PATH") {
            let mut kv = std::ffi::OsString::from("PATH=");
            kv.push(path);
            cmd.arg(kv);
        }
        cmd.arg(program);
        cmd
    }
}
