//! build, run and test: thin wrappers that set up first and hand the right environment on.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::bail;

use crate::{
    privilege::as_root,
    setup::{self, run_cmd, status},
    vm,
};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Sets up and builds probe; returns the path of the binary.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    build_with(&setup::run()?, release)
}

fn build_with(toolchain: &setup::Toolchain, release: bool) -> anyhow::Result<PathBuf> {
    status("building probe");
    let mut cmd = cargo();
    cmd.args(["build", "--package", "probe-user"])
        .env("PROBE_EBPF_TOOLCHAIN", &toolchain.rustup_toolchain);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("probe");
    if !bin.is_file() {
        bail!("the build did not produce {}", bin.display());
    }
    Ok(bin)
}

pub fn run(release: bool, args: &[String]) -> anyhow::Result<()> {
    let bin = build(release)?;
    let status = as_root(&bin).args(args).status()?;
    // probe has already said what went wrong; pass its exit status on.
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Host tests, then (unless `matrix` is None) the kernel matrix on the given lines (all when
/// empty). The host's results of the guest tests go into the matrix's table.
pub fn test(extra: &[String], matrix: Option<Vec<String>>) -> anyhow::Result<()> {
    let toolchain = setup::run()?;
    // The optimised build, as users run it: the host tests and the guests use the same one.
    let bin = build_with(&toolchain, vm::GUEST_RELEASE)?;
    // Compile as the invoking user, so the target directory stays theirs; only running needs root.
    run_cmd(
        cargo()
            .args(["test", "--no-run"])
            .env("PROBE_EBPF_TOOLCHAIN", &toolchain.rustup_toolchain),
    )?;
    // The image test runs what users run: the static binary in its image.
    let image = if !wants_test(extra, "image") && !wants_test(extra, "deploy") {
        None
    } else if let Some(why) = crate::image::docker_unavailable() {
        status(&format!("no image for the image test: {why}"));
        None
    } else {
        Some(crate::image::build_with(
            &toolchain,
            crate::image::TEST_TAG,
        )?)
    };
    status("running the tests (as root: they create namespaces and load eBPF programs)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = as_root(cargo)
        .current_dir(workspace_root())
        .arg("test")
        .args(extra)
        .env("PROBE_BIN", &bin)
        .env("PROBE_EBPF_TOOLCHAIN", &toolchain.rustup_toolchain)
        .envs(image.as_ref().map(|tag| ("PROBE_IMAGE", tag)))
        .env("PROBE_K8S_VALIDATE", crate::deploy_check::validator())
        .stdout(Stdio::piped())
        .spawn()?;
    // Passed through as it comes, and kept for the matrix table.
    let mut host_output = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            host_output.push_str(&line);
            host_output.push('\n');
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    let Some(lines) = matrix else {
        return Ok(());
    };
    // The kernel-function backends need kprobes/fentry, which the host may lack, and the tc
    // fallback needs a kernel without tcx: these tests run again on stock Debian kernels.
    setup::status("running the kernel matrix: guest tests on stock Debian kernels (qemu)");
    let lines = if lines.is_empty() {
        vm::apt::MATRIX.iter().map(|l| (*l).to_owned()).collect()
    } else {
        lines
    };
    vm::matrix(&bin, &lines, &vm::parse_results(&host_output, "host"))
}

/// Whether `cargo test <extra>` runs the test file `name`: always, unless `--test` picks others.
fn wants_test(extra: &[String], name: &str) -> bool {
    let picked: Vec<&str> = extra
        .windows(2)
        .filter(|w| w[0] == "--test")
        .map(|w| w[1].as_str())
        .collect();
    picked.is_empty() || picked.contains(&name)
}

/// The subcommands that get a page of their own.
const MAN_PAGES: &[&str] = &[
    "trace",
    "latency",
    "watch",
    "replay",
    "doctor",
    "cleanup",
    "completions",
];

/// `cargo xtask man`: probe's man pages, from probe itself (`probe man [SUBCOMMAND]`).
/// `probe schema --out docs/schema`: the published schemas, as the types give them now.
pub fn schema() -> anyhow::Result<()> {
    let bin = build(false)?;
    let dir = workspace_root().join("docs/schema");
    let out = Command::new(&bin)
        .arg("schema")
        .arg("--out")
        .arg(&dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "probe schema failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    status(&format!("wrote the schemas into {}", dir.display()));
    Ok(())
}

pub fn man() -> anyhow::Result<()> {
    let bin = build(false)?;
    let dir = target_dir().join("man");
    std::fs::create_dir_all(&dir)?;
    for page in std::iter::once(None).chain(MAN_PAGES.iter().map(Some)) {
        let mut cmd = Command::new(&bin);
        cmd.arg("man").args(page);
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "probe man {} failed: {}",
                page.unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let name = match page {
            None => "probe.1".to_owned(),
            Some(p) => format!("probe-{p}.1"),
        };
        std::fs::write(dir.join(&name), &out.stdout)?;
        status(&format!("wrote {}", dir.join(name).display()));
    }
    Ok(())
}
