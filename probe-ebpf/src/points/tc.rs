//! tc classifiers (attach point: `sch_handle_ingress` / `sch_handle_egress`, via tcx links or a
//! clsact qdisc). One parser, one entry per direction and per link-layer shape. Every entry
//! returns TC_ACT_UNSPEC ("continue"): the observer never changes a packet's fate.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use probe_common::{EventHeader, HopPoint, PacketInfo, TcEvent, counter, direction, kind, mode};

use crate::shared::{config, filter, latency, maps, netns, packet};

/// TC_ACT_UNSPEC: let the next program, or the kernel's default, decide.
const TC_ACT_UNSPEC: i32 = -1;
const ETH_HLEN: usize = 14;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, direction::INGRESS, ETH_HLEN)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    observe(&ctx, direction::EGRESS, ETH_HLEN)
}

/// For devices without a link-layer header (tun, WireGuard).
#[classifier]
pub fn tc_ingress_l3(ctx: TcContext) -> i32 {
    observe(&ctx, direction::INGRESS, 0)
}

#[classifier]
pub fn tc_egress_l3(ctx: TcContext) -> i32 {
    observe(&ctx, direction::EGRESS, 0)
}

#[inline(always)]
fn observe(ctx: &TcContext, dir: u8, l2_len: usize) -> i32 {
    // Whatever happens while observing, the packet continues.
    let _ = try_observe(ctx, dir, l2_len);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_observe(ctx: &TcContext, dir: u8, l2_len: usize) -> Result<(), ()> {
    // SAFETY: `skb` is the program's context pointer, valid for the whole invocation.
    let (ifindex, mark) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).mark) };
    if dir == direction::INGRESS {
        // SAFETY: helper without preconditions.
        netns::saw_ingress(ifindex, unsafe { bpf_ktime_get_ns() });
    }
    let mut pkt = PacketInfo::default();
    packet::parse(ctx, l2_len, &mut pkt);
    if !filter::admit(&pkt) {
        return Ok(());
    }
    if config::get(|c| &c.mode) == mode::LATENCY {
        let at = HopPoint {
            ifindex,
            direction: dir,
            _pad: [0; 3],
        };
        // SAFETY: helper without preconditions.
        latency::record(&pkt, at, unsafe { bpf_ktime_get_ns() });
        return Ok(());
    }

    let Some(mut entry) = maps::EVENTS.reserve::<TcEvent>(0) else {
        if maps::bump(counter::RINGBUF_FULL) == 1 {
            warn!(ctx, "event ring buffer full: events are being lost");
        }
        return Err(());
    };
    // SAFETY: helpers without side effects.
    let (ts_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    // bpf_get_netns_cookie is refused in tc programs before Linux 6.15, and the programs must
    // load everywhere: the namespace is told by the interface instead.
    let netns_cookie = 0;
    entry.write(TcEvent {
        header: EventHeader {
            ts_ns,
            kind: kind::TC,
            flags: 0,
            cpu,
        },
        packet: pkt,
        netns_cookie,
        ifindex,
        mark,
        direction: dir,
        _pad: [0; 7],
    });
    entry.submit(0);
    Ok(())
}
