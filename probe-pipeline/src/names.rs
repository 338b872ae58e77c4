//! Names the kernel only gives as numbers: drop reasons (from the running kernel), kernel text
//! addresses (/proc/kallsyms) and routing table ids (rt_tables). probe-user reads them from the
//! running kernel and host; recordings carry them, so a replay names events the same way.

use std::collections::HashMap;

use crate::event::{Event, EventBody};

/// Everything needed to put names on decoded events.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub drop_reasons: DropReasons,
    pub symbols: KernelSymbols,
    pub route_tables: RouteTables,
}

impl Names {
    /// Fills the name fields of an event from the numbers it carries.
    pub fn enrich(&self, event: &mut Event) {
        match &mut event.body {
            EventBody::Tc(_) | EventBody::Rule(_) => {}
            EventBody::Drop(d) => {
                d.reason = self.drop_reasons.name(d.reason_code).map(str::to_owned);
                d.location_sym = self.symbols.symbolize(d.location);
            }
            EventBody::Fib(f) => {
                f.table_name = self.route_tables.name(f.table).map(str::to_owned);
            }
            EventBody::FibRule(r) => {
                r.table_name = self.route_tables.name(r.table).map(str::to_owned);
            }
            EventBody::Netfilter(_) | EventBody::Chain(_) => {}
        }
    }
}

/// `enum skb_drop_reason` value → name without the SKB_DROP_REASON_ prefix.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DropReasons(HashMap<u32, String>);

impl DropReasons {
    /// From (value, name) pairs; names lose the kernel's `SKB_DROP_REASON_` prefix.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, String)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(v, n)| match n.strip_prefix("SKB_DROP_REASON_") {
                    Some(short) => (v, short.to_owned()),
                    None => (v, n),
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The value of a reason by name (without the prefix).
    pub fn code(&self, name: &str) -> Option<u32> {
        self.0
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(c, _)| *c)
    }

    pub fn name(&self, code: u32) -> Option<&str> {
        self.0.get(&code).map(String::as_str)
    }

    /// Every name, in the kernel's order (by value).
    pub fn names(&self) -> Vec<&str> {
        let mut all: Vec<(&u32, &String)> = self.0.iter().collect();
        all.sort_unstable();
        all.into_iter().map(|(_, n)| n.as_str()).collect()
    }
}

/// Kernel function symbols, for turning a drop location into `function+0xoff`.
#[derive(Clone, Debug, Default)]
pub struct KernelSymbols {
    /// Sorted by address.
    syms: Vec<(u64, String)>,
}

impl KernelSymbols {
    /// From the text of /proc/kallsyms (function symbols only; hidden addresses give none).
    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_owned()))
            })
            .collect();
        syms.sort_unstable_by_key(|(a, _)| *a);
        Self { syms }
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Whether `name` is a function of the kernel (or of a loaded module).
    pub fn has(&self, name: &str) -> bool {
        self.syms.iter().any(|(_, n)| n == name)
    }

    /// Adds one function start (used when replaying a recording).
    pub fn insert(&mut self, addr: u64, name: String) {
        let i = self.syms.partition_point(|(a, _)| *a < addr);
        if self.syms.get(i).is_none_or(|(a, _)| *a != addr) {
            self.syms.insert(i, (addr, name));
        }
    }

    /// `function+0xoffset`, or None when addresses are hidden or unknown.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        if addr == 0 {
            return None;
        }
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        let (base, name) = self.syms.get(i.checked_sub(1)?)?;
        Some(format!("{name}+0x{:x}", addr - base))
    }
}

/// Routing table id → name from iproute2's rt_tables files, with the kernel's reserved ids.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RouteTables(HashMap<u32, String>);

impl Default for RouteTables {
    fn default() -> Self {
        Self(HashMap::from([
            (253, "default".to_owned()),
            (254, "main".to_owned()),
            (255, "local".to_owned()),
        ]))
    }
}

impl RouteTables {
    /// Adds the entries of an rt_tables file (`ID NAME` lines, `#` comments).
    pub fn add(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut it = line.split_whitespace();
            if let (Some(id), Some(name)) = (it.next(), it.next())
                && let Ok(id) = id.parse::<u32>()
                && id != 0
            {
                self.0.insert(id, name.to_owned());
            }
        }
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.0.get(&id).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizes_nearest_preceding_function() {
        let syms = KernelSymbols::parse(
            "ffffffff81000000 T _text\nffffffff81200000 t ip_forward\n\
             ffffffff81200400 T ip_rcv\nffffffff81300000 d some_data\n",
        );
        assert_eq!(
            syms.symbolize(0xffffffff81200123).as_deref(),
            Some("ip_forward+0x123")
        );
        assert_eq!(
            syms.symbolize(0xffffffff81200400).as_deref(),
            Some("ip_rcv+0x0")
        );
        assert_eq!(syms.symbolize(0x1000), None);
        assert_eq!(syms.symbolize(0), None);
        // Hidden addresses (kptr_restrict) parse to nothing.
        assert!(
            KernelSymbols::parse("0000000000000000 T ip_rcv\n")
                .syms
                .is_empty()
        );
    }

    #[test]
    fn route_tables_from_text() {
        let mut t = RouteTables::default();
        t.add("# comment\n255 local\n254\tmain\n51820 wg-vpn # wireguard\nbad line\n");
        assert_eq!(t.name(51820), Some("wg-vpn"));
        assert_eq!(t.name(254), Some("main"));
        assert_eq!(t.name(7), None);
    }

    #[test]
    fn drop_reasons_lose_their_prefix() {
        let r = DropReasons::from_pairs([(3, "SKB_DROP_REASON_NETFILTER_DROP".to_owned())]);
        assert_eq!(r.name(3), Some("NETFILTER_DROP"));
        assert_eq!(r.code("NETFILTER_DROP"), Some(3));
    }
}
