//! One start for every command that attaches: privileges, stop signals held until the event
//! loop listens, kernel facts read once, the programs loaded with this kernel's layout and the
//! run's configuration, the observation points attached, the ready file, and, at the end, the
//! order of teardown that leaves nothing behind.

pub mod clock;
pub mod ebpf;
pub mod poll;
pub mod privileges;
pub mod signals;

use std::{os::fd::AsRawFd as _, path::Path};

use anyhow::Context as _;
use aya::Ebpf;
use probe_common::KernelLayout;
use probe_pipeline::{filter::Filter, topology::Topology};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    host,
    kernel::Kernel,
    points::{self, Outcome, Point, tc},
};
use signals::HeldSignals;

/// What a command asks the session to load and attach.
pub struct StartOptions<'a> {
    /// probe_common::mode::EVENTS or LATENCY.
    pub mode: u8,
    pub filter: Option<&'a Filter>,
    pub ringbuf_bytes: u32,
    /// Bytes of each packet tc copies into its event (`--snaplen`); 0: none.
    pub snaplen: u16,
    /// tc on interfaces: which, and how; None leaves tc out.
    pub tc: Option<(tc::Selector, tc::BackendChoice)>,
    /// The points attached once at start (drops, routes, netfilter).
    pub points: Vec<Box<dyn Point>>,
}

/// A running session: the loaded programs and what keeps them attached.
pub struct Session {
    pub bpf: Ebpf,
    pub kernel: Kernel,
    pub watch: Option<tc::TcWatch>,
    /// The traced namespace as names and roles.
    pub topology: Topology,
    /// Each point's outcome, in order.
    pub outcomes: Vec<(&'static str, Outcome)>,
    _held: HeldSignals,
}

impl Session {
    /// Loads and attaches. Must run before any other thread exists if the caller entered a
    /// network namespace (threads inherit it).
    pub fn start(opts: StartOptions<'_>) -> anyhow::Result<Session> {
        privileges::check()?;
        // Ctrl-C while attaching must not kill us half-way (leaving a qdisc or nft table): hold
        // the stop signals until the event loop listens for them.
        let held = HeldSignals::hold();
        ebpf::check_ringbuf_size(opts.ringbuf_bytes)?;
        // Kernel facts first: they shape what the programs read.
        let tracepoints = opts
            .points
            .iter()
            .any(|p| [points::drops::NAME, points::routes::DECISIONS].contains(&p.name()));
        let kernel = Kernel::read(tracepoints);
        if !opts.points.is_empty()
            && let Err(e) = &kernel.btf
        {
            log::warn!("{e}; drop events will lack interface and packet details");
        }
        if tracepoints && let Err(e) = &kernel.tracefs {
            log::warn!("{e}; drops and routing decisions will not be shown");
        }
        let (layout, missing) = if opts.points.is_empty() {
            // tc programs read packets, not kernel structs: no layout needed.
            (KernelLayout::ABSENT, Vec::new())
        } else {
            points::layout(&opts.points, &kernel)
        };
        for m in &missing {
            log::debug!("not available on this kernel: {m}");
        }
        let mut config = ebpf::config(opts.mode, opts.filter, opts.snaplen);
        config.routes = opts
            .points
            .iter()
            .any(|p| p.name() == points::routes::DECISIONS)
            .into();
        let mut bpf = ebpf::load(opts.ringbuf_bytes, &layout, &config)?;
        let mut topology = host::topology(&host::links());
        let watch = match opts.tc {
            Some((selector, backend)) => Some(tc::TcWatch::start(
                &mut bpf,
                selector,
                tc::TcAttacher::new(backend),
            )?),
            None => None,
        };
        // Interfaces may have appeared while attaching.
        host::refresh(&mut topology);
        let outcomes = points::attach(&opts.points, &mut bpf, &kernel, &layout);
        for (name, outcome) in &outcomes {
            if let Outcome::Unavailable(why) = outcome {
                log::debug!("{name}: unavailable: {why}");
            }
        }
        Ok(Session {
            bpf,
            kernel,
            watch,
            topology,
            outcomes,
            _held: held,
        })
    }

    /// What is attached, for the start-up line: interfaces with their backend, then the points.
    pub fn describe(&self) -> Vec<String> {
        let mut used = self
            .watch
            .as_ref()
            .map(tc::TcWatch::describe)
            .unwrap_or_default();
        for (name, outcome) in &self.outcomes {
            match (name, outcome.attached()) {
                // Tracepoints are listed as themselves, as before.
                (_, Some(how)) if how.starts_with("tracepoint ") => used.extend(
                    how.split(", ")
                        .map(|t| t.trim_start_matches("tracepoint ").to_owned()),
                ),
                (_, Some(how)) => used.push(how.to_owned()),
                (_, None) => {}
            }
        }
        used
    }

    /// The outcome of the point `name`, if it was selected.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o)
    }

    /// Handles pending link events: attaches to interfaces that appeared and releases those
    /// that went. Returns the changes, for whoever names interfaces (`host::apply`).
    pub fn on_link_events(&mut self) -> Vec<host::rtnl::LinkChange> {
        match self.watch.as_mut() {
            Some(w) => w.on_link_events(&mut self.bpf),
            None => Vec::new(),
        }
    }

    /// The link monitor's descriptor, for the event loop (None without tc).
    pub fn link_events(&self) -> Option<std::os::fd::RawFd> {
        self.watch.as_ref().map(|w| w.monitor().as_raw_fd())
    }

    /// Detaches in the order that leaves nothing: links go with the programs, then the qdiscs
    /// probe created, then tracefs if probe mounted it.
    pub fn finish(self) {
        let Session {
            bpf, kernel, watch, ..
        } = self;
        drop(bpf);
        if let Some(w) = watch {
            w.finish();
        }
        drop(kernel);
    }
}

/// Whether the traced namespace was deleted: said once, as the reason to stop (probe would
/// otherwise hold it open on its own).
pub fn namespace_gone() -> bool {
    match host::netns::entered_is_gone() {
        Some(spec) => {
            log::warn!(
                "the network namespace {spec} was deleted; stopping, since probe alone would \
                 keep it alive"
            );
            true
        }
        None => false,
    }
}

/// Says what is traced and writes the ready file: the session is listening from here on.
pub fn announce(what: &str, ready_file: Option<&Path>) -> anyhow::Result<()> {
    log::info!("{what}; press Ctrl-C to stop");
    if let Some(path) = ready_file {
        std::fs::write(path, "ready\n")
            .with_context(|| format!("cannot write ready file {}", path.display()))?;
    }
    Ok(())
}

/// The single-threaded event loop every command runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the event loop")
}

/// SIGINT, SIGTERM and SIGHUP, listened for; creating this releases the signals held since
/// start-up, so one sent meanwhile ends the loop now.
pub struct Stops {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Stops {
    pub fn listen() -> anyhow::Result<Self> {
        let stops = Stops {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        };
        HeldSignals::release();
        Ok(stops)
    }

    /// Resolves when a stop signal arrives.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}
