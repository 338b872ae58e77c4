//! Names the kernel only gives as numbers: drop reasons (from the running kernel), kernel text
//! addresses (/proc/kallsyms) and routing table ids (rt_tables).

use std::collections::HashMap;

use crate::{
    btf::Btf,
    event::{Event, EventBody},
    tracefs::Format,
};

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
    /// From the tracepoint's print format, else from BTF.
    pub fn load(format: Option<&Format>, btf: Option<&Btf>) -> Self {
        let mut map = HashMap::new();
        if let Some(f) = format {
            for (v, n) in &f.symbolic {
                if let Ok(v) = u32::try_from(*v) {
                    map.insert(v, n.clone());
                }
            }
        }
        if map.is_empty()
            && let Some(values) = btf.and_then(|b| b.enum_values("skb_drop_reason").ok())
        {
            for (n, v) in values {
                if let Ok(v) = u32::try_from(v) {
                    let short = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n);
                    map.insert(v, short.to_owned());
                }
            }
        }
        Self(map)
    }

    pub fn name(&self, code: u32) -> Option<&str> {
        self.0.get(&code).map(String::as_str)
    }
}

/// Kernel function symbols, for turning a drop location into `function+0xoff`.
#[derive(Clone, Debug, Default)]
pub struct KernelSymbols {
    /// Sorted by address.
    syms: Vec<(u64, String)>,
}

impl KernelSymbols {
    pub fn load() -> Self {
        std::fs::read_to_string("/proc/kallsyms")
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

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
    pub fn load() -> Self {
        let mut t = Self::default();
        for path in [
            "/usr/share/iproute2/rt_tables",
            "/etc/iproute2/rt_tables",
            "/usr/lib/iproute2/rt_tables",
        ] {
            if let Ok(text) = std::fs::read_to_string(path) {
                t.add(&text);
            }
        }
        for dir in [
            "/etc/iproute2/rt_tables.d",
            "/usr/share/iproute2/rt_tables.d",
        ] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "conf")
                    && let Ok(text) = std::fs::read_to_string(e.path())
                {
                    t.add(&text);
                }
            }
        }
        t
    }

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
    fn drop_reasons_from_running_kernel() {
        let btf = Btf::from_sys().expect("BTF present");
        let reasons = DropReasons::load(None, Some(&btf));
        let code = reasons
            .0
            .iter()
            .find(|(_, n)| n.as_str() == "NETFILTER_DROP")
            .map(|(c, _)| *c)
            .expect("NETFILTER_DROP known");
        assert_eq!(reasons.name(code), Some("NETFILTER_DROP"));
    }
}
