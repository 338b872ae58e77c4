//! The series as OpenMetrics text, through prometheus-client: a collector over the store's
//! latest copy, so the format (HELP and TYPE lines, `_total`, `le` buckets, `# EOF`) is the
//! crate's.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter},
    registry::{Registry, Unit},
};

use super::store::{HOP_BUCKETS, Series, bucket_le_seconds};

/// The content type of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// probe's registry and the series it serves.
pub struct Metrics {
    registry: Registry,
    series: Arc<Mutex<Series>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let series = Arc::new(Mutex::new(Series::default()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(WatchCollector(series.clone())));
        Self { registry, series }
    }
}

impl Metrics {
    /// Replaces the series served.
    pub fn set(&self, series: Series) {
        // A poisoned lock only means a panic elsewhere; the data is plain values.
        *self.series.lock().unwrap_or_else(|e| e.into_inner()) = series;
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug)]
struct WatchCollector(Arc<Mutex<Series>>);

impl Collector for WatchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();

        let mut m = encoder.encode_descriptor(
            "probe_drops",
            "Packets the kernel freed as dropped (tracepoint skb:kfree_skb), by the kernel's \
             drop reason, the function that dropped them, their interface and network namespace \
             (container name where Docker knows it).",
            None,
            MetricType::Counter,
        )?;
        for (labels, n) in &s.drops {
            ConstCounter::new(*n).encode(m.encode_family(labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "probe_route_lookup_failures",
            "Routing table lookups that ended with an error, by family, table and errno. EAGAIN: \
             the table had no route and the kernel went on to the next policy rule's table (or, \
             for the last one, the destination is unreachable).",
            None,
            MetricType::Counter,
        )?;
        for (labels, n) in &s.route_failures {
            ConstCounter::new(*n).encode(m.encode_family(labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "probe_hop_latency",
            "Time between a packet's sighting at one tc hook and its next sighting at another, \
             measured in the kernel into log2 buckets (the sum is estimated from bucket \
             midpoints).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, h) in &s.hops {
            let mut buckets: Vec<(f64, u64)> = (0..HOP_BUCKETS)
                .map(|b| (bucket_le_seconds(b), h.buckets[b]))
                .collect();
            buckets.push((f64::INFINITY, h.overflow));
            m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                h.sum_seconds,
                h.count(),
                &buckets,
                None,
            )?;
        }

        let lost = [
            (
                "probe_events_lost",
                "Events the kernel programs could not write because the ring buffer was full.",
                s.lost.events,
            ),
            (
                "probe_latency_samples_lost",
                "Latency samples not counted because the kernel's histogram map was full (too \
                 many distinct hop pairs).",
                s.lost.latency_samples,
            ),
            (
                "probe_counts_lost",
                "Drops or routing failures not counted because a kernel map of probe watch was \
                 full (too many distinct kinds).",
                s.lost.watch_counts,
            ),
        ];
        for (name, help, n) in lost {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{labels::DropLabels, labels::HopLabels, store::Histogram};
    use super::*;

    #[test]
    fn text_has_help_type_total_and_le_buckets() {
        let metrics = Metrics::default();
        let mut s = Series::default();
        s.drops.insert(
            DropLabels {
                reason: "NO_SOCKET".into(),
                location: "tcp_v4_rcv".into(),
                interface: "lo".into(),
                netns: "host".into(),
            },
            4,
        );
        let mut h = Histogram::default();
        h.buckets[10] = 3;
        s.hops.insert(
            HopLabels {
                from_iface: "veth-a".into(),
                from_dir: "ingress".into(),
                to_iface: "veth-b".into(),
                to_dir: "egress".into(),
            },
            h,
        );
        metrics.set(s);
        let text = metrics.encode();
        assert!(text.contains("# TYPE probe_drops counter"), "{text}");
        assert!(text.contains("# HELP probe_drops Packets"), "{text}");
        assert!(
            text.contains(
                r#"probe_drops_total{reason="NO_SOCKET",location="tcp_v4_rcv",interface="lo",netns="host"} 4"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE probe_hop_latency_seconds histogram"),
            "{text}"
        );
        let bucket = |le: &str| {
            text.lines()
                .find(|l| l.contains(&format!("_bucket{{le=\"{le}\",from_iface=\"veth-a\"")))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(bucket("0.000001024").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("0.000002048").as_deref(), Some("3"), "{text}");
        assert_eq!(bucket("+Inf").as_deref(), Some("3"), "{text}");
        assert!(text.contains("probe_events_lost_total 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
