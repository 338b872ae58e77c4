//! Offsets every program that reads a kernel `sk_buff` needs (drops, hook verdicts, chain
//! verdicts): the packet's headers, device, namespace and socket.

use probe_common::KernelLayout;

use crate::kernel::btf::Btf;

pub fn offsets(btf: &Btf, layout: &mut KernelLayout, missing: &mut Vec<String>) {
    let mut member = |ty: &str, path: &str| super::attach::offset(btf, ty, path, missing);
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
    layout.task_nsproxy = member("task_struct", "nsproxy");
    layout.nsproxy_net_ns = member("nsproxy", "net_ns");
}
