//! Drops: every packet the kernel frees as dropped, from the tracepoint `skb:kfree_skb`, with
//! the reason names of the running kernel and the function that dropped it. Tracepoints need
//! neither kprobes nor trampolines, so this works on every kernel with tracefs.

use aya::Ebpf;
use probe_common::{KernelLayout, names as prog};
use probe_pipeline::names::DropReasons;

use super::{Outcome, Point, attach};
use crate::kernel::Kernel;

pub const NAME: &str = "drops";
const CATEGORY: &str = "skb";
const TRACEPOINT: &str = "kfree_skb";

pub struct Drops;

impl Point for Drops {
    fn name(&self) -> &'static str {
        NAME
    }

    fn shows(&self) -> &'static str {
        "reason names read from this kernel; location via /proc/kallsyms"
    }

    fn fallback(&self) -> &'static str {
        "no drops are shown"
    }

    fn prepare(&self, kernel: &Kernel, layout: &mut KernelLayout, missing: &mut Vec<String>) {
        let Some(tracefs) = kernel.tracefs() else {
            return;
        };
        match tracefs.format(CATEGORY, TRACEPOINT) {
            Ok(f) => {
                layout.kfree_skbaddr = f.offset_or_absent("skbaddr");
                layout.kfree_location = f.offset_or_absent("location");
                layout.kfree_protocol = f.offset_or_absent("protocol");
                layout.kfree_reason = f.offset_or_absent("reason");
                layout.kfree_rx_sk = f.offset_or_absent("rx_sk");
            }
            Err(e) => missing.push(e.to_string()),
        }
    }

    fn attach(&self, bpf: &mut Ebpf, kernel: &Kernel, _: &KernelLayout) -> Outcome {
        attach::tracepoints(bpf, kernel, &[(prog::TP_KFREE_SKB, CATEGORY, TRACEPOINT)])
    }
}

/// The running kernel's names for `enum skb_drop_reason`: from the tracepoint's print format,
/// else from BTF.
pub fn reasons(kernel: &Kernel) -> DropReasons {
    let from_format = kernel
        .tracefs()
        .and_then(|t| t.format(CATEGORY, TRACEPOINT).ok())
        .map(|f| {
            DropReasons::from_pairs(
                f.symbolic
                    .iter()
                    .filter_map(|(v, n)| Some((u32::try_from(*v).ok()?, n.clone()))),
            )
        })
        .filter(|r| !r.is_empty());
    from_format.unwrap_or_else(|| {
        let values = kernel
            .btf()
            .and_then(|b| b.enum_values("skb_drop_reason").ok())
            .unwrap_or_default();
        DropReasons::from_pairs(
            values
                .into_iter()
                .filter_map(|(n, v)| Some((u32::try_from(v).ok()?, n))),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_from_running_kernel() {
        let kernel = Kernel::read(false);
        let reasons = reasons(&kernel);
        let code = reasons
            .code("NETFILTER_DROP")
            .expect("NETFILTER_DROP known");
        assert_eq!(reasons.name(code), Some("NETFILTER_DROP"));
    }
}
