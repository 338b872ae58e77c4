//! What a routing lookup's fields mean: its errno's name, the misses and retries a decision
//! folds in, whether it is a decision at all.

use super::{FibLookup, FibTry, RT_TABLE_LOCAL, errno};

impl FibLookup {
    /// Name of a negative errno as routing reports it.
    pub fn error_name(err: i32) -> Option<&'static str> {
        Some(match -err {
            0 => return None,
            errno::ENETUNREACH => "ENETUNREACH",
            errno::EHOSTUNREACH => "EHOSTUNREACH",
            errno::EACCES => "EACCES",
            // fib_table_lookup: no route in this table, the next policy rule is tried.
            errno::EAGAIN => "no route in this table",
            errno::EINVAL => "EINVAL",
            errno::ESRCH => "ESRCH",
            _ => "error",
        })
    }

    /// A table without a route for the destination: the kernel goes on to the next rule. Not
    /// a failure of the decision.
    pub fn is_table_miss(&self) -> bool {
        self.err == -errno::EAGAIN
    }

    /// Not a routing decision but a question about an address: `inet_addr_type` (ICMP
    /// errors choosing their source, nftables `fib daddr type`, ARP) asks the local table
    /// with only a destination, no input or output interface.
    pub fn is_address_check(&self) -> bool {
        self.table == RT_TABLE_LOCAL
            && self.iif == 0
            && self.oif == 0
            && self.src.is_unspecified()
            && self.sport == 0
            && self.dport == 0
    }

    /// The decision found no route: its deciding lookup failed (unreachable, prohibited) or
    /// was a table without a route with no other table after it.
    pub fn failed(&self) -> bool {
        self.err != 0
    }

    /// This lookup as an earlier try of a decision.
    pub fn as_try(&self, ts_ns: u64) -> FibTry {
        FibTry {
            ts_ns,
            table: self.table,
            table_name: self.table_name.clone(),
            err: self.err,
            error: self.error.clone(),
            src: self.src,
            dev: self.dev.clone(),
        }
    }

    /// The deciding table's name, or its number.
    pub fn table_label(&self) -> String {
        self.table_name
            .clone()
            .unwrap_or_else(|| self.table.to_string())
    }

    /// The other tables the decision tried first, each named once, in order: `local`.
    pub fn tables_before(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.tried.iter().filter(|t| t.table != self.table) {
            let name = t.table_name.clone().unwrap_or_else(|| t.table.to_string());
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Whether `next`, made right after this lookup on the same CPU, is a further lookup of the
    /// same routing decision: the next table after a table without a route (IPv4 reports
    /// EAGAIN; IPv6 reports EHOSTUNREACH for a table's empty result), or the same route asked
    /// again once the source address or the source port was chosen.
    pub fn continues_with(&self, next: &FibLookup) -> bool {
        let same_flow = self.dst == next.dst
            && self.dport == next.dport
            && self.proto == next.proto
            && self.iif == next.iif
            && self.netns == next.netns
            && (self.sport == next.sport || self.sport == 0);
        if !same_flow {
            return false;
        }
        let after_miss = self.err != 0;
        let source_chosen = self.src.is_unspecified() && !next.src.is_unspecified();
        let port_chosen = self.src == next.src && self.sport == 0 && next.sport != 0;
        after_miss || (self.err == 0 && (source_chosen || port_chosen))
    }
}
