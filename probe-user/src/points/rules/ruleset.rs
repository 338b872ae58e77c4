//! What `nft` says about chains and rules: the hook of each base chain, and each rule's text
//! by handle. The whole ruleset is read once before tracing starts; after that a thread of its
//! own re-reads a chain when the kernel says it changed or a verdict names a rule the last
//! reading lacked, so the event loop never waits for `nft` (a large ruleset takes it long).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Condvar, Mutex, MutexGuard, mpsc},
    time::{Duration, Instant},
};

use probe_pipeline::event::Hook;

use super::table::nft;

/// (family, table, chain), as nftables names them.
pub(super) type ChainKey = (String, String, String);

/// A verdict naming an unknown rule asks for its chain at most this often.
const ASK_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Known {
    /// Base chains' hooks.
    hooks: HashMap<ChainKey, Hook>,
    /// Handle → rule text, per chain.
    rules: HashMap<ChainKey, HashMap<u64, String>>,
    /// Chains asked for and not read yet.
    pending: HashSet<ChainKey>,
    /// The hooks are being read again.
    hooks_pending: bool,
}

enum Ask {
    Chain(ChainKey),
    Hooks,
}

/// What is known, and the signal that a reading finished.
#[derive(Default)]
struct Shared {
    known: Mutex<Known>,
    read: Condvar,
}

impl Shared {
    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The cache the tracer reads and the reader thread fills.
#[derive(Default)]
pub struct Ruleset {
    shared: Arc<Shared>,
    /// To the reader thread; None when nothing is read (tests).
    asks: Option<mpsc::Sender<Ask>>,
    asked_at: HashMap<ChainKey, Instant>,
}

impl Ruleset {
    /// Reads the ruleset now, and starts the thread that keeps it current (in this thread's
    /// network namespace, which it inherits).
    pub fn read() -> Self {
        let shared = Arc::new(Shared {
            known: Mutex::new(Known {
                hooks: list_hooks(),
                rules: nft(&["-a", "list", "ruleset"])
                    .map(|l| parse_ruleset(&l))
                    .unwrap_or_default(),
                ..Known::default()
            }),
            read: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let theirs = Arc::clone(&shared);
        let asks = std::thread::Builder::new()
            .name("probe-ruleset".into())
            .spawn(move || reader(&rx, &theirs))
            .map_err(|e| log::warn!("rule texts are read once only: no thread for it ({e})"))
            .ok()
            .map(|_| tx);
        Ruleset {
            shared,
            asks,
            asked_at: HashMap::new(),
        }
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.shared.known()
    }

    /// Waits, at most `limit`, for the readings asked for to finish (the trace is ending: the
    /// last verdicts should still be named).
    pub fn settle(&self, limit: Duration) {
        let k = self.known();
        let _ = self
            .shared
            .read
            .wait_timeout_while(k, limit, |k| k.hooks_pending || !k.pending.is_empty());
    }

    pub fn hook(&self, key: &ChainKey) -> Option<Hook> {
        self.known().hooks.get(key).copied()
    }

    /// The text of rule `handle`, if the last reading had it. A handle it lacked is a rule
    /// added since (its text comes with the next reading) or one gone already.
    pub fn rule(&mut self, key: &ChainKey, handle: u64) -> Option<String> {
        if let Some(text) = self.known().rules.get(key).and_then(|r| r.get(&handle)) {
            return Some(text.clone());
        }
        let fresh = self
            .asked_at
            .get(key)
            .is_some_and(|t| t.elapsed() < ASK_EVERY);
        if !fresh {
            self.asked_at.insert(key.clone(), Instant::now());
            self.ask(Ask::Chain(key.clone()));
        }
        None
    }

    /// The text of rule `handle` as last read, without asking for more.
    pub fn known_rule(&self, key: &ChainKey, handle: u64) -> Option<String> {
        self.known().rules.get(key)?.get(&handle).cloned()
    }

    /// Whether what is known of chain `key` (its rules, or the hooks) is being read again.
    pub fn reading(&self, key: &ChainKey) -> bool {
        let k = self.known();
        k.hooks_pending || k.pending.contains(key)
    }

    /// The kernel said a chain changed (a rule added or deleted) or was added.
    pub fn changed(&mut self, key: ChainKey, chain_added: bool) {
        if chain_added {
            self.ask(Ask::Hooks);
        }
        self.ask(Ask::Chain(key));
    }

    fn ask(&self, ask: Ask) {
        let Some(tx) = &self.asks else { return };
        {
            let mut k = self.known();
            match &ask {
                Ask::Chain(key) => {
                    k.pending.insert(key.clone());
                }
                Ask::Hooks => k.hooks_pending = true,
            }
        }
        if tx.send(ask).is_err() {
            // The reader is gone (it never is while this side lives): nothing is pending.
            let mut k = self.known();
            k.pending.clear();
            k.hooks_pending = false;
        }
    }
}

/// Answers asks until the tracer is gone. Asks that piled up during a reading are answered
/// once each.
fn reader(rx: &mpsc::Receiver<Ask>, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        let mut chains: Vec<ChainKey> = Vec::new();
        let mut hooks = false;
        for ask in std::iter::once(first).chain(rx.try_iter()) {
            match ask {
                Ask::Hooks => hooks = true,
                Ask::Chain(k) if !chains.contains(&k) => chains.push(k),
                Ask::Chain(_) => {}
            }
        }
        if hooks {
            let h = list_hooks();
            let mut k = shared.known();
            k.hooks = h;
            k.hooks_pending = false;
            shared.read.notify_all();
        }
        for key in chains {
            // A chain that is gone lists as nothing: its rules are gone too.
            let listed = nft(&["-a", "list", "chain", &key.0, &key.1, &key.2]).unwrap_or_default();
            let rules = parse_rule_handles(&listed);
            let mut k = shared.known();
            k.pending.remove(&key);
            k.rules.insert(key, rules);
            shared.read.notify_all();
        }
    }
}

/// Every base chain's hook, from `nft -j list chains`.
fn list_hooks() -> HashMap<ChainKey, Hook> {
    let mut hooks = HashMap::new();
    let Ok(json) = nft(&["-j", "list", "chains"]) else {
        return hooks;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) else {
        return hooks;
    };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["chain"];
        if let (Some(f), Some(t), Some(n), Some(h)) = (
            c["family"].as_str(),
            c["table"].as_str(),
            c["name"].as_str(),
            c["hook"].as_str(),
        ) {
            hooks.insert((f.into(), t.into(), n.into()), Hook::from_nft(h));
        }
    }
    hooks
}

/// `nft -a list ruleset` → chain → handle → rule text.
fn parse_ruleset(listing: &str) -> HashMap<ChainKey, HashMap<u64, String>> {
    let mut out: HashMap<ChainKey, HashMap<u64, String>> = HashMap::new();
    let mut table: Option<(String, String)> = None;
    let mut chain: Option<String> = None;
    for line in listing.lines() {
        let line = line.trim();
        let head = line.split(" # handle ").next().unwrap_or(line);
        let words: Vec<&str> = head.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, "{"] => {
                table = Some(((*family).into(), unquote(name)));
                chain = None;
            }
            ["chain", name, "{"] => chain = Some(unquote(name)),
            // Sets, maps, flowtables and the like hold no rules.
            [_, _, "{"] => chain = None,
            ["}"] => chain = None,
            _ => {
                if let (Some((f, t)), Some(c)) = (&table, &chain)
                    && let Some((rule, handle)) = line.rsplit_once(" # handle ")
                    && let Ok(h) = handle.trim().parse::<u64>()
                {
                    out.entry((f.clone(), t.clone(), c.clone()))
                        .or_default()
                        .insert(h, without_counter_values(rule.trim()));
                }
            }
        }
    }
    out
}

/// `"DOCKER-USER"` → `DOCKER-USER`: nft quotes names that are not plain words.
fn unquote(name: &str) -> String {
    name.trim_matches('"').to_owned()
}

/// `nft -a list chain` output → handle → rule text.
fn parse_rule_handles(listing: &str) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for line in listing.lines() {
        let line = line.trim();
        let Some((rule, handle)) = line.rsplit_once(" # handle ") else {
            continue;
        };
        if line.starts_with("chain ") || line.starts_with("table ") {
            continue;
        }
        if let Ok(h) = handle.trim().parse::<u64>() {
            out.insert(h, without_counter_values(rule.trim()));
        }
    }
    out
}

/// `counter packets 6 bytes 186 drop` → `counter drop`: the numbers change with every packet
/// and say nothing about the rule.
fn without_counter_values(rule: &str) -> String {
    let words: Vec<&str> = rule.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        out.push(words[i]);
        let counted = words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
            && words.get(i + 2).is_some_and(|w| w.parse::<u64>().is_ok())
            && words.get(i + 4).is_some_and(|w| w.parse::<u64>().is_ok());
        i += if counted { 5 } else { 1 };
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_handles_from_listing() {
        let listing = "table ip filter {\n\tchain FORWARD { # handle 2\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter packets 0 bytes 0 jump DOCKER-USER # handle 7\n\t\tiifname \"docker0\" oifname \"docker0\" counter packets 0 bytes 0 drop # handle 12\n\t}\n}\n";
        let rules = parse_rule_handles(listing);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[&12],
            "iifname \"docker0\" oifname \"docker0\" counter drop"
        );
        assert_eq!(rules[&7], "counter jump DOCKER-USER");
    }

    #[test]
    fn rules_of_every_chain_from_the_ruleset() {
        let listing = "table ip filter { # handle 3\n\
            \tchain \"DOCKER-USER\" { # handle 4\n\
            \t\tcounter packets 9 bytes 900 return # handle 8\n\
            \t}\n\
            \tset blocked { # handle 5\n\
            \t\ttype ipv4_addr\n\
            \t\telements = { 10.0.0.1 }\n\
            \t}\n\
            }\n\
            table inet fw { # handle 6\n\
            \tchain input { # handle 1\n\
            \t\ttype filter hook input priority 10; policy drop;\n\
            \t\tudp dport { 53, 7004 } accept # handle 2\n\
            \t}\n\
            }\n";
        let rules = parse_ruleset(listing);
        assert_eq!(rules.len(), 2, "{rules:?}");
        let key = |f: &str, t: &str, c: &str| (f.to_owned(), t.to_owned(), c.to_owned());
        assert_eq!(
            rules[&key("ip", "filter", "DOCKER-USER")][&8],
            "counter return"
        );
        assert_eq!(
            rules[&key("inet", "fw", "input")][&2],
            "udp dport { 53, 7004 } accept"
        );
        // Malformed or cut listings never panic, and name nothing outside a chain.
        for n in 0..listing.len() {
            let _ = parse_ruleset(&listing[..n]);
        }
        assert!(parse_ruleset("udp dport 53 accept # handle 2\n").is_empty());
    }
}
