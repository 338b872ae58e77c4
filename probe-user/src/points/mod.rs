//! The observation points: where probe's programs watch packets, each in its own module with
//! the kernel facts it needs, its mechanisms in order of preference and what covers for it when
//! none attaches. `probe trace` attaches the points a run selects; `probe doctor` asks every
//! point the same questions.
//!
//! Adding a point: write its kernel program in probe-ebpf/src/points/, its event in
//! probe-common, its decoding and words in probe-pipeline, then a module here implementing
//! [`Point`], listed in [`all`].

mod attach;
pub mod drops;
pub mod netfilter;
pub mod routes;
pub mod rules;
mod skb;
pub mod tc;

use aya::Ebpf;
use probe_common::KernelLayout;

use crate::kernel::Kernel;

/// How one observation point ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Attached, with the mechanism used (`fentry/fexit nf_hook_slow`).
    Attached(String),
    /// Nothing attached here, and why.
    Unavailable(String),
}

impl Outcome {
    pub fn attached(&self) -> Option<&str> {
        match self {
            Outcome::Attached(how) => Some(how),
            Outcome::Unavailable(_) => None,
        }
    }
}

/// Which points a run wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub drops: bool,
    pub routes: bool,
    pub netfilter: bool,
}

impl Selection {
    pub const ALL: Selection = Selection {
        drops: true,
        routes: true,
        netfilter: true,
    };
}

/// One observation point attached once, at start, by kernel programs.
pub trait Point {
    /// As `probe doctor` lists it.
    fn name(&self) -> &'static str;
    /// What it shows when attached.
    fn shows(&self) -> &'static str;
    /// What covers for it where it cannot attach.
    fn fallback(&self) -> &'static str;
    /// Puts the offsets and record layouts its programs read into `layout`.
    fn prepare(&self, kernel: &Kernel, layout: &mut KernelLayout, missing: &mut Vec<String>);
    /// Loads and attaches its programs with the best mechanism this kernel has.
    fn attach(&self, bpf: &mut Ebpf, kernel: &Kernel, layout: &KernelLayout) -> Outcome;
}

/// Every point attached at start, in the order doctor lists them.
pub fn all() -> Vec<Box<dyn Point>> {
    vec![
        Box::new(drops::Drops),
        Box::new(routes::Decisions),
        Box::new(routes::PolicyRules),
        Box::new(netfilter::HookVerdicts),
        Box::new(netfilter::ChainVerdicts),
    ]
}

/// The points a run selected.
pub fn selected(s: Selection) -> Vec<Box<dyn Point>> {
    all()
        .into_iter()
        .filter(|p| match p.name() {
            drops::NAME => s.drops,
            routes::DECISIONS | routes::POLICY_RULES => s.routes,
            _ => s.netfilter,
        })
        .collect()
}

/// The layout every selected point needs, read from the kernel once; what could not be found
/// goes to `missing` (the programs that need it read zeros instead).
pub fn layout(points: &[Box<dyn Point>], kernel: &Kernel) -> (KernelLayout, Vec<String>) {
    let mut layout = KernelLayout::ABSENT;
    let mut missing = Vec::new();
    match kernel.btf() {
        Some(btf) => skb::offsets(btf, &mut layout, &mut missing),
        None => missing.push("kernel BTF (struct offsets)".into()),
    }
    for p in points {
        p.prepare(kernel, &mut layout, &mut missing);
    }
    (layout, missing)
}

/// Attaches each point; returns their outcomes by name.
pub fn attach(
    points: &[Box<dyn Point>],
    bpf: &mut Ebpf,
    kernel: &Kernel,
    layout: &KernelLayout,
) -> Vec<(&'static str, Outcome)> {
    points
        .iter()
        .map(|p| (p.name(), p.attach(bpf, kernel, layout)))
        .collect()
}
