//! `probe replay FILE`: a recording rendered as `probe trace` would have, offline: no root, no
//! eBPF, no kernel.

use std::{
    io::{self, BufReader, Write},
    path::Path,
};

use anyhow::Context as _;

use crate::{
    filter::{Filter, Follower},
    record::RecordReader,
    render::{Clock, Format, IfNames, Renderer},
    timeline::{Correlator, Limits, render_finished},
};

/// Counts of what was replayed.
#[derive(Debug, Default)]
pub struct Replayed {
    pub events: u64,
    pub timelines: u64,
    pub outcomes: crate::timeline::Tally,
}

pub fn run(
    path: &Path,
    format: Format,
    events: bool,
    filter: Option<&Filter>,
) -> anyhow::Result<Replayed> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = RecordReader::new(BufReader::new(file))
        .with_context(|| format!("cannot replay {}", path.display()))?;
    let topology = reader.meta.topology.clone();
    let names: IfNames = topology
        .links
        .iter()
        .map(|(i, (n, _))| (*i, n.clone()))
        .collect();
    let renderer = Renderer::new(format, Clock::now(), names);
    let mut correlator = Correlator::new(Limits::default());
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut counts = Replayed::default();
    let mut follower = filter.cloned().map(Follower::new);
    let color = false;
    let write_journeys = |journeys: Vec<crate::timeline::Journey>,
                          out: &mut dyn Write,
                          counts: &mut Replayed|
     -> io::Result<()> {
        for j in journeys {
            if filter.is_some_and(|f| !j.matches(f)) {
                continue;
            }
            counts.timelines += 1;
            let json = format == Format::Json;
            let text = render_finished(&j, &topology, json, color, &mut counts.outcomes);
            out.write_all(text.as_bytes())?;
        }
        Ok(())
    };
    loop {
        // Matched in place: an event is a few hundred bytes, and wrapping the result in
        // another one (`with_context`) would copy each.
        let event = match reader.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) => return Err(e).with_context(|| format!("cannot replay {}", path.display())),
        };
        counts.events += 1;
        let written = if events {
            if follower.as_mut().is_none_or(|f| f.admits(&event)) {
                renderer.write(&mut out, &event)
            } else {
                Ok(())
            }
        } else {
            let now = event.ts_ns;
            correlator.push(event);
            correlator.expire(now);
            write_journeys(correlator.take_finished(), &mut out, &mut counts)
        };
        if let Err(e) = written {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(counts);
            }
            return Err(e).context("cannot write to standard output");
        }
    }
    let rest = correlator.flush();
    match write_journeys(rest, &mut out, &mut counts).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(counts),
    }
}
