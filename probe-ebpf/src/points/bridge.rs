//! The bridge's own steps, for `probe latency`, where the kernel has kprobes (the 6.1 and
//! 6.12 matrix kernels; not the host's 6.18): kprobes on `br_handle_frame` (the bridge's
//! rx_handler, entered after tc ingress on a port) and `br_forward` (the port chosen, after
//! the FDB lookup and br_netfilter's PREROUTING/FORWARD hooks). Both only continue a chain a
//! tc point started (shared::latency).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::kprobe,
    programs::ProbeContext,
};
use probe_common::stage;

use crate::shared::{
    latency,
    layout::{self, read_kernel},
    skb,
};

/// `rx_handler_result_t br_handle_frame(struct sk_buff **pskb)`.
#[kprobe]
pub fn latency_br_handle_frame(ctx: ProbeContext) -> u32 {
    let _ = try_handle_frame(&ctx);
    0
}

#[inline(always)]
fn try_handle_frame(ctx: &ProbeContext) -> Result<(), i32> {
    let pskb = ctx.arg::<u64>(0).ok_or(-1)?;
    // SAFETY: the helper checks the address and fails instead of faulting.
    let skb_addr = unsafe { bpf_probe_read_kernel(pskb as *const u64) }.map_err(|_| -1)?;
    if skb_addr == 0 {
        return Err(-1);
    }
    let dev = read_kernel::<u64>(skb_addr, layout::get(|l| &l.skb_dev))?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    latency::record_stage(skb_addr, stage::BR_HANDLE_FRAME, skb::dev_ifindex(dev), now);
    Ok(())
}

/// `void br_forward(const struct net_bridge_port *to, struct sk_buff *skb, bool local_rcv,
/// bool local_orig)`.
#[kprobe]
pub fn latency_br_forward(ctx: ProbeContext) -> u32 {
    let Some(skb_addr) = ctx.arg::<u64>(1) else {
        return 0;
    };
    if skb_addr != 0 {
        // SAFETY: helper without preconditions.
        latency::record_stage(skb_addr, stage::BR_FORWARD, 0, unsafe {
            bpf_ktime_get_ns()
        });
    }
    0
}
