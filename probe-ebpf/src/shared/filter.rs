//! The kernel side of `--filter`: the first sighting of a packet evaluates the user's
//! expression (compiled by userspace into a postfix program, see `probe_common::filter_op`);
//! an admitted packet is remembered by what NAT leaves alone (`PacketKey`) and its connection by
//! both directions of its tuple (`FlowKey`), so later sightings, rewritten or replies, are
//! admitted by a lookup. A packet nobody admitted costs its parse and the evaluation, and
//! writes no event.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use probe_common::{
    FlowKey, MAX_FILTER_INSNS, PacketInfo, PacketKey, counter, family, filter_dir, filter_op,
};

use super::{config, maps};

/// Packets admitted recently (userspace shrinks these maps when no filter is set).
#[map(name = "ADMITTED_PACKETS")]
static ADMITTED_PACKETS: LruHashMap<PacketKey, u8> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU as u32);

/// Connections admitted recently, each direction under its own key.
#[map(name = "ADMITTED_FLOWS")]
static ADMITTED_FLOWS: LruHashMap<FlowKey, u8> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU as u32);

/// The addresses of the last packet this CPU judged, and whether it was admitted. The
/// kernel's input route lookup carries no ports (ip_route_input_slow clears them): a port
/// filter can only admit it as the lookup of the packet this CPU just saw.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct LastJudged {
    saddr: [u8; 16],
    daddr: [u8; 16],
    admitted: u8,
}

/// Kernel-side only: userspace never reads it.
#[map(name = "LAST_JUDGED")]
static LAST_JUDGED: PerCpuArray<LastJudged> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn judged(p: &PacketInfo, admitted: bool) -> bool {
    if let Some(slot) = LAST_JUDGED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, written only while this program runs on it.
        unsafe {
            (*slot).saddr = p.saddr;
            (*slot).daddr = p.daddr;
            (*slot).admitted = admitted as u8;
        }
    }
    admitted
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// What a filter looks at.
pub struct Fields<'a> {
    pub saddr: &'a [u8; 16],
    pub daddr: &'a [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub l4_proto: u8,
    pub family: u8,
}

impl<'a> Fields<'a> {
    #[inline(always)]
    pub fn of(p: &'a PacketInfo) -> Self {
        Fields {
            saddr: &p.saddr,
            daddr: &p.daddr,
            sport: p.sport,
            dport: p.dport,
            l4_proto: p.l4_proto,
            family: p.family,
        }
    }
}

/// Whether a filter is set at all.
#[inline(always)]
pub fn active() -> bool {
    config::get(|c| &c.filter_len) != 0
}

/// Whether a sighting of this packet should be reported: always without a filter; with one, if
/// the packet or its connection was admitted before, or it matches now.
#[inline(always)]
pub fn admit(p: &PacketInfo) -> bool {
    !active() || admit_filtered(p)
}

/// The work behind [`admit`], in a function of its own: its keys live in their own stack frame
/// instead of crowding the caller's.
#[inline(never)]
fn admit_filtered(p: &PacketInfo) -> bool {
    // Filters speak of addresses and ports: ARP and friends never match one.
    if p.family == family::OTHER {
        maps::bump(counter::FILTERED);
        return false;
    }
    let packet = packet_key(p);
    let mut flow = flow_key(p);
    if matches(&Fields::of(p)) {
        // The packet's first sighting remembers it and its connection; later ones find it.
        let known = packet.as_ref().map_or_else(
            || {
                flow.as_ref()
                    .is_some_and(|f| ADMITTED_FLOWS.get_ptr(f).is_some())
            },
            |k| ADMITTED_PACKETS.get_ptr(k).is_some(),
        );
        if !known {
            remember(&packet, &mut flow);
        }
        return judged(p, true);
    }
    // Until something was admitted there is nothing to follow: a filter that matches nothing
    // costs no map lookup.
    // SAFETY: a plain global; a racing first write on another CPU writes the same value.
    if unsafe { core::ptr::read_volatile(&raw const ANY_ADMITTED) } == 0 {
        maps::bump(counter::FILTERED);
        return false;
    }
    if let Some(k) = &packet
        && ADMITTED_PACKETS.get_ptr(k).is_some()
    {
        // Seen before, maybe under another tuple (NAT): replies to this one belong too.
        if let Some(f) = &mut flow
            && ADMITTED_FLOWS.get_ptr(&*f).is_none()
        {
            remember_flow(f);
        }
        return judged(p, true);
    }
    if let Some(f) = &flow
        && ADMITTED_FLOWS.get_ptr(f).is_some()
    {
        if let Some(k) = &packet {
            let _ = ADMITTED_PACKETS.insert(k, 1, 0);
        }
        return judged(p, true);
    }
    maps::bump(counter::FILTERED);
    judged(p, false)
}

/// Set once the filter admitted a packet (a writable global, zero at load).
#[unsafe(no_mangle)]
static mut ANY_ADMITTED: u8 = 0;

#[inline(always)]
fn remember(packet: &Option<PacketKey>, flow: &mut Option<FlowKey>) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut ANY_ADMITTED, 1) };
    if let Some(k) = packet {
        let _ = ADMITTED_PACKETS.insert(k, 1, 0);
    }
    if let Some(f) = flow {
        remember_flow(f);
    }
}

/// For sightings that carry a tuple but no packet (routing lookups): admitted when their
/// connection was, or when they match.
#[inline(always)]
pub fn admit_tuple(fields: &Fields) -> bool {
    if !active() {
        return true;
    }
    let flow = FlowKey {
        saddr: *fields.saddr,
        daddr: *fields.daddr,
        sport: fields.sport,
        dport: fields.dport,
        l4_proto: fields.l4_proto,
        _pad: [0; 3],
    };
    if matches(fields) {
        return true;
    }
    // SAFETY: as in admit_filtered.
    if unsafe { core::ptr::read_volatile(&raw const ANY_ADMITTED) } != 0 {
        if ADMITTED_FLOWS.get_ptr(&flow).is_some() {
            return true;
        }
        // An input route lookup (no ports): the lookup of the packet this CPU just judged,
        // if it had these addresses and was admitted.
        if fields.sport == 0
            && fields.dport == 0
            && let Some(last) = LAST_JUDGED.get_ptr(0)
        {
            // SAFETY: this CPU's slot; the packet's own softirq wrote it just before.
            let last = unsafe { &*last };
            if last.admitted != 0 && last.saddr == *fields.saddr && last.daddr == *fields.daddr {
                return true;
            }
        }
    }
    maps::bump(counter::FILTERED);
    false
}

/// The NAT-invariant identity of an IPv4 packet; None when it has too little to tell packets
/// apart (IPv6, or neither an IP id nor a TCP sequence number).
#[inline(always)]
pub fn packet_key(p: &PacketInfo) -> Option<PacketKey> {
    let key = PacketKey::of(p);
    if p.family != family::IPV4 || !key.is_distinct() {
        return None;
    }
    Some(key)
}

#[inline(always)]
fn flow_key(p: &PacketInfo) -> Option<FlowKey> {
    if p.family == family::OTHER {
        return None;
    }
    Some(FlowKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        l4_proto: p.l4_proto,
        _pad: [0; 3],
    })
}

/// Both directions of a connection; the key is turned around in place (stack is scarce).
#[inline(always)]
fn remember_flow(f: &mut FlowKey) {
    let _ = ADMITTED_FLOWS.insert(&*f, 1, 0);
    core::mem::swap(&mut f.saddr, &mut f.daddr);
    core::mem::swap(&mut f.sport, &mut f.dport);
    let _ = ADMITTED_FLOWS.insert(&*f, 1, 0);
}

/// Whether `addr` is in instruction `i`'s network, a byte at a time. A function of its own:
/// inlined into the unrolled instructions, the compiler kept copies of the mask and network
/// (or hoisted the address's bytes out of them) in the filter's frame, which sits on top of its
/// caller's within the kernel's 512 bytes; an address filter once made tc_ingress fail to
/// load. Each call is verified with its own constant `i`.
#[inline(never)]
fn in_net(addr: &[u8; 16], i: usize) -> bool {
    let mut j = 0;
    while j < 16 {
        let mask = config::get(|c| &c.filter[i].mask[j]);
        // Masks are prefixes (filter/compile.rs): past the first empty byte nothing is
        // compared, so an IPv4 host costs five bytes, not sixteen.
        if mask == 0 {
            return true;
        }
        if addr[j] & mask != config::get(|c| &c.filter[i].addr[j]) {
            return false;
        }
        j += 1;
    }
    true
}

#[inline(always)]
fn test(i: usize, op: u8, f: &Fields) -> bool {
    let (src, dst) = match config::get(|c| &c.filter[i].dir) {
        filter_dir::SRC => (true, false),
        filter_dir::DST => (false, true),
        _ => (true, true),
    };
    let arg = config::get(|c| &c.filter[i].arg);
    match op {
        filter_op::NET => {
            f.family == arg && ((src && in_net(f.saddr, i)) || (dst && in_net(f.daddr, i)))
        }
        filter_op::PORTS => {
            let lo = config::get(|c| &c.filter[i].port_lo);
            let hi = config::get(|c| &c.filter[i].port_hi);
            let within = |p: u16| p >= lo && p <= hi;
            (f.l4_proto == IPPROTO_TCP || f.l4_proto == IPPROTO_UDP)
                && ((src && within(f.sport)) || (dst && within(f.dport)))
        }
        filter_op::L4_PROTO => f.family != family::OTHER && f.l4_proto == arg,
        filter_op::FAMILY => f.family == arg,
        _ => false,
    }
}

/// Runs the filter program. The stack of booleans is a bit string, top in bit 0; userspace
/// checked that the program is well formed and at most [`MAX_FILTER_INSNS`] long.
#[inline(always)]
pub fn matches(f: &Fields) -> bool {
    let len = config::get(|c| &c.filter_len) as usize;
    let mut stack: u64 = 0;
    for i in 0..MAX_FILTER_INSNS {
        if i >= len {
            break;
        }
        let op = config::get(|c| &c.filter[i].op);
        match op {
            filter_op::AND => {
                let v = stack & (stack >> 1) & 1;
                stack = (stack >> 2) << 1 | v;
            }
            filter_op::OR => {
                let v = (stack | (stack >> 1)) & 1;
                stack = (stack >> 2) << 1 | v;
            }
            filter_op::NOT => stack ^= 1,
            _ => stack = stack << 1 | test(i, op, f) as u64,
        }
    }
    stack & 1 == 1
}
