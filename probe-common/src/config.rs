//! Run-time choices written into the programs at load time: the mode and the kernel-side filter
//! (a small postfix program).

/// Most instructions a kernel-side filter may have.
pub const MAX_FILTER_INSNS: usize = 32;

/// `FilterInsn::op` values. A filter is a postfix program over a stack of booleans: tests push
/// one, `AND`/`OR` pop two and push one, `NOT` flips the top. The packet is admitted when the
/// stack's top is true at the end.
pub mod filter_op {
    /// `(address & mask) == addr` for the source, destination or either (`dir`), of family
    /// `arg` (4 or 6).
    pub const NET: u8 = 1;
    /// Port within `port_lo..=port_hi` (TCP and UDP only), on the side(s) `dir` names.
    pub const PORTS: u8 = 2;
    /// IP protocol number equals `arg`.
    pub const L4_PROTO: u8 = 3;
    /// Packet family ([`family`](crate::family)) equals `arg`.
    pub const FAMILY: u8 = 4;
    pub const AND: u8 = 5;
    pub const OR: u8 = 6;
    pub const NOT: u8 = 7;
}

/// `FilterInsn::dir` values.
pub mod filter_dir {
    pub const SRC: u8 = 0;
    pub const DST: u8 = 1;
    pub const EITHER: u8 = 2;
}

/// One instruction of a kernel-side filter (see [`filter_op`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterInsn {
    /// Network address already masked, network order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    pub mask: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    pub op: u8,
    /// One of [`filter_dir`].
    pub dir: u8,
    /// Family for `NET` and `FAMILY`, protocol number for `L4_PROTO`.
    pub arg: u8,
    pub _pad: u8,
}
pod!(FilterInsn);

/// `Config::mode` values.
pub mod mode {
    /// One event per sighting into the ring buffer.
    pub const EVENTS: u8 = 0;
    /// No events: tc sightings feed per-hop latency histograms (`probe latency`).
    pub const LATENCY: u8 = 1;
    /// No events: tc sightings feed the latency histograms, drops and failed routing lookups
    /// are counted in maps (`probe watch`).
    pub const WATCH: u8 = 2;
}

/// Run-time choices handed to every program as a load-time constant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u8,
    pub _pad: u8,
    /// Bytes of each packet tc classifiers copy into their events (`--snaplen`, at most
    /// [`MAX_SNAPLEN`](crate::MAX_SNAPLEN)); 0: none, and the smaller event without bytes.
    pub snaplen: u16,
    /// Instructions in use in `filter`; 0: every packet is admitted.
    pub filter_len: u32,
    /// Inode of the traced network namespace, where the tc programs are attached: a packet
    /// they see arrived in it.
    pub netns_inum: u32,
    /// A submit wakes the reader only when its event takes the unread data in the event ring
    /// buffer past a multiple of this many bytes; other events are submitted without a wakeup
    /// and the reader's bounded poll interval collects them. 0: the kernel's own policy (a
    /// wakeup whenever the reader had caught up).
    pub wakeup_bytes: u32,
    /// 1 when the routing-decision probes are attached: tc ingress then notes each packet's
    /// arrival for them (the namespace of the input lookup that follows).
    pub routes: u8,
    pub _pad2: [u8; 3],
    pub filter: [FilterInsn; MAX_FILTER_INSNS],
}
pod!(Config);

impl Config {
    pub const DEFAULT: Self = Self {
        mode: mode::EVENTS,
        _pad: 0,
        snaplen: 0,
        filter_len: 0,
        netns_inum: 0,
        wakeup_bytes: 0,
        routes: 0,
        _pad2: [0; 3],
        filter: [FilterInsn {
            addr: [0; 16],
            mask: [0; 16],
            port_lo: 0,
            port_hi: 0,
            op: 0,
            dir: 0,
            arg: 0,
            _pad: 0,
        }; MAX_FILTER_INSNS],
    };
}

/// Name of the global holding the [`Config`].
pub const CONFIG_GLOBAL: &str = "CONFIG";
