//! What the running kernel is, read once per start and shared by every observation point: its
//! BTF (struct offsets, enum values), tracefs (tracepoint record layouts), its function symbols
//! (/proc/kallsyms), whether kprobes exist, and its release.

pub mod btf;
pub mod tracefs;

use std::cell::OnceCell;

use probe_pipeline::names::KernelSymbols;

use btf::Btf;
use tracefs::Tracefs;

/// The kernel facts of one start.
pub struct Kernel {
    /// vmlinux BTF through probe's own reader (member offsets, enums, function parameters).
    pub btf: Result<Btf, btf::BtfError>,
    /// tracefs, mounted if nobody had (and unmounted again when this is dropped).
    pub tracefs: Result<Tracefs, tracefs::TracefsError>,
    /// Function symbols, for kprobe targets and drop locations.
    pub symbols: KernelSymbols,
    /// Whether kprobes can be attached at all.
    pub kprobes: bool,
    /// aya's view of the same BTF, which fentry/fexit need; parsed only when one is tried.
    aya_btf: OnceCell<Option<aya::Btf>>,
}

impl Kernel {
    /// Reads what the kernel offers. `tracefs`: whether tracepoints will be used (opening it may
    /// mount it).
    pub fn read(tracefs: bool) -> Self {
        let tracefs = if tracefs {
            Tracefs::open()
        } else {
            Err(tracefs::TracefsError::NotWanted)
        };
        Kernel {
            btf: Btf::from_sys(),
            tracefs,
            symbols: std::fs::read_to_string("/proc/kallsyms")
                .map(|t| KernelSymbols::parse(&t))
                .unwrap_or_default(),
            kprobes: kprobes_supported(),
            aya_btf: OnceCell::new(),
        }
    }

    pub fn btf(&self) -> Option<&Btf> {
        self.btf.as_ref().ok()
    }

    pub fn tracefs(&self) -> Option<&Tracefs> {
        self.tracefs.as_ref().ok()
    }

    /// aya's parse of vmlinux BTF (for fentry/fexit), made on first use.
    pub fn aya_btf(&self) -> Option<&aya::Btf> {
        self.aya_btf
            .get_or_init(|| aya::Btf::from_sys_fs().ok())
            .as_ref()
    }

    /// Whether the kernel (or a loaded module) has this function. With addresses hidden
    /// (kptr_restrict) no symbol is known: then the attach itself decides.
    pub fn has_function(&self, name: &str) -> bool {
        self.symbols.is_empty() || self.symbols.has(name)
    }

    /// Whether a BTF enum has a value (ring buffers, tcx attach types...).
    pub fn enum_has(&self, enum_name: &str, value: &str) -> bool {
        self.btf()
            .and_then(|b| b.enum_values(enum_name).ok())
            .is_some_and(|v| v.iter().any(|(n, _)| n == value))
    }
}

/// Whether the kernel can attach kprobes at all (the perf kprobe PMU, or tracefs kprobe_events
/// that aya falls back to).
fn kprobes_supported() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
        || [
            "/sys/kernel/tracing/kprobe_events",
            "/sys/kernel/debug/tracing/kprobe_events",
        ]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

/// `6.18.44 (x86_64)`.
pub fn release() -> String {
    // SAFETY: uname fills a plain struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} ({})", field(&u.release), field(&u.machine))
}
