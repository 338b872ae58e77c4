//! Policy routing: kernel function `fib_rules_lookup(struct fib_rules_ops *ops,
//! struct flowi *fl, int flags, struct fib_lookup_arg *arg)`. On return, `arg->rule` is the
//! `ip rule` that chose the table (pref, table, action): what says that a VPN's rule, not the
//! main table, routed a packet. kprobe parks the arguments, kretprobe reads the result.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use probe_common::{EventHeader, FibRuleEvent, counter, family, kind, probe_source};

use crate::shared::{
    layout::{self, read_kernel},
    maps,
};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct RuleEntry {
    ts_ns: u64,
    arg: u64,
    saddr: [u8; 4],
    daddr: [u8; 4],
    family: u8,
    _pad: [u8; 7],
}

#[map(name = "FIB_RULE_ENTRIES")]
static FIB_RULE_ENTRIES: LruHashMap<u64, RuleEntry> = LruHashMap::with_max_entries(4096, 0);

const AF_INET: u32 = 2;

#[kprobe]
pub fn fib_rules_lookup_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(ops), Some(fl), Some(arg)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(3))
    else {
        return 0;
    };
    let fam = read_kernel::<u32>(ops, layout::get(|l| &l.fibops_family)).unwrap_or(0);
    // Only IPv4 flows are decoded (struct flowi4 inside struct flowi).
    if fam != AF_INET {
        return 0;
    }
    let entry = RuleEntry {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        arg,
        saddr: read_kernel::<[u8; 4]>(fl, layout::get(|l| &l.flowi4_saddr)).unwrap_or([0; 4]),
        daddr: read_kernel::<[u8; 4]>(fl, layout::get(|l| &l.flowi4_daddr)).unwrap_or([0; 4]),
        family: family::IPV4,
        _pad: [0; 7],
    };
    let _ = FIB_RULE_ENTRIES.insert(&maps::task_cpu_key(), &entry, 0);
    0
}

#[kretprobe]
pub fn fib_rules_lookup_kretprobe(ctx: RetProbeContext) -> u32 {
    let err: i32 = ctx.ret();
    let key = maps::task_cpu_key();
    let Some(entry) = FIB_RULE_ENTRIES.get_ptr(&key) else {
        return 0;
    };
    // SAFETY: map value pointer, valid until removed below.
    let entry = unsafe { &*entry };
    let rule = read_kernel::<u64>(entry.arg, layout::get(|l| &l.fibarg_rule)).unwrap_or(0);
    let pref = read_kernel::<u32>(rule, layout::get(|l| &l.fibrule_pref)).unwrap_or(0);
    let table = read_kernel::<u32>(rule, layout::get(|l| &l.fibrule_table)).unwrap_or(0);
    let action = read_kernel::<u8>(rule, layout::get(|l| &l.fibrule_action)).unwrap_or(0);
    if let Some(mut slot) = maps::EVENTS.reserve::<FibRuleEvent>(0) {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&entry.saddr);
        dst[..4].copy_from_slice(&entry.daddr);
        // SAFETY: helper without preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        slot.write(FibRuleEvent {
            header: EventHeader {
                ts_ns: entry.ts_ns,
                kind: kind::FIB_RULE,
                flags: 0,
                cpu,
            },
            src,
            dst,
            pref,
            table,
            err,
            family: entry.family,
            action,
            source: probe_source::KRETPROBE,
            _pad: 0,
        });
        maps::submit(slot);
    } else {
        maps::bump(counter::RINGBUF_FULL);
    }
    let _ = FIB_RULE_ENTRIES.remove(&key);
    0
}
