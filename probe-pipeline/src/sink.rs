//! Where decoded events go, for `probe trace` and `probe replay` alike: the namespace's own
//! drops, names put on numbers, the recording, the filter, the correlator and the renderer,
//! then the counts the summary reports. One path, so a replay prints what the trace printed.

use std::io::{self, Write};

use thiserror::Error;

use crate::{
    event::{Event, EventBody},
    filter::{Filter, Follower},
    names::Names,
    otlp::{self, SpanExport},
    pcapng::PcapngWriter,
    record::RecordWriter,
    render::{
        Clock, Format, Renderer,
        timeline::{Style, render_finished},
    },
    timeline::{Correlator, Journey, Limits, Tally, diagnose},
    topology::Topology,
};

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot write to standard output: {0}")]
    Output(io::Error),
    #[error("cannot write the pcapng file: {0}")]
    Pcapng(io::Error),
}

/// What the sink was asked to do.
pub struct SinkOptions {
    pub format: Format,
    /// One line per event instead of a timeline per packet.
    pub events: bool,
    /// ANSI colours in text timelines.
    pub color: bool,
    /// Only packets matching this (and what follows from them).
    pub filter: Option<Filter>,
    /// Stop after this many timelines (or events, with `events`).
    pub limit: Option<u64>,
    /// Show drops, routing lookups and hook verdicts only from this network namespace
    /// (inode); None: from all.
    pub netns: Option<u32>,
    /// Packets are also seen by other means than nftables rule verdicts (tc, drops): a journey
    /// of nothing but verdicts is then a verdict that came too late to join its packet, or a
    /// packet outside the traced interfaces, and is counted instead of shown.
    pub verdicts_join_sightings: bool,
    pub clock: Clock,
}

/// What went through the sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Events received and shown (in timelines or as lines).
    pub events: u64,
    /// Timelines printed.
    pub timelines: u64,
    /// Timelines printed, by how they ended.
    pub outcomes: Tally,
    /// Journeys of rule verdicts only, not shown (see [`SinkOptions::verdicts_join_sightings`]).
    pub unjoined_verdicts: u64,
    /// Packet blocks written to the pcapng file (`--pcapng`).
    #[serde(skip)]
    pub pcapng_packets: u64,
}

enum Mode {
    Events {
        renderer: Renderer,
        follower: Option<Follower>,
    },
    Timelines {
        /// Boxed: far larger than the events mode's state.
        correlator: Box<Correlator>,
        style: Style,
        /// Timelines are filtered whole: any sighting of the packet may match.
        filter: Option<Filter>,
        verdicts_join_sightings: bool,
    },
}

pub struct Sink<W: Write> {
    out: W,
    topology: Topology,
    /// Names for the numbers events carry; None when the events come named (a recording).
    names: Option<Names>,
    recorder: Option<RecordWriter<Box<dyn Write>>>,
    /// Every timeline shown, also as pcapng blocks.
    pcapng: Option<PcapngWriter<Box<dyn Write>>>,
    /// Every timeline shown, also as an OpenTelemetry trace (`--otlp`).
    otlp: Option<(Box<dyn SpanExport>, otlp::Run)>,
    mode: Mode,
    netns: Option<u32>,
    limit: u64,
    /// The output is gone (a closed pipe): nothing more is written.
    gone: bool,
    /// The recording could not be written and was stopped.
    recording_failed: bool,
    stats: Stats,
}

impl<W: Write> Sink<W> {
    pub fn new(out: W, opts: SinkOptions, topology: Topology, names: Option<Names>) -> Self {
        let mode = if opts.events {
            Mode::Events {
                renderer: Renderer::new(opts.format, opts.clock),
                follower: opts.filter.map(Follower::new),
            }
        } else {
            Mode::Timelines {
                correlator: Box::new(
                    Correlator::new(Limits::default())
                        .traced_in(u32::try_from(topology.own_netns).unwrap_or(0)),
                ),
                style: Style {
                    json: opts.format == Format::Json,
                    color: opts.color && opts.format == Format::Text,
                    clock: opts.clock,
                },
                filter: opts.filter,
                verdicts_join_sightings: opts.verdicts_join_sightings,
            }
        };
        Sink {
            out,
            topology,
            names,
            recorder: None,
            pcapng: None,
            otlp: None,
            mode,
            netns: opts.netns,
            limit: opts.limit.unwrap_or(u64::MAX),
            gone: false,
            recording_failed: false,
            stats: Stats::default(),
        }
    }

    /// Also writes every event shown into a recording.
    pub fn record_to(&mut self, recorder: RecordWriter<Box<dyn Write>>) {
        self.recorder = Some(recorder);
    }

    /// Also writes every timeline shown as pcapng blocks (timelines only: with `events`
    /// nothing is correlated, so there is no packet id to give).
    pub fn pcapng_to(&mut self, writer: PcapngWriter<Box<dyn Write>>) {
        self.pcapng = Some(writer);
    }

    /// Also hands every timeline shown, as the spans of one trace, to `export` (timelines
    /// only, as for pcapng).
    pub fn otlp_to(&mut self, export: Box<dyn SpanExport>, run: otlp::Run) {
        self.otlp = Some((export, run));
    }

    /// Packet blocks written to the pcapng file.
    pub fn pcapng_packets(&self) -> Option<u64> {
        self.pcapng.as_ref().map(|w| w.packets())
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The host changed (interfaces came or went, containers started).
    pub fn topology_mut(&mut self) -> &mut Topology {
        &mut self.topology
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Timelines or events shown, whichever `limit` counts.
    fn shown(&self) -> u64 {
        match self.mode {
            Mode::Events { .. } => self.stats.events,
            Mode::Timelines { .. } => self.stats.timelines,
        }
    }

    /// Enough was shown, or nobody reads any more: the caller should stop.
    pub fn done(&self) -> bool {
        self.gone || self.shown() >= self.limit
    }

    /// One event, with the bytes the kernel wrote when it came from the ring buffer (what a
    /// recording stores). Returns whether the sink is done.
    pub fn push(&mut self, mut event: Event, raw: Option<&[u8]>) -> Result<bool, SinkError> {
        if self.done() || !self.wants(&event.body) {
            return Ok(self.done());
        }
        if let Some(names) = &self.names {
            names.enrich(&mut event);
        }
        self.stats.events += 1;
        if let Some(w) = self.recorder.as_mut() {
            // Names first, so a replay knows them when it reaches the event.
            let written = w
                .extra(&event)
                .and_then(|()| raw.map_or(Ok(()), |bytes| w.raw(bytes)));
            self.recording_written(written);
        }
        match &mut self.mode {
            Mode::Timelines { correlator, .. } => {
                correlator.push(event);
                let done = correlator.take_finished();
                self.write_journeys(done)?;
            }
            Mode::Events { renderer, follower } => {
                if follower.as_mut().is_none_or(|f| f.admits(&event)) {
                    let result = renderer.write(&mut self.out, &event, &self.topology);
                    written(&mut self.gone, result)?;
                }
            }
        }
        Ok(self.done())
    }

    /// A recording that cannot be written (a full disk) stops, said once; the trace goes on.
    fn recording_written(&mut self, result: io::Result<()>) {
        if let Err(e) = result {
            log::warn!(
                "the recording stopped: {e}; it holds the events until here, and tracing goes on"
            );
            self.recorder = None;
            self.recording_failed = true;
        }
    }

    /// Whether the recording had to stop early.
    pub fn recording_failed(&self) -> bool {
        self.recording_failed
    }

    fn wants(&self, body: &EventBody) -> bool {
        match (body, self.netns) {
            // probe's own `--rules` table marking the packet (walked like any table where
            // nft_do_chain is probed): the observer's footprint, not the host's datapath.
            (EventBody::Chain(c), _)
                if c.table.starts_with(probe_common::names::TRACE_TABLE_PREFIX) =>
            {
                false
            }
            // A freed buffer with no link-layer protocol and no IP header is no packet: a
            // netlink message (each multicast one is freed as if dropped), vsock and the like.
            (EventBody::Drop(d), _) if d.packet.ip.is_none() && d.packet.ethertype == 0 => false,
            // Drops without a device (netns 0) cannot be placed: keep them.
            (EventBody::Drop(d), Some(ns)) => d.netns == 0 || d.netns == ns,
            // A routing lookup made in another namespace (a container's own connect()) is not
            // this namespace's decision, even when its device names match ours.
            (EventBody::Fib(f), Some(ns)) => f.netns == 0 || f.netns == ns,
            // So is a hook's verdict there: a container's own OUTPUT and POSTROUTING, before
            // its packet reaches this namespace.
            (EventBody::Netfilter(n), Some(ns)) => n.netns == 0 || n.netns == ns,
            _ => true,
        }
    }

    /// Ends the journeys quiet since before `now_ns - linger` and writes them.
    pub fn expire(&mut self, now_ns: u64) -> Result<bool, SinkError> {
        if let Mode::Timelines { correlator, .. } = &mut self.mode {
            correlator.expire(now_ns);
            let done = correlator.take_finished();
            self.write_journeys(done)?;
        }
        Ok(self.done())
    }

    /// Events were lost: the packets in flight may miss sightings.
    pub fn mark_loss(&mut self) {
        if let Mode::Timelines { correlator, .. } = &mut self.mode {
            correlator.mark_loss();
        }
    }

    fn write_journeys(&mut self, journeys: Vec<Journey>) -> Result<(), SinkError> {
        let Mode::Timelines {
            style,
            filter,
            verdicts_join_sightings,
            ..
        } = &self.mode
        else {
            return Ok(());
        };
        for j in journeys {
            if self.gone || self.stats.timelines >= self.limit {
                break;
            }
            if filter.as_ref().is_some_and(|f| !j.matches(f)) {
                continue;
            }
            if *verdicts_join_sightings
                && j.hops
                    .iter()
                    .all(|h| matches!(h.event.body, EventBody::Rule(_)))
            {
                self.stats.unjoined_verdicts += 1;
                continue;
            }
            self.stats.timelines += 1;
            if let Some(p) = self.pcapng.as_mut() {
                p.write_journey(&j, &self.topology)
                    .map_err(SinkError::Pcapng)?;
            }
            if let Some((export, run)) = self.otlp.as_mut() {
                let diagnosis = diagnose(&j, &self.topology);
                export.export(otlp::spans(&j, &self.topology, &diagnosis, run));
            }
            let text = render_finished(&j, &self.topology, *style, &mut self.stats.outcomes);
            let result = self.out.write_all(text.as_bytes());
            written(&mut self.gone, result)?;
        }
        Ok(())
    }

    /// Pushes what was written out to the reader. Returns whether the sink is done.
    pub fn flush(&mut self) -> Result<bool, SinkError> {
        if let Some(p) = self.pcapng.as_mut() {
            p.flush().map_err(SinkError::Pcapng)?;
        }
        if !self.gone {
            let result = self.out.flush();
            written(&mut self.gone, result)?;
        }
        Ok(self.done())
    }

    /// Ends everything still in flight (shown as it stands), flushes the output and the
    /// recording, and returns the counts.
    pub fn finish(mut self) -> Result<Stats, SinkError> {
        if let Some(w) = self.recorder.as_mut() {
            let flushed = w.flush();
            self.recording_written(flushed);
        }
        if let Mode::Timelines { correlator, .. } = &mut self.mode {
            let rest = correlator.flush();
            self.write_journeys(rest)?;
        }
        self.flush()?;
        self.stats.pcapng_packets = self.pcapng_packets().unwrap_or(0);
        Ok(self.stats)
    }
}

/// A closed pipe (`probe trace | head`) ends the output quietly; other errors are errors.
fn written(gone: &mut bool, result: io::Result<()>) -> Result<(), SinkError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            *gone = true;
            Ok(())
        }
        Err(e) => Err(SinkError::Output(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Metadata, RecordReader};

    /// A tc sighting on interface 4, as the kernel writes it.
    fn raw_sighting() -> Vec<u8> {
        let mut tc = probe_common::TcEvent {
            header: probe_common::EventHeader {
                ts_ns: 1_000,
                kind: probe_common::kind::TC,
                flags: 0,
                cpu: 0,
            },
            ifindex: 4,
            direction: probe_common::direction::EGRESS,
            ..Default::default()
        };
        tc.packet.family = probe_common::family::IPV4;
        tc.packet.l3_proto = 0x0800;
        tc.packet.l4_proto = 17;
        tc.packet.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        tc.packet.daddr[..4].copy_from_slice(&[172, 17, 0, 2]);
        tc.packet.sport = 4000;
        tc.packet.dport = 53;
        tc.packet.ip_id = 9;
        crate::bytes_of(&tc)
    }

    /// What `probe replay` does with a recording, through the same sink as a trace.
    fn replay(file: &[u8], events: bool) -> Vec<serde_json::Value> {
        let mut reader = RecordReader::new(file).unwrap();
        let opts = SinkOptions {
            format: Format::Json,
            events,
            color: false,
            filter: None,
            limit: None,
            netns: None,
            verdicts_join_sightings: true,
            clock: Clock::default(),
        };
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, opts, reader.meta.topology.clone(), None);
        while let Some(e) = reader.next_event().unwrap() {
            sink.push(e, None).unwrap();
        }
        sink.finish().unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn replayed_events_carry_the_recorded_container_names() {
        let mut topology = Topology::default();
        topology.links.insert(4, ("veth-web".into(), "veth".into()));
        topology.containers.interfaces.insert(4, "web".into());
        let meta = Metadata {
            topology,
            ..Metadata::default()
        };
        let mut file = Vec::new();
        let mut w = RecordWriter::new(&mut file, &meta).unwrap();
        w.raw(&raw_sighting()).unwrap();
        drop(w);
        let lines = replay(&file, true);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["ifname"], "veth-web");
        assert_eq!(lines[0]["container"], "web");
        let timelines = replay(&file, false);
        assert_eq!(timelines[0]["hops"][0]["container"], "web");
        assert_eq!(
            timelines[0]["hops"][0]["where"],
            "veth-web (container web) egress"
        );
    }

    fn drop_of(ethertype: u16, ip: bool) -> crate::event::Event {
        let mut d = probe_common::DropEvent {
            header: probe_common::EventHeader {
                ts_ns: 1_000,
                kind: probe_common::kind::DROP,
                flags: 0,
                cpu: 0,
            },
            ..Default::default()
        };
        d.packet.l3_proto = ethertype;
        if ip {
            d.packet.family = probe_common::family::IPV4;
            d.packet.l4_proto = 17;
        }
        crate::decode::decode(&crate::bytes_of(&d)).unwrap()
    }

    #[test]
    fn frees_that_are_no_packets_are_not_drops() {
        let opts = || SinkOptions {
            format: Format::Json,
            events: true,
            color: false,
            filter: None,
            limit: None,
            netns: None,
            verdicts_join_sightings: true,
            clock: Clock::default(),
        };
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, opts(), Topology::default(), None);
        // A netlink message freed by a multicast, then an ARP frame and a datagram dropped.
        for e in [
            drop_of(0, false),
            drop_of(0x0806, false),
            drop_of(0x0800, true),
        ] {
            sink.push(e, None).unwrap();
        }
        assert_eq!(sink.finish().unwrap().events, 2);
    }

    fn lookup_in(netns: u32) -> crate::event::Event {
        let mut f = probe_common::FibEvent {
            header: probe_common::EventHeader {
                ts_ns: 1_000,
                kind: probe_common::kind::FIB,
                flags: 0,
                cpu: 0,
            },
            table: 254,
            family: probe_common::family::IPV4,
            source: probe_common::fib_source::RAW_TP_FIB4,
            netns_inum: netns,
            ..Default::default()
        };
        f.dst[..4].copy_from_slice(&[203, 0, 113, 2]);
        f.dev_name[..4].copy_from_slice(b"eth0");
        crate::decode::decode(&crate::bytes_of(&f)).unwrap()
    }

    #[test]
    fn lookups_of_other_namespaces_are_left_out_or_labelled() {
        let mut topology = Topology {
            own_netns: 5,
            ..Topology::default()
        };
        topology.netns_names.insert(7, "lab-b".into());
        topology.containers.netns.insert(9, "web".into());
        for (netns, shown) in [(None, 4), (Some(5), 2)] {
            let opts = SinkOptions {
                format: Format::Json,
                events: true,
                color: false,
                filter: None,
                limit: None,
                netns,
                verdicts_join_sightings: true,
                clock: Clock::default(),
            };
            let mut out = Vec::new();
            let mut sink = Sink::new(&mut out, opts, topology.clone(), None);
            // The traced namespace's, another's, a container's, and one of no known namespace.
            for ns in [5, 7, 9, 0] {
                sink.push(lookup_in(ns), None).unwrap();
            }
            assert_eq!(sink.finish().unwrap().events, shown);
        }
        let place = |ns| crate::render::facts::place(&lookup_in(ns), &topology);
        assert_eq!(place(5), "route table 254");
        assert_eq!(place(0), "route table 254");
        assert_eq!(place(7), "route table 254 in netns lab-b");
        assert_eq!(place(9), "route table 254 in container web");
    }

    #[test]
    fn a_walk_of_verdicts_alone_is_counted_not_shown_when_sightings_exist() {
        use crate::event::{DecidedBy, Family, RuleVerdict, Verdict};
        let verdict = || crate::event::Event {
            ts_ns: 5,
            cpu: 0,
            body: EventBody::Rule(Box::new(RuleVerdict {
                trace_id: 1,
                family: Family::Inet,
                table: "fw".into(),
                chain: "input".into(),
                hook: None,
                decided_by: DecidedBy::Policy,
                rule_handle: None,
                rule: None,
                verdict: Verdict::Accept,
                target: None,
                iif: 0,
                oif: 0,
                mark: 0,
                packet: None,
                headers: None,
            })),
        };
        for (join, shown, counted) in [(true, 0, 1), (false, 1, 0)] {
            let opts = SinkOptions {
                format: Format::Json,
                events: false,
                color: false,
                filter: None,
                limit: None,
                netns: None,
                verdicts_join_sightings: join,
                clock: Clock::default(),
            };
            let mut out = Vec::new();
            let mut sink = Sink::new(&mut out, opts, Topology::default(), None);
            sink.push(verdict(), None).unwrap();
            let stats = sink.finish().unwrap();
            assert_eq!((stats.timelines, stats.unjoined_verdicts), (shown, counted));
        }
    }

    #[test]
    fn a_closed_output_ends_the_sink_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let opts = SinkOptions {
            format: Format::Text,
            events: true,
            color: false,
            filter: None,
            limit: None,
            netns: None,
            verdicts_join_sightings: true,
            clock: Clock::default(),
        };
        let mut sink = Sink::new(Closed, opts, Topology::default(), None);
        let event = crate::decode::decode(&raw_sighting()).unwrap();
        assert!(
            sink.push(event, None).unwrap(),
            "done once the pipe is closed"
        );
        assert_eq!(sink.finish().unwrap().events, 1);
    }
}
