//! Routing decisions: each FIB lookup from the tracepoints `fib:fib_table_lookup` and
//! `fib6:fib6_table_lookup` (table, result device, gateway or error), and on kernels with
//! kprobes the policy routing rule (`fib_rules_lookup`) that chose the table.

use aya::Ebpf;
use probe_common::{FibTpLayout, KernelLayout, names as prog};

use super::{Outcome, Point, attach};
use crate::kernel::{Kernel, tracefs::Format};

pub const DECISIONS: &str = "routing decisions";
pub const POLICY_RULES: &str = "policy routing rules";

/// FIB lookups, IPv4 and IPv6.
pub struct Decisions;

impl Point for Decisions {
    fn name(&self) -> &'static str {
        DECISIONS
    }

    fn shows(&self) -> &'static str {
        "table, result device, gateway or error per lookup"
    }

    fn fallback(&self) -> &'static str {
        "no routing decisions are shown"
    }

    fn prepare(&self, kernel: &Kernel, layout: &mut KernelLayout, missing: &mut Vec<String>) {
        let Some(tracefs) = kernel.tracefs() else {
            return;
        };
        for (category, name, slot) in [
            ("fib", "fib_table_lookup", &mut layout.fib4),
            ("fib6", "fib6_table_lookup", &mut layout.fib6),
        ] {
            match tracefs.format(category, name) {
                Ok(f) => *slot = record_layout(&f),
                Err(e) => missing.push(e.to_string()),
            }
        }
    }

    fn attach(&self, bpf: &mut Ebpf, kernel: &Kernel, _: &KernelLayout) -> Outcome {
        attach::tracepoints(
            bpf,
            kernel,
            &[
                (prog::TP_FIB_LOOKUP, "fib", "fib_table_lookup"),
                (prog::TP_FIB6_LOOKUP, "fib6", "fib6_table_lookup"),
            ],
        )
    }
}

/// The `ip rule` that chose the table (kprobe/kretprobe `fib_rules_lookup`).
pub struct PolicyRules;

impl Point for PolicyRules {
    fn name(&self) -> &'static str {
        POLICY_RULES
    }

    fn shows(&self) -> &'static str {
        "the ip rule (pref, table) that chose the table"
    }

    fn fallback(&self) -> &'static str {
        "the chosen table still shows in routing decisions"
    }

    fn prepare(&self, kernel: &Kernel, layout: &mut KernelLayout, missing: &mut Vec<String>) {
        let Some(btf) = kernel.btf() else { return };
        let mut member = |ty: &str, path: &str| attach::offset(btf, ty, path, missing);
        layout.fibarg_rule = member("fib_lookup_arg", "rule");
        layout.fibrule_pref = member("fib_rule", "pref");
        layout.fibrule_table = member("fib_rule", "table");
        layout.fibrule_action = member("fib_rule", "action");
        layout.fibops_family = member("fib_rules_ops", "family");
        layout.flowi4_saddr = member("flowi", "u.ip4.saddr");
        layout.flowi4_daddr = member("flowi", "u.ip4.daddr");
    }

    fn attach(&self, bpf: &mut Ebpf, kernel: &Kernel, _: &KernelLayout) -> Outcome {
        match attach::try_kprobe(
            bpf,
            kernel,
            "fib_rules_lookup",
            prog::FIB_RULES_KPROBE,
            prog::FIB_RULES_KRETPROBE,
        ) {
            Ok(()) => Outcome::Attached("kprobe/kretprobe fib_rules_lookup".into()),
            Err(why) => Outcome::Unavailable(why),
        }
    }
}

/// Offsets of a fib/fib6 lookup record's fields (the two tracepoints name the gateway
/// differently: `gw4`/`gw6` for IPv4, `gw` for IPv6).
fn record_layout(format: &Format) -> FibTpLayout {
    let f = |name: &str| format.offset_or_absent(name);
    FibTpLayout {
        tb_id: f("tb_id"),
        err: f("err"),
        oif: f("oif"),
        iif: f("iif"),
        proto: f("proto"),
        tos: f("tos"),
        scope: f("scope"),
        flags: f("flags"),
        src: f("src"),
        dst: f("dst"),
        gw4: f("gw4"),
        gw6: if format.fields.contains_key("gw6") {
            f("gw6")
        } else {
            f("gw")
        },
        sport: f("sport"),
        dport: f("dport"),
        name: f("name"),
        // An inline char[IFNAMSIZ] in newer kernels; older ones store a 4-byte __data_loc.
        name_loc: u16::from(
            format
                .fields
                .get("name")
                .is_some_and(|&(_, size)| size == 4),
        ),
    }
}
