//! The subcommands, each thin: trace and latency start a session, replay and trace share the
//! pipeline's sink, doctor asks every observation point.

pub mod doctor;
pub mod explain;
pub mod latency;
pub mod replay;
pub mod trace;

use probe_pipeline::{filter::Filter, sink::Stats};

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
    line
}

/// The schema of the line a `--json` run ends with.
pub const SUMMARY_SCHEMA: &str = "probe.summary/1";

/// The exit summary as a JSON line (`--json`): what the text line says, for programs.
pub fn trace_summary_json(s: &trace::Summary) -> String {
    serde_json::json!({
        "schema": SUMMARY_SCHEMA,
        "events": s.stats.events,
        "timelines": s.stats.timelines,
        "outcomes": s.stats.outcomes,
        "unjoined_verdicts": s.stats.unjoined_verdicts,
        "lost": s.lost,
        "lost_per_cpu": s.lost_per_cpu,
        "filtered_in_kernel": s.filtered,
        "rule_messages_lost": s.rules_lost,
        "malformed": s.malformed,
    })
    .to_string()
        + "\n"
}

/// A replay's summary as a JSON line (`--json`).
pub fn replay_summary_json(s: &Stats) -> String {
    serde_json::json!({
        "schema": SUMMARY_SCHEMA,
        "events": s.events,
        "timelines": s.timelines,
        "outcomes": s.outcomes,
        "unjoined_verdicts": s.unjoined_verdicts,
    })
    .to_string()
        + "\n"
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
