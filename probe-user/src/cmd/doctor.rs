//! `probe doctor`: what this kernel offers and which backend each observation point will use,
//! found the same way `probe trace` finds it (by loading and attaching, then letting go).

use schemars::JsonSchema;
use serde::Serialize;

use crate::{
    kernel::{Kernel, release},
    points::{self, Outcome, netfilter, rules, tc},
    session::{ebpf, privileges},
};

pub const SCHEMA: &str = "probe.doctor/1";

/// What the kernel offers and each observation point's backend (`probe doctor --json`).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Report {
    /// `probe.doctor/1`.
    #[schemars(schema_with = "line_name")]
    pub schema: &'static str,
    pub kernel: String,
    pub features: Vec<Feature>,
    pub points: Vec<Point>,
    /// Whether `probe trace` can observe anything at all here.
    pub can_trace: bool,
    /// Whether doctor ran with the privileges to try attaching.
    pub privileged: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Point {
    pub name: &'static str,
    /// The mechanism in use, or None when the point is unavailable.
    pub backend: Option<String>,
    /// Why that backend (or why none).
    pub detail: String,
}

fn line_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    probe_pipeline::schema::const_name(SCHEMA)
}

/// The JSON Schema of the doctor's report.
pub fn line_schema() -> schemars::Schema {
    probe_pipeline::schema::line::<Report>(SCHEMA)
}

/// What the kernel offers, before anything is loaded.
fn features(kernel: &Kernel) -> Vec<Feature> {
    vec![
        Feature {
            name: "BTF",
            available: kernel.btf.is_ok(),
            detail: match &kernel.btf {
                Ok(_) => crate::kernel::btf::VMLINUX.to_owned(),
                Err(e) => e.to_string(),
            },
        },
        Feature {
            name: "tracefs",
            available: kernel.tracefs.is_ok(),
            detail: match &kernel.tracefs {
                Ok(t) => t.root().display().to_string(),
                Err(e) => e.to_string(),
            },
        },
        Feature {
            name: "ring buffer",
            available: kernel.enum_has("bpf_map_type", "BPF_MAP_TYPE_RINGBUF"),
            detail: "BPF_MAP_TYPE_RINGBUF (Linux 5.8+)".into(),
        },
        Feature {
            name: "tcx",
            available: tc::has_tcx(kernel),
            detail: "tc links owned by the process (Linux 6.6+); else a clsact qdisc".into(),
        },
        Feature {
            name: "kprobes",
            available: kernel.kprobes,
            detail: "perf kprobe PMU or tracefs kprobe_events".into(),
        },
    ]
}

pub fn examine() -> Report {
    let kernel = Kernel::read(true);
    let root = privileges::check().is_ok();
    let mut features = features(&kernel);
    let ringbuf = features[2].available;
    let mut report_points = vec![Point {
        name: tc::NAME,
        backend: Some(tc::doctor_backend(&kernel).to_owned()),
        detail: "bridges, veths, tunnels and the uplink; clsact is the fallback".into(),
    }];
    if !root {
        features.push(Feature {
            name: "fentry/fexit",
            available: false,
            detail: "not tested: run probe doctor as root to try attaching".into(),
        });
        report_points.push(Point {
            name: "(kernel probes)",
            backend: None,
            detail: "run as root to find which backends attach".into(),
        });
        return Report {
            schema: SCHEMA,
            kernel: release(),
            can_trace: false,
            privileged: false,
            features,
            points: report_points,
        };
    }
    let mut all = points::all();
    // probe latency's stages inside the path (attached by probe latency only).
    all.push(Box::new(crate::cmd::latency::Stages::default()));
    let outcomes = dry_run(&all, &kernel);
    let hook = outcomes.as_ref().ok().and_then(|o| {
        o.iter()
            .find(|(n, _)| *n == netfilter::HOOK_VERDICTS)
            .map(|(_, o)| o.clone())
    });
    features.push(Feature {
        name: "fentry/fexit",
        available: hook
            .as_ref()
            .and_then(Outcome::attached)
            .is_some_and(|b| b.starts_with("fentry")),
        detail: match hook {
            Some(Outcome::Unavailable(why)) => why,
            Some(Outcome::Attached(how)) => how,
            None => "not tried".into(),
        },
    });
    for p in &all {
        let outcome = outcomes
            .as_ref()
            .ok()
            .and_then(|o| o.iter().find(|(n, _)| *n == p.name()).map(|(_, o)| o));
        let (backend, detail) = match outcome {
            Some(Outcome::Attached(how)) => (Some(how.clone()), p.shows().to_owned()),
            Some(Outcome::Unavailable(why)) => (None, format!("{why}; {}", p.fallback())),
            None => (None, p.fallback().to_owned()),
        };
        report_points.push(Point {
            name: p.name(),
            backend,
            detail,
        });
    }
    report_points.push(Point {
        name: rules::NAME,
        backend: Some(rules::BACKEND.into()),
        detail: "opt-in; adds table inet probe_trace_PID while tracing".into(),
    });
    if let Err(e) = &outcomes {
        report_points.push(Point {
            name: "(loading)",
            backend: None,
            detail: e.clone(),
        });
    }
    Report {
        schema: SCHEMA,
        kernel: release(),
        features,
        points: report_points,
        can_trace: outcomes.is_ok() && ringbuf,
        privileged: true,
    }
}

/// Loads and attaches exactly as `probe trace` does, then drops everything.
fn dry_run(
    all: &[Box<dyn points::Point>],
    kernel: &Kernel,
) -> Result<Vec<(&'static str, Outcome)>, String> {
    let (layout, _) = points::layout(all, kernel);
    match ebpf::load(
        probe_common::DEFAULT_RINGBUF_BYTES,
        &layout,
        &probe_common::Config::DEFAULT,
    ) {
        Ok(mut bpf) => {
            let _ = tc::attach::load_programs(&mut bpf);
            Ok(points::attach(all, &mut bpf, kernel, &layout))
        }
        Err(e) => Err(e.to_string()),
    }
}

pub fn render(r: &Report) -> String {
    let mut s = format!("kernel   {}\n\nkernel features\n", r.kernel);
    for f in &r.features {
        s.push_str(&format!(
            "  {:<13} {:<4} {}\n",
            f.name,
            if f.available { "yes" } else { "no" },
            f.detail
        ));
    }
    s.push_str("\nobservation points\n");
    for p in &r.points {
        let backend = p.backend.as_deref().unwrap_or("unavailable");
        s.push_str(&format!("  {:<25} {backend}\n", p.name));
        if !p.detail.is_empty() {
            s.push_str(&format!("  {:<25}   {}\n", "", p.detail));
        }
    }
    s.push_str(if r.can_trace {
        "\nprobe trace can run here.\n"
    } else {
        "\nprobe trace cannot run here (see above).\n"
    });
    s
}
