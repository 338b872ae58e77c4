//! Packet drops: tracepoint `skb:kfree_skb` (kernel function `kfree_skb_reason` and friends).
//! Record fields (skbaddr, location, protocol, reason) and sk_buff/net_device/net members are
//! read at the offsets userspace found in this kernel's tracefs and BTF.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use probe_common::{ABSENT, DropCountKey, DropEvent, EventHeader, PacketInfo, counter, kind};

use crate::shared::{
    filter,
    layout::{self, read_kernel},
    maps, skb, watch,
};

/// The dropped packet while it is parsed and judged: in a map value, not on the stack, because
/// the verifier does not follow what a map value holds. Every path through the parse (IPv4,
/// IPv6, truncated, unknown protocol) then reaches the filter in the same state; with the
/// packet on the stack, 6.1's verifier walked the filter once per path and gave up at its
/// million-instruction budget, so `--filter` lost every drop there.
#[map(name = "DROP_PACKET")]
static DROP_PACKET: PerCpuArray<PacketInfo> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

/// Reads a tracepoint record field of type `T` at `offset` (ABSENT → Err).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    if offset == ABSENT {
        return Err(-1);
    }
    // SAFETY: the offset comes from this tracepoint's format file; the read is checked.
    unsafe { ctx.read_at::<T>(offset as usize) }
}

#[inline(always)]
fn try_kfree_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let skb: u64 = field(ctx, layout::get(|l| &l.kfree_skbaddr))?;
    let location: u64 = field(ctx, layout::get(|l| &l.kfree_location)).unwrap_or(0);
    let protocol: u16 = field(ctx, layout::get(|l| &l.kfree_protocol)).unwrap_or(0);
    // Kernels before 5.17 have no reason field: 0 means "not reported".
    let reason: u32 = field(ctx, layout::get(|l| &l.kfree_reason)).unwrap_or(0);

    let dev = read_kernel::<u64>(skb, layout::get(|l| &l.skb_dev)).unwrap_or(0);
    let ifindex = skb::dev_ifindex(dev);
    let rx_sk: u64 = field(ctx, layout::get(|l| &l.kfree_rx_sk)).unwrap_or(0);
    let netns_inum = skb::netns(skb, dev, rx_sk);
    if watch::active() {
        // Counted, not reported: no packet parse, no event.
        watch::count_drop(&DropCountKey {
            location,
            reason,
            ifindex,
            netns_inum,
            _pad: 0,
        });
        return Ok(());
    }
    let Some(packet) = DROP_PACKET.get_ptr_mut(0) else {
        return Err(-1);
    };
    // SAFETY: this CPU's slot, used only while this program runs on it.
    let packet = unsafe { &mut *packet };
    *packet = PacketInfo::default();
    skb::read_packet(skb, protocol, packet);
    if !filter::admit(packet) {
        return Ok(());
    }

    let Some(mut entry) = maps::EVENTS.reserve::<DropEvent>(0) else {
        maps::bump(counter::RINGBUF_FULL);
        return Err(-1);
    };
    // SAFETY: helpers without preconditions.
    let (ts_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    entry.write(DropEvent {
        header: EventHeader {
            ts_ns,
            kind: kind::DROP,
            flags: 0,
            cpu,
        },
        packet: *packet,
        skb_addr: skb,
        location,
        netns_inum,
        ifindex,
        reason,
        protocol,
        _pad: 0,
    });
    maps::submit(entry);
    Ok(())
}
