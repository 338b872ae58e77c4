//! Reading a packet out of a `struct sk_buff *` in kernel memory (tracing programs), at offsets
//! userspace found in this kernel's BTF.

use probe_common::PacketInfo;

use super::{
    layout::{self, read_kernel},
    packet::{self, KernelBytes},
};

/// Parses the packet's headers from its network header, if the kernel has set one.
/// `ethertype` says what the network header holds (the caller knows it from the hook's family
/// or the tracepoint).
#[inline(always)]
pub fn read_packet(skb: u64, ethertype: u16, out: &mut PacketInfo) {
    out.len = read_kernel::<u32>(skb, layout::get(|l| &l.skb_len)).unwrap_or(0);
    let head = read_kernel::<u64>(skb, layout::get(|l| &l.skb_head)).unwrap_or(0);
    let network = read_kernel::<u16>(skb, layout::get(|l| &l.skb_network_header)).unwrap_or(0xFFFF);
    // 0xFFFF: the network header was never set (e.g. dropped before layer 3).
    if head != 0 && network != 0xFFFF {
        let at = head + network as u64;
        // A hook of a family that carries several protocols (the bridge's): the IP version
        // nibble says which, and anything else (ARP) is left unparsed.
        let ethertype = if ethertype != 0 {
            ethertype
        } else {
            match read_kernel::<u8>(at, 0).unwrap_or(0) >> 4 {
                4 => 0x0800,
                6 => 0x86DD,
                _ => 0,
            }
        };
        packet::parse_from_network(&KernelBytes(at), ethertype, out);
    } else {
        out.l3_proto = ethertype;
    }
}

/// ifindex of a `struct net_device *` (0 when there is none).
#[inline(always)]
pub fn dev_ifindex(dev: u64) -> u32 {
    read_kernel::<u32>(dev, layout::get(|l| &l.dev_ifindex)).unwrap_or(0)
}

/// Inode number of a device's network namespace (0 when unknown).
#[inline(always)]
pub fn dev_netns(dev: u64) -> u32 {
    match read_kernel::<u64>(dev, layout::get(|l| &l.dev_nd_net)) {
        Ok(net) => read_kernel::<u32>(net, layout::get(|l| &l.net_ns_inum)).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Inode of the network namespace a packet is in: its device's, or, once the stack has let go
/// of the device, that of the socket receiving it (`rx_sk`, when the caller knows one) or
/// owning it (0 when none of them is known).
#[inline(always)]
pub fn netns(skb: u64, dev: u64, rx_sk: u64) -> u32 {
    let from_dev = dev_netns(dev);
    if from_dev != 0 {
        return from_dev;
    }
    let sk = if rx_sk != 0 {
        rx_sk
    } else {
        read_kernel::<u64>(skb, layout::get(|l| &l.skb_sk)).unwrap_or(0)
    };
    match read_kernel::<u64>(sk, layout::get(|l| &l.sk_net)) {
        Ok(net) => read_kernel::<u32>(net, layout::get(|l| &l.net_ns_inum)).unwrap_or(0),
        Err(_) => 0,
    }
}

/// EtherType for a netfilter protocol family (NFPROTO_IPV4 2, NFPROTO_IPV6 10).
#[inline(always)]
pub fn ethertype_of_pf(pf: u8) -> u16 {
    match pf {
        2 => 0x0800,
        10 => 0x86DD,
        _ => 0,
    }
}
