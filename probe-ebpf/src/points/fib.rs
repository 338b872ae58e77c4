//! Routing decisions: tracepoints `fib:fib_table_lookup` (IPv4, kernel function
//! `fib_table_lookup`) and `fib6:fib6_table_lookup` (IPv6, `fib6_table_lookup`). Each fires once
//! per table consulted, with the result: table, output device, gateway or error. Field offsets
//! come from the tracepoints' format files at load time.
//!
//! For IPv4 the raw tracepoint `fib_table_lookup` is preferred where BTF gives the offsets: the
//! ordinary record leaves its gateway fields unwritten when the next hop has no gateway (they
//! then hold whatever an earlier event left in the buffer, `via 56.0.0.0`), while the raw
//! tracepoint reads the next hop's gateway family itself.
//!
//! Every lookup carries the namespace it ran in (see `shared::netns`): the raw tracepoint
//! reads the result device's; the records (IPv4 without BTF, IPv6) hold no device pointer, so
//! there it comes from the tc ingress sighting before an input lookup or the calling task.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use probe_common::{
    ABSENT, EventHeader, Fib4RawLayout, FibEvent, FibTpLayout, RouteFailKey, counter, family,
    fib_source, kind,
};

use crate::shared::{
    filter,
    layout::{self, read_kernel},
    maps, netns, watch,
};

/// `nhc_gw_family` values.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Raw tracepoint `fib_table_lookup(u32 tb_id, const struct flowi4 *flp,
/// const struct fib_nh_common *nhc, int err)`.
#[raw_tracepoint(tracepoint = "fib_table_lookup")]
pub fn fib_table_lookup_raw(ctx: RawTracePointContext) -> i32 {
    let l = layout::get(|l| &l.fib4_raw);
    let _ = try_fib_raw(&ctx, &l);
    0
}

#[inline(always)]
fn try_fib_raw(ctx: &RawTracePointContext, l: &Fib4RawLayout) -> Result<(), i32> {
    let tb_id = ctx.arg::<u64>(0) as u32;
    let flp = ctx.arg::<u64>(1);
    let nhc = ctx.arg::<u64>(2);
    let err = ctx.arg::<u64>(3) as i32;
    if flp == 0 {
        return Err(-1);
    }
    if watch::active() {
        count_failure(tb_id, err, family::IPV4);
        return Ok(());
    }
    // The filter first: a lookup it turns away costs its reads, not a ring entry.
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&read_kernel::<[u8; 4]>(flp, l.saddr).unwrap_or_default());
    dst[..4].copy_from_slice(&read_kernel::<[u8; 4]>(flp, l.daddr).unwrap_or_default());
    let proto = read_kernel::<u8>(flp, l.proto).unwrap_or_default();
    // Ports as the tracepoint gives them: TCP and UDP only, in host order.
    let (sport, dport) = if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        (
            u16::from_be(read_kernel::<u16>(flp, l.sport).unwrap_or_default()),
            u16::from_be(read_kernel::<u16>(flp, l.dport).unwrap_or_default()),
        )
    } else {
        (0, 0)
    };
    if !filter::admit_tuple(&filter::Fields {
        saddr: &src,
        daddr: &dst,
        sport,
        dport,
        l4_proto: proto,
        family: family::IPV4,
    }) {
        return Ok(());
    }
    let Some(mut entry) = maps::EVENTS.reserve::<FibEvent>(0) else {
        maps::bump(counter::RINGBUF_FULL);
        return Err(-1);
    };
    // SAFETY: the entry is reserved memory of exactly size_of::<FibEvent>(); every field is
    // written below before submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: helpers without preconditions.
    let (ts_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    ev.header = EventHeader {
        ts_ns,
        kind: kind::FIB,
        flags: 0,
        cpu,
    };
    ev.src = src;
    ev.dst = dst;
    ev.gw = [0; 16];
    ev.dev_name = [0; 16];
    ev.gw_family = family::OTHER;
    let mut dev = 0u64;
    if nhc == 0 {
        // No next hop (the lookup failed): the tracepoint names the device "-".
        ev.dev_name[0] = b'-';
    } else {
        // The gateway is the next hop's, of its own family (an IPv4 route may have an IPv6
        // next hop); none when the route is directly connected.
        match read_kernel::<u8>(nhc, l.nhc_gw_family).unwrap_or_default() {
            AF_INET => {
                let gw: [u8; 4] = read_kernel(nhc, l.nhc_gw).unwrap_or_default();
                ev.gw[..4].copy_from_slice(&gw);
                ev.gw_family = family::IPV4;
            }
            AF_INET6 => {
                ev.gw = read_kernel(nhc, l.nhc_gw).unwrap_or_default();
                ev.gw_family = family::IPV6;
            }
            _ => {}
        }
        dev = read_kernel::<u64>(nhc, l.nhc_dev).unwrap_or_default();
        if dev == 0 {
            ev.dev_name[0] = b'-';
        } else {
            ev.dev_name = read_kernel(dev, l.dev_name).unwrap_or_default();
        }
    }
    ev.table = tb_id;
    ev.err = err;
    ev.oif = read_kernel::<i32>(flp, l.oif).unwrap_or_default();
    ev.iif = read_kernel::<i32>(flp, l.iif).unwrap_or_default();
    ev.proto = proto;
    ev.sport = sport;
    ev.dport = dport;
    ev.family = family::IPV4;
    ev.tos = read_kernel::<u8>(flp, l.tos).unwrap_or_default();
    ev.scope = read_kernel::<u8>(flp, l.scope).unwrap_or_default();
    ev.flags = read_kernel::<u8>(flp, l.flags).unwrap_or_default();
    ev.source = fib_source::RAW_TP_FIB4;
    ev._pad = 0;
    ev.netns_inum = netns::of_lookup(dev, ev.iif, ts_ns);
    maps::submit(entry);
    Ok(())
}

/// Raw tracepoint `fib6_table_lookup(const struct net *net, const struct fib6_result *res,
/// struct fib6_table *table, const struct flowi6 *flp)`: only the namespace, parked for the
/// ordinary tracepoint's program of the same lookup, which reads the rest from its record.
#[raw_tracepoint(tracepoint = "fib6_table_lookup")]
pub fn fib6_table_lookup_netns(ctx: RawTracePointContext) -> i32 {
    // Watch mode counts failures by table alone: no namespace to park.
    if watch::active() {
        return 0;
    }
    let net = ctx.arg::<u64>(0);
    let table = ctx.arg::<u64>(2);
    let flp = ctx.arg::<u64>(3);
    // SAFETY: helper without preconditions.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    netns::park_lookup6(netns::Lookup6 {
        ts_ns,
        table: read_kernel::<u32>(table, layout::get(|l| &l.fib6_tb6_id)).unwrap_or_default(),
        netns_inum: netns::of_net(net),
        daddr: read_kernel(flp, layout::get(|l| &l.flowi6_daddr)).unwrap_or_default(),
    });
    0
}

#[tracepoint]
pub fn fib_table_lookup(ctx: TracePointContext) -> u32 {
    let l = layout::get(|l| &l.fib4);
    let _ = try_fib(&ctx, &l, family::IPV4, fib_source::TP_FIB4);
    0
}

#[tracepoint]
pub fn fib6_table_lookup(ctx: TracePointContext) -> u32 {
    let l = layout::get(|l| &l.fib6);
    let _ = try_fib(&ctx, &l, family::IPV6, fib_source::TP_FIB6);
    0
}

#[inline(always)]
fn read<T: Copy + Default>(ctx: &TracePointContext, offset: u16) -> T {
    if offset == ABSENT {
        return T::default();
    }
    // SAFETY: the offset comes from this tracepoint's format file; the read is checked.
    unsafe { ctx.read_at::<T>(offset as usize) }.unwrap_or_default()
}

/// Copies a record field of `dst.len()` bytes straight into the event (zeros when absent).
#[inline(always)]
fn read_into(ctx: &TracePointContext, offset: u16, dst: &mut [u8]) {
    if offset == ABSENT {
        dst.fill(0);
        return;
    }
    // SAFETY: the offset comes from this tracepoint's format file; the read is checked.
    let src = unsafe { ctx.as_ptr().cast::<u8>().add(offset as usize) };
    if unsafe { bpf_probe_read_kernel_buf(src, dst) }.is_err() {
        dst.fill(0);
    }
}

#[inline(always)]
fn is_zero(a: &[u8; 16]) -> bool {
    u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]) == 0
        && u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]) == 0
}

#[inline(always)]
fn try_fib(ctx: &TracePointContext, l: &FibTpLayout, fam: u8, source: u8) -> Result<(), i32> {
    if watch::active() {
        count_failure(read::<u32>(ctx, l.tb_id), read::<i32>(ctx, l.err), fam);
        return Ok(());
    }
    // The filter first: a lookup it turns away costs its reads, not a ring entry.
    let addr_len = if fam == family::IPV4 { 4 } else { 16 };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    read_into(ctx, l.src, &mut src[..addr_len]);
    read_into(ctx, l.dst, &mut dst[..addr_len]);
    let sport = read::<u16>(ctx, l.sport);
    let dport = read::<u16>(ctx, l.dport);
    let proto = read::<u8>(ctx, l.proto);
    if !filter::admit_tuple(&filter::Fields {
        saddr: &src,
        daddr: &dst,
        sport,
        dport,
        l4_proto: proto,
        family: fam,
    }) {
        return Ok(());
    }
    // The event is filled in place in the ring buffer: it is too large for the BPF stack
    // next to the record reads.
    let Some(mut entry) = maps::EVENTS.reserve::<FibEvent>(0) else {
        maps::bump(counter::RINGBUF_FULL);
        return Err(-1);
    };
    // SAFETY: the entry is reserved memory of exactly size_of::<FibEvent>(); every field is
    // written below before submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: helpers without preconditions.
    let (ts_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    ev.header = EventHeader {
        ts_ns,
        kind: kind::FIB,
        flags: 0,
        cpu,
    };
    ev.src = src;
    ev.dst = dst;
    ev.gw = [0; 16];
    // The kernel fills the gateway fields only when the next hop has a gateway, and then
    // zeroes the other family's field; otherwise both hold leftovers. So a gateway counts only
    // when exactly one of the two is non-zero.
    read_into(ctx, l.gw6, &mut ev.gw);
    let gw6_set = !is_zero(&ev.gw);
    let mut gw4 = [0u8; 4];
    if fam == family::IPV4 {
        read_into(ctx, l.gw4, &mut gw4);
    }
    let gw4_set = gw4 != [0; 4];
    ev.gw_family = match (gw4_set, gw6_set) {
        (true, false) => {
            ev.gw = [0; 16];
            ev.gw[..4].copy_from_slice(&gw4);
            family::IPV4
        }
        (false, true) => family::IPV6,
        _ => {
            ev.gw = [0; 16];
            family::OTHER
        }
    };
    let name = if l.name_loc != 0 && l.name != ABSENT {
        // __data_loc: the string sits later in the record, at the low 16 bits' offset.
        (read::<u32>(ctx, l.name) & 0xFFFF) as u16
    } else {
        l.name
    };
    read_into(ctx, name, &mut ev.dev_name);
    ev.table = read::<u32>(ctx, l.tb_id);
    ev.err = read::<i32>(ctx, l.err);
    ev.oif = read::<i32>(ctx, l.oif);
    ev.iif = read::<i32>(ctx, l.iif);
    ev.sport = sport;
    ev.dport = dport;
    ev.family = fam;
    ev.proto = proto;
    ev.tos = read::<u8>(ctx, l.tos);
    ev.scope = read::<u8>(ctx, l.scope);
    ev.flags = read::<u8>(ctx, l.flags);
    ev.source = source;
    ev._pad = 0;
    // IPv6: the raw tracepoint read the lookup's own `net`. Otherwise the record names the
    // result device but holds no pointer to it.
    let parked = if fam == family::IPV6 {
        netns::take_lookup6(ev.table, &ev.dst, ts_ns)
    } else {
        0
    };
    ev.netns_inum = if parked != 0 {
        parked
    } else {
        netns::of_lookup(0, ev.iif, ts_ns)
    };
    maps::submit(entry);
    Ok(())
}

/// Watch mode: a lookup that failed in its table is counted; one that found a route is not.
#[inline(always)]
fn count_failure(table: u32, err: i32, fam: u8) {
    if err != 0 {
        watch::count_route_failure(&RouteFailKey {
            table,
            err,
            family: fam,
            _pad: [0; 3],
        });
    }
}
