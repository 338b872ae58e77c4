//! The subcommands, each thin: trace and latency start a session, replay and trace share the
//! pipeline's sink, doctor asks every observation point.

pub mod doctor;
pub mod explain;
pub mod latency;
pub mod replay;
pub mod trace;
pub mod watch;

use probe_pipeline::{filter::Filter, sink::Stats, timeline::Tally};
use schemars::JsonSchema;
use serde::Serialize;

use crate::{host::netns, session::privileges};

/// What `trace` and `latency` do before loading anything: parse the filter (a typo is
/// reported first, without needing root), check privileges, and enter the namespace (before
/// the event loop starts any thread: threads inherit the namespace).
pub fn prepare(filter: Option<&str>, ns: Option<&str>) -> anyhow::Result<Option<Filter>> {
    let filter = filter.map(Filter::parse).transpose()?;
    privileges::check()?;
    if let Some(ns) = ns {
        netns::enter(ns)?;
    }
    Ok(filter)
}

/// The pcapng output's file, created (or emptied) before any work starts, so a path that
/// cannot be written is said at once.
pub fn pcapng_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    if path.is_dir() {
        anyhow::bail!(
            "cannot write the pcapng file {}: it is a directory",
            path.display()
        );
    }
    std::fs::File::create(path)
        .with_context(|| format!("cannot create the pcapng file {}", path.display()))
}

/// The pcapng writer over `file`, its section header already on disk.
pub fn pcapng_writer(
    path: &std::path::Path,
    file: std::fs::File,
    meta: &probe_pipeline::record::Metadata,
) -> anyhow::Result<probe_pipeline::pcapng::PcapngWriter<Box<dyn std::io::Write>>> {
    use anyhow::Context as _;
    let origin = probe_pipeline::pcapng::Origin {
        application: format!("probe {}", env!("CARGO_PKG_VERSION")),
        os: if meta.kernel.is_empty() {
            String::new()
        } else {
            format!("Linux {}", meta.kernel)
        },
        host: meta.host.clone(),
    };
    let out: Box<dyn std::io::Write> = Box::new(std::io::BufWriter::new(file));
    let clock = meta.clock.unwrap_or_default();
    let mut writer = probe_pipeline::pcapng::PcapngWriter::new(out, clock, &origin)
        .with_context(|| format!("cannot write the pcapng file {}", path.display()))?;
    writer
        .flush()
        .with_context(|| format!("cannot write the pcapng file {}", path.display()))?;
    Ok(writer)
}

/// Removes what killed probes left in this namespace; what was removed, one line each.
pub fn cleanup() -> Vec<String> {
    let mut removed = crate::points::tc::owner::sweep();
    removed.extend(crate::points::rules::sweep_stale());
    removed
}

/// The exit line of a trace: what was shown, what was lost, filtered or malformed.
pub fn trace_summary(s: &trace::Summary, events: bool) -> String {
    let mut line = if events {
        format!("{} events", s.stats.events)
    } else {
        let mut line = format!(
            "{} timelines from {} events",
            s.stats.timelines, s.stats.events
        );
        if let Some(outcomes) = s.stats.outcomes.describe() {
            line.push_str(&format!(" ({outcomes})"));
        }
        line
    };
    if s.lost > 0 {
        let per_cpu: Vec<String> = s
            .lost_per_cpu
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(cpu, n)| format!("cpu{cpu} {n}"))
            .collect();
        line.push_str(&format!(
            "; {} LOST because the ring buffer was full ({}; try a larger --ringbuf-kib or a \
             --filter)",
            s.lost,
            per_cpu.join(", ")
        ));
    } else {
        line.push_str(", none lost");
    }
    if s.filtered > 0 {
        line.push_str(&format!(
            "; {} sightings filtered out in the kernel",
            s.filtered
        ));
    }
    if s.rules_lost > 0 {
        line.push_str(&format!(
            "; nftables trace messages were lost {} time(s) (socket buffer full)",
            s.rules_lost
        ));
    }
    if s.stats.unjoined_verdicts > 0 {
        line.push_str(&format!(
            "; {} rule-verdict walk(s) matched no sighting of their packet and are not shown \
             (they came late, or the packet crossed no traced interface)",
            s.stats.unjoined_verdicts
        ));
    }
    if s.malformed > 0 {
        line.push_str(&format!("; {} malformed events skipped", s.malformed));
    }
    if let Some(otlp) = &s.otlp {
        line.push_str(&format!("; {}", otlp.describe()));
    }
    line
}

/// The schema of the line a `--json` run ends with.
pub const SUMMARY_SCHEMA: &str = "probe.summary/1";

/// What a `--json` trace or replay ends with: what the exit line says, for programs.
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct SummaryLine<'a> {
    #[schemars(schema_with = "summary_name")]
    schema: &'static str,
    /// Events received and shown (in timelines or as lines).
    events: u64,
    /// Timelines printed.
    timelines: u64,
    /// Timelines printed, by how they ended.
    outcomes: &'a Tally,
    /// Journeys of rule verdicts only that joined no sighting, not shown.
    unjoined_verdicts: u64,
    /// A trace's own counts (a replay has none).
    #[serde(flatten)]
    trace: Option<TraceCounts<'a>>,
}

#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct TraceCounts<'a> {
    /// Events the kernel programs could not submit (ring buffer full).
    lost: u64,
    /// `lost`, per CPU.
    lost_per_cpu: &'a [u64],
    /// Sightings the filter turned away in the kernel.
    filtered_in_kernel: u64,
    /// nftables trace messages the kernel could not deliver (socket buffer full).
    rule_messages_lost: u64,
    /// Events that could not be decoded.
    malformed: u64,
    /// What the OpenTelemetry export did (`--otlp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp: Option<&'a crate::export::Report>,
}

fn summary_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    probe_pipeline::schema::const_name(SUMMARY_SCHEMA)
}

/// The JSON Schema of the summary line.
pub fn summary_schema() -> schemars::Schema {
    probe_pipeline::schema::line::<SummaryLine>(SUMMARY_SCHEMA)
}

impl SummaryLine<'_> {
    /// The line, its keys in sorted order (as the line has always been written).
    fn line(&self) -> String {
        serde_json::to_value(self).map_or_else(
            |e| format!("{{\"schema\":\"{SUMMARY_SCHEMA}\",\"error\":\"{e}\"}}"),
            |v| v.to_string(),
        ) + "\n"
    }
}

/// The exit summary as a JSON line (`--json`): what the text line says, for programs.
pub fn trace_summary_json(s: &trace::Summary) -> String {
    SummaryLine {
        schema: SUMMARY_SCHEMA,
        events: s.stats.events,
        timelines: s.stats.timelines,
        outcomes: &s.stats.outcomes,
        unjoined_verdicts: s.stats.unjoined_verdicts,
        trace: Some(TraceCounts {
            lost: s.lost,
            lost_per_cpu: &s.lost_per_cpu,
            filtered_in_kernel: s.filtered,
            rule_messages_lost: s.rules_lost,
            malformed: s.malformed,
            otlp: s.otlp.as_ref(),
        }),
    }
    .line()
}

/// A replay's summary as a JSON line (`--json`).
pub fn replay_summary_json(s: &Stats) -> String {
    SummaryLine {
        schema: SUMMARY_SCHEMA,
        events: s.events,
        timelines: s.timelines,
        outcomes: &s.outcomes,
        unjoined_verdicts: s.unjoined_verdicts,
        trace: None,
    }
    .line()
}

/// The exit line of a replay.
pub fn replay_summary(s: &Stats) -> String {
    let mut line = format!(
        "replayed {} events into {} timelines",
        s.events, s.timelines
    );
    if let Some(outcomes) = s.outcomes.describe() {
        line.push_str(&format!(": {outcomes}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary line is what it was when it was built as a JSON map: keys sorted, the
    /// outcomes' too, a trace's counts only in a trace.
    #[test]
    fn summary_lines_keep_their_bytes() {
        let mut stats = Stats {
            events: 7,
            timelines: 2,
            ..Stats::default()
        };
        stats.outcomes.dropped = 1;
        stats.outcomes.delivered = 1;
        stats
            .outcomes
            .drops
            .insert("netfilter: NETFILTER_DROP in nf_hook_slow".into(), 1);
        let outcomes = r#""outcomes":{"delivered":1,"dropped":1,"drops_by_cause":{"netfilter: NETFILTER_DROP in nf_hook_slow":1},"incomplete":0,"left":0,"unroutable":0}"#;
        assert_eq!(
            replay_summary_json(&stats),
            format!(
                r#"{{"events":7,{outcomes},"schema":"probe.summary/1","timelines":2,"unjoined_verdicts":0}}"#
            ) + "\n"
        );
        let trace = trace::Summary {
            stats,
            malformed: 0,
            lost: 3,
            rules_lost: 0,
            lost_per_cpu: vec![0, 3],
            filtered: 5,
            otlp: None,
        };
        assert_eq!(
            trace_summary_json(&trace),
            format!(
                r#"{{"events":7,"filtered_in_kernel":5,"lost":3,"lost_per_cpu":[0,3],"malformed":0,{outcomes},"rule_messages_lost":0,"schema":"probe.summary/1","timelines":2,"unjoined_verdicts":0}}"#
            ) + "\n"
        );
    }
}
