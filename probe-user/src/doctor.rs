//! `probe doctor`: what this kernel offers and which backend each observation point will use,
//! found the same way `probe trace` finds it (by loading and attaching, then letting go).

use serde::Serialize;

use crate::{btf::Btf, ebpf, kfunc, privileges, tc, tracefs::Tracefs, tracepoints};

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub features: Vec<Feature>,
    pub points: Vec<Point>,
    /// Whether `probe trace` can observe anything at all here.
    pub can_trace: bool,
}

#[derive(Debug, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Point {
    pub name: &'static str,
    /// The mechanism in use, or None when the point is unavailable.
    pub backend: Option<String>,
    /// Why that backend (or why none).
    pub detail: String,
}

fn kernel_release() -> String {
    // SAFETY: uname fills a plain struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} ({})", field(&u.release), field(&u.machine))
}

fn enum_has(btf: Option<&Btf>, enum_name: &str, value: &str) -> bool {
    btf.and_then(|b| b.enum_values(enum_name).ok())
        .is_some_and(|v| v.iter().any(|(n, _)| n == value))
}

pub fn examine() -> Report {
    let btf = Btf::from_sys();
    let btf_ok = btf.as_ref().ok();
    let tracefs = Tracefs::open();
    let root = privileges::check().is_ok();
    let mut features = vec![
        Feature {
            name: "BTF",
            available: btf.is_ok(),
            detail: match &btf {
                Ok(_) => crate::btf::VMLINUX.to_owned(),
                Err(e) => e.to_string(),
            },
        },
        Feature {
            name: "tracefs",
            available: tracefs.is_ok(),
            detail: match &tracefs {
                Ok(t) => t.root().display().to_string(),
                Err(e) => e.to_string(),
            },
        },
        Feature {
            name: "ring buffer",
            available: enum_has(btf_ok, "bpf_map_type", "BPF_MAP_TYPE_RINGBUF"),
            detail: "BPF_MAP_TYPE_RINGBUF (Linux 5.8+)".into(),
        },
        Feature {
            name: "tcx",
            available: enum_has(btf_ok, "bpf_attach_type", "BPF_TCX_INGRESS"),
            detail: "tc links owned by the process (Linux 6.6+); else a clsact qdisc".into(),
        },
        Feature {
            name: "kprobes",
            available: kfunc::kprobes_supported(),
            detail: "perf kprobe PMU or tracefs kprobe_events".into(),
        },
    ];

    let tcx = features[3].available;
    let mut points = vec![Point {
        name: "tc on interfaces",
        backend: Some(if tcx { "tcx" } else { "clsact qdisc (netlink)" }.to_owned()),
        detail: "bridges, veths, tunnels and the uplink; clsact is the fallback".into(),
    }];

    if !root {
        features.push(Feature {
            name: "fentry/fexit",
            available: false,
            detail: "not tested: run probe doctor as root to try attaching".into(),
        });
        points.push(Point {
            name: "(kernel probes)",
            backend: None,
            detail: "run as root to find which backends attach".into(),
        });
        return Report {
            kernel: kernel_release(),
            can_trace: false,
            features,
            points,
        };
    }

    // Dry run: load and attach exactly as `probe trace` does, then drop everything.
    let (layout, _, _) = tracepoints::prepare(tracefs.as_ref().ok(), btf_ok);
    let (tp, kf) = match ebpf::load(
        probe_common::DEFAULT_RINGBUF_BYTES,
        &layout,
        &probe_common::Config::DEFAULT,
    ) {
        Ok(mut bpf) => {
            let _ = tc::load_programs(&mut bpf);
            let tp = if tracefs.is_ok() {
                tracepoints::attach(
                    &mut bpf,
                    tracepoints::Selection {
                        drops: true,
                        routes: true,
                    },
                )
            } else {
                Vec::new()
            };
            let kf = kfunc::attach(
                &mut bpf,
                kfunc::Selection {
                    netfilter: true,
                    routing_rules: true,
                },
                &layout,
            );
            (Ok(tp), Some(kf))
        }
        Err(e) => (Err(e.to_string()), None),
    };
    let has_tp = |name: &str| tp.as_ref().is_ok_and(|t| t.iter().any(|a| a == name));
    let fexit_ok = kf
        .as_ref()
        .and_then(|k| k.hook_verdicts.attached())
        .is_some_and(|b| b.starts_with("fentry"));
    features.push(Feature {
        name: "fentry/fexit",
        available: fexit_ok,
        detail: match kf.as_ref().map(|k| &k.hook_verdicts) {
            Some(kfunc::Outcome::Unavailable(why)) => why.clone(),
            Some(kfunc::Outcome::Attached(how)) => how.clone(),
            _ => "not tried".into(),
        },
    });

    points.push(Point {
        name: "drops",
        backend: has_tp("skb:kfree_skb").then(|| "tracepoint skb:kfree_skb".to_owned()),
        detail: "reason names read from this kernel; location via /proc/kallsyms".into(),
    });
    let fib: Vec<&str> = ["fib:fib_table_lookup", "fib6:fib6_table_lookup"]
        .into_iter()
        .filter(|n| has_tp(n))
        .collect();
    points.push(Point {
        name: "routing decisions",
        backend: (!fib.is_empty()).then(|| format!("tracepoint {}", fib.join(", tracepoint "))),
        detail: "table, result device, gateway or error per lookup".into(),
    });
    let outcome = |o: Option<&kfunc::Outcome>, fallback: &str| match o {
        Some(kfunc::Outcome::Attached(how)) => (Some(how.clone()), String::new()),
        Some(kfunc::Outcome::Unavailable(why)) => (None, format!("{why}; {fallback}")),
        _ => (None, fallback.to_owned()),
    };
    let (b, d) = outcome(
        kf.as_ref().map(|k| &k.routing_rules),
        "the chosen table still shows in routing decisions",
    );
    points.push(Point {
        name: "policy routing rules",
        backend: b,
        detail: if d.is_empty() {
            "the ip rule (pref, table) that chose the table".into()
        } else {
            d
        },
    });
    let (b, d) = outcome(
        kf.as_ref().map(|k| &k.hook_verdicts),
        "netfilter drops show as drops (NETFILTER_DROP); --rules gives rule-level verdicts",
    );
    points.push(Point {
        name: "netfilter hook verdicts",
        backend: b,
        detail: if d.is_empty() {
            "hook, verdict, in/out interface, time in hook".into()
        } else {
            d
        },
    });
    let (b, d) = outcome(
        kf.as_ref().map(|k| &k.chain_verdicts),
        "--rules names table, chain and rule through nftables tracing",
    );
    points.push(Point {
        name: "table/chain verdicts",
        backend: b,
        detail: if d.is_empty() {
            "table and base chain that decided, with verdict".into()
        } else {
            d
        },
    });
    points.push(Point {
        name: "rule verdicts (--rules)",
        backend: Some("nftables trace (NFNLGRP_NFTRACE)".into()),
        detail: "opt-in; adds table inet probe_trace_PID while tracing".into(),
    });
    if let Err(e) = &tp {
        points.push(Point {
            name: "(loading)",
            backend: None,
            detail: e.clone(),
        });
    }
    let can_trace = tp.is_ok() && features[2].available;
    Report {
        kernel: kernel_release(),
        features,
        points,
        can_trace,
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
