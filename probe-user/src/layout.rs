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
    layout.skb_sk = member("sk_buff", "sk");
    layout.sk_net = member("sock", "__sk_common.skc_net.net");
    layout.nfstate_hook = member("nf_hook_state", "hook");
    layout.nfstate_pf = member("nf_hook_state", "pf");
    layout.nfstate_in = member("nf_hook_state", "in");
    layout.nfstate_out = member("nf_hook_state", "out");
    layout.fibarg_rule = member("fib_lookup_arg", "rule");
    layout.fibrule_pref = member("fib_rule", "pref");
    layout.fibrule_table = member("fib_rule", "table");
    layout.fibrule_action = member("fib_rule", "action");
    layout.fibops_family = member("fib_rules_ops", "family");
    layout.flowi4_saddr = member("flowi", "u.ip4.saddr");
    layout.flowi4_daddr = member("flowi", "u.ip4.daddr");
}

/// Offsets inside nf_tables and x_tables, which distribution kernels build as modules: their
/// types live in the module's split BTF when not in vmlinux.
pub fn from_netfilter_btf(vmlinux: &Btf, layout: &mut KernelLayout, missing: &mut Missing) {
    let module = |name: &str| -> Option<Btf> { Btf::module(name, vmlinux).ok() };
    let nft = if vmlinux.has_func("nft_do_chain") {
        None
    } else {
        module("nf_tables")
    };
    let nft = nft.as_ref().unwrap_or(vmlinux);
    let mut member = |btf: &Btf, ty: &str, path: &str| -> u16 {
        match btf.member(ty, path) {
            Ok(m) => u16::try_from(m.offset).unwrap_or(ABSENT),
            Err(e) => {
                missing.0.push(e.to_string());
                ABSENT
            }
        }
    };
    layout.nftpkt_skb = member(nft, "nft_pktinfo", "skb");
    layout.nftpkt_state = member(nft, "nft_pktinfo", "state");
    layout.nftchain_name = member(nft, "nft_chain", "name");
    layout.nftchain_table = member(nft, "nft_chain", "table");
    layout.nfttable_name = member(nft, "nft_table", "name");

    let xt = if vmlinux.has_func("ipt_do_table") {
        None
    } else {
        module("ip_tables")
    };
    let xt_btf = xt.as_ref().unwrap_or(vmlinux);
    let xt_types = if xt_btf.member("xt_table", "name").is_ok() {
        None
    } else {
        module("x_tables")
    };
    layout.xttable_name = member(xt_types.as_ref().unwrap_or(xt_btf), "xt_table", "name");
    match xt_btf.func_params("ipt_do_table") {
        Ok(params) => {
            let pos = |names: &[&str]| {
                params
                    .iter()
                    .position(|p| names.contains(&p.as_str()))
                    .and_then(|i| u16::try_from(i).ok())
                    .unwrap_or(ABSENT)
            };
            // 6.x: (void *priv, struct sk_buff *skb, const struct nf_hook_state *state);
            // 5.x: (struct sk_buff *skb, const struct nf_hook_state *state, struct xt_table *table).
            layout.ipt_arg_table = pos(&["priv", "table"]);
            layout.ipt_arg_skb = pos(&["skb"]);
            layout.ipt_arg_state = pos(&["state"]);
        }
        Err(e) => missing.0.push(e.to_string()),
    }
}

/// Offsets of `skb:kfree_skb` record fields.
pub fn from_kfree_skb(format: &Format, layout: &mut KernelLayout) {
    layout.kfree_skbaddr = format.offset_or_absent("skbaddr");
    layout.kfree_location = format.offset_or_absent("location");
    layout.kfree_protocol = format.offset_or_absent("protocol");
    layout.kfree_reason = format.offset_or_absent("reason");
    layout.kfree_rx_sk = format.offset_or_absent("rx_sk");
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
        // An inline char[IFNAMSIZ] in newer kernels; older ones store a 4-byte __data_loc.
        name_loc: u16::from(
            format
                .fields
                .get("name")
                .is_some_and(|&(_, size)| size == 4),
        ),
    }
}
