//! Where the running kernel keeps what the programs read: struct member and tracepoint field
//! offsets, found by userspace in BTF and tracefs and written into the programs at load time.

/// Marks a layout offset the running kernel does not have.
pub const ABSENT: u16 = u16::MAX;

/// Where fields sit in a fib tracepoint record (`fib:fib_table_lookup` or
/// `fib6:fib6_table_lookup`), read from its `format` file at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FibTpLayout {
    pub tb_id: u16,
    pub err: u16,
    pub oif: u16,
    pub iif: u16,
    pub proto: u16,
    pub tos: u16,
    pub scope: u16,
    pub flags: u16,
    pub src: u16,
    pub dst: u16,
    /// IPv4 gateway (fib) or the only gateway (fib6).
    pub gw4: u16,
    pub gw6: u16,
    pub sport: u16,
    pub dport: u16,
    pub name: u16,
    /// 1 when `name` is a `__data_loc char[]` (a u32: offset of the string in the record in
    /// the low 16 bits), as on 5.10; 0 when it is an inline array. Takes the place of padding.
    pub name_loc: u16,
}
pod!(FibTpLayout);

impl FibTpLayout {
    pub const ABSENT: Self = Self {
        tb_id: ABSENT,
        err: ABSENT,
        oif: ABSENT,
        iif: ABSENT,
        proto: ABSENT,
        tos: ABSENT,
        scope: ABSENT,
        flags: ABSENT,
        src: ABSENT,
        dst: ABSENT,
        gw4: ABSENT,
        gw6: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        name: ABSENT,
        name_loc: 0,
    };
}

/// Where the raw tracepoint `fib_table_lookup(u32 tb_id, const struct flowi4 *flp, const
/// struct fib_nh_common *nhc, int err)` finds what it reads, from BTF: the record of the
/// ordinary tracepoint does not say whether the next hop has a gateway (the kernel leaves the
/// gateway fields unwritten when it has none), the next hop itself does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fib4RawLayout {
    // struct flowi4
    pub oif: u16,
    pub iif: u16,
    /// `flowic_tos`, or `flowic_dscp` on kernels that store the DS field instead.
    pub tos: u16,
    pub scope: u16,
    pub proto: u16,
    pub flags: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub sport: u16,
    pub dport: u16,
    // struct fib_nh_common
    pub nhc_gw_family: u16,
    pub nhc_gw: u16,
    pub nhc_dev: u16,
    // struct net_device
    pub dev_name: u16,
}
pod!(Fib4RawLayout);

impl Fib4RawLayout {
    pub const ABSENT: Self = Self {
        oif: ABSENT,
        iif: ABSENT,
        tos: ABSENT,
        scope: ABSENT,
        proto: ABSENT,
        flags: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        nhc_gw_family: ABSENT,
        nhc_gw: ABSENT,
        nhc_dev: ABSENT,
        dev_name: ABSENT,
    };

    /// Every offset is known: the raw tracepoint can stand in for the ordinary one.
    pub fn complete(&self) -> bool {
        [
            self.oif,
            self.iif,
            self.tos,
            self.scope,
            self.proto,
            self.flags,
            self.saddr,
            self.daddr,
            self.sport,
            self.dport,
            self.nhc_gw_family,
            self.nhc_gw,
            self.nhc_dev,
            self.dev_name,
        ]
        .iter()
        .all(|&o| o != ABSENT)
    }
}

/// Offsets of kernel struct members and tracepoint fields the programs read, taken from the
/// running kernel's BTF and tracefs at load time. [`ABSENT`] where the kernel lacks one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    // struct sk_buff
    pub skb_head: u16,
    pub skb_network_header: u16,
    pub skb_transport_header: u16,
    pub skb_dev: u16,
    pub skb_len: u16,
    // struct net_device
    pub dev_ifindex: u16,
    pub dev_nd_net: u16,
    // struct net
    pub net_ns_inum: u16,
    // struct sk_buff's socket and the socket's namespace (struct sock_common)
    pub skb_sk: u16,
    pub sk_net: u16,
    // tracepoint skb:kfree_skb
    pub kfree_skbaddr: u16,
    pub kfree_location: u16,
    pub kfree_protocol: u16,
    pub kfree_reason: u16,
    /// The receiving socket, when the drop happened on its way in (Linux 6.10+).
    pub kfree_rx_sk: u16,
    // struct nf_hook_state
    pub nfstate_hook: u16,
    pub nfstate_pf: u16,
    pub nfstate_in: u16,
    pub nfstate_out: u16,
    // struct nft_pktinfo, nft_chain, nft_table (module nf_tables)
    pub nftpkt_skb: u16,
    pub nftpkt_state: u16,
    pub nftchain_name: u16,
    pub nftchain_table: u16,
    pub nfttable_name: u16,
    // struct xt_table (module x_tables); argument positions of ipt_do_table, which changed
    // order across kernel versions
    pub xttable_name: u16,
    pub ipt_arg_table: u16,
    pub ipt_arg_skb: u16,
    pub ipt_arg_state: u16,
    // struct fib_lookup_arg, fib_rule, flowi
    pub fibarg_rule: u16,
    pub fibrule_pref: u16,
    pub fibrule_table: u16,
    pub fibrule_action: u16,
    pub flowi4_saddr: u16,
    pub flowi4_daddr: u16,
    pub fibops_family: u16,
    // struct task_struct and nsproxy: the current task's network namespace
    pub task_nsproxy: u16,
    pub nsproxy_net_ns: u16,
    // struct fib6_table and flowi6: what the raw tracepoint fib6_table_lookup checks its
    // lookup by (the record of the ordinary tracepoint carries no namespace)
    pub fib6_tb6_id: u16,
    pub flowi6_daddr: u16,
    pub fib4: FibTpLayout,
    pub fib6: FibTpLayout,
    pub fib4_raw: Fib4RawLayout,
}
pod!(KernelLayout);

impl KernelLayout {
    pub const ABSENT: Self = Self {
        skb_head: ABSENT,
        skb_network_header: ABSENT,
        skb_transport_header: ABSENT,
        skb_dev: ABSENT,
        skb_len: ABSENT,
        dev_ifindex: ABSENT,
        dev_nd_net: ABSENT,
        net_ns_inum: ABSENT,
        skb_sk: ABSENT,
        sk_net: ABSENT,
        kfree_skbaddr: ABSENT,
        kfree_location: ABSENT,
        kfree_protocol: ABSENT,
        kfree_reason: ABSENT,
        kfree_rx_sk: ABSENT,
        nfstate_hook: ABSENT,
        nfstate_pf: ABSENT,
        nfstate_in: ABSENT,
        nfstate_out: ABSENT,
        nftpkt_skb: ABSENT,
        nftpkt_state: ABSENT,
        nftchain_name: ABSENT,
        nftchain_table: ABSENT,
        nfttable_name: ABSENT,
        xttable_name: ABSENT,
        ipt_arg_table: ABSENT,
        ipt_arg_skb: ABSENT,
        ipt_arg_state: ABSENT,
        fibarg_rule: ABSENT,
        fibrule_pref: ABSENT,
        fibrule_table: ABSENT,
        fibrule_action: ABSENT,
        flowi4_saddr: ABSENT,
        flowi4_daddr: ABSENT,
        fibops_family: ABSENT,
        task_nsproxy: ABSENT,
        nsproxy_net_ns: ABSENT,
        fib6_tb6_id: ABSENT,
        flowi6_daddr: ABSENT,
        fib4: FibTpLayout::ABSENT,
        fib6: FibTpLayout::ABSENT,
        fib4_raw: Fib4RawLayout::ABSENT,
    };
}

/// Name of the global holding the [`KernelLayout`].
pub const LAYOUT_GLOBAL: &str = "LAYOUT";
