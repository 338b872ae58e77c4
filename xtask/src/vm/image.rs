//! The guest's initramfs: busybox, the kernel's network modules, probe, the tools the tests
//! call and the job to run.
//!
//! It is two gzip'd cpio archives one after the other (the kernel unpacks both): the modules,
//! built once per kernel and cached next to it, and a small one made for each boot with the
//! binaries and `/init`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use super::apt::Kernel;
use crate::setup::{run_cmd, status, which};

/// Printed by the guest's init with the job's exit status.
pub const MARKER: &str = "PROBE-VM-EXIT";
/// Module directories packed into the guest, so that modules the kernel asks for on demand
/// (an iptables match, an nft expression) are there too.
const MODULE_DIRS: &[&str] = &[
    "kernel/net",
    "kernel/lib",
    "kernel/crypto",
    "kernel/arch/x86/crypto",
    "kernel/drivers/net",
];
/// Loaded at boot (dependencies resolved by modprobe from busybox depmod's modules.dep).
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
    // The latency test's slow queue.
    "sch_tbf",
];
/// Tools the tests and probe call in the guest.
const TOOLS: &[&str] = &[
    "ip",
    "tc",
    "nft",
    "iptables",
    "iptables-restore",
    "xtables-nft-multi",
    "iptables-legacy",
    "xtables-legacy-multi",
];

fn busybox() -> anyhow::Result<PathBuf> {
    which("busybox").context("busybox is needed (package busybox-static)")
}

/// Packs `dir` (as the archive's root) into a gzip'd newc cpio archive at `out`.
fn cpio(dir: &Path, out: &Path) -> anyhow::Result<()> {
    run_cmd(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | '{}' cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        dir.display(),
        busybox()?.display(),
        out.display()
    )))
}

/// The kernel's network modules as an archive: uncompressed (busybox modprobe cannot read
/// .ko.xz, which Debian uses from 6.12 on) and indexed by busybox depmod. Built once.
fn modules_archive(kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let out = kernel.dir.join("modules.cpio.gz");
    if out.is_file() {
        return Ok(out);
    }
    status(&format!("preparing the modules of {}", kernel.release));
    let tree = kernel.dir.join("modules.partial");
    let _ = std::fs::remove_dir_all(&tree);
    let modules = tree.join("lib/modules").join(&kernel.release);
    let src = kernel.root.join("lib/modules").join(&kernel.release);
    for dir in MODULE_DIRS {
        if src.join(dir).is_dir() {
            let parent = modules.join(dir);
            let parent = parent.parent().context("module dir")?;
            std::fs::create_dir_all(parent)?;
            run_cmd(Command::new("cp").arg("-r").arg(src.join(dir)).arg(parent))?;
        }
    }
    for file in [
        "modules.builtin",
        "modules.order",
        "modules.builtin.modinfo",
    ] {
        if src.join(file).is_file() {
            std::fs::copy(src.join(file), modules.join(file))?;
        }
    }
    decompress_modules(&modules)?;
    run_cmd(
        Command::new(busybox()?)
            .args(["depmod", "-b"])
            .arg(&tree)
            .arg(&kernel.release),
    )?;
    let dep = std::fs::read_to_string(modules.join("modules.dep"))
        .context("busybox depmod wrote no modules.dep")?;
    let builtin = std::fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let missing: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| !module_known(&dep, m) && !module_known(&builtin, m))
        .collect();
    if !missing.is_empty() {
        // Not fatal: the tests that need them say what is missing.
        status(&format!(
            "warning: {} has no module {} (neither loadable nor built in)",
            kernel.release,
            missing.join(", ")
        ));
    }
    let partial = kernel.dir.join("modules.cpio.gz.partial");
    cpio(&tree, &partial)?;
    std::fs::rename(&partial, &out)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(out)
}

/// Whether a modules.dep or modules.builtin lists module `name` (`-` and `_` are the same).
fn module_known(index: &str, name: &str) -> bool {
    let name = name.replace('-', "_");
    index.lines().any(|l| {
        let path = l.split(':').next().unwrap_or("");
        let file = path.rsplit('/').next().unwrap_or("");
        file.strip_suffix(".ko")
            .is_some_and(|stem| stem.replace('-', "_") == name)
    })
}

/// Decompresses every .ko.xz under `dir` in place (xz from xz-utils).
fn decompress_modules(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-name", "*.ko.xz"])
        .output()?;
    let files: Vec<&str> = std::str::from_utf8(&out.stdout)?.lines().collect();
    if files.is_empty() {
        return Ok(());
    }
    let xz = which("xz").context("xz is needed for .ko.xz modules (package xz-utils)")?;
    for chunk in files.chunks(500) {
        run_cmd(Command::new(&xz).args(["-d", "-q"]).args(chunk))?;
    }
    Ok(())
}

/// Copies a binary and every shared library it needs into `dest` at the same paths.
pub(crate) fn pack_binary(bin: &Path, dest: &Path, guest_path: &str) -> anyhow::Result<()> {
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The per-boot archive: busybox, probe, tools, `extra` binaries (as /usr/bin/NAME) and an
/// init that runs `command` and prints its status after [`MARKER`].
fn job_archive(
    kernel: &Kernel,
    work: &Path,
    probe: &Path,
    command: &[String],
    env: &[(String, String)],
    extra: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    let ir = work.join("root");
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "usr/bin", "usr/sbin", "lib64",
    ] {
        std::fs::create_dir_all(ir.join(d))?;
    }
    let busybox = busybox()?;
    std::fs::copy(&busybox, ir.join("bin/busybox"))?;
    for applet in [
        "sh", "mount", "mkdir", "cat", "echo", "poweroff", "modprobe", "sleep", "ls", "uname",
    ] {
        std::os::unix::fs::symlink("busybox", ir.join("bin").join(applet))?;
    }
    std::os::unix::fs::symlink("../bin/busybox", ir.join("sbin/modprobe"))?;
    // The loader the binaries name, as a real file.
    std::fs::copy(
        "/lib64/ld-linux-x86-64.so.2",
        ir.join("lib64/ld-linux-x86-64.so.2"),
    )?;
    // The kernel's configuration, where tests read which mechanisms it has.
    let config = format!("boot/config-{}", kernel.release);
    if kernel.root.join(&config).is_file() {
        std::fs::create_dir_all(ir.join("boot"))?;
        std::fs::copy(kernel.root.join(&config), ir.join(&config))?;
    }
    pack_binary(probe, &ir, "/usr/bin/probe")?;
    for bin in extra {
        let name = bin.file_name().context("binary without a name")?;
        pack_binary(bin, &ir, &format!("/usr/bin/{}", name.to_string_lossy()))?;
    }
    for tool in TOOLS {
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
            let parent = ir.join(dir.trim_start_matches('/'));
            let parent = parent.parent().context("parent")?;
            std::fs::create_dir_all(parent)?;
            run_cmd(Command::new("cp").arg("-r").arg(src).arg(parent))?;
        }
    }
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect();
    let command: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null\n\
         mount -t debugfs nodev /sys/kernel/debug 2>/dev/null\n\
         mount -t bpf bpf /sys/fs/bpf 2>/dev/null\n\
         mount -t tmpfs run /run\n\
         mount -t tmpfs tmp /tmp\n\
         modprobe -a {modules} 2>/dev/null\n\
         export PATH=/usr/bin:/usr/sbin:/bin:/sbin PROBE_BIN=/usr/bin/probe\n\
         export PROBE_VM_KERNEL={release}\n\
         {exports}\
         {command}\n\
         echo \"{MARKER} $?\"\n\
         poweroff -f\n",
        modules = MODULES.join(" "),
        release = kernel.release,
        command = command.join(" "),
    );
    std::fs::write(ir.join("init"), init)?;
    std::fs::set_permissions(
        ir.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let out = work.join("job.cpio.gz");
    cpio(&ir, &out)?;
    Ok(out)
}

/// Builds the initramfs for `command` inside `work`, with `probe` as /usr/bin/probe, and
/// returns its path.
pub fn initramfs(
    kernel: &Kernel,
    work: &Path,
    probe: &Path,
    command: &[String],
    env: &[(String, String)],
    extra: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    let modules = modules_archive(kernel)?;
    let job = job_archive(kernel, work, probe, command, env, extra)?;
    let out = work.join("initramfs.gz");
    let mut joined = std::fs::read(&modules)?;
    joined.extend(std::fs::read(&job)?);
    std::fs::write(&out, joined)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::module_known;

    #[test]
    fn modules_are_found_by_name_in_an_index() {
        let dep = "kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko\n\
                   kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko\n";
        assert!(module_known(dep, "bridge"));
        assert!(module_known(dep, "br-netfilter"));
        assert!(!module_known(dep, "stp"));
        assert!(!module_known(dep, "bridg"));
    }
}
