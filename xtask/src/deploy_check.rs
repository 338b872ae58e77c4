//! What the deployment test checks the Kubernetes manifest with: kubernetes-validate from
//! PyPI, whose package carries the Kubernetes JSON schemas (nothing is fetched when it runs),
//! installed into a virtualenv in probe's cache directory. kubectl and kubeconform (Go) are not
//! available on the project's machines.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::setup::{cache_dir, run_cmd, status};

/// The version installed (its newest schema is Kubernetes 1.37).
const VERSION: &str = "1.37.0";

/// The validator's command, where `ensure` installs it.
pub fn validator() -> PathBuf {
    cache_dir().join("venv/bin/kubernetes-validate")
}

/// Installs the validator unless it is there; a failure is said, not fatal: only the
/// deployment test needs it, and it says so.
pub fn ensure() {
    if validator().is_file() {
        return;
    }
    if let Err(e) = install() {
        status(&format!(
            "cannot install kubernetes-validate ({e:#}); the deployment test will fail until \
             it is installed"
        ));
    }
}

fn install() -> anyhow::Result<()> {
    let venv = cache_dir().join("venv");
    status(&format!(
        "installing kubernetes-validate {VERSION} (PyPI) into {}",
        venv.display()
    ));
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("cannot create a Python virtualenv (Debian: apt-get install python3-venv)")?;
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={VERSION}")),
    )
    .context("cannot install kubernetes-validate with pip")
}
