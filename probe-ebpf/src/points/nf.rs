//! Netfilter hook verdicts: kernel function `nf_hook_slow(struct sk_buff *skb,
//! struct nf_hook_state *state, const struct nf_hook_entries *e, unsigned int i)`, which runs a
//! hook's chains and returns 1 (continue), 0 (stolen/queued) or -errno (dropped).
//!
//! Two backends, same event: fentry+fexit where the kernel has BPF trampolines, else
//! kprobe+kretprobe. The entry program reads the packet before any verdict can free it and
//! parks it in `NF_ENTRIES`; the exit program adds the verdict and the time spent.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{LruHashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use probe_common::{EventHeader, NfEvent, PacketInfo, counter, kind, probe_source};

use crate::shared::{
    filter,
    layout::{self, read_kernel},
    maps,
    nesting::{self, Level},
    skb,
};

/// What the entry program saw, until the exit program completes it.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct NfEntry {
    ts_ns: u64,
    skb: u64,
    packet: PacketInfo,
    netns: u32,
    in_ifindex: u32,
    out_ifindex: u32,
    hook: u8,
    pf: u8,
    _pad: [u8; 2],
}

/// Keyed by skb address (fentry/fexit see the arguments on both sides) or by task and CPU
/// (kretprobes do not), and the call's depth (br_netfilter nests hooks). LRU, so an entry
/// whose exit never came cannot pile up.
#[map(name = "NF_ENTRIES")]
static NF_ENTRIES: LruHashMap<Level, NfEntry> = LruHashMap::with_max_entries(8192, 0);

/// The entry while it is filled and judged: in a map value, not on the stack, because the
/// verifier does not follow what a map value holds. Every path through the packet parse then
/// reaches the filter in the same state; with the entry on the stack, 6.1's verifier walked the
/// filter once per path, and an address filter took minutes to load (see points/drop.rs). One
/// user per CPU at a time: kprobe programs do not nest on a CPU, nor does one fentry program.
#[map(name = "NF_SCRATCH")]
static NF_SCRATCH: PerCpuArray<NfEntry> = PerCpuArray::with_max_entries(1, 0);

#[fentry(function = "nf_hook_slow")]
pub fn nf_hook_slow_fentry(ctx: FEntryContext) -> u32 {
    let skb: u64 = ctx.arg(0);
    let state: u64 = ctx.arg(1);
    enter(skb, skb, state);
    0
}

#[fexit(function = "nf_hook_slow")]
pub fn nf_hook_slow_fexit(ctx: FExitContext) -> u32 {
    let skb: u64 = ctx.arg(0);
    // The return value follows the four arguments.
    let ret: i32 = ctx.arg(4);
    leave(skb, ret, probe_source::FEXIT);
    0
}

#[kprobe]
pub fn nf_hook_slow_kprobe(ctx: ProbeContext) -> u32 {
    // Arguments that cannot be read still open a level: the kretprobe pops one regardless.
    let skb = ctx.arg::<u64>(0).unwrap_or(0);
    let state = ctx.arg::<u64>(1).unwrap_or(0);
    enter(maps::task_cpu_key(), skb, state);
    0
}

#[kretprobe]
pub fn nf_hook_slow_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    leave(maps::task_cpu_key(), ret, probe_source::KRETPROBE);
    0
}

#[inline(always)]
fn enter(id: u64, skb_addr: u64, state: u64) {
    // Counted whether or not the filter admits it: the exit pops the same level.
    let key = nesting::enter(id);
    let hook = read_kernel::<u8>(state, layout::get(|l| &l.nfstate_hook)).unwrap_or(0xFF);
    let pf = read_kernel::<u8>(state, layout::get(|l| &l.nfstate_pf)).unwrap_or(0);
    let in_dev = read_kernel::<u64>(state, layout::get(|l| &l.nfstate_in)).unwrap_or(0);
    let out_dev = read_kernel::<u64>(state, layout::get(|l| &l.nfstate_out)).unwrap_or(0);
    let Some(entry) = NF_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used only while this program runs on it.
    let entry = unsafe { &mut *entry };
    *entry = NfEntry {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb: skb_addr,
        packet: PacketInfo::default(),
        netns: skb::dev_netns(if in_dev != 0 { in_dev } else { out_dev }),
        in_ifindex: skb::dev_ifindex(in_dev),
        out_ifindex: skb::dev_ifindex(out_dev),
        hook,
        pf,
        _pad: [0; 2],
    };
    skb::read_packet(skb_addr, skb::ethertype_of_pf(pf), &mut entry.packet);
    if filter::admit(&entry.packet) {
        let _ = NF_ENTRIES.insert(&key, &*entry, 0);
    }
}

#[inline(always)]
fn leave(id: u64, ret: i32, source: u8) {
    let Some(key) = nesting::leave(id) else {
        return;
    };
    let Some(entry) = NF_ENTRIES.get_ptr(&key) else {
        return;
    };
    // SAFETY: map value pointer, valid until removed below.
    let entry = unsafe { &*entry };
    let Some(mut slot) = maps::EVENTS.reserve::<NfEvent>(0) else {
        maps::bump(counter::RINGBUF_FULL);
        let _ = NF_ENTRIES.remove(&key);
        return;
    };
    // SAFETY: helpers without preconditions.
    let (now, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    slot.write(NfEvent {
        header: EventHeader {
            ts_ns: entry.ts_ns,
            kind: kind::NF,
            flags: 0,
            cpu,
        },
        packet: entry.packet,
        skb_addr: entry.skb,
        duration_ns: now.saturating_sub(entry.ts_ns),
        netns_inum: entry.netns,
        in_ifindex: entry.in_ifindex,
        out_ifindex: entry.out_ifindex,
        ret,
        hook: entry.hook,
        pf: entry.pf,
        source,
        _pad: [0; 5],
    });
    maps::submit(slot);
    let _ = NF_ENTRIES.remove(&key);
}
