//! Routing decisions: each FIB lookup from the tracepoints `fib:fib_table_lookup` and
//! `fib6:fib6_table_lookup` (table, result device, gateway or error), and on kernels with
//! kprobes the policy routing rule (`fib_rules_lookup`) that chose the table.

use aya::Ebpf;
use probe_common::{Fib4RawLayout, FibTpLayout, KernelLayout, names as prog};

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
        if let Some(btf) = kernel.btf() {
            // Not missing when absent: the ordinary tracepoint stands in, without trustworthy
            // gateways.
            let mut unused = Vec::new();
            layout.fib4_raw = raw_layout(btf, &mut unused);
            // Likewise for IPv6's namespace: without it the lookup's is told as IPv4's record.
            layout.fib6_tb6_id = attach::offset(btf, "fib6_table", "tb6_id", &mut unused);
            layout.flowi6_daddr = attach::offset(btf, "flowi6", "daddr", &mut unused);
        }
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

    fn attach(&self, bpf: &mut Ebpf, kernel: &Kernel, layout: &KernelLayout) -> Outcome {
        // IPv4 through the raw tracepoint where BTF gave its offsets: it reads the next hop's
        // gateway family, which the ordinary record does not carry.
        let raw = if layout.fib4_raw.complete() {
            match attach::raw_tracepoint(bpf, prog::RAW_TP_FIB_LOOKUP, "fib_table_lookup") {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("raw tracepoint fib_table_lookup: {}", attach::short(&e));
                    false
                }
            }
        } else {
            false
        };
        // IPv6's namespace from the raw tracepoint, attached before the ordinary one so that
        // it runs first for each lookup (when no other tracer has attached that one already).
        let raw6 = layout.fib6_tb6_id != probe_common::ABSENT
            && layout.flowi6_daddr != probe_common::ABSENT
            && match attach::raw_tracepoint(bpf, prog::RAW_TP_FIB6_NETNS, "fib6_table_lookup") {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("raw tracepoint fib6_table_lookup: {}", attach::short(&e));
                    false
                }
            };
        let mut points = vec![(prog::TP_FIB6_LOOKUP, "fib6", "fib6_table_lookup")];
        if !raw {
            points.insert(0, (prog::TP_FIB_LOOKUP, "fib", "fib_table_lookup"));
        }
        let outcome = match attach::tracepoints(bpf, kernel, &points) {
            Outcome::Attached(what) if raw => {
                Outcome::Attached(format!("raw tracepoint fib_table_lookup, {what}"))
            }
            Outcome::Unavailable(_) if raw => {
                Outcome::Attached("raw tracepoint fib_table_lookup".into())
            }
            other => other,
        };
        let outcome = match outcome {
            Outcome::Attached(what) if raw6 => Outcome::Attached(format!(
                "{what}, raw tracepoint fib6_table_lookup (IPv6 namespace)"
            )),
            other => other,
        };
        // The namespace of IPv4 input decisions, exactly, where the kernel has trampolines;
        // elsewhere the tc ingress sighting just before on the same CPU tells it.
        let Outcome::Attached(what) = outcome else {
            return outcome;
        };
        let input = kernel.aya_btf().map(|btf| {
            attach::fexit_pair(
                bpf,
                btf,
                "ip_route_input_noref",
                prog::ROUTE_INPUT_FENTRY,
                prog::ROUTE_INPUT_FEXIT,
            )
        });
        match input {
            Some(Ok(())) => Outcome::Attached(format!(
                "{what}, fentry/fexit ip_route_input_noref (input namespace)"
            )),
            Some(Err(e)) => {
                log::debug!(
                    "fentry ip_route_input_noref: {}; input lookups are placed by the tc \
                     sighting before them",
                    attach::short(&e)
                );
                Outcome::Attached(what)
            }
            None => Outcome::Attached(what),
        }
    }
}

/// Offsets the raw tracepoint reads (struct flowi4, fib_nh_common, net_device).
fn raw_layout(btf: &crate::kernel::btf::Btf, missing: &mut Vec<String>) -> Fib4RawLayout {
    let mut m = |ty: &str, path: &str| attach::offset(btf, ty, path, missing);
    let tos = match m("flowi4", "__fl_common.flowic_tos") {
        probe_common::ABSENT => m("flowi4", "__fl_common.flowic_dscp"),
        o => o,
    };
    Fib4RawLayout {
        oif: m("flowi4", "__fl_common.flowic_oif"),
        iif: m("flowi4", "__fl_common.flowic_iif"),
        tos,
        scope: m("flowi4", "__fl_common.flowic_scope"),
        proto: m("flowi4", "__fl_common.flowic_proto"),
        flags: m("flowi4", "__fl_common.flowic_flags"),
        saddr: m("flowi4", "saddr"),
        daddr: m("flowi4", "daddr"),
        sport: m("flowi4", "uli.ports.sport"),
        dport: m("flowi4", "uli.ports.dport"),
        nhc_gw_family: m("fib_nh_common", "nhc_gw_family"),
        nhc_gw: m("fib_nh_common", "nhc_gw"),
        nhc_dev: m("fib_nh_common", "nhc_dev"),
        dev_name: m("net_device", "name"),
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
