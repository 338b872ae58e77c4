//! The words events are made of: hooks, verdicts, families, engines, what decided, directions.
//! Typed, so that code compares values instead of spellings. Each mechanism reports them in its
//! own spelling (the kernel's `NF_INET_FORWARD` through nf_hook_slow, nftables' `forward` in a
//! trace message; NFPROTO's `ipv4`, nftables' `ip`), and the JSON schema keeps that spelling per
//! event kind: the `*_name` functions give each one.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which side of an interface a tc program saw a packet on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A netfilter hook of the inet families (NF_INET_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Ingress,
    Unknown,
}

impl Hook {
    /// Every hook, for the JSON schema's list of spellings.
    pub const ALL: [Hook; 7] = [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
        Hook::Ingress,
        Hook::Unknown,
    ];

    /// By NF_INET_* number.
    pub fn from_number(n: u8) -> Self {
        match n {
            0 => Hook::Prerouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::Postrouting,
            5 => Hook::Ingress,
            _ => Hook::Unknown,
        }
    }

    /// By the name nftables gives it in a chain's `hook` clause.
    pub fn from_nft(name: &str) -> Self {
        match name {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            "ingress" => Hook::Ingress,
            _ => Hook::Unknown,
        }
    }

    /// The kernel's spelling: `FORWARD`.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
            Hook::Ingress => "INGRESS",
            Hook::Unknown => "unknown",
        }
    }

    /// nftables' spelling: `forward`.
    pub fn nft_name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
            Hook::Ingress => "ingress",
            Hook::Unknown => "unknown",
        }
    }
}

/// A netfilter protocol family (NFPROTO_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Ipv4,
    Arp,
    Netdev,
    Bridge,
    Ipv6,
    /// A number no name is known for.
    Other(u8),
}

impl Family {
    /// Every named family, for the JSON schema's list of spellings.
    pub const NAMED: [Family; 6] = [
        Family::Inet,
        Family::Ipv4,
        Family::Arp,
        Family::Netdev,
        Family::Bridge,
        Family::Ipv6,
    ];

    pub fn from_nfproto(pf: u8) -> Self {
        match pf {
            1 => Family::Inet,
            2 => Family::Ipv4,
            3 => Family::Arp,
            5 => Family::Netdev,
            7 => Family::Bridge,
            10 => Family::Ipv6,
            n => Family::Other(n),
        }
    }

    /// By the name nftables gives it (`ip`, `ip6`, `inet`, ...).
    pub fn from_nft(name: &str) -> Self {
        match name {
            "inet" => Family::Inet,
            "ip" => Family::Ipv4,
            "arp" => Family::Arp,
            "netdev" => Family::Netdev,
            "bridge" => Family::Bridge,
            "ip6" => Family::Ipv6,
            other => Family::Other(
                other
                    .strip_prefix("family-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            ),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ipv4 => 2,
            Family::Arp => 3,
            Family::Netdev => 5,
            Family::Bridge => 7,
            Family::Ipv6 => 10,
            Family::Other(n) => n,
        }
    }

    /// The kernel's NFPROTO spelling: `ipv4`.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ipv4 => "ipv4",
            Family::Arp => "arp",
            Family::Netdev => "netdev",
            Family::Bridge => "bridge",
            Family::Ipv6 => "ipv6",
            Family::Other(_) => "unknown",
        }
    }

    /// nftables' spelling: `ip`.
    pub fn nft_name(self) -> std::borrow::Cow<'static, str> {
        match self {
            Family::Ipv4 => "ip".into(),
            Family::Ipv6 => "ip6".into(),
            Family::Other(n) => format!("family-{n}").into(),
            other => other.kernel_name().into(),
        }
    }
}

/// What a hook, chain or rule decided. Netfilter's NF_* verdicts and nftables' own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    /// The packet was taken over (NF_STOLEN), or queued to userspace by a hook.
    Stolen,
    Queue,
    Repeat,
    Stop,
    /// nftables: go on with the next rule.
    Continue,
    Break,
    Jump,
    Goto,
    Return,
    /// A rule that matched without a verdict.
    None,
    Unknown,
}

impl Verdict {
    /// NF_* verdict (low byte; the rest carries a queue number or errno).
    pub fn from_nf(v: u32) -> Self {
        match v & 0xff {
            0 => Verdict::Drop,
            1 => Verdict::Accept,
            2 => Verdict::Stolen,
            3 => Verdict::Queue,
            4 => Verdict::Repeat,
            5 => Verdict::Stop,
            _ => Verdict::Unknown,
        }
    }

    /// An nftables verdict code (NFT_CONTINUE ... NFT_RETURN are negative, NF_* otherwise).
    pub fn from_nft(code: i32) -> Self {
        match code {
            -1 => Verdict::Continue,
            -2 => Verdict::Break,
            -3 => Verdict::Jump,
            -4 => Verdict::Goto,
            -5 => Verdict::Return,
            c if c >= 0 => Verdict::from_nf(c as u32),
            _ => Verdict::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
            Verdict::Stolen => "stolen",
            Verdict::Queue => "queue",
            Verdict::Repeat => "repeat",
            Verdict::Stop => "stop",
            Verdict::Continue => "continue",
            Verdict::Break => "break",
            Verdict::Jump => "jump",
            Verdict::Goto => "goto",
            Verdict::Return => "return",
            Verdict::None => "none",
            Verdict::Unknown => "unknown",
        }
    }

    /// Every verdict, for parsing and for the JSON schema's list of spellings.
    pub const ALL: [Verdict; 13] = [
        Verdict::Accept,
        Verdict::Drop,
        Verdict::Stolen,
        Verdict::Queue,
        Verdict::Repeat,
        Verdict::Stop,
        Verdict::Continue,
        Verdict::Break,
        Verdict::Jump,
        Verdict::Goto,
        Verdict::Return,
        Verdict::None,
        Verdict::Unknown,
    ];

    fn from_name(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .unwrap_or(Verdict::Unknown)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The engine whose table decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// nf_tables: native nft and iptables-nft.
    Nftables,
    /// x_tables: legacy iptables.
    Iptables,
    Unknown,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Nftables => "nftables",
            Engine::Iptables => "iptables",
            Engine::Unknown => "unknown",
        }
    }
}

/// What decided in an nftables trace: a rule, the end of a regular chain, or a base chain's
/// policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    Rule,
    Return,
    Policy,
    #[serde(other)]
    Unknown,
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Rule => "rule",
            DecidedBy::Return => "return",
            DecidedBy::Policy => "policy",
            DecidedBy::Unknown => "unknown",
        }
    }
}

/// Serde in a chosen spelling, for fields whose JSON keeps the reporting mechanism's words.
/// Each module also gives the JSON schema of its spelling (`schema`): a string, one of the
/// spellings `$to` gives the values `$all`, so the schema cannot drift from the serializer.
macro_rules! spelled {
    ($module:ident, $ty:ty, $to:expr, $from:expr, $all:expr) => {
        pub mod $module {
            use super::*;
            pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let to: fn(&$ty) -> std::borrow::Cow<'static, str> = $to;
                let all: &[$ty] = &$all;
                spellings(all.iter().map(|v| to(v)))
            }
            pub fn serialize<S: serde::Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                let to: fn(&$ty) -> std::borrow::Cow<'static, str> = $to;
                s.serialize_str(&to(v))
            }
            pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let from: fn(&str) -> $ty = $from;
                let s = std::borrow::Cow::<str>::deserialize(d)?;
                Ok(from(&s))
            }
        }
    };
}

/// Serde spellings per field: `#[serde(with = "vocab::serde_as::hook_kernel")]`.
pub mod serde_as {
    use super::*;

    /// `{"type": "string", "enum": [...]}` of distinct spellings, in order.
    fn spellings(names: impl Iterator<Item = std::borrow::Cow<'static, str>>) -> schemars::Schema {
        let mut list: Vec<String> = Vec::new();
        for n in names {
            if !list.iter().any(|l| *l == n) {
                list.push(n.into_owned());
            }
        }
        schemars::json_schema!({ "type": "string", "enum": list })
    }

    spelled!(
        hook_kernel,
        Hook,
        |h| h.kernel_name().into(),
        |s| Hook::from_nft(&s.to_ascii_lowercase()),
        Hook::ALL
    );
    spelled!(
        hook_nft,
        Hook,
        |h| h.nft_name().into(),
        Hook::from_nft,
        Hook::ALL
    );
    // A family without a name is `unknown` in the kernel's spelling.
    spelled!(
        family_kernel,
        Family,
        |f| f.kernel_name().into(),
        |s| match s {
            "ipv4" => Family::Ipv4,
            "ipv6" => Family::Ipv6,
            other => Family::from_nft(other),
        },
        [
            Family::Inet,
            Family::Ipv4,
            Family::Arp,
            Family::Netdev,
            Family::Bridge,
            Family::Ipv6,
            Family::Other(0),
        ]
    );
    spelled!(
        family_nft,
        Family,
        |f| f.nft_name(),
        Family::from_nft,
        Family::NAMED
    );
    spelled!(
        verdict,
        Verdict,
        |v| v.as_str().into(),
        Verdict::from_name,
        Verdict::ALL
    );

    /// nftables' family spelling: a name, or `family-N` for a number without one.
    pub fn family_nft_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [family_nft::schema(g), { "type": "string", "pattern": "^family-[0-9]+$" }]
        })
    }

    /// An optional nftables hook (absent when unknown).
    pub fn opt_hook_nft_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        hook_nft::schema(g)
    }

    /// An optional nftables hook.
    pub mod opt_hook_nft {
        use super::*;
        pub fn serialize<S: serde::Serializer>(v: &Option<Hook>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(h) => s.serialize_some(h.nft_name()),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Hook>, D::Error> {
            let s = Option::<std::borrow::Cow<str>>::deserialize(d)?;
            Ok(s.map(|s| Hook::from_nft(&s)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for n in 0..6 {
            let h = Hook::from_number(n);
            assert_eq!(Hook::from_nft(h.nft_name()), h);
            assert_eq!(h.kernel_name().to_ascii_lowercase(), h.nft_name());
        }
        for pf in [1, 2, 3, 5, 7, 10, 42] {
            let f = Family::from_nfproto(pf);
            assert_eq!(Family::from_nft(&f.nft_name()), f);
            assert_eq!(f.number(), pf);
        }
        for code in -5..6 {
            let v = Verdict::from_nft(code);
            assert_eq!(Verdict::from_name(v.as_str()), v);
        }
    }
}
