//! Observation points on kernel functions, where the kernel allows it: netfilter hook verdicts
//! (`nf_hook_slow`), table/base-chain verdicts (`nft_do_chain`, `ipt_do_table`) and policy
//! routing rules (`fib_rules_lookup`). Each point tries its best mechanism and degrades:
//! fentry/fexit, else kprobe/kretprobe, else nothing (the tracepoint and `--rules` backends
//! cover what they can). Attaching is the probe: what attaches is what the kernel supports.

use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, KProbe, ProgramError},
};
use probe_common::{ABSENT, KernelLayout, names as prog};

/// Which kernel-function points to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub netfilter: bool,
    pub routing_rules: bool,
}

/// How one observation point ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Attached(String),
    Unavailable(String),
    NotRequested,
}

impl Outcome {
    pub fn attached(&self) -> Option<&str> {
        match self {
            Outcome::Attached(how) => Some(how),
            _ => None,
        }
    }
}

/// What was attached for each point.
#[derive(Clone, Debug)]
pub struct Report {
    pub hook_verdicts: Outcome,
    pub chain_verdicts: Outcome,
    pub routing_rules: Outcome,
}

impl Report {
    pub fn attached(&self) -> Vec<String> {
        [
            &self.hook_verdicts,
            &self.chain_verdicts,
            &self.routing_rules,
        ]
        .into_iter()
        .filter_map(|o| o.attached().map(str::to_owned))
        .collect()
    }
}

/// Whether the kernel can attach kprobes at all (the perf kprobe PMU, or tracefs kprobe_events
/// that aya falls back to).
pub fn kprobes_supported() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
        || [
            "/sys/kernel/tracing/kprobe_events",
            "/sys/kernel/debug/tracing/kprobe_events",
        ]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

/// aya's errors carry the verifier log; one line is enough to say why.
fn short(e: &ProgramError) -> String {
    let s = e.to_string();
    match s.find("Verifier output") {
        Some(i) => s[..i].trim_end_matches([' ', '.', '\n']).to_owned(),
        None => s,
    }
}

fn kernel_has_symbol(name: &str) -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|t| t.lines().any(|l| l.split_whitespace().nth(2) == Some(name)))
        .unwrap_or(false)
}

fn fexit_pair(
    bpf: &mut Ebpf,
    btf: &Btf,
    function: &str,
    entry: &str,
    exit: &str,
) -> Result<(), ProgramError> {
    let fentry: &mut FEntry = bpf
        .program_mut(entry)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    fentry.load(function, btf)?;
    fentry.attach()?;
    let result = (|| {
        let fexit: &mut FExit = bpf
            .program_mut(exit)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        fexit.load(function, btf)?;
        fexit.attach()?;
        Ok(())
    })();
    if result.is_err()
        && let Some(p) = bpf.program_mut(entry)
        && let Ok(p) = <&mut FEntry>::try_from(p)
    {
        // Half a pair is useless: take the entry side off again.
        let _ = p.unload();
    }
    result
}

fn kprobe_pair(
    bpf: &mut Ebpf,
    function: &str,
    entry: &str,
    exit: &str,
) -> Result<(), ProgramError> {
    for name in [exit, entry] {
        let p: &mut KProbe = bpf
            .program_mut(name)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        p.load()?;
        if let Err(e) = p.attach(function, 0) {
            let _ = p.unload();
            if name == entry
                && let Some(exit_prog) = bpf.program_mut(exit)
                && let Ok(exit_prog) = <&mut KProbe>::try_from(exit_prog)
            {
                let _ = exit_prog.unload();
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Why a table/chain program would only produce empty events here: the struct offsets it
/// needs are missing. nf_tables and x_tables are modules on distribution kernels, and module
/// BTF only exists since Linux 5.11.
fn chain_layout_missing(function: &str, layout: &KernelLayout) -> Option<String> {
    let needed: &[u16] = match function {
        "nft_do_chain" => &[
            layout.nftpkt_skb,
            layout.nftchain_table,
            layout.nfttable_name,
        ],
        _ => &[
            layout.ipt_arg_skb,
            layout.ipt_arg_table,
            layout.xttable_name,
        ],
    };
    needed.contains(&ABSENT).then(|| {
        format!(
            "no BTF for {function}'s structures (module BTF, /sys/kernel/btf/<module>, needs \
             Linux 5.11+)"
        )
    })
}

/// Attaches what `selection` asks for, as well as this kernel allows; `layout` is what the
/// programs will read with.
pub fn attach(bpf: &mut Ebpf, selection: Selection, layout: &KernelLayout) -> Report {
    let btf = Btf::from_sys_fs().ok();
    let kprobes_missing =
        (!kprobes_supported()).then(|| "kprobes: this kernel has none".to_owned());
    let try_kprobe = |bpf: &mut Ebpf, function: &str, entry: &str, exit: &str| {
        if let Some(why) = &kprobes_missing {
            return Err(why.clone());
        }
        if !kernel_has_symbol(function) {
            return Err(format!(
                "the kernel has no function {function} (module not loaded?)"
            ));
        }
        kprobe_pair(bpf, function, entry, exit).map_err(|e| {
            log::debug!("kprobe on {function}: {e}");
            format!("kprobes: {}", short(&e))
        })
    };

    let hook_verdicts = if selection.netfilter {
        let fexit = match &btf {
            Some(btf) => fexit_pair(
                bpf,
                btf,
                "nf_hook_slow",
                prog::NF_HOOK_FENTRY,
                prog::NF_HOOK_FEXIT,
            )
            .map_err(|e| format!("fentry/fexit: {}", short(&e))),
            None => Err("fentry/fexit: no kernel BTF".to_owned()),
        };
        match fexit {
            Ok(()) => Outcome::Attached("fentry/fexit nf_hook_slow".into()),
            Err(why_fexit) => match try_kprobe(
                bpf,
                "nf_hook_slow",
                prog::NF_HOOK_KPROBE,
                prog::NF_HOOK_KRETPROBE,
            ) {
                Ok(()) => Outcome::Attached("kprobe/kretprobe nf_hook_slow".into()),
                Err(why_kprobe) => Outcome::Unavailable(format!("{why_fexit}; {why_kprobe}")),
            },
        }
    } else {
        Outcome::NotRequested
    };

    let chain_verdicts = if selection.netfilter {
        let mut attached = Vec::new();
        let mut reasons = Vec::new();
        for (function, entry, exit) in [
            (
                "nft_do_chain",
                prog::NFT_CHAIN_KPROBE,
                prog::NFT_CHAIN_KRETPROBE,
            ),
            (
                "ipt_do_table",
                prog::IPT_TABLE_KPROBE,
                prog::IPT_TABLE_KRETPROBE,
            ),
        ] {
            let attempt = match chain_layout_missing(function, layout) {
                Some(why) => Err(why),
                None => try_kprobe(bpf, function, entry, exit),
            };
            match attempt {
                Ok(()) => attached.push(format!("kprobe/kretprobe {function}")),
                Err(why) => {
                    // Each engine is optional (a host may use only one): say why, quietly.
                    log::debug!("table/chain verdicts: no {function}: {why}");
                    reasons.push(why)
                }
            }
        }
        if attached.is_empty() {
            reasons.dedup();
            Outcome::Unavailable(reasons.join("; "))
        } else {
            Outcome::Attached(attached.join(", "))
        }
    } else {
        Outcome::NotRequested
    };

    let routing_rules = if selection.routing_rules {
        match try_kprobe(
            bpf,
            "fib_rules_lookup",
            prog::FIB_RULES_KPROBE,
            prog::FIB_RULES_KRETPROBE,
        ) {
            Ok(()) => Outcome::Attached("kprobe/kretprobe fib_rules_lookup".into()),
            Err(why) => Outcome::Unavailable(why),
        }
    } else {
        Outcome::NotRequested
    };

    Report {
        hook_verdicts,
        chain_verdicts,
        routing_rules,
    }
}
