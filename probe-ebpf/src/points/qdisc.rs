//! Queueing on an egress device, for `probe latency`: raw tracepoints `qdisc_enqueue` (kernel
//! function `dev_qdisc_enqueue`, Linux 5.18+) and `qdisc_dequeue` (`dequeue_skb`). Between
//! them is the packet's sojourn in the qdisc; a device without a queue (veth's default
//! noqueue) fires neither. Both only continue a chain a tc point started (shared::latency).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::raw_tracepoint, programs::RawTracePointContext};
use probe_common::stage;

use crate::shared::{
    latency,
    layout::{self, read_kernel},
    skb,
};

/// `qdisc_enqueue(struct Qdisc *qdisc, const struct netdev_queue *txq, struct sk_buff *skb)`.
#[raw_tracepoint(tracepoint = "qdisc_enqueue")]
pub fn latency_qdisc_enqueue(ctx: RawTracePointContext) -> i32 {
    let _ = try_queue(ctx.arg::<u64>(2), stage::QDISC_ENQUEUE);
    0
}

/// `qdisc_dequeue(struct Qdisc *qdisc, const struct netdev_queue *txq, int packets,
/// struct sk_buff *skb)`; `skb` is NULL when the queue gave nothing. A bulk dequeue (several
/// packets became due at once: `dequeue_skb` takes up to 8 more) reports them all in one call,
/// as the list `skb`, `skb->next`, ... of `packets` buffers: each one's sojourn ends here.
#[raw_tracepoint(tracepoint = "qdisc_dequeue")]
pub fn latency_qdisc_dequeue(ctx: RawTracePointContext) -> i32 {
    let packets = ctx.arg::<u64>(2) as u32;
    let mut skb = ctx.arg::<u64>(3);
    for i in 0..MAX_BULK {
        if i >= packets || try_queue(skb, stage::QDISC_DEQUEUE).is_err() {
            break;
        }
        // `next` is the first member of `struct sk_buff` on every kernel.
        skb = read_kernel::<u64>(skb, 0).unwrap_or(0);
    }
    0
}

/// Most buffers of one bulk dequeue followed (the kernel's slow path takes 1 + 8).
const MAX_BULK: u32 = 9;

#[inline(always)]
fn try_queue(skb_addr: u64, st: u8) -> Result<(), i32> {
    if skb_addr == 0 {
        return Err(-1);
    }
    let dev = read_kernel::<u64>(skb_addr, layout::get(|l| &l.skb_dev))?;
    let ifindex = skb::dev_ifindex(dev);
    // SAFETY: helper without preconditions.
    latency::record_stage(skb_addr, st, ifindex, unsafe { bpf_ktime_get_ns() });
    Ok(())
}
