//! Decoded events: owned types that know nothing of eBPF, so a saved stream can be printed
//! without the kernel programs. Produced by [`crate::decode`] (and by the nftables trace reader),
//! consumed by the correlator and the renderers; serde both ways, so recordings store them as
//! they are.

mod route;
pub mod vocab;

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use vocab::serde_as;
pub use vocab::{DecidedBy, Direction, Engine, Family, Hook, Verdict};

/// One sighting from a kernel program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds at the sighting.
    pub ts_ns: u64,
    pub cpu: u32,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A packet seen by a tc classifier.
    Tc(TcSighting),
    /// A packet the kernel dropped.
    Drop(DropSighting),
    /// A routing table lookup and its result.
    Fib(FibLookup),
    /// An nftables rule, chain return or chain policy that decided about a packet (`--rules`).
    Rule(Box<RuleVerdict>),
    /// A netfilter hook's verdict on a packet (`nf_hook_slow`).
    Netfilter(HookVerdict),
    /// A table's base chain verdict (`nft_do_chain` / `ipt_do_table`).
    Chain(ChainVerdict),
    /// The policy routing rule that chose a routing table (`fib_rules_lookup`).
    FibRule(FibRuleMatch),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TcSighting {
    pub ifindex: u32,
    pub direction: Direction,
    /// Network namespace cookie; 0 when the kernel could not tell.
    pub netns_cookie: u64,
    pub mark: u32,
    pub packet: Packet,
    /// For an ICMP error: the packet it answers, as its payload quotes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quoted: Option<Packet>,
    /// The packet's first bytes, when the trace copied them (`--snaplen`). Not in JSON: a
    /// recording keeps them in the raw event, and `--pcapng` writes them.
    #[serde(skip)]
    pub frame: Option<Frame>,
}

/// The first bytes of a packet as a tc classifier saw them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub link: LinkLayer,
    pub bytes: Vec<u8>,
}

/// What a captured frame starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header (bridges, veths, physical NICs).
    Ethernet,
    /// The network header (tun, WireGuard).
    Ip,
}

/// Transport protocol, by IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Any other IP protocol number.
    #[serde(untagged)]
    Other(u8),
}

impl Transport {
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Transport::Tcp,
            17 => Transport::Udp,
            1 => Transport::Icmp,
            58 => Transport::Icmpv6,
            other => Transport::Other(other),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
            Transport::Icmp => 1,
            Transport::Icmpv6 => 58,
            Transport::Other(n) => n,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp => f.write_str("tcp"),
            Transport::Udp => f.write_str("udp"),
            Transport::Icmp => f.write_str("icmp"),
            Transport::Icmpv6 => f.write_str("icmpv6"),
            Transport::Other(n) => match n {
                0 => f.write_str("hopopt"),
                2 => f.write_str("igmp"),
                4 => f.write_str("ipip"),
                47 => f.write_str("gre"),
                50 => f.write_str("esp"),
                132 => f.write_str("sctp"),
                n => write!(f, "proto-{n}"),
            },
        }
    }
}

/// What was read of a packet's headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Packet {
    /// EtherType, e.g. 0x0800 for IPv4.
    pub ethertype: u16,
    /// skb length at the observation point.
    pub len: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpHeader>,
    /// The headers were cut short: fields after the cut are absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct IpHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Transport,
    /// IPv4 identification; 0 for IPv6.
    pub ip_id: u16,
    /// A non-first IPv4 fragment: no transport header.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub l4: Option<L4Header>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum L4Header {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        tcp_flags: TcpFlags,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        icmp_type: u8,
        icmp_code: u8,
        /// Echo identifier and sequence (meaningful for echo request/reply only).
        icmp_id: u16,
        icmp_seq: u16,
    },
}

/// TCP flags, rendered like tcpdump (`S`, `S.`, `P.`, `F.`, `R`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

impl std::fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        for (bit, c) in [
            (Self::SYN, 'S'),
            (Self::FIN, 'F'),
            (Self::RST, 'R'),
            (Self::PSH, 'P'),
            (Self::URG, 'U'),
        ] {
            if self.0 & bit != 0 {
                s.push(c);
            }
        }
        if self.0 & Self::ACK != 0 {
            s.push('.');
        }
        if s.is_empty() {
            s.push_str("none");
        }
        f.write_str(&s)
    }
}

/// A string of the flags `Display` writes, in its order: `S`, `S.`, `P.`, `F.`, `R`, `none`.
impl JsonSchema for TcpFlags {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TcpFlags".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "TCP flags as tcpdump writes them (S, S., P., F., R; none).",
            "type": "string",
            "minLength": 1,
            "pattern": "^(none|S?F?R?P?U?\\.?)$"
        })
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TcpFlags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        let mut bits = 0;
        for c in text.chars() {
            bits |= match c {
                'S' => Self::SYN,
                'F' => Self::FIN,
                'R' => Self::RST,
                'P' => Self::PSH,
                'U' => Self::URG,
                '.' => Self::ACK,
                _ => 0,
            };
        }
        Ok(TcpFlags(bits))
    }
}

/// A packet the kernel freed as dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DropSighting {
    /// Kernel address of the sk_buff (identifies the packet among its other sightings).
    pub skb: u64,
    /// `enum skb_drop_reason` value (0 when the kernel does not report reasons).
    pub reason_code: u32,
    /// Its name in the running kernel, e.g. NETFILTER_DROP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Kernel text address of the code that dropped it.
    pub location: u64,
    /// `function+0xoffset` of `location`, when /proc/kallsyms shows addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location_sym: Option<String>,
    /// Device the skb was on (0: none).
    pub ifindex: u32,
    /// Inode number of the device's network namespace (0: unknown).
    pub netns: u32,
    pub packet: Packet,
}

/// The kernel's local table (RT_TABLE_LOCAL): this host's own addresses.
pub const RT_TABLE_LOCAL: u32 = 255;

/// A routing table lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FibLookup {
    pub table: u32,
    /// Name from rt_tables (main, local, or the VPN's table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    /// 0 when a route was found, else a negative errno.
    pub err: i32,
    /// Name of `err` (ENETUNREACH, EHOSTUNREACH, EACCES for a prohibit route, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The output device the route chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Interfaces of the flow being routed (0 = any).
    pub oif: i32,
    pub iif: i32,
    pub proto: Transport,
    pub sport: u16,
    pub dport: u16,
    pub tos: u8,
    pub scope: u8,
    pub flags: u8,
    /// The mechanism that reported it, e.g. `tracepoint:fib:fib_table_lookup`.
    pub source: Mechanism,
    /// In a timeline, this lookup is a routing decision: the lookups the kernel made for it
    /// before this one, in order (tables without a route, the try before a source address or
    /// port was chosen). Empty for a lone lookup and in `--events` output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried: Vec<FibTry>,
    /// The priority of the `ip rule` that chose the deciding table, when the kernel reported it
    /// (`fib_rules_lookup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_pref: Option<u32>,
    /// Inode of the network namespace the lookup ran in (as in /proc/PID/ns/net); 0 when
    /// unknown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub netns: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// One earlier lookup of a routing decision (see [`FibLookup::tried`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FibTry {
    /// CLOCK_MONOTONIC time of the lookup.
    pub ts_ns: u64,
    pub table: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    /// 0 when the table had a route, else a negative errno.
    pub err: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The source address the lookup was made with (unspecified before one was chosen).
    pub src: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// Linux errno values routing reports (the same on every architecture probe runs on).
pub mod errno {
    pub const ESRCH: i32 = 3;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const ENETUNREACH: i32 = 101;
    pub const EHOSTUNREACH: i32 = 113;
}

/// The kernel mechanism an event came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Mechanism {
    #[serde(rename = "tracepoint:fib:fib_table_lookup")]
    FibTracepoint,
    #[serde(rename = "tracepoint:fib6:fib6_table_lookup")]
    Fib6Tracepoint,
    #[serde(rename = "raw_tracepoint:fib_table_lookup")]
    FibRawTracepoint,
    #[serde(rename = "fexit:nf_hook_slow")]
    FexitNfHookSlow,
    #[serde(rename = "kretprobe:nf_hook_slow")]
    KretprobeNfHookSlow,
    #[serde(rename = "unknown", other)]
    Unknown,
}

/// One step of nftables rule evaluation for a traced packet (iptables-nft rules included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RuleVerdict {
    /// The kernel's id for this packet's walk through the hooks.
    pub trace_id: u32,
    /// nftables family: ip, ip6, inet, bridge, arp, netdev.
    #[serde(with = "serde_as::family_nft")]
    #[schemars(schema_with = "serde_as::family_nft_schema")]
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// The netfilter hook of the base chain this walk started from, when known.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_as::opt_hook_nft"
    )]
    #[schemars(schema_with = "serde_as::opt_hook_nft_schema")]
    pub hook: Option<Hook>,
    /// What decided: a rule, the end of a regular chain (return), or a base chain's policy.
    pub decided_by: DecidedBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_handle: Option<u64>,
    /// The rule as `nft list` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// accept, drop, continue, jump, goto, return, queue, stolen...
    #[serde(with = "serde_as::verdict")]
    #[schemars(schema_with = "serde_as::verdict::schema")]
    pub verdict: Verdict,
    /// Target chain of a jump or goto.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub iif: u32,
    pub oif: u32,
    pub mark: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet: Option<Packet>,
    /// The headers `packet` was read from, kept for recordings.
    #[serde(skip)]
    pub headers: Option<RawHeaders>,
}

impl RuleVerdict {
    /// `rule 12 [iifname "docker0" ... drop] -> drop`, `policy -> accept`, `rule 8 -> jump X`.
    pub fn decision(&self) -> String {
        let by = match (self.decided_by, self.rule_handle, &self.rule) {
            (DecidedBy::Rule, Some(h), Some(text)) => format!("rule {h} [{text}]"),
            (DecidedBy::Rule, Some(h), None) => format!("rule {h}"),
            (other, _, _) => other.as_str().to_owned(),
        };
        match &self.target {
            Some(t) => format!("{by} -> {} {t}", self.verdict),
            None => format!("{by} -> {}", self.verdict),
        }
    }
}

/// Network and transport headers as the kernel sent them in an nftables trace message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RawHeaders {
    pub network: Vec<u8>,
    pub transport: Option<Vec<u8>>,
}

/// A netfilter hook's verdict on one packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HookVerdict {
    /// PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING.
    #[serde(with = "serde_as::hook_kernel")]
    #[schemars(schema_with = "serde_as::hook_kernel::schema")]
    pub hook: Hook,
    /// ipv4, ipv6, bridge, ...
    #[serde(with = "serde_as::family_kernel")]
    #[schemars(schema_with = "serde_as::family_kernel::schema")]
    pub family: Family,
    /// accept, drop, stolen (stolen or queued).
    #[serde(with = "serde_as::verdict")]
    #[schemars(schema_with = "serde_as::verdict::schema")]
    pub verdict: Verdict,
    /// The errno a drop carried (EPERM for a plain DROP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    pub netns: u32,
    pub skb: u64,
    /// Time spent running the hook's chains.
    pub duration_ns: u64,
    pub packet: Packet,
    /// fexit:nf_hook_slow or kretprobe:nf_hook_slow.
    pub source: Mechanism,
}

/// Which engine's table and base chain decided, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ChainVerdict {
    /// nftables (native nft and iptables-nft) or iptables (legacy).
    pub engine: Engine,
    pub table: String,
    /// Base chain (nftables only; legacy iptables reports the table).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain: String,
    #[serde(with = "serde_as::hook_kernel")]
    #[schemars(schema_with = "serde_as::hook_kernel::schema")]
    pub hook: Hook,
    #[serde(with = "serde_as::family_kernel")]
    #[schemars(schema_with = "serde_as::family_kernel::schema")]
    pub family: Family,
    /// accept, drop, stolen, queue, repeat, stop.
    #[serde(with = "serde_as::verdict")]
    #[schemars(schema_with = "serde_as::verdict::schema")]
    pub verdict: Verdict,
    pub skb: u64,
}

/// The `ip rule` that chose the routing table for a lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FibRuleMatch {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Rule priority, as `ip rule` shows it.
    pub pref: u32,
    pub table: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    /// to-table, blackhole, unreachable, prohibit, ...
    pub action: RuleAction,
    pub err: i32,
}

/// What an `ip rule` does (FR_ACT_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    ToTable,
    Goto,
    Nop,
    Blackhole,
    Unreachable,
    Prohibit,
    #[serde(other)]
    Unknown,
}

impl RuleAction {
    pub fn from_number(a: u8) -> Self {
        match a {
            1 => RuleAction::ToTable,
            2 => RuleAction::Goto,
            3 => RuleAction::Nop,
            6 => RuleAction::Blackhole,
            7 => RuleAction::Unreachable,
            8 => RuleAction::Prohibit,
            _ => RuleAction::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::ToTable => "to-table",
            RuleAction::Goto => "goto",
            RuleAction::Nop => "nop",
            RuleAction::Blackhole => "blackhole",
            RuleAction::Unreachable => "unreachable",
            RuleAction::Prohibit => "prohibit",
            RuleAction::Unknown => "unknown",
        }
    }
}
