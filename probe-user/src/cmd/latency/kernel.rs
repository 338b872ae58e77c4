//! `probe latency`'s side of the kernel: the stage tracepoints it attaches, the options it
//! writes, and the maps it reads each interval.

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{KProbe, RawTracePoint},
};
use probe_common::{FlowKey, LatencyOptions, StageKey, StageStat, TopN, names, stage};

use std::sync::{Arc, Mutex};

use probe_common::KernelLayout;

use super::model::{self, Histogram, Reading, Stage};
use crate::{
    kernel::Kernel,
    points::{Outcome, Point},
};

/// The stages inside the path: (program, raw tracepoint, what is lost without it).
const STAGES: &[(&str, &str, &str)] = &[
    (
        names::RAW_TP_QDISC_ENQUEUE,
        "qdisc_enqueue",
        "queueing is measured from the tc egress point (5.10 has no qdisc_enqueue)",
    ),
    (
        names::RAW_TP_QDISC_DEQUEUE,
        "qdisc_dequeue",
        "no queueing stage",
    ),
    (
        names::RAW_TP_NETIF_RX,
        "netif_rx",
        "no transmit-to-peer stage",
    ),
    (
        names::RAW_TP_NETIF_RECEIVE,
        "netif_receive_skb",
        "no backlog stage",
    ),
];

/// As `probe doctor` lists it.
pub const NAME: &str = "latency stages";

/// The stages inside the path as an observation point: attached with tc by the session, which
/// also reads the skb offsets (`skb->dev`) the qdisc programs need into the layout.
#[derive(Clone, Default)]
pub struct Stages {
    /// What could not be attached, in words (shared with the command, which reports it).
    pub missing: Arc<Mutex<Vec<String>>>,
}

impl Point for Stages {
    fn name(&self) -> &'static str {
        NAME
    }

    fn shows(&self) -> &'static str {
        "qdisc sojourn, the hand-off to a veth peer and its backlog"
    }

    fn fallback(&self) -> &'static str {
        "only the time between tc points"
    }

    fn prepare(&self, _: &Kernel, _: &mut KernelLayout, _: &mut Vec<String>) {}

    fn attach(&self, bpf: &mut Ebpf, kernel: &Kernel, _: &KernelLayout) -> Outcome {
        let mut attached = Vec::new();
        let mut missing = Vec::new();
        for (program, tracepoint, without) in STAGES {
            match attach_one(bpf, program, tracepoint) {
                Ok(()) => attached.push(*tracepoint),
                Err(e) => {
                    log::warn!("raw tracepoint {tracepoint} unavailable ({e:#}): {without}");
                    missing.push(format!("{tracepoint}: {without}"));
                }
            }
        }
        let mut kprobes = Vec::new();
        for (program, function) in BRIDGE_STEPS {
            match attach_kprobe(bpf, kernel, program, function) {
                Ok(()) => kprobes.push(*function),
                Err(e) => {
                    log::debug!("kprobe {function}: {e:#}");
                    missing.push(format!(
                        "{function}: {e:#}; the bridge's steps are inside forwarding"
                    ));
                }
            }
        }
        if let Ok(mut m) = self.missing.lock() {
            *m = missing.clone();
        }
        let mut how = Vec::new();
        if !attached.is_empty() {
            how.push(format!("raw tracepoint {}", attached.join(", ")));
        }
        if !kprobes.is_empty() {
            how.push(format!("kprobe {}", kprobes.join(", ")));
        }
        if how.is_empty() {
            Outcome::Unavailable(missing.join("; "))
        } else {
            Outcome::Attached(how.join("; "))
        }
    }
}

/// The bridge's own steps: (program, kernel function), kprobes where the kernel has them.
const BRIDGE_STEPS: &[(&str, &str)] = &[
    (names::KPROBE_BR_HANDLE_FRAME, "br_handle_frame"),
    (names::KPROBE_BR_FORWARD, "br_forward"),
];

fn attach_kprobe(
    bpf: &mut Ebpf,
    kernel: &Kernel,
    program: &str,
    function: &str,
) -> anyhow::Result<()> {
    if !kernel.kprobes {
        bail!("this kernel has no kprobes");
    }
    if !kernel.has_function(function) {
        bail!("the kernel has no function {function} (bridge module not loaded?)");
    }
    let p: &mut KProbe = bpf
        .program_mut(program)
        .context("not in the eBPF object")?
        .try_into()?;
    p.load()?;
    p.attach(function, 0)?;
    Ok(())
}

fn attach_one(bpf: &mut Ebpf, program: &str, tracepoint: &str) -> anyhow::Result<()> {
    let p: &mut RawTracePoint = bpf
        .program_mut(program)
        .context("not in the eBPF object")?
        .try_into()?;
    p.load()?;
    p.attach(tracepoint)?;
    Ok(())
}

/// The latency maps, taken out of the object.
pub struct Maps {
    stages: PerCpuHashMap<MapData, StageKey, StageStat>,
    top: PerCpuArray<MapData, TopN>,
    flows: HashMap<MapData, u32, FlowKey>,
}

impl Maps {
    /// Takes the maps and writes the options (before any packet is grouped).
    pub fn take(bpf: &mut Ebpf, group_by: u32) -> anyhow::Result<Maps> {
        let mut take = |name: &'static str| {
            bpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        let mut opts: Array<MapData, LatencyOptions> =
            Array::try_from(take(names::LATENCY_OPTS_MAP)?).context("latency options map")?;
        opts.set(0, LatencyOptions { group_by, _pad: 0 }, 0)
            .context("cannot write the latency options")?;
        Ok(Maps {
            stages: PerCpuHashMap::try_from(take(names::LATENCY_STAGES_MAP)?)
                .context("the stage map has an unexpected shape")?,
            top: PerCpuArray::try_from(take(names::LATENCY_TOP_MAP)?)
                .context("the slowest-samples map has an unexpected shape")?,
            flows: HashMap::try_from(take(names::LATENCY_FLOWS_MAP)?)
                .context("the flow map has an unexpected shape")?,
        })
    }

    /// Reads everything, summed over CPUs; the slowest samples since the last read (cleared).
    pub fn read(&mut self, slowest: usize) -> Reading {
        let mut r = Reading::default();
        for item in self.stages.iter() {
            let Ok((key, per_cpu)) = item else { continue };
            let count: u64 = per_cpu.iter().map(|s| s.count).sum();
            let sum: u64 = per_cpu.iter().map(|s| s.sum_ns).sum();
            let max = per_cpu.iter().map(|s| s.max_ns).max().unwrap_or(0);
            let (from, to) = (model::Point::from(key.from), model::Point::from(key.to));
            if from.at == stage::START {
                *r.starts.entry((key.group, to)).or_default() += count;
                continue;
            }
            let h = r
                .stages
                .entry(Stage {
                    group: key.group,
                    from,
                    to,
                })
                .or_insert_with(|| Histogram {
                    max_ns: Some(0),
                    ..Histogram::default()
                });
            *h.buckets.entry(key.bucket).or_default() += count;
            h.sum_ns += sum;
            h.max_ns = h.max_ns.map(|m| m.max(max));
        }
        if let Ok(per_cpu) = self.top.get(&0, 0) {
            r.slowest = per_cpu
                .iter()
                .flat_map(|t| t.slots.iter().copied())
                .filter(|o| o.gap_ns > 0)
                .collect();
            r.slowest.sort_by_key(|o| std::cmp::Reverse(o.gap_ns));
            r.slowest.truncate(slowest);
            let cleared = vec![TopN::default(); per_cpu.len()];
            if let Ok(values) = PerCpuValues::try_from(cleared) {
                let _ = self.top.set(0, values, 0);
            }
        }
        r.flows = self.flows.iter().filter_map(Result::ok).collect();
        r
    }
}
