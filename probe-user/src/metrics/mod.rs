//! `probe watch`'s metrics: the kernel's counts (drops, failed routing lookups, hop latency
//! histograms, losses) turned into Prometheus/OpenMetrics series with bounded, named labels,
//! and the small HTTP responder that serves them on `/metrics`.
//!
//! [`labels`] names what the kernel counts by numbers (reasons, functions, interfaces,
//! namespaces, tables) and caps each label's values; [`store`] keeps the series, adding what
//! the kernel counted since the last scrape, so a series never goes down (an interface that
//! vanishes keeps its last counts); [`encode`] writes them with prometheus-client; [`http`]
//! serves them.

pub mod encode;
pub mod http;
pub mod labels;
pub mod store;
