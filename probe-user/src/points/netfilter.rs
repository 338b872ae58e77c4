//! Netfilter verdicts on kernel functions, where the kernel allows it: each hook's verdict
//! (`nf_hook_slow`, by fentry/fexit, else kprobe/kretprobe) and the table/base chain that
//! decided (`nft_do_chain` for nftables and iptables-nft, `ipt_do_table` for legacy iptables,
//! by kprobes). Attaching is the probe: what attaches is what the kernel supports. Where
//! nothing does, netfilter drops still show as drops with reason NETFILTER_DROP, and `--rules`
//! names the rule.

use aya::Ebpf;
use probe_common::{ABSENT, KernelLayout, names as prog};

use super::{Outcome, Point, attach};
use crate::kernel::{Kernel, btf::Btf};

pub const HOOK_VERDICTS: &str = "netfilter hook verdicts";
pub const CHAIN_VERDICTS: &str = "table/chain verdicts";

/// The hook, family and devices of a packet's walk (`struct nf_hook_state`).
fn hook_state_offsets(kernel: &Kernel, layout: &mut KernelLayout, missing: &mut Vec<String>) {
    let Some(btf) = kernel.btf() else { return };
    let mut member = |ty: &str, path: &str| attach::offset(btf, ty, path, missing);
    layout.nfstate_hook = member("nf_hook_state", "hook");
    layout.nfstate_pf = member("nf_hook_state", "pf");
    layout.nfstate_in = member("nf_hook_state", "in");
    layout.nfstate_out = member("nf_hook_state", "out");
}

/// Each hook's verdict on a packet (`nf_hook_slow`).
pub struct HookVerdicts;

impl Point for HookVerdicts {
    fn name(&self) -> &'static str {
        HOOK_VERDICTS
    }

    fn shows(&self) -> &'static str {
        "hook, verdict, in/out interface, time in hook"
    }

    fn fallback(&self) -> &'static str {
        "netfilter drops show as drops (NETFILTER_DROP); --rules gives rule-level verdicts"
    }

    fn prepare(&self, kernel: &Kernel, layout: &mut KernelLayout, missing: &mut Vec<String>) {
        hook_state_offsets(kernel, layout, missing);
    }

    fn attach(&self, bpf: &mut Ebpf, kernel: &Kernel, _: &KernelLayout) -> Outcome {
        let fexit = match kernel.aya_btf() {
            Some(btf) => attach::fexit_pair(
                bpf,
                btf,
                "nf_hook_slow",
                prog::NF_HOOK_FENTRY,
                prog::NF_HOOK_FEXIT,
            )
            .map_err(|e| format!("fentry/fexit: {}", attach::short(&e))),
            None => Err("fentry/fexit: no kernel BTF".to_owned()),
        };
        let Err(why_fexit) = fexit else {
            return Outcome::Attached("fentry/fexit nf_hook_slow".into());
        };
        match attach::try_kprobe(
            bpf,
            kernel,
            "nf_hook_slow",
            prog::NF_HOOK_KPROBE,
            prog::NF_HOOK_KRETPROBE,
        ) {
            Ok(()) => Outcome::Attached("kprobe/kretprobe nf_hook_slow".into()),
            Err(why_kprobe) => Outcome::Unavailable(format!("{why_fexit}; {why_kprobe}")),
        }
    }
}

/// Which engine's table and base chain decided (`nft_do_chain`, `ipt_do_table`).
pub struct ChainVerdicts;

impl Point for ChainVerdicts {
    fn name(&self) -> &'static str {
        CHAIN_VERDICTS
    }

    fn shows(&self) -> &'static str {
        "table and base chain that decided, with verdict"
    }

    fn fallback(&self) -> &'static str {
        "--rules names table, chain and rule through nftables tracing"
    }

    fn prepare(&self, kernel: &Kernel, layout: &mut KernelLayout, missing: &mut Vec<String>) {
        hook_state_offsets(kernel, layout, missing);
        if let Some(btf) = kernel.btf() {
            table_offsets(btf, layout, missing);
        }
    }

    fn attach(&self, bpf: &mut Ebpf, kernel: &Kernel, layout: &KernelLayout) -> Outcome {
        let mut attached = Vec::new();
        let mut reasons = Vec::new();
        for (function, entry, exit) in [
            (
                "nft_do_chain",
                prog::NFT_CHAIN_KPROBE,
                prog::NFT_CHAIN_KRETPROBE,
            ),
            (
                "ipt_do_table",
                prog::IPT_TABLE_KPROBE,
                prog::IPT_TABLE_KRETPROBE,
            ),
        ] {
            let attempt = match chain_layout_missing(function, layout) {
                Some(why) => Err(why),
                None => attach::try_kprobe(bpf, kernel, function, entry, exit),
            };
            match attempt {
                Ok(()) => attached.push(format!("kprobe/kretprobe {function}")),
                Err(why) => {
                    // Each engine is optional (a host may use only one): say why, quietly.
                    log::debug!("table/chain verdicts: no {function}: {why}");
                    reasons.push(why)
                }
            }
        }
        if attached.is_empty() {
            reasons.dedup();
            Outcome::Unavailable(reasons.join("; "))
        } else {
            Outcome::Attached(attached.join(", "))
        }
    }
}

/// Why a table/chain program would only produce empty events here: the struct offsets it
/// needs are missing. nf_tables and x_tables are modules on distribution kernels, and module
/// BTF only exists since Linux 5.11.
fn chain_layout_missing(function: &str, layout: &KernelLayout) -> Option<String> {
    let needed: &[u16] = match function {
        "nft_do_chain" => &[
            layout.nftpkt_skb,
            layout.nftchain_table,
            layout.nfttable_name,
        ],
        _ => &[
            layout.ipt_arg_skb,
            layout.ipt_arg_table,
            layout.xttable_name,
        ],
    };
    needed.contains(&ABSENT).then(|| {
        format!(
            "no BTF for {function}'s structures (module BTF, /sys/kernel/btf/<module>, needs \
             Linux 5.11+)"
        )
    })
}

/// Offsets inside nf_tables and x_tables, which distribution kernels build as modules: their
/// types live in the module's split BTF when not in vmlinux.
fn table_offsets(vmlinux: &Btf, layout: &mut KernelLayout, missing: &mut Vec<String>) {
    let module = |name: &str| -> Option<Btf> { Btf::module(name, vmlinux).ok() };
    let nft = if vmlinux.has_func("nft_do_chain") {
        None
    } else {
        module("nf_tables")
    };
    let nft = nft.as_ref().unwrap_or(vmlinux);
    let mut member = |btf: &Btf, ty: &str, path: &str| attach::offset(btf, ty, path, missing);
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
        Err(e) => missing.push(e.to_string()),
    }
}
