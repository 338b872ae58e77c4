//! Packet header parsing, shared by every program that can see a packet's bytes.
//!
//! tc classifiers read through `bpf_skb_load_bytes` ([`TcContext`]); tracing programs read an
//! skb's headers in kernel memory through `bpf_probe_read_kernel` ([`KernelBytes`]). Both are
//! checked by the kernel, so nothing here can read past the packet. A header that cannot be read
//! leaves the fields that follow it zero and sets `TRUNCATED`.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TcContext};
use probe_common::{PacketInfo, family, packet_flags};

/// Somewhere packet bytes can be loaded from, by offset.
pub trait Bytes {
    fn load<T: Copy>(&self, offset: usize) -> Result<T, ()>;
}

impl Bytes for TcContext {
    /// Straight from the packet when the bytes are in its linear part (the usual case for
    /// headers), through the `bpf_skb_load_bytes` helper otherwise.
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        let start = self.data() + offset;
        if start + core::mem::size_of::<T>() <= self.data_end() {
            // SAFETY: the verifier sees the bounds check above against data_end.
            return Ok(unsafe { core::ptr::read_unaligned(start as *const T) });
        }
        TcContext::load(self, offset).map_err(|_| ())
    }
}

/// Packet bytes in kernel memory, starting at the network header.
pub struct KernelBytes(pub u64);

impl Bytes for KernelBytes {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
        unsafe { bpf_probe_read_kernel((self.0 + offset as u64) as *const T) }.map_err(|_| ())
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// Fills `out` from the packet. `l2_len` is 14 for Ethernet devices and 0 for devices whose
/// packets start at the network header (tun, WireGuard). Returns where the transport header
/// starts, when there is one.
#[inline(always)]
pub fn parse(ctx: &TcContext, l2_len: usize, out: &mut PacketInfo) -> Option<usize> {
    out.len = ctx.len();
    let (l3_proto, l3_off) = if l2_len == 0 {
        // skb->protocol is big-endian in the low 16 bits.
        (u16::from_be(ctx.skb.protocol() as u16), 0)
    } else {
        match ctx.load::<[u8; 2]>(12) {
            Ok(b) => {
                let ethertype = u16::from_be_bytes(b);
                if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                    match ctx.load::<[u8; 2]>(16) {
                        Ok(inner) => (u16::from_be_bytes(inner), l2_len + 4),
                        Err(_) => {
                            out.flags |= packet_flags::TRUNCATED;
                            return None;
                        }
                    }
                } else {
                    (ethertype, l2_len)
                }
            }
            Err(_) => {
                out.flags |= packet_flags::TRUNCATED;
                return None;
            }
        }
    };
    out.l3_proto = l3_proto;
    let l4_off = match l3_proto {
        ETH_P_IP => parse_ipv4(ctx, l3_off, out),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off, out),
        _ => None,
    };
    if let Some(l4_off) = l4_off {
        parse_l4(ctx, l4_off, out);
    }
    l4_off
}

/// Whether `p` is an ICMP error, whose payload quotes the packet it answers: destination
/// unreachable (fragmentation needed among them), time exceeded, parameter problem, and for
/// ICMPv6 also packet too big.
#[inline(always)]
pub fn is_icmp_error(p: &PacketInfo) -> bool {
    match p.l4_proto {
        IPPROTO_ICMP => p.family == family::IPV4 && matches!(p.icmp_type, 3 | 11 | 12),
        IPPROTO_ICMPV6 => p.family == family::IPV6 && matches!(p.icmp_type, 1..=4),
        _ => false,
    }
}

/// Fills `out` from the packet an ICMP error quotes: its network header starts right after the
/// 8 bytes of the error's own header at `l4_off`, in the error's family (an ICMPv4 error quotes
/// IPv4, an ICMPv6 error IPv6). The quote may be cut short: fields past the cut stay zero.
#[inline(always)]
pub fn parse_quoted<B: Bytes>(bytes: &B, error: &PacketInfo, l4_off: usize, out: &mut PacketInfo) {
    let off = l4_off + 8;
    let l4 = if error.family == family::IPV4 {
        out.l3_proto = ETH_P_IP;
        parse_ipv4(bytes, off, out)
    } else {
        out.l3_proto = ETH_P_IPV6;
        parse_ipv6(bytes, off, out)
    };
    if let Some(l4) = l4 {
        parse_l4(bytes, l4, out);
    }
}

/// Fills `out` from bytes that start at the network header of a packet of EtherType `l3_proto`.
#[inline(always)]
pub fn parse_from_network<B: Bytes>(bytes: &B, l3_proto: u16, out: &mut PacketInfo) {
    out.l3_proto = l3_proto;
    let l4_off = match l3_proto {
        ETH_P_IP => parse_ipv4(bytes, 0, out),
        ETH_P_IPV6 => parse_ipv6(bytes, 0, out),
        _ => None,
    };
    if let Some(l4_off) = l4_off {
        parse_l4(bytes, l4_off, out);
    }
}

/// Returns the transport header's offset, or None when there is no transport header to read.
#[inline(always)]
fn parse_ipv4<B: Bytes>(ctx: &B, off: usize, out: &mut PacketInfo) -> Option<usize> {
    let Ok(h) = Bytes::load::<[u8; 20]>(ctx, off) else {
        out.flags |= packet_flags::TRUNCATED;
        return None;
    };
    out.family = family::IPV4;
    out.l4_proto = h[9];
    out.ip_id = u16::from_be_bytes([h[4], h[5]]);
    out.saddr[..4].copy_from_slice(&h[12..16]);
    out.daddr[..4].copy_from_slice(&h[16..20]);
    let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1FFF;
    if frag_offset != 0 {
        out.flags |= packet_flags::FRAGMENT;
        return None;
    }
    let ihl = ((h[0] & 0x0F) as usize) * 4;
    if ihl < 20 {
        out.flags |= packet_flags::TRUNCATED;
        return None;
    }
    Some(off + ihl)
}

#[inline(always)]
fn parse_ipv6<B: Bytes>(ctx: &B, off: usize, out: &mut PacketInfo) -> Option<usize> {
    let Ok(h) = Bytes::load::<[u8; 40]>(ctx, off) else {
        out.flags |= packet_flags::TRUNCATED;
        return None;
    };
    out.family = family::IPV6;
    out.l4_proto = h[6];
    out.saddr.copy_from_slice(&h[8..24]);
    out.daddr.copy_from_slice(&h[24..40]);
    // Extension headers are not walked: their transport fields stay zero.
    Some(off + 40)
}

#[inline(always)]
fn parse_l4<B: Bytes>(ctx: &B, off: usize, out: &mut PacketInfo) {
    match out.l4_proto {
        IPPROTO_TCP => match Bytes::load::<[u8; 14]>(ctx, off) {
            Ok(t) => {
                out.sport = u16::from_be_bytes([t[0], t[1]]);
                out.dport = u16::from_be_bytes([t[2], t[3]]);
                out.tcp_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
                out.tcp_flags = t[13];
            }
            Err(_) => out.flags |= packet_flags::TRUNCATED,
        },
        IPPROTO_UDP => match Bytes::load::<[u8; 4]>(ctx, off) {
            Ok(u) => {
                out.sport = u16::from_be_bytes([u[0], u[1]]);
                out.dport = u16::from_be_bytes([u[2], u[3]]);
            }
            Err(_) => out.flags |= packet_flags::TRUNCATED,
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match Bytes::load::<[u8; 8]>(ctx, off) {
            Ok(i) => {
                out.icmp_type = i[0];
                out.icmp_code = i[1];
                // Echo request/reply carry an identifier and a sequence number.
                out.sport = u16::from_be_bytes([i[4], i[5]]);
                out.dport = u16::from_be_bytes([i[6], i[7]]);
            }
            Err(_) => out.flags |= packet_flags::TRUNCATED,
        },
        _ => {}
    }
}
