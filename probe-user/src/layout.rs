//! Builds the [`KernelLayout`] the programs read their offsets from: struct members from BTF,
//! tracepoint record fields from tracefs. Anything this kernel lacks stays ABSENT, and the
//! program that needs it degrades (a field reads as zero) instead of failing to load.

use probe_common::{ABSENT, FibTpLayout, KernelLayout};

use crate::{btf::Btf, tracefs::Format};

/// What could not be found, for `probe doctor` and debug logs.
#[derive(Debug, Default)]
pub struct Missing(pub Vec<String>);

/// Offsets of the struct members the programs read.
pub fn from_btf(btf: &Btf, layout: &mut KernelLayout, missing: &mut Missing) {
    let mut member = |ty: &str, path: &str| -> u16 {
        match btf.member(ty, path) {
            Ok(m) => u16::try_from(m.offset).unwrap_or(ABSENT),
            Err(e) => {
                missing.0.push(e.to_string());
                ABSENT
            }
        }
    };
    layout.skb_head = member("sk_buff", "head");
    layout.skb_network_header = member("sk_buff", "network_header");
    layout.skb_transport_header = member("sk_buff", "transport_header");
    layout.skb_dev = member("sk_buff", "dev");
    layout.skb_len = member("sk_buff", "len");
    layout.dev_ifindex = member("net_device", "ifindex");
    layout.dev_nd_net = member("net_device", "nd_net.net");
    layout.net_ns_inum = member("net", "ns.inum");
}

/// Offsets of `skb:kfree_skb` record fields.
pub fn from_kfree_skb(format: &Format, layout: &mut KernelLayout) {
    layout.kfree_skbaddr = format.offset_or_absent("skbaddr");
    layout.kfree_location = format.offset_or_absent("location");
    layout.kfree_protocol = format.offset_or_absent("protocol");
    layout.kfree_reason = format.offset_or_absent("reason");
}

/// Offsets of a fib/fib6 lookup record's fields (the two tracepoints name the gateway
/// differently: `gw4`/`gw6` for IPv4, `gw` for IPv6).
pub fn fib(format: &Format) -> FibTpLayout {
    let f = |name: &str| format.offset_or_absent(name);
    FibTpLayout {
        tb_id: f("tb_id"),
        err: f("err"),
        oif: f("oif"),
        iif: f("iif"),
        proto: f("proto"),
        tos: f("tos"),
        scope: f("scope"),
        flags: f("flags"),
        src: f("src"),
        dst: f("dst"),
        gw4: f("gw4"),
        gw6: if format.fields.contains_key("gw6") {
            f("gw6")
        } else {
            f("gw")
        },
        sport: f("sport"),
        dport: f("dport"),
        name: f("name"),
        _pad: 0,
    }
}
