//! The knowledge itself: one row per cause. Explanations speak of the packet and the host;
//! next steps name a command or a setting to look at.

use super::{Cause, Fact, Refined, Row};

const fn row(
    id: &'static str,
    explanation: &'static str,
    facts: &'static [Fact],
    next: &'static str,
    reasons: &'static [&'static str],
    functions: &'static [&'static str],
) -> Row {
    Row {
        cause: Cause {
            id,
            explanation,
            facts,
            next,
        },
        reasons,
        functions,
    }
}

pub(super) static ROWS: &[Row] = &[
    row(
        "netfilter",
        "a netfilter rule or a chain's policy (iptables, nftables, firewalld, Docker) dropped it",
        &[Fact::Rule, Fact::Conntrack, Fact::BridgeNetfilter],
        "the rule is named above where probe could see it (--rules names it on any kernel); \
         list it with `nft -a list ruleset` or `iptables-save`",
        &["NETFILTER_DROP"],
        &["nf_hook_slow"],
    ),
    row(
        "no-socket",
        "it reached this host (or container) for a port no socket listens on",
        &[Fact::Socket, Fact::IcmpError],
        "check that the service runs and listens on that address and port (`ss -lntup`, in \
         the container's namespace for a container); a published port needs its container up",
        &["NO_SOCKET"],
        &["__udp4_lib_rcv", "__udp6_lib_rcv"],
    ),
    row(
        "socket-closed",
        "the socket it was for was closing or closed when it arrived",
        &[Fact::Socket],
        "usually harmless at the end of a connection; if it repeats, the application closes \
         sockets while its peer still sends",
        &[
            "SOCKET_CLOSE",
            "UNIX_DISCONNECT",
            "UNIX_SKIP_OOB",
            "TCP_CLOSE",
        ],
        &[],
    ),
    row(
        "socket-filter",
        "a filter attached to the receiving socket (a BPF socket filter, a tap's filter) refused it",
        &[Fact::Socket],
        "look for programs with socket filters (`ss -0 -p`, `bpftool prog`); a capture tool's \
         filter drops only its own copy",
        &["SOCKET_FILTER", "TAP_FILTER", "TAP_TXFILTER"],
        &["sk_filter_trim_cap"],
    ),
    row(
        "socket-full",
        "the receiving socket's buffer or backlog was full: the application does not read fast \
         enough",
        &[Fact::Socket],
        "watch the socket's Recv-Q (`ss -m`); raise its buffer (SO_RCVBUF, net.core.rmem_max) \
         or make the reader faster",
        &["SOCKET_RCVBUFF", "SOCKET_BACKLOG", "PROTO_MEM"],
        &["sock_queue_rcv_skb", "__udp_queue_rcv_skb"],
    ),
    row(
        "listen-overflow",
        "a listening TCP socket's accept queue was full, so the connection attempt was dropped",
        &[Fact::Socket],
        "the server accepts too slowly: check `ss -lnt` (Recv-Q against Send-Q), raise the \
         listen backlog and net.core.somaxconn",
        &["TCP_LISTEN_OVERFLOW"],
        &[],
    ),
    row(
        "malformed",
        "its headers were truncated or invalid",
        &[],
        "capture it (`probe trace --pcapng`, `--snaplen`) and look at the headers; a sender or \
         a device on the path mangles packets",
        &[
            "PKT_TOO_SMALL",
            "IP_INHDR",
            "HDR_TRUNC",
            "INVALID_PROTO",
            "IPV6_BAD_EXTHDR",
            "DEV_HDR",
        ],
        &[],
    ),
    row(
        "bad-checksum",
        "its checksum was wrong",
        &[],
        "a device or a driver's checksum offload corrupts packets; compare with `ethtool -k` and \
         try turning offloads off on the sending interface",
        &["TCP_CSUM", "UDP_CSUM", "IP_CSUM", "ICMP_CSUM", "SKB_CSUM"],
        &[],
    ),
    row(
        "unhandled-protocol",
        "no part of the stack handles its protocol here",
        &[],
        "a protocol this host has no module or socket for (`lsmod`), or a tunnel whose \
         interface is missing",
        &["UNHANDLED_PROTO", "IP_NOPROTO"],
        &[],
    ),
    row(
        "not-for-this-host",
        "it was addressed to another host at the link layer, so this host ignored it",
        &[],
        "normal on a shared segment; if it was meant for this host, check the sender's \
         neighbour entry for this host's MAC address",
        &[
            "OTHERHOST",
            "UNICAST_IN_L2_MULTICAST",
            "IPV6_NDISC_NS_OTHERHOST",
        ],
        &["ip_rcv_core"],
    ),
    row(
        "rp-filter",
        "reverse-path filtering dropped it: the route back to its source would leave through \
         another interface",
        &[Fact::RpFilter, Fact::Route],
        "compare `ip route get SOURCE` with the interface it came in on; asymmetric routing \
         (VPNs, several uplinks) needs rp_filter 2 (loose) or 0 on that interface",
        &["IP_RPFILTER"],
        &[],
    ),
    row(
        "encryption-policy",
        "an IPsec (xfrm) or PSP policy refused it",
        &[],
        "check the policies and states (`ip xfrm policy`, `ip xfrm state`) of the VPN or mesh \
         that installed them",
        &["XFRM_POLICY", "PSP_INPUT", "PSP_OUTPUT"],
        &["__xfrm_policy_check"],
    ),
    row(
        "tcp-auth",
        "TCP authentication (MD5 signature or TCP-AO) failed or was missing",
        &[],
        "the two ends disagree about the connection's key (BGP sessions use these): compare \
         their configured keys",
        &["TCP_AUTH_HDR", "TCP_MD5*", "TCP_AO*"],
        &[],
    ),
    row(
        "tcp-sequence",
        "TCP discarded a segment outside the connection's window (old, duplicate, beyond the \
         window, or with a stale timestamp)",
        &[Fact::Conntrack],
        "a few are normal (retransmissions); many point at a middlebox rewriting sequence \
         numbers, a NAT mixing two connections, or a peer ignoring the window",
        &[
            "TCP_ZEROWINDOW",
            "TCP_OLD_DATA",
            "TCP_OVERWINDOW",
            "TCP_OFOMERGE",
            "TCP_OLD_SEQUENCE",
            "TCP_INVALID_SEQUENCE",
            "TCP_INVALID_END_SEQUENCE",
            "TCP_INVALID_ACK_SEQUENCE",
            "TCP_OLD_ACK",
            "TCP_TOO_OLD_ACK",
            "TCP_ACK_UNSENT_DATA",
            "TCP_OFO_QUEUE_PRUNE",
            "TCP_OFO_DROP",
            "TCP_RFC7323_*",
        ],
        &[],
    ),
    row(
        "tcp-unexpected",
        "TCP refused a segment its connection's state does not allow (flags, a SYN or reset out \
         of place, data after close, a TTL below the minimum)",
        &[Fact::Conntrack],
        "look at the connection's other segments in the timelines: a peer that lost its state \
         (restart, NAT timeout) sends what the other end no longer expects",
        &[
            "TCP_FLAGS",
            "TCP_ABORT_ON_DATA",
            "TCP_RESET",
            "TCP_INVALID_SYN",
            "TCP_FASTOPEN",
            "TCP_MINTTL",
        ],
        &[],
    ),
    row(
        "no-route",
        "no route leads where it was going (no matching route, or an unreachable, blackhole or \
         prohibit route)",
        &[Fact::Route, Fact::Forwarding, Fact::IcmpError],
        "`ip route get DESTINATION` (and `ip rule` for policy routing) in the namespace that \
         dropped it; a container needs a default route, a host forwarding needs ip_forward",
        &["IP_OUTNOROUTES", "IP_INNOROUTES"],
        &[
            "ip_error",
            "ip6_pkt_drop",
            "ip6_pkt_discard",
            "ip6_pkt_prohibit",
        ],
    ),
    row(
        "conntrack-invalid",
        "connection tracking could not place it in any connection (state INVALID), and a rule \
         drops such packets: a TCP segment without its handshake, a reply whose request took \
         another path, or a connection the table forgot",
        &[Fact::Rule, Fact::Conntrack],
        "`conntrack -S` counts invalid packets; check that both directions pass this host \
         (asymmetric routing), and net.netfilter.nf_conntrack_tcp_loose for connections \
         picked up mid-stream",
        &[],
        &[],
    ),
    row(
        "ttl-exceeded",
        "its time to live ran out on the way (TTL/hop limit 1 on arrival at a router): a loop \
         between routers, or a sender that set a low TTL on purpose (traceroute)",
        &[Fact::Route, Fact::IcmpError],
        "a routing loop shows the same packet coming back (`ip route get DESTINATION` on each \
         router); otherwise the sender's TTL is too small for the path",
        &[],
        &[],
    ),
    row(
        "forwarding-disabled",
        "it was to be routed on to another host, but this host (or the interface it came in \
         on) does not forward",
        &[Fact::Forwarding, Fact::Route],
        "a router or container host needs net.ipv4.ip_forward=1 (net.ipv6.conf.all.forwarding=1 \
         for IPv6), and the input interface's own forwarding setting on",
        &[],
        &[],
    ),
    row(
        "ipv6-disabled",
        "it was IPv6, and IPv6 is disabled on the interface or the whole host",
        &[],
        "check net.ipv6.conf.all.disable_ipv6 and the interface's own disable_ipv6 setting",
        &["IPV6DISABLED"],
        &[],
    ),
    row(
        "neighbour",
        "the next hop's link-layer address could not be resolved (ARP or neighbour discovery \
         failed or its queue was full)",
        &[Fact::Neighbour, Fact::Route],
        "`ip neigh show` for the next hop: FAILED or INCOMPLETE means it does not answer; check \
         that it is up and on the same link, and the gateway of the route",
        &[
            "NEIGH_CREATEFAIL",
            "NEIGH_FAILED",
            "NEIGH_QUEUEFULL",
            "NEIGH_DEAD",
            "NEIGH_HH_FILLFAIL",
        ],
        &["neigh_invalidate", "__neigh_event_send"],
    ),
    row(
        "security-module",
        "a security module (SELinux, AppArmor, Smack) denied it",
        &[],
        "look for denials in the audit log (`ausearch -m avc`, `journalctl -k`) for the process \
         or label involved",
        &["SECURITY_HOOK"],
        &[],
    ),
    row(
        "queue-discipline",
        "the output device's queueing discipline dropped it (queue full, rate limit or \
         congestion control)",
        &[Fact::Qdisc],
        "`tc -s qdisc show dev DEVICE` shows the drops and limits; a shaper or a small queue on \
         that device is the cause",
        &[
            "QDISC_DROP",
            "QDISC_OVERLIMIT",
            "QDISC_CONGESTED",
            "CAKE_FLOOD",
            "FQ_BAND_LIMIT",
            "FQ_HORIZON_LIMIT",
            "FQ_FLOW_LIMIT",
            "DUALPI2_STEP_DROP",
        ],
        &[],
    ),
    row(
        "cpu-backlog",
        "the per-CPU input backlog was full: packets arrived faster than this CPU processed them",
        &[],
        "see the drops column of /proc/net/softnet_stat; raise net.core.netdev_max_backlog or \
         spread the load (RPS, more queues)",
        &["CPU_BACKLOG"],
        &["enqueue_to_backlog"],
    ),
    row(
        "device",
        "the device could not take it: not up, its ring full, or its queue purged",
        &[],
        "`ip -s link show DEVICE` (state and drops); a veth whose peer is down or a device \
         being removed drops what is queued",
        &["DEV_READY", "FULL_RING", "QUEUE_PURGE", "NO_TX_TARGET"],
        &[],
    ),
    row(
        "out-of-memory",
        "the kernel could not allocate memory for it",
        &[],
        "the host is short of memory (or of the emergency reserves): check `free`, the cgroup's \
         limits and dmesg",
        &["NOMEM", "PFMEMALLOC"],
        &[],
    ),
    row(
        "skb-processing",
        "the kernel failed to segment, copy or make room in it (GSO segmentation, a fault \
         copying from the sender's memory, too little headroom on a received buffer)",
        &[],
        "rare; report with the kernel version and the offload settings (`ethtool -k`) of the \
         devices on the path",
        // SKB_RX_HEADROOM: in some 6.18 builds (value 128, after RECURSION_LIMIT).
        &["SKB_GSO_SEG", "SKB_UCOPY_FAULT", "SKB_RX_HEADROOM"],
        &[],
    ),
    row(
        "martian-address",
        "its source or destination address is not allowed here (a local or invalid source, an \
         invalid destination)",
        &[Fact::Route],
        "a spoofed or misconfigured sender, or a NAT that left an address it should have \
         rewritten; `ip route get` both addresses",
        &[
            "IP_INADDRERRORS",
            "IP_LOCAL_SOURCE",
            "IP_INVALID_SOURCE",
            "IP_INVALID_DEST",
        ],
        &[],
    ),
    row(
        "localnet",
        "it was routed to or from 127.0.0.0/8 across an interface, which the kernel refuses \
         unless route_localnet allows it",
        &[Fact::RouteLocalnet, Fact::Route],
        "a DNAT to 127.0.0.1 (a port published on loopback) needs \
         net.ipv4.conf.IFACE.route_localnet=1, or publish on another address",
        &["IP_LOCALNET"],
        &[],
    ),
    row(
        "mtu",
        "it was larger than the output device's MTU and could not be fragmented (DF set, or \
         IPv6)",
        &[Fact::Mtu, Fact::Route, Fact::IcmpError],
        "the sender should have received \"fragmentation needed\"/\"packet too big\"; lower the \
         MTU of the sending side (a VPN or overlay interface), or clamp TCP MSS",
        &["PKT_TOO_BIG"],
        &[],
    ),
    row(
        "fragments",
        "its fragments could not be reassembled (a duplicate, a timeout, or too far out of order)",
        &[],
        "fragments are lost or reordered on the path; avoid fragmentation (MTU, MSS clamping)",
        &["DUP_FRAG", "FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR"],
        &["ip_expire", "ip6_frag_expire"],
    ),
    row(
        "neighbour-discovery",
        "an IPv6 neighbour-discovery message was invalid (fragmented, wrong hop limit, bad code \
         or options)",
        &[],
        "a misbehaving or spoofing neighbour on that link; capture it to see the sender",
        &[
            "IPV6_NDISC_FRAG",
            "IPV6_NDISC_HOP_LIMIT",
            "IPV6_NDISC_BAD_CODE",
            "IPV6_NDISC_BAD_OPTIONS",
        ],
        &[],
    ),
    row(
        "tunnel",
        "a tunnel (VXLAN, IP tunnel) refused it: an invalid header, an unknown VNI, missing \
         transmit information or an ECN conflict",
        &[],
        "check the tunnel's configuration on both ends (`ip -d link show`, `bridge fdb show` \
         for VXLAN)",
        &[
            "VXLAN_INVALID_HDR",
            "VXLAN_VNI_NOT_FOUND",
            "VXLAN_ENTRY_EXISTS",
            "IP_TUNNEL_ECN",
            "TUNNEL_TXINFO",
        ],
        &[],
    ),
    row(
        "bridge",
        "the bridge refused it: the port's STP state, a private-VLAN ARP rule, a MAC control \
         frame, or a source MAC that is invalid or the bridge's own",
        &[],
        "`bridge link show` (port states) and `bridge fdb show`; a loop or a duplicated MAC \
         address on the bridge",
        &[
            "BRIDGE_INGRESS_STP_STATE",
            "ARP_PVLAN_DISABLE",
            "MAC_IEEE_MAC_CONTROL",
            "MAC_INVALID_SOURCE",
            "LOCAL_MAC",
        ],
        &[],
    ),
    row(
        "bpf-or-tc",
        "a BPF or tc program (tc classifier, XDP, a cgroup egress program) dropped it, or tc \
         could not classify it",
        &[],
        "`bpftool net show`, `tc filter show dev DEVICE ingress|egress` and `bpftool cgroup \
         tree` list what is attached; probe's own programs never drop",
        &[
            "BPF_CGROUP_EGRESS",
            "TC_INGRESS",
            "TC_EGRESS",
            "XDP",
            "TC_COOKIE_ERROR",
            "TC_CHAIN_NOTFOUND",
            "TC_RECLASSIFY_LOOP",
        ],
        &[],
    ),
    row(
        "packet-socket",
        "a packet socket (a capture tool or a raw sender) could not take it",
        &[],
        "a capture tool is too slow (its buffer fills); its own copy is lost, not the traffic",
        &["PACKET_SOCK_ERROR"],
        &[],
    ),
    row(
        "recursion",
        "sending it recursed too deep through stacked devices (a tunnel routed into itself)",
        &[Fact::Route],
        "a tunnel whose outer packets are routed back into the tunnel: check the route to the \
         tunnel's remote end",
        &["RECURSION_LIMIT"],
        &[],
    ),
    row(
        "can-bus",
        "a CAN frame was invalid",
        &[],
        "check the CAN device and the sender's frame format",
        &[
            "CAN_RX_INVALID_FRAME",
            "CANFD_RX_INVALID_FRAME",
            "CANXL_RX_INVALID_FRAME",
        ],
        &[],
    ),
];

/// Reasons that mean something narrower where they are raised: the kernel's name is
/// generic, the place decides.
pub(super) static REFINED: &[Refined] = &[
    // ip_forward: `ttl <= 1` goes to too_many_hops, which frees with IP_INHDR.
    Refined {
        reason: "IP_INHDR",
        function: "ip_forward",
        cause: "ttl-exceeded",
    },
    // ip_error sets IP_INADDRERRORS only when the input device does not forward (a route
    // was found, or EHOSTUNREACH); IP_INNOROUTES it sets either way.
    Refined {
        reason: "IP_INADDRERRORS",
        function: "ip_error",
        cause: "forwarding-disabled",
    },
    // ip_rcv_finish_core frees what the input route lookup refused. Kernels with reasons
    // before the lookup returned its own (6.1) name only rp_filter's -EXDEV (IP_RPFILTER);
    // the rest, a martian source or destination, is NOT_SPECIFIED there.
    Refined {
        reason: "NOT_SPECIFIED",
        function: "ip_rcv_finish_core",
        cause: "martian-address",
    },
];
