//! `probe watch`: the always-on mode. The kernel counts (drops by reason, place and namespace;
//! failed routing lookups; per-hop latency histograms) and writes no event; each scrape of
//! `/metrics` reads the maps and serves the counts as OpenMetrics text.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuHashMap};
use probe_common::{
    DropCountKey, HopBucket, RouteFailKey, StageKey, StageStat, direction, mode, names,
};
use probe_pipeline::names::{DropReasons, KernelSymbols, RouteTables};

use crate::{
    host::{self, docker},
    metrics::{
        encode::{CONTENT_TYPE, Metrics},
        http::{self, Pending, Response, Server},
        labels::Namer,
        store::{KernelCounts, Lost, Store},
    },
    points::{self, Point, drops, routes, tc},
    session::{
        self, Session, StartOptions, Stops, ebpf,
        poll::{pollable, readable},
    },
};

#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Interface names or globs for tc; empty: bridges, veths, tunnels and the uplink.
    pub ifaces: Vec<String>,
    /// Where `/metrics` is served.
    pub metrics: SocketAddr,
    /// Distinct values per label before `other`.
    pub label_limit: usize,
    pub ready_file: Option<PathBuf>,
    pub backend: tc::BackendChoice,
}

/// The kernel maps a watch reads.
struct Maps {
    drops: PerCpuHashMap<MapData, DropCountKey, u64>,
    routes: PerCpuHashMap<MapData, RouteFailKey, u64>,
    /// Latency mode's stage histograms: in watch mode only tc points feed them (no stage
    /// tracepoints are attached), so every entry is a hop between two tc hooks.
    hops: PerCpuHashMap<MapData, StageKey, StageStat>,
    counters: ebpf::Counters,
}

/// A tc-to-tc hop of the stage map as the metrics store counts it (None for chain starts).
fn tc_hop(k: &StageKey) -> Option<HopBucket> {
    let tc = |d: u8| d == direction::INGRESS || d == direction::EGRESS;
    (tc(k.from.direction) && tc(k.to.direction)).then_some(HopBucket {
        from: k.from,
        to: k.to,
        bucket: k.bucket,
    })
}

impl Maps {
    fn take(session: &mut Session) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            session
                .bpf
                .take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        let drops = take(probe_common::WATCH_DROPS_MAP)?;
        let routes = take(probe_common::WATCH_ROUTE_FAILS_MAP)?;
        let hops = take(names::LATENCY_STAGES_MAP)?;
        Ok(Self {
            drops: PerCpuHashMap::try_from(drops)
                .context("the drop map has an unexpected shape")?,
            routes: PerCpuHashMap::try_from(routes)
                .context("the routing-failure map has an unexpected shape")?,
            hops: PerCpuHashMap::try_from(hops)
                .context("the latency map has an unexpected shape")?,
            counters: ebpf::Counters::take(&mut session.bpf)?,
        })
    }

    /// Removes the kernel entries of interfaces that went (hop pairs through them, drops on
    /// them in this namespace), so interface churn cannot fill the maps; returns the keys
    /// removed. Call after the store took their last counts.
    fn prune(&mut self, gone: &[u32], own_netns: u64) -> (Vec<DropCountKey>, Vec<HopBucket>) {
        let drops: Vec<DropCountKey> = self
            .drops
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                gone.contains(&k.ifindex)
                    && (k.netns_inum == 0 || u64::from(k.netns_inum) == own_netns)
            })
            .collect();
        let hops: Vec<StageKey> = self
            .hops
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.from.ifindex) || gone.contains(&k.to.ifindex))
            .collect();
        for k in &drops {
            let _ = self.drops.remove(k);
        }
        for k in &hops {
            let _ = self.hops.remove(k);
        }
        (drops, hops.iter().filter_map(tc_hop).collect())
    }

    /// Every entry, summed over CPUs.
    fn read(&self) -> KernelCounts {
        fn all<K: aya::Pod + Copy>(map: &PerCpuHashMap<MapData, K, u64>) -> Vec<(K, u64)> {
            map.iter()
                .filter_map(Result::ok)
                .map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
                .collect()
        }
        let c = self.counters.read();
        KernelCounts {
            drops: all(&self.drops),
            route_failures: all(&self.routes),
            hops: self
                .hops
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, per_cpu)| {
                    Some((tc_hop(&k)?, per_cpu.iter().map(|s| s.count).sum()))
                })
                .collect(),
            lost: Lost {
                events: c.ringbuf_full,
                latency_samples: c.latency_map_full,
                watch_counts: c.watch_map_full,
            },
        }
    }
}

/// The names the kernel's numbers are given.
struct Names {
    reasons: DropReasons,
    symbols: KernelSymbols,
    tables: RouteTables,
}

/// Runs until stopped. Must be called before any other thread exists if the caller entered a
/// network namespace.
pub fn run(opts: &WatchOptions) -> anyhow::Result<()> {
    let selector = tc::Selector::parse(&opts.ifaces)?;
    // Bound first, in the namespace probe works in: a busy address is said before loading.
    let listener = http::bind(opts.metrics)?;
    let points: Vec<Box<dyn Point>> = vec![Box::new(drops::Drops), Box::new(routes::Decisions)];
    let mut session = Session::start(StartOptions {
        mode: mode::WATCH,
        filter: None,
        ringbuf_bytes: probe_common::DEFAULT_RINGBUF_BYTES,
        snaplen: 0,
        tc: Some((selector, opts.backend)),
        points,
    })?;
    for name in [points::drops::NAME, points::routes::DECISIONS] {
        if let Some(points::Outcome::Unavailable(why)) = session.outcome(name) {
            log::warn!("{name} are not counted here: {why}");
        }
    }
    let mut maps = Maps::take(&mut session)?;
    let names = Names {
        reasons: drops::reasons(&session.kernel),
        symbols: session.kernel.symbols.clone(),
        tables: host::route_tables(),
    };
    session.topology.netns_names = host::netns::named();
    let what = format!(
        "tracing {} for metrics (counted in the kernel), served on http://{}/metrics",
        session.describe().join(", "),
        opts.metrics
    );
    let rt = session::runtime()?;
    let result = rt.block_on(async {
        let (server, requests) =
            Server::new(listener).context("cannot serve metrics from the event loop")?;
        session::announce(&what, opts.ready_file.as_deref())?;
        serve(&mut session, &mut maps, &names, opts, server, requests).await
    });
    drop(rt);
    session.finish();
    result
}

async fn serve(
    session: &mut Session,
    maps: &mut Maps,
    names: &Names,
    opts: &WatchOptions,
    server: Server,
    mut requests: tokio::sync::mpsc::Receiver<Pending>,
) -> anyhow::Result<()> {
    let mut links = match session.link_events() {
        Some(fd) => Some(pollable(fd).context("cannot poll link notifications")?),
        None => None,
    };
    let mut stops = Stops::listen()?;
    let mut docker = docker::Watcher::start();
    session.topology.containers = docker.containers().clone();
    let mut store = Store::new(opts.label_limit);
    let metrics = Metrics::default();
    // Names that arrive late (containers, new namespaces) are picked up between scrapes.
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = server.accept() => {}
            Some((request, reply)) = requests.recv() => {
                let response = answer(&request, || {
                    store.update(&maps.read(), &namer(&session.topology, names));
                    metrics.set(store.series());
                    metrics.encode()
                });
                let _ = reply.send(response);
            }
            guard = readable(&mut links) => {
                let mut guard = guard?;
                let changes = session.on_link_events();
                // The counts of interfaces that went are taken under their last names (and
                // those of new ones under theirs); then their kernel entries make room.
                let mut naming = session.topology.clone();
                host::apply(&mut session.topology, &changes);
                for (index, link) in &session.topology.links {
                    naming.links.insert(*index, link.clone());
                }
                store.update(&maps.read(), &namer(&naming, names));
                let gone: Vec<u32> = changes
                    .iter()
                    .filter_map(|c| match c {
                        host::rtnl::LinkChange::Removed { index } => Some(*index),
                        host::rtnl::LinkChange::New(_) => None,
                    })
                    .collect();
                if !gone.is_empty() {
                    let (drops, hops) = maps.prune(&gone, session.topology.own_netns);
                    store.forget(&drops, &hops);
                }
                docker.links_changed();
                guard.clear_ready();
            }
            _ = ticker.tick() => {
                if session::namespace_gone() {
                    break;
                }
                if let Some(c) = docker.poll() {
                    session.topology.containers = c.clone();
                    session.topology.netns_names = host::netns::named();
                }
            }
            _ = stops.recv() => break,
        }
    }
    Ok(())
}

fn namer<'a>(topology: &'a probe_pipeline::topology::Topology, n: &'a Names) -> Namer<'a> {
    Namer {
        topology,
        reasons: &n.reasons,
        symbols: &n.symbols,
        tables: &n.tables,
    }
}

fn answer(request: &http::Request, metrics: impl FnOnce() -> String) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text("405 Method Not Allowed", "only GET and HEAD\n");
    }
    match request.path.as_str() {
        "/metrics" => Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            body: metrics(),
        },
        "/" => Response::text("200 OK", "probe watch: metrics at /metrics\n"),
        _ => Response::text("404 Not Found", "not found; metrics are at /metrics\n"),
    }
}
