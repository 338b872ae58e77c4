//! What `probe latency` reads from the kernel, as owned values: per-stage histograms by group,
//! the chains that started at each point, and the slowest samples.

use std::collections::BTreeMap;

use probe_common::{FlowKey, HopPoint, Outlier, direction, stage};

/// A point where the kernel saw a packet: a tc hook, or a stage inside the path named by the
/// watched device it follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Point {
    pub ifindex: u32,
    /// `direction::INGRESS`/`EGRESS` or one of `probe_common::stage`.
    pub at: u8,
}

impl From<HopPoint> for Point {
    fn from(p: HopPoint) -> Self {
        Point {
            ifindex: p.ifindex,
            at: p.direction,
        }
    }
}

impl Point {
    pub fn is_egress(&self) -> bool {
        self.at == direction::EGRESS
    }

    /// How the point reads after the device's name.
    pub fn word(&self) -> &'static str {
        match self.at {
            direction::INGRESS => "ingress",
            direction::EGRESS => "egress",
            stage::QDISC_ENQUEUE => "qdisc enqueue",
            stage::QDISC_DEQUEUE => "qdisc dequeue",
            stage::NETIF_RX => "peer netif_rx",
            stage::NETIF_RECEIVE => "peer netif_receive_skb",
            stage::BR_HANDLE_FRAME => "br_handle_frame",
            stage::BR_FORWARD => "br_forward",
            _ => "?",
        }
    }
}

/// What the time between two points is spent on.
pub fn stage_word(from: Point, to: Point) -> &'static str {
    match (from.at, to.at) {
        (_, stage::BR_HANDLE_FRAME) => "to the bridge",
        (stage::BR_HANDLE_FRAME, stage::BR_FORWARD) => "bridge input (FDB, br_netfilter)",
        (_, stage::BR_FORWARD) => "bridge device transmit",
        (stage::BR_FORWARD, _) => "bridge output to the port",
        (_, stage::QDISC_ENQUEUE) => "to the qdisc",
        (_, stage::QDISC_DEQUEUE) => "queueing",
        (_, stage::NETIF_RX) => "transmit to the peer",
        (stage::NETIF_RX, stage::NETIF_RECEIVE) => "backlog (softirq hand-off)",
        (_, stage::NETIF_RECEIVE) => "transmit and receive",
        (direction::INGRESS, direction::INGRESS) => "to the bridge device",
        _ => "forwarding",
    }
}

/// One stage's samples: log2 buckets, their sum and the largest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Bucket b holds gaps in [2^b, 2^(b+1)) ns (bucket 0 also holds 0).
    pub buckets: BTreeMap<u32, u64>,
    pub sum_ns: u64,
    /// The largest sample: exact in totals; in an interval, None (the kernel keeps one
    /// maximum since start), and the highest bucket bounds it.
    pub max_ns: Option<u64>,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// Upper bound of the bucket that holds the q-quantile (0 < q ≤ 1), in ns.
    pub fn quantile_bound_ns(&self, q: f64) -> u64 {
        let total = self.count();
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= want {
                return upper_ns(b);
            }
        }
        0
    }

    /// Upper bound of the highest non-empty bucket.
    pub fn max_bound_ns(&self) -> u64 {
        self.buckets.keys().next_back().map_or(0, |&b| upper_ns(b))
    }

    /// What this histogram gained since `before`.
    pub fn since(&self, before: Option<&Histogram>) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .filter_map(|(&b, &n)| {
                let old = before.and_then(|h| h.buckets.get(&b)).copied().unwrap_or(0);
                (n > old).then(|| (b, n - old))
            })
            .collect();
        Histogram {
            buckets,
            sum_ns: self.sum_ns.saturating_sub(before.map_or(0, |h| h.sum_ns)),
            max_ns: None,
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (&b, &n) in &other.buckets {
            *self.buckets.entry(b).or_default() += n;
        }
        self.sum_ns += other.sum_ns;
        self.max_ns = match (self.max_ns, other.max_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

pub fn lower_ns(bucket: u32) -> u64 {
    if bucket == 0 { 0 } else { 1u64 << bucket }
}

pub fn upper_ns(bucket: u32) -> u64 {
    1u64 << (bucket + 1)
}

/// A stage of one group: its samples went from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stage {
    /// The kernel's group id: 0 ungrouped, an entry ifindex, or a flow's id.
    pub group: u32,
    pub from: Point,
    pub to: Point,
}

/// Histograms by stage.
pub type Snapshot = BTreeMap<Stage, Histogram>;

/// Everything one report needs.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub stages: Snapshot,
    /// Chains started at a point (sightings that found no previous one), by (group, point).
    pub starts: BTreeMap<(u32, Point), u64>,
    /// Slowest samples, slowest first.
    pub slowest: Vec<Outlier>,
    /// Flow groups' tuples.
    pub flows: BTreeMap<u32, FlowKey>,
}

impl Reading {
    /// What this reading gained since `before` (the slowest and the flows are the interval's
    /// own already).
    pub fn since(&self, before: &Reading) -> Reading {
        Reading {
            stages: self
                .stages
                .iter()
                .map(|(k, h)| (*k, h.since(before.stages.get(k))))
                .filter(|(_, h)| h.count() > 0)
                .collect(),
            starts: self
                .starts
                .iter()
                .filter_map(|(k, &n)| {
                    let d = n.saturating_sub(before.starts.get(k).copied().unwrap_or(0));
                    (d > 0).then_some((*k, d))
                })
                .collect(),
            slowest: self.slowest.clone(),
            flows: self.flows.clone(),
        }
    }

    /// The measured fraction: of the sightings at points a packet reaches from another
    /// watched point (every point that ends a stage, and every tc egress point), how many
    /// found the packet's previous sighting. Returns (found, sightings).
    pub fn measured(&self) -> (u64, u64) {
        let ends: std::collections::BTreeSet<Point> = self.stages.keys().map(|s| s.to).collect();
        let found: u64 = self.stages.values().map(Histogram::count).sum();
        let lost: u64 = self
            .starts
            .iter()
            .filter(|((_, p), _)| ends.contains(p) || p.is_egress())
            .map(|(_, &n)| n)
            .sum();
        (found, found + lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_name_the_bucket_that_holds_them() {
        let h = Histogram {
            buckets: [(10, 50), (12, 49), (20, 1)].into_iter().collect(),
            sum_ns: 0,
            max_ns: None,
        };
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_bound_ns(0.5), 2048);
        assert_eq!(h.quantile_bound_ns(0.99), 8192);
        assert_eq!(h.quantile_bound_ns(1.0), 2 << 20);
        let before = Histogram {
            buckets: [(10, 40)].into_iter().collect(),
            sum_ns: 0,
            max_ns: None,
        };
        assert_eq!(h.since(Some(&before)).count(), 60);
    }

    #[test]
    fn measured_counts_starts_only_where_packets_arrive() {
        let (a_in, b_out) = (
            Point {
                ifindex: 1,
                at: direction::INGRESS,
            },
            Point {
                ifindex: 2,
                at: direction::EGRESS,
            },
        );
        let mut r = Reading::default();
        r.stages.insert(
            Stage {
                group: 0,
                from: a_in,
                to: b_out,
            },
            Histogram {
                buckets: [(10, 9)].into_iter().collect(),
                sum_ns: 0,
                max_ns: None,
            },
        );
        // Every packet starts at a's ingress; one was not found at b's egress.
        r.starts.insert((0, a_in), 10);
        r.starts.insert((0, b_out), 1);
        assert_eq!(r.measured(), (9, 10));
    }
}
