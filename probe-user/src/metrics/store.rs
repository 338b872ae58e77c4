//! The series `probe watch` serves, kept in userspace: each scrape adds what the kernel
//! counted since the last one to the series its key is named by now. So a series never goes
//! down: not when an interface vanishes (its series keeps its last counts), not when a name
//! arrives late (later counts go to the named series), not when a cap folds values into
//! `other`.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

use probe_common::{DropCountKey, HopBucket, HopPoint, RouteFailKey};

use super::labels::{Caps, DropLabels, HopLabels, Named, Namer, RouteLabels};

/// Histogram buckets served per hop pair: kernel bucket b holds gaps in [2^b, 2^(b+1)) ns, and
/// the kernel records no gap over 1 s (2^30 ns), so buckets 0..=29 hold every sample.
pub const HOP_BUCKETS: usize = 30;

/// Upper bound of kernel bucket `b` in seconds, the `le` of the served bucket.
pub fn bucket_le_seconds(b: usize) -> f64 {
    (1u64 << (b + 1)) as f64 / 1e9
}

/// A hop pair's histogram: counts per bucket (not cumulative), and an estimated sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; HOP_BUCKETS],
    /// Samples past the last bucket (none expected: the kernel caps gaps at 1 s).
    pub overflow: u64,
    /// Sum of the samples in seconds, estimated from bucket midpoints (the kernel keeps no
    /// exact sum).
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum::<u64>() + self.overflow
    }

    fn add(&mut self, bucket: u32, n: u64) {
        let b = bucket as usize;
        // The middle of [2^b, 2^(b+1)) ns; bucket 0 holds 0 and 1 ns.
        let mid_ns = if b == 0 {
            1.0
        } else {
            1.5 * (1u64 << b) as f64
        };
        self.sum_seconds += n as f64 * mid_ns / 1e9;
        match self.buckets.get_mut(b) {
            Some(slot) => *slot += n,
            None => self.overflow += n,
        }
    }
}

/// Counts the programs could not keep or deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Events lost because the ring buffer was full.
    pub events: u64,
    /// Latency samples not counted: the histogram map was full.
    pub latency_samples: u64,
    /// Drops or routing failures not counted: a watch map was full.
    pub watch_counts: u64,
}

/// What the kernel holds at one moment, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct KernelCounts {
    pub drops: Vec<(DropCountKey, u64)>,
    pub route_failures: Vec<(RouteFailKey, u64)>,
    pub hops: Vec<(HopBucket, u64)>,
    pub lost: Lost,
}

/// One family's series, and what each kernel key was last seen at.
#[derive(Debug)]
struct Family<K, L, V> {
    last: HashMap<K, u64>,
    /// Names given to keys that are final; others are named again at each scrape.
    named: HashMap<K, L>,
    series: BTreeMap<L, V>,
}

impl<K, L, V> Default for Family<K, L, V> {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            named: HashMap::new(),
            series: BTreeMap::new(),
        }
    }
}

impl<K, L, V> Family<K, L, V>
where
    K: Hash + Eq,
{
    /// Forgets a kernel key whose map entry was removed (its series stays as it is).
    fn forget(&mut self, key: &K) {
        self.last.remove(key);
        self.named.remove(key);
    }
}

impl<K: Hash + Eq + Copy, L: Ord + Clone, V: Default> Family<K, L, V> {
    /// Adds what `key` gained since the last scrape to its series through `add`.
    fn update(
        &mut self,
        key: K,
        now: u64,
        name: impl FnOnce() -> Named<L>,
        add: impl FnOnce(&mut V, u64),
    ) {
        let before = self.last.insert(key, now).unwrap_or(0);
        // A kernel count never goes down; if it did (a map entry removed and made again), what
        // it holds now is new.
        let gained = if now >= before { now - before } else { now };
        let labels = match self.named.get(&key) {
            Some(l) => l.clone(),
            None => {
                let n = name();
                if n.settled {
                    self.named.insert(key, n.labels.clone());
                }
                n.labels
            }
        };
        let value = self.series.entry(labels).or_default();
        if gained > 0 {
            add(value, gained);
        }
    }
}

/// Every series probe watch serves.
#[derive(Debug)]
pub struct Store {
    caps: Caps,
    drops: Family<DropCountKey, DropLabels, u64>,
    routes: Family<RouteFailKey, RouteLabels, u64>,
    hops: Family<HopBucket, HopLabels, Histogram>,
    lost: Lost,
}

/// A copy of the series, for the encoder.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub drops: BTreeMap<DropLabels, u64>,
    pub route_failures: BTreeMap<RouteLabels, u64>,
    pub hops: BTreeMap<HopLabels, Histogram>,
    pub lost: Lost,
}

impl Store {
    /// At most `label_limit` distinct values per label.
    pub fn new(label_limit: usize) -> Self {
        Self {
            caps: Caps::new(label_limit),
            drops: Family::default(),
            routes: Family::default(),
            hops: Family::default(),
            lost: Lost::default(),
        }
    }

    /// Folds in what the kernel holds now.
    pub fn update(&mut self, counts: &KernelCounts, namer: &Namer<'_>) {
        let caps = &mut self.caps;
        for (k, n) in &counts.drops {
            self.drops
                .update(*k, *n, || namer.drop(k, caps), |v, g| *v += g);
        }
        for (k, n) in &counts.route_failures {
            self.routes
                .update(*k, *n, || namer.route(k, caps), |v, g| *v += g);
        }
        for (k, n) in &counts.hops {
            let (from, to): (HopPoint, HopPoint) = (k.from, k.to);
            self.hops.update(
                *k,
                *n,
                || namer.hop(from, to, caps),
                |h, g| h.add(k.bucket, g),
            );
        }
        // Counters of the kernel's own: the largest seen, so they never go down.
        let l = &mut self.lost;
        l.events = l.events.max(counts.lost.events);
        l.latency_samples = l.latency_samples.max(counts.lost.latency_samples);
        l.watch_counts = l.watch_counts.max(counts.lost.watch_counts);
    }

    /// The kernel entries of these keys were removed: a key made again later starts from
    /// zero, its series going on from what it holds.
    pub fn forget(&mut self, drops: &[DropCountKey], hops: &[HopBucket]) {
        for k in drops {
            self.drops.forget(k);
        }
        for k in hops {
            self.hops.forget(k);
        }
    }

    pub fn series(&self) -> Series {
        Series {
            drops: self.drops.series.clone(),
            route_failures: self.routes.series.clone(),
            hops: self.hops.series.clone(),
            lost: self.lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use probe_common::direction;
    use probe_pipeline::{
        names::{DropReasons, KernelSymbols, RouteTables},
        topology::Topology,
    };

    use super::*;

    fn topology(links: &[(u32, &str)]) -> Topology {
        let mut t = Topology::default();
        for (i, n) in links {
            t.links.insert(*i, ((*n).to_owned(), "veth".to_owned()));
        }
        t
    }

    fn hop(from: u32, to: u32, bucket: u32) -> HopBucket {
        let p = |ifindex, direction| HopPoint {
            ifindex,
            direction,
            _pad: [0; 3],
        };
        HopBucket {
            from: p(from, direction::INGRESS),
            to: p(to, direction::EGRESS),
            bucket,
        }
    }

    #[test]
    fn series_stay_monotonic_when_interfaces_vanish_and_names_arrive_late() {
        let reasons = DropReasons::from_pairs([(5, "NO_SOCKET".to_owned())]);
        let symbols = KernelSymbols::default();
        let tables = RouteTables::default();
        let drop = DropCountKey {
            location: 0,
            reason: 5,
            ifindex: 7,
            netns_inum: 0,
            _pad: 0,
        };
        let mut store = Store::new(8);
        // Interface 7 not known yet: counted under if7, asked again later.
        let t0 = topology(&[]);
        let namer = |t| Namer {
            topology: t,
            reasons: &reasons,
            symbols: &symbols,
            tables: &tables,
        };
        let counts = |n, h| KernelCounts {
            drops: vec![(drop, n)],
            hops: vec![(hop(7, 8, 10), h)],
            ..KernelCounts::default()
        };
        store.update(&counts(3, 2), &namer(&t0));
        let t1 = topology(&[(7, "veth-a"), (8, "br0")]);
        store.update(&counts(5, 6), &namer(&t1));
        let s = store.series();
        let by_iface: BTreeMap<_, _> = s
            .drops
            .iter()
            .map(|(l, n)| (l.interface.as_str(), *n))
            .collect();
        assert_eq!(by_iface, BTreeMap::from([("if7", 3), ("veth-a", 2)]));
        // The interface vanishes: its series keeps its counts and goes on.
        let t2 = topology(&[(8, "br0")]);
        store.update(&counts(9, 6), &namer(&t2));
        let s = store.series();
        let veth = s
            .drops
            .iter()
            .find(|(l, _)| l.interface == "veth-a")
            .unwrap();
        assert_eq!(*veth.1, 6);
        let h = s
            .hops
            .values()
            .find(|h| h.count() == 4)
            .expect("named hop pair");
        assert_eq!(h.buckets[10], 4);
        assert_eq!(s.drops.values().sum::<u64>(), 9);
    }

    #[test]
    fn a_forgotten_key_made_again_adds_to_its_series() {
        let reasons = DropReasons::default();
        let (symbols, tables) = (KernelSymbols::default(), RouteTables::default());
        let t = topology(&[(7, "veth-a"), (8, "br0")]);
        let namer = Namer {
            topology: &t,
            reasons: &reasons,
            symbols: &symbols,
            tables: &tables,
        };
        let key = hop(7, 8, 12);
        let counts = |n| KernelCounts {
            hops: vec![(key, n)],
            ..KernelCounts::default()
        };
        let mut store = Store::new(8);
        store.update(&counts(10), &namer);
        // The entry was removed from the kernel's map and made again, from zero.
        store.forget(&[], &[key]);
        store.update(&counts(3), &namer);
        let s = store.series();
        assert_eq!(s.hops.values().map(Histogram::count).sum::<u64>(), 13);
    }

    #[test]
    fn bucket_bounds_are_powers_of_two_in_seconds() {
        assert_eq!(bucket_le_seconds(0), 2e-9);
        assert_eq!(bucket_le_seconds(9), 1.024e-6);
        assert!(bucket_le_seconds(HOP_BUCKETS - 1) > 1.0);
    }
}
