//! The hand-off to the receiving side, for `probe latency`: raw tracepoints `netif_rx`
//! (kernel function `netif_rx_internal`: a veth's transmit queues the packet on the peer's
//! backlog) and `netif_receive_skb` (`__netif_receive_skb_core`: the softirq takes it). Both
//! only continue a chain a tc point started (shared::latency).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::raw_tracepoint, programs::RawTracePointContext};
use probe_common::stage;

use crate::shared::latency;

/// `netif_rx(struct sk_buff *skb)`.
#[raw_tracepoint(tracepoint = "netif_rx")]
pub fn latency_netif_rx(ctx: RawTracePointContext) -> i32 {
    let _ = try_handoff(ctx.arg::<u64>(0), stage::NETIF_RX);
    0
}

/// `netif_receive_skb(struct sk_buff *skb)`.
#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn latency_netif_receive_skb(ctx: RawTracePointContext) -> i32 {
    let _ = try_handoff(ctx.arg::<u64>(0), stage::NETIF_RECEIVE);
    0
}

#[inline(always)]
fn try_handoff(skb_addr: u64, st: u8) -> Result<(), i32> {
    if skb_addr == 0 {
        return Err(-1);
    }
    // SAFETY: helper without preconditions.
    latency::record_stage(skb_addr, st, 0, unsafe { bpf_ktime_get_ns() });
    Ok(())
}
