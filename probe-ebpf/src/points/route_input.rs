//! The namespace of an input routing decision: kernel function `ip_route_input_noref(struct
//! sk_buff *skb, __be32 daddr, __be32 saddr, u8 tos, struct net_device *dev)`, whose `dev` is
//! the interface the packet came in on. The fib lookups it makes run inside it, on this CPU:
//! fentry parks the device's namespace for them, fexit takes it off (see
//! `shared::netns::of_lookup`). Where the kernel has no BPF trampolines the tc ingress sighting
//! just before stands in.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::shared::netns;

#[fentry(function = "ip_route_input_noref")]
pub fn ip_route_input_fentry(ctx: FEntryContext) -> u32 {
    let dev: u64 = ctx.arg(4);
    netns::enter_input_route(dev);
    0
}

#[fexit(function = "ip_route_input_noref")]
pub fn ip_route_input_fexit(_ctx: FExitContext) -> u32 {
    netns::leave_input_route();
    0
}
