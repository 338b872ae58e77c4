//! Which table and base chain decided: kernel functions `nft_do_chain(struct nft_pktinfo *pkt,
//! void *priv)` (nf_tables; priv is the base chain) and `ipt_do_table` (legacy iptables; its
//! argument order changed across kernels, so userspace passes the positions). Both return the
//! verdict. kprobe at entry reads the names, kretprobe adds the verdict.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::{kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use probe_common::{ABSENT, ChainEvent, EventHeader, chain_engine, counter, kind, probe_source};

use crate::shared::{
    layout::{self, read_kernel},
    maps,
    nesting::{self, Level},
};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct ChainEntry {
    ts_ns: u64,
    skb: u64,
    table: [u8; 32],
    chain: [u8; 32],
    hook: u8,
    pf: u8,
    engine: u8,
    _pad: [u8; 5],
}

#[map(name = "CHAIN_ENTRIES")]
static CHAIN_ENTRIES: LruHashMap<Level, ChainEntry> = LruHashMap::with_max_entries(4096, 0);

/// Copies a NUL-terminated kernel string into `dst` (left empty on failure).
#[inline(always)]
fn read_str(src: u64, dst: &mut [u8]) {
    if src == 0 {
        return;
    }
    // SAFETY: the helper checks the address and stops at dst's length.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(src as *const u8, dst) };
}

#[inline(always)]
fn new_entry(skb: u64, state: u64, engine: u8) -> ChainEntry {
    ChainEntry {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb,
        table: [0; 32],
        chain: [0; 32],
        hook: read_kernel::<u8>(state, layout::get(|l| &l.nfstate_hook)).unwrap_or(0xFF),
        pf: read_kernel::<u8>(state, layout::get(|l| &l.nfstate_pf)).unwrap_or(0),
        engine,
        _pad: [0; 5],
    }
}

#[kprobe]
pub fn nft_do_chain_kprobe(ctx: ProbeContext) -> u32 {
    // Entered before anything can fail: the kretprobe pops a level whatever happens here.
    let level = nesting::enter(maps::task_cpu_key());
    let (Some(pkt), Some(chain)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let skb = read_kernel::<u64>(pkt, layout::get(|l| &l.nftpkt_skb)).unwrap_or(0);
    let state = read_kernel::<u64>(pkt, layout::get(|l| &l.nftpkt_state)).unwrap_or(0);
    let mut entry = new_entry(skb, state, chain_engine::NFTABLES);
    let chain_name = read_kernel::<u64>(chain, layout::get(|l| &l.nftchain_name)).unwrap_or(0);
    read_str(chain_name, &mut entry.chain);
    let table = read_kernel::<u64>(chain, layout::get(|l| &l.nftchain_table)).unwrap_or(0);
    let table_name = read_kernel::<u64>(table, layout::get(|l| &l.nfttable_name)).unwrap_or(0);
    read_str(table_name, &mut entry.table);
    let _ = CHAIN_ENTRIES.insert(&level, &entry, 0);
    0
}

#[kprobe]
pub fn ipt_do_table_kprobe(ctx: ProbeContext) -> u32 {
    // Register reads must use constant offsets: the verifier refuses a context pointer moved
    // by a variable amount. Volatile loads of all three argument registers first, so the
    // compiler cannot turn the choice below back into one load at a computed offset (which it
    // did, and which 6.x verifiers reject).
    // SAFETY: regs is the kprobe's pt_regs context, valid for the program's run.
    let (a0, a1, a2) = unsafe {
        let regs = ctx.regs;
        (
            core::ptr::read_volatile(&(*regs).rdi),
            core::ptr::read_volatile(&(*regs).rsi),
            core::ptr::read_volatile(&(*regs).rdx),
        )
    };
    let arg = |n: u16| -> u64 {
        match n {
            0 => a0,
            1 => a1,
            2 => a2,
            _ => 0,
        }
    };
    let table = arg(layout::get(|l| &l.ipt_arg_table));
    let skb = arg(layout::get(|l| &l.ipt_arg_skb));
    let state = arg(layout::get(|l| &l.ipt_arg_state));
    let mut entry = new_entry(skb, state, chain_engine::IPTABLES);
    let name_off = layout::get(|l| &l.xttable_name);
    if table != 0 && name_off != ABSENT {
        read_str(table + name_off as u64, &mut entry.table);
    }
    let _ = CHAIN_ENTRIES.insert(&nesting::enter(maps::task_cpu_key()), &entry, 0);
    0
}

#[kretprobe]
pub fn nft_do_chain_kretprobe(ctx: RetProbeContext) -> u32 {
    leave(ctx.ret());
    0
}

#[kretprobe]
pub fn ipt_do_table_kretprobe(ctx: RetProbeContext) -> u32 {
    leave(ctx.ret());
    0
}

#[inline(always)]
fn leave(verdict: u32) {
    let Some(key) = nesting::leave(maps::task_cpu_key()) else {
        return;
    };
    let Some(entry) = CHAIN_ENTRIES.get_ptr(&key) else {
        return;
    };
    // SAFETY: map value pointer, valid until removed below.
    let entry = unsafe { &*entry };
    if let Some(mut slot) = maps::EVENTS.reserve::<ChainEvent>(0) {
        // SAFETY: helper without preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        slot.write(ChainEvent {
            header: EventHeader {
                ts_ns: entry.ts_ns,
                kind: kind::CHAIN,
                flags: 0,
                cpu,
            },
            skb_addr: entry.skb,
            table: entry.table,
            chain: entry.chain,
            verdict,
            hook: entry.hook,
            pf: entry.pf,
            engine: entry.engine,
            source: probe_source::KRETPROBE,
        });
        maps::submit(slot);
    } else {
        maps::bump(counter::RINGBUF_FULL);
    }
    let _ = CHAIN_ENTRIES.remove(&key);
}
