//! `probe replay FILE`: a recording rendered as `probe trace` would have, offline: no root, no
//! eBPF, no kernel. The events go through the same sink as a trace's.

use std::{
    io::{self, BufReader},
    path::Path,
};

use anyhow::Context as _;
use probe_pipeline::{
    filter::Filter,
    record::RecordReader,
    render::Format,
    sink::{Sink, SinkOptions, Stats},
};

use crate::session::clock;

/// What `probe replay` was asked for.
pub struct ReplayOptions<'a> {
    pub path: &'a Path,
    pub format: Format,
    pub events: bool,
    pub filter: Option<Filter>,
    pub color: bool,
    /// Also write the timelines to this file as pcapng.
    pub pcapng: Option<&'a Path>,
    /// Also export the timelines as OpenTelemetry traces (`--otlp`).
    pub otlp: Option<crate::export::Exporter>,
}

pub fn run(o: ReplayOptions<'_>) -> anyhow::Result<Stats> {
    let ReplayOptions {
        path,
        format,
        events,
        filter,
        color,
        pcapng,
        otlp,
    } = o;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = RecordReader::new(BufReader::new(file))
        .with_context(|| format!("cannot replay {}", path.display()))?;
    let pcapng = pcapng
        .map(|out| super::pcapng_file(out).map(|file| (out, file)))
        .transpose()?;
    let topology = reader.meta.topology.clone();
    let opts_clock = reader.meta.clock.unwrap_or_else(clock::now);
    let opts = SinkOptions {
        format,
        events,
        color,
        filter,
        limit: None,
        // The recording holds what the trace showed.
        netns: None,
        // A recording made with --rules alone holds only verdicts.
        verdicts_join_sightings: reader.meta.sightings_besides_verdicts,
        // Times as the recording machine's clock told them (older recordings: this one's).
        clock: opts_clock,
    };
    // The reader names events from the recording's own tables as it reads them.
    let mut sink = Sink::new(
        io::BufWriter::new(io::stdout().lock()),
        opts,
        topology,
        None,
    );
    if let Some((out, file)) = pcapng {
        let mut meta = reader.meta.clone();
        // Times as the recording machine told them, as the timelines print them.
        meta.clock = Some(opts_clock);
        sink.pcapng_to(super::pcapng_writer(out, file, &meta)?);
    }
    if let Some(exporter) = &otlp {
        // The recording's own identity: replaying one file twice gives the same trace ids.
        let seed = format!(
            "{} {} {}",
            reader.meta.host, reader.meta.kernel, opts_clock.realtime_minus_monotonic_ns
        );
        let run = probe_pipeline::otlp::Run::new(seed.as_bytes(), opts_clock);
        sink.otlp_to(exporter.queue(), run);
    }
    loop {
        // Matched in place: an event is a few hundred bytes, and wrapping the result in
        // another one (`with_context`) would copy each.
        let event = match reader.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) => return Err(e).with_context(|| format!("cannot replay {}", path.display())),
        };
        if sink.push(event, None)? {
            break;
        }
    }
    Ok(sink.finish()?)
}
