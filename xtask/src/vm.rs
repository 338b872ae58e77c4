//! `cargo xtask vm [--kernel LINE] -- COMMAND...`: runs a command inside a stock Debian kernel
//! under qemu (software emulation), with probe and the tools it needs, and returns the
//! command's exit status. This is how probe's kernel-function backends (kprobes, fentry), which
//! the project's own machines lack, are exercised.
//!
//! The kernel package is looked up, not hard-coded: `linux-image-amd64`'s current dependency in
//! this machine's apt sources (Debian 12: the 6.1 line). The .deb and its unpacked tree are
//! cached under ~/.cache/probe/vm. The initramfs is busybox with the needed modules (and their
//! dependencies via `busybox depmod`), probe, and the binaries a command names, each with the
//! shared libraries `ldd` lists. The guest reports the command's status on the serial console
//! with a marker line; a panic, an oops or a timeout is a failure that shows the console.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use crate::setup::{cache_dir, status, which};

const MARKER: &str = "PROBE-VM-EXIT";
const TIMEOUT: Duration = Duration::from_secs(600);
/// Module directories packed into the guest (dependencies are resolved inside).
const MODULE_DIRS: &[&str] = &[
    "kernel/net",
    "kernel/lib",
    "kernel/crypto",
    "kernel/arch/x86/crypto",
    "kernel/drivers/net",
];
const MODULES: &[&str] = &[
    "veth",
    "bridge",
    "br_netfilter",
    "tun",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nf_conntrack",
    "nf_nat",
    "x_tables",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "xt_conntrack",
    "xt_addrtype",
    "xt_MASQUERADE",
    "sch_ingress",
    "cls_bpf",
];

/// A kernel ready to boot.
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub root: PathBuf,
}

/// Finds (and downloads once) the Debian kernel of `line` ("6.1"), or the default one.
pub fn kernel(line: Option<&str>) -> anyhow::Result<Kernel> {
    let deps = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("apt-cache is needed to find Debian kernels")?;
    let text = String::from_utf8_lossy(&deps.stdout);
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .context("no linux-image package in this machine's apt sources (apt-get update?)")?
        .to_owned();
    let release = package.trim_start_matches("linux-image-").to_owned();
    if let Some(line) = line
        && !release.starts_with(&format!("{line}."))
    {
        bail!(
            "kernel line {line} is not in this machine's apt sources (they offer {release}); \
             available: {}",
            release.split('-').next().unwrap_or("?")
        );
    }
    let dir = cache_dir().join("vm").join(&release);
    let root = dir.join("root");
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        std::fs::create_dir_all(&dir)?;
        status(&format!(
            "downloading {package}-unsigned (cached in {})",
            dir.display()
        ));
        crate::setup::run_cmd(
            Command::new("apt-get")
                .current_dir(&dir)
                .args(["download", &format!("{package}-unsigned")]),
        )?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("the download left no .deb")?;
        crate::setup::run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        let _ = std::fs::remove_file(&deb);
    }
    ensure!(vmlinuz.is_file(), "{} is missing", vmlinuz.display());
    Ok(Kernel {
        release,
        vmlinuz,
        root,
    })
}

/// Copies a binary and every shared library it needs into `dest` at the same paths.
fn pack_binary(bin: &Path, dest: &Path, guest_path: &str) -> anyhow::Result<()> {
    let target = dest.join(guest_path.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().context("path without parent")?)?;
    std::fs::copy(bin, &target).with_context(|| format!("cannot pack {}", bin.display()))?;
    let ldd = Command::new("ldd").arg(bin).output()?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let lib = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
            let to = dest.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().context("path without parent")?)?;
            // Follow symlinks: the guest gets real files.
            std::fs::copy(lib, &to).with_context(|| format!("cannot pack {lib}"))?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    crate::setup::run_cmd(Command::new("cp").arg("-r").arg(from).arg(to))
}

/// Builds the initramfs for `command` and returns its path (inside `work`).
fn initramfs(
    kernel: &Kernel,
    work: &Path,
    command: &[String],
    env: &[(String, String)],
    extra: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    let ir = work.join("root");
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "usr/bin", "usr/sbin",
    ] {
        std::fs::create_dir_all(ir.join(d))?;
    }
    let busybox = which("busybox").context("busybox is needed (package busybox-static)")?;
    std::fs::copy(&busybox, ir.join("bin/busybox"))?;
    for applet in [
        "sh", "mount", "mkdir", "cat", "echo", "poweroff", "modprobe", "sleep", "ls",
    ] {
        std::os::unix::fs::symlink("busybox", ir.join("bin").join(applet))?;
    }
    std::os::unix::fs::symlink("../bin/busybox", ir.join("sbin/modprobe"))?;
    let modules = ir.join("lib/modules").join(&kernel.release);
    std::fs::create_dir_all(modules.join("kernel/drivers"))?;
    for dir in MODULE_DIRS {
        let src = kernel
            .root
            .join("lib/modules")
            .join(&kernel.release)
            .join(dir);
        if src.is_dir() {
            let dst_parent = modules.join(dir);
            let dst_parent = dst_parent.parent().context("module dir")?;
            std::fs::create_dir_all(dst_parent)?;
            copy_tree(&src, dst_parent)?;
        }
    }
    crate::setup::run_cmd(
        Command::new(&busybox)
            .args(["depmod", "-b"])
            .arg(&ir)
            .arg(&kernel.release),
    )?;
    // The loader the binaries name, as a real file.
    std::fs::create_dir_all(ir.join("lib64"))?;
    std::fs::copy(
        "/lib64/ld-linux-x86-64.so.2",
        ir.join("lib64/ld-linux-x86-64.so.2"),
    )?;
    let probe = probe_lab::probe_binary();
    pack_binary(&probe, &ir, "/usr/bin/probe")?;
    for bin in extra {
        let name = bin.file_name().context("binary without a name")?;
        pack_binary(bin, &ir, &format!("/usr/bin/{}", name.to_string_lossy()))?;
    }
    for tool in [
        "ip",
        "tc",
        "nft",
        "iptables",
        "iptables-restore",
        "xtables-nft-multi",
    ] {
        if let Some(path) = which(tool) {
            let real = std::fs::canonicalize(&path)?;
            pack_binary(&real, &ir, real.to_str().context("non-UTF-8 path")?)?;
            if real != path {
                let link = ir.join(path.to_str().context("path")?.trim_start_matches('/'));
                std::fs::create_dir_all(link.parent().context("parent")?)?;
                let _ = std::os::unix::fs::symlink(&real, link);
            }
        }
    }
    // iptables loads its match and target extensions at run time.
    for dir in ["/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/xtables"] {
        let src = Path::new(dir);
        if src.is_dir() {
            let dst = ir.join(dir.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().context("parent")?)?;
            copy_tree(src, dst.parent().context("parent")?)?;
        }
    }
    let quoted: Vec<String> = command
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{}'\n", v.replace('\'', "'\\''")))
        .collect();
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null\n\
         mount -t bpf bpf /sys/fs/bpf 2>/dev/null\n\
         mount -t tmpfs run /run\n\
         mount -t tmpfs tmp /tmp\n\
         modprobe -a {modules} 2>/dev/null\n\
         export PATH=/usr/bin:/usr/sbin:/bin:/sbin PROBE_BIN=/usr/bin/probe\n\
         {exports}\
         {command}\n\
         echo \"{MARKER} $?\"\n\
         poweroff -f\n",
        modules = MODULES.join(" "),
        command = quoted.join(" "),
    );
    std::fs::write(ir.join("init"), init)?;
    std::fs::set_permissions(
        ir.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let out = work.join("initramfs.gz");
    crate::setup::run_cmd(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | '{}' cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        ir.display(),
        busybox.display(),
        out.display()
    )))?;
    Ok(out)
}

/// Boots `kernel` with `command` as the guest's job; returns its exit status and console.
pub fn run_in_vm(
    kernel: &Kernel,
    command: &[String],
    env: &[(String, String)],
    extra: &[PathBuf],
) -> anyhow::Result<(i32, String)> {
    ensure!(
        which("qemu-system-x86_64").is_some(),
        "qemu is needed: run `cargo xtask setup` as root (package qemu-system-x86)"
    );
    let work = std::env::temp_dir().join(format!("probe-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = (|| {
        let initrd = initramfs(kernel, &work, command, env, extra)?;
        let mut qemu = Command::new("timeout")
            .arg("--kill-after=5")
            .arg(TIMEOUT.as_secs().to_string())
            .arg("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "1"])
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args([
                "-append",
                "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic",
                "-nographic",
                "-no-reboot",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-monitor",
                "none",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start qemu")?;
        let mut console = String::new();
        use std::io::Read as _;
        if let Some(mut out) = qemu.stdout.take() {
            out.read_to_string(&mut console)?;
        }
        let status = qemu.wait()?;
        let code = console
            .lines()
            .find_map(|l| l.trim().strip_prefix(MARKER))
            .and_then(|c| c.trim().parse::<i32>().ok());
        match code {
            Some(code) => Ok((code, guest_output(&console))),
            None if status.code() == Some(124) => {
                bail!("the VM timed out after {TIMEOUT:?}; console:\n{console}")
            }
            None => bail!("the VM ended without reporting ({status}); console:\n{console}"),
        }
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The console without firmware noise and the marker line.
fn guest_output(console: &str) -> String {
    console
        .lines()
        .skip_while(|l| !l.contains("Booting from ROM"))
        .skip(1)
        .filter(|l| !l.contains(MARKER) && !l.contains("reboot: Power down"))
        .map(|l| l.trim_start_matches("\u{1b}c\u{1b}[?7l\u{1b}[2J"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds integration test binaries and returns their paths, guest names first.
fn test_binaries(names: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(crate::tasks::workspace_root())
        .args([
            "test",
            "--package",
            "probe-tests",
            "--no-run",
            "--message-format=json",
        ])
        .args(names.iter().flat_map(|n| ["--test", n.as_str()]))
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "building the tests failed");
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(exe) = v["executable"].as_str()
            && names.iter().any(|n| v["target"]["name"] == n.as_str())
        {
            bins.push(PathBuf::from(exe));
        }
    }
    ensure!(
        bins.len() == names.len(),
        "not every test binary was built: {names:?}"
    );
    Ok(bins)
}

/// Runs integration test binaries (tests/tests/NAME.rs) in the guest, where they must find
/// the kernel functions the host lacks.
pub fn run_tests(kernel_line: Option<&str>, names: &[String]) -> anyhow::Result<()> {
    crate::tasks::build(false)?;
    let bins = test_binaries(names)?;
    let kernel = kernel(kernel_line)?;
    status(&format!(
        "running {names:?} on Debian kernel {} under qemu",
        kernel.release
    ));
    // Each binary's file name is its guest command; one thread: the guest has one CPU.
    let script: Vec<String> = bins
        .iter()
        .filter_map(|b| {
            b.file_name()
                .map(|n| format!("{} --test-threads=1", n.to_string_lossy()))
        })
        .collect();
    let command = vec!["sh".to_owned(), "-c".to_owned(), script.join(" && ")];
    let env = [("PROBE_EXPECT_KERNEL_FUNCTIONS".to_owned(), "1".to_owned())];
    let (code, output) = run_in_vm(&kernel, &command, &env, &bins)?;
    println!("{output}");
    // kernel × test → result, from the test harness's own lines.
    println!("\n{:<28} {:<50} result", "kernel", "test");
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, result)) = rest.rsplit_once(" ... ")
        {
            println!(
                "{:<28} {name:<50} {result}",
                format!("{} (qemu)", kernel.release)
            );
        }
    }
    ensure!(
        code == 0,
        "tests failed on {} (exit {code})",
        kernel.release
    );
    Ok(())
}

pub fn run(kernel_line: Option<&str>, command: &[String]) -> anyhow::Result<()> {
    crate::tasks::build(false)?;
    let kernel = kernel(kernel_line)?;
    status(&format!(
        "booting Debian kernel {} under qemu (software emulation)",
        kernel.release
    ));
    let (code, output) = run_in_vm(&kernel, command, &[], &[])?;
    println!("{output}");
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
