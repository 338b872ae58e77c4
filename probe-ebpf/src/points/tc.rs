//! tc classifiers (attach point: `sch_handle_ingress` / `sch_handle_egress`, via tcx links or a
//! clsact qdisc). One parser, one entry per direction and per link-layer shape. Every entry
//! returns TC_ACT_UNSPEC ("continue"): the observer never changes a packet's fate.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    EventHeader, HopPoint, MAX_SNAPLEN, PacketInfo, TcEvent, TcQuoteEvent, TcSnapEvent, counter,
    direction, kind, mode,
};

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
    // One clock read per packet, taken here only when the routing probes need the arrival
    // (a load-time constant: without them the branch is gone); otherwise when an event is made.
    let mut now = 0;
    if dir == direction::INGRESS && config::get(|c| &c.routes) != 0 {
        // SAFETY: helper without preconditions.
        now = unsafe { bpf_ktime_get_ns() };
        netns::saw_ingress(ifindex, now);
    }
    let mut pkt = PacketInfo::default();
    let l4_off = packet::parse(ctx, l2_len, &mut pkt);
    // An ICMP error names the packet it answers by quoting its headers. Errors are rare: they
    // alone pay for reading the quote (in trace mode's default event; with --snaplen the
    // quote is in the copied bytes).
    if let Some(off) = l4_off
        && packet::is_icmp_error(&pkt)
        && config::get(|c| &c.mode) == mode::EVENTS
        && config::get(|c| &c.snaplen) == 0
    {
        return observe_icmp_error(ctx, &pkt, off, (ifindex, mark, dir, now));
    }
    if !filter::admit(&pkt) {
        return Ok(());
    }
    // Watch mode's histograms are latency mode's.
    if matches!(config::get(|c| &c.mode), mode::LATENCY | mode::WATCH) {
        let at = HopPoint {
            ifindex,
            direction: dir,
            _pad: [0; 3],
        };
        // The context is the packet's skb: its address is the packet's identity all along
        // the path (see shared::latency).
        let skb = ctx.skb.skb as u64;
        latency::record_skb(skb, &pkt, l2_len, at, clock(now));
        return Ok(());
    }

    // A load-time constant: with --snaplen off the verifier drops this branch, and the
    // default path keeps its smaller event and its cost.
    let snaplen = config::get(|c| &c.snaplen);
    if snaplen != 0 {
        return observe_with_bytes(
            ctx,
            sighting(kind::TC_SNAP, pkt, ifindex, mark, dir, now),
            l2_len,
            snaplen,
        );
    }
    let Some(mut entry) = maps::EVENTS.reserve::<TcEvent>(0) else {
        ring_full(ctx);
        return Err(());
    };
    entry.write(sighting(kind::TC, pkt, ifindex, mark, dir, now));
    maps::submit(entry);
    Ok(())
}

/// An ICMP error, with the packet it quotes read straight into the event (a second packet on
/// the stack would crowd it). The error is shown when the filter admits it or the packet it
/// quotes: it belongs to that packet's timeline.
#[inline(always)]
fn observe_icmp_error(
    ctx: &TcContext,
    pkt: &PacketInfo,
    l4_off: usize,
    (ifindex, mark, dir, now): (u32, u32, u8, u64),
) -> Result<(), ()> {
    let Some(mut entry) = maps::EVENTS.reserve::<TcQuoteEvent>(0) else {
        // Counted as lost where it would have been shown (the quote is not read here).
        if filter::admit(pkt) {
            ring_full(ctx);
        }
        return Err(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at the reserved entry, sized and aligned for a TcQuoteEvent; the
    // quote is zeroed (ring memory holds older events) before it is parsed into, and both
    // fields are written before the entry is submitted.
    let quoted = unsafe {
        let quoted = core::ptr::addr_of_mut!((*event).quoted);
        quoted.write(PacketInfo::default());
        packet::parse_quoted(ctx, pkt, l4_off, &mut *quoted);
        &*quoted
    };
    if !filter::admit(pkt) && !filter::admit(quoted) {
        maps::discard(entry);
        return Ok(());
    }
    // SAFETY: as above.
    unsafe {
        core::ptr::addr_of_mut!((*event).tc).write(sighting(
            kind::TC_QUOTE,
            *pkt,
            ifindex,
            mark,
            dir,
            now,
        ));
    }
    maps::submit(entry);
    Ok(())
}

#[inline(always)]
fn ring_full(ctx: &TcContext) {
    if maps::bump(counter::RINGBUF_FULL) == 1 {
        warn!(ctx, "event ring buffer full: events are being lost");
    }
}

/// `now` if the clock was already read for this packet, else the clock.
#[inline(always)]
fn clock(now: u64) -> u64 {
    if now != 0 {
        now
    } else {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    }
}

#[inline(always)]
fn sighting(
    event_kind: u16,
    pkt: PacketInfo,
    ifindex: u32,
    mark: u32,
    dir: u8,
    now: u64,
) -> TcEvent {
    let ts_ns = clock(now);
    // SAFETY: helper without side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // bpf_get_netns_cookie is refused in tc programs before Linux 6.15, and the programs must
    // load everywhere: the namespace is told by the interface instead.
    TcEvent {
        header: EventHeader {
            ts_ns,
            kind: event_kind,
            flags: 0,
            cpu,
        },
        packet: pkt,
        netns_cookie: 0,
        ifindex,
        mark,
        direction: dir,
        _pad: [0; 7],
    }
}

/// `--snaplen`: the sighting and the packet's first `snaplen` bytes (fewer when the packet is
/// shorter). Only reads the packet: it goes on untouched.
#[inline(always)]
fn observe_with_bytes(ctx: &TcContext, tc: TcEvent, l2_len: usize, snaplen: u16) -> Result<(), ()> {
    let Some(mut entry) = maps::EVENTS.reserve::<TcSnapEvent>(0) else {
        ring_full(ctx);
        return Err(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at the reserved entry, sized and aligned for a TcSnapEvent; every
    // field is written through it before the entry is submitted.
    unsafe {
        core::ptr::addr_of_mut!((*event).tc).write(tc);
        core::ptr::addr_of_mut!((*event).l2_len).write(l2_len as u8);
        core::ptr::addr_of_mut!((*event)._pad).write([0; 5]);
        // Ring-buffer memory holds older events: zero it, so nothing past the packet is
        // stale.
        let words = core::ptr::addr_of_mut!((*event).data) as *mut u64;
        for i in 0..MAX_SNAPLEN / 8 {
            words.add(i).write_unaligned(0);
        }
    }
    let wanted = ctx.len().min(u32::from(snaplen));
    let mut copied = 0u16;
    // The helper's size must be provably 1..=MAX_SNAPLEN. Written as a mask plus one, so that
    // older verifiers (5.10), which lose a lower bound checked on another register, see it on
    // this one: (x & (MAX - 1)) + 1 is 1..=MAX. For 1..=MAX it is `wanted` itself, and the
    // compiler cannot fold it away, not knowing `snaplen`'s range.
    const _: () = assert!(MAX_SNAPLEN.is_power_of_two());
    let len = (wanted.wrapping_sub(1) & (MAX_SNAPLEN as u32 - 1)) + 1;
    if wanted != 0 {
        // SAFETY: the destination is the entry's `data`, MAX_SNAPLEN bytes long, and `len` is
        // at most that; the helper checks the packet's side and fails instead of reading past
        // it.
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                0,
                core::ptr::addr_of_mut!((*event).data) as *mut _,
                len,
            )
        };
        if rc == 0 {
            copied = len as u16;
        }
    }
    // SAFETY: as above.
    unsafe { core::ptr::addr_of_mut!((*event).cap_len).write(copied) };
    maps::submit(entry);
    Ok(())
}
