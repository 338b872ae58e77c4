//! Keys of the maps `probe watch` counts into: drops by reason, place and namespace, and failed
//! routing lookups by table and error. Values are per-CPU `u64` counts; no event is written.

/// One kind of drop: where (function, interface, namespace) and why (reason code).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropCountKey {
    /// Address in the kernel of the code that dropped the packet (0: not reported).
    pub location: u64,
    /// `enum skb_drop_reason` of the running kernel (0: not reported, kernels before 5.17).
    pub reason: u32,
    /// Interface of the skb, in its own namespace (0: none).
    pub ifindex: u32,
    /// Inode of the skb's network namespace (0: unknown).
    pub netns_inum: u32,
    pub _pad: u32,
}
pod!(DropCountKey);

/// One kind of failed routing lookup: a table answered with an error.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteFailKey {
    pub table: u32,
    /// The lookup's negative errno (-EAGAIN: nothing in this table, the next rule's is tried).
    pub err: i32,
    /// [`family`](crate::family) of the lookup.
    pub family: u8,
    pub _pad: [u8; 3],
}
pod!(RouteFailKey);

/// Name of the drop-count map.
pub const WATCH_DROPS_MAP: &str = "WATCH_DROPS";
/// Name of the routing-failure map.
pub const WATCH_ROUTE_FAILS_MAP: &str = "WATCH_ROUTE_FAILS";
/// Entries of the drop-count map: kinds of drop, not packets.
pub const WATCH_DROPS_ENTRIES: u32 = 4096;
/// Entries of the routing-failure map.
pub const WATCH_ROUTE_FAILS_ENTRIES: u32 = 1024;
