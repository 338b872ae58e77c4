//! The bench's results as a markdown table set and as JSON, in target/bench/.

use std::fmt::Write as _;

use serde_json::json;

use super::{Measured, Plan, Results};

pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu: String,
    /// /proc/loadavg (1, 5, 15 min) before and after the run: how busy the machine was.
    pub load_before: String,
    pub load_after: String,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// A throughput set's table: each configuration's median (in `unit`, scaled by `scale`),
/// spread and ratio to the baseline of the same rounds, then its notes.
fn throughput_table(
    md: &mut String,
    unit: &str,
    scale: f64,
    measured: &[Measured],
) -> std::fmt::Result {
    writeln!(
        md,
        "| configuration | median {unit} | spread | ratio to baseline (median, spread) |"
    )?;
    writeln!(md, "|---|---|---|---|")?;
    for m in measured {
        if let Some(why) = &m.unavailable {
            writeln!(md, "| {} | not available here: {why} | | |", m.name)?;
            continue;
        }
        let values: Vec<f64> = m.values.iter().map(|v| v / scale).collect();
        let (lo, hi) = spread(&values);
        let (rlo, rhi) = spread(&m.ratios);
        writeln!(
            md,
            "| {} | {:.2} | {lo:.2}–{hi:.2} | {:.3} ({rlo:.3}–{rhi:.3}) |",
            m.name,
            median(&values),
            median(&m.ratios)
        )?;
    }
    let notes: Vec<String> = measured
        .iter()
        .flat_map(|m| m.notes.iter().map(move |n| format!("- {}: {n}", m.name)))
        .collect();
    if !notes.is_empty() {
        writeln!(md, "\n{}", notes.join("\n"))?;
    }
    Ok(())
}

fn markdown(machine: &Machine, plan: Plan, r: &Results) -> Result<String, std::fmt::Error> {
    let mut md = String::new();
    if !r.tcp.is_empty() {
        writeln!(md, "TCP (iperf3, c1 to c2 across the lab bridge):\n")?;
        throughput_table(&mut md, "Gbit/s", 1.0, &r.tcp)?;
        writeln!(md)?;
    }
    if !r.udp64.is_empty() {
        writeln!(
            md,
            "64-byte UDP frames, c1 to c2 across the lab bridge, {} sender threads flat out, \
             counted on arrival:\n",
            super::sender::THREADS
        )?;
        throughput_table(&mut md, "k packets/s", 1e3, &r.udp64)?;
        writeln!(md)?;
    }
    let sets = [("TCP", &r.tcp), ("UDP 64 B", &r.udp64)];
    if sets
        .iter()
        .any(|(_, s)| s.iter().any(|m| !m.programs.is_empty()))
    {
        writeln!(
            md,
            "| eBPF program (kernel accounting, last round) | configuration | runs | ns per run |"
        )?;
        writeln!(md, "|---|---|---|---|")?;
    }
    for (set, measured) in sets {
        for m in measured.iter().filter(|m| !m.programs.is_empty()) {
            for p in &m.programs {
                writeln!(
                    md,
                    "| {} | {set}: {} | {} | {:.0} |",
                    p.name,
                    m.name,
                    p.runs,
                    p.ns_per_run()
                )?;
            }
        }
    }
    let losses = &r.losses;
    for loss in losses {
        writeln!(md)?;
        let lossless = loss.lossless_pps;
        write!(
            md,
            "Loss: UDP from c1 routed by the lab host to a second bridge ({:.1} sightings per \
         packet: tc ingress on veth-c1 and docker0, egress on br-out and veth-out, the routing \
         lookups of the host and of the receiver), default ring buffer, {}: no loss up to {:.0} k packets/s ({:.2} M \
         sightings/s)",
            loss.sightings_per_packet,
            loss.mode,
            lossless / 1e3,
            lossless * loss.sightings_per_packet / 1e6
        )?;
        match loss.first_loss_pps {
            Some(bad) if bad < lossless => write!(
                md,
                "; events lost at {:.0} k packets/s in another trial (the boundary is not sharp \
             on a shared machine)",
                bad / 1e3
            )?,
            Some(bad) => write!(md, "; events lost at {:.0} k packets/s", bad / 1e3)?,
            None => write!(
                md,
                ", the sender's maximum here ({:.0} k packets/s with probe running)",
                loss.sender_max_pps / 1e3
            )?,
        }
        writeln!(
            md,
            " (target {:.0} k: {}).",
            super::loss::TARGET_PPS / 1e3,
            if lossless >= super::loss::TARGET_PPS {
                "met"
            } else if loss.first_loss_pps.is_none() {
                "not reached by the sender"
            } else {
                "missed"
            }
        )?;
    }
    for st in &r.startup {
        writeln!(
            md,
            "\nStart-up, --tc-backend {}: launch to ready with {} veths to attach: {:.3} s \
             (target 1 s: {}); with none to attach {:.3} s, so {:.1} ms per program attached; \
             {} veths created while tracing attached at {:.0} per second{}; creating them took \
             {:.3} s while traced, {:.2}× the {:.3} s without probe.",
            st.backend,
            super::startup::VETHS,
            st.ready_s,
            if st.ready_s <= 1.0 { "met" } else { "missed" },
            st.ready_empty_s,
            st.attach_ms(),
            super::startup::VETHS,
            st.attach_per_s,
            if st.all_attached {
                ""
            } else {
                " (not all within 60 s)"
            },
            st.create_traced_s,
            st.create_traced_s / st.create_alone_s.max(1e-6),
            st.create_alone_s,
        )?;
    }
    if let Some(replays) = r.replays.as_ref().filter(|r| !r.runs.is_empty()) {
        writeln!(md)?;
        writeln!(
            md,
            "| replay of a recording ({} events recorded, repeated) | events | M events per CPU-second | M events/s wall | peak RSS MiB |",
            replays.recorded_events
        )?;
        writeln!(md, "|---|---|---|---|---|")?;
        for (what, run) in &replays.runs {
            writeln!(
                md,
                "| {what} | {} | {:.2} | {:.2} | {:.1} |",
                run.events,
                run.per_cpu_second(&replays.startup) / 1e6,
                run.per_wall_second(&replays.startup) / 1e6,
                run.peak_rss_kib as f64 / 1024.0
            )?;
        }
        writeln!(
            md,
            "\nReplay rates leave out start-up (a replay of no events: {:.3} s CPU, {:.3} s wall).",
            replays.startup.cpu_s, replays.startup.wall_s
        )?;
    }
    if let Some(f) = r.replays.as_ref().and_then(|r| r.fuzz.as_ref()) {
        writeln!(
            md,
            "\nMutation fuzz of the start of the recording ({} bytes: flipped bits, cuts, repeated chunks, \
             rewritten lengths), each replayed through decode, correlation and rendering: {} \
             mutations in {:.0} s, {} refused with a clear error, **{} panics**.",
            f.file_bytes, f.mutations, f.seconds, f.errors, f.panics
        )?;
    }
    writeln!(
        md,
        "\nMachine: {} cores ({}), kernel {}; load average {} before, {} after. {} rounds of {} s \
         iperf3 TCP (and of 64-byte UDP) per configuration, interleaved; loss trials of {} s.",
        machine.cores,
        machine.cpu,
        machine.kernel,
        machine.load_before,
        machine.load_after,
        plan.rounds,
        plan.seconds,
        plan.loss_seconds
    )?;
    Ok(md)
}

fn set_json(measured: &[Measured]) -> serde_json::Value {
    json!(
        measured
            .iter()
            .map(|m| json!({
                "config": m.name,
                "unavailable": m.unavailable,
                "values": m.values,
                "median": median(&m.values),
                "ratios": m.ratios,
                "median_ratio": median(&m.ratios),
                "notes": m.notes,
                "programs": m.programs.iter().map(|p| json!({
                    "program": p.name,
                    "runs": p.runs,
                    "run_time_ns": p.run_time_ns,
                    "ns_per_run": p.ns_per_run(),
                })).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()
    )
}

fn to_json(machine: &Machine, plan: Plan, r: &Results) -> serde_json::Value {
    json!({
        "machine": {
            "cores": machine.cores,
            "cpu": machine.cpu,
            "kernel": machine.kernel,
            "loadavg_before": machine.load_before,
            "loadavg_after": machine.load_after,
        },
        "plan": {
            "rounds": plan.rounds,
            "seconds": plan.seconds,
            "loss_seconds": plan.loss_seconds,
            "fuzz_seconds": plan.fuzz_seconds,
        },
        "throughput_gbps": set_json(&r.tcp),
        "udp64_pps": set_json(&r.udp64),
        "loss": r.losses.iter().map(|loss| json!({
            "mode": loss.mode,
            "sightings_per_packet": loss.sightings_per_packet,
            "lossless_pps": loss.lossless_pps,
            "first_loss_pps": loss.first_loss_pps,
            "sender_max_pps": loss.sender_max_pps,
            "trials": loss.trials.iter().map(|t| json!({
                "target_pps": if t.target_pps.is_finite() { json!(t.target_pps) } else { json!("max") },
                "sent_pps": t.sent_pps,
                "packets": t.packets,
                "events": t.events,
                "lost": t.lost,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "startup": r.startup.iter().map(|s| json!({
            "backend": s.backend,
            "veths": super::startup::VETHS,
            "ready_s": s.ready_s,
            "ready_empty_s": s.ready_empty_s,
            "attach_ms_per_program": s.attach_ms(),
            "attach_per_s": s.attach_per_s,
            "all_attached": s.all_attached,
            "create_alone_s": s.create_alone_s,
            "create_traced_s": s.create_traced_s,
        })).collect::<Vec<_>>(),
        "replay": r.replays.as_ref().map(|replays| json!({
            "recorded_events": replays.recorded_events,
            "startup_cpu_s": replays.startup.cpu_s,
            "startup_wall_s": replays.startup.wall_s,
            "runs": replays.runs.iter().map(|(what, run)| json!({
                "what": what,
                "events": run.events,
                "cpu_s": run.cpu_s,
                "wall_s": run.wall_s,
                "events_per_cpu_second": run.per_cpu_second(&replays.startup),
                "events_per_wall_second": run.per_wall_second(&replays.startup),
                "peak_rss_kib": run.peak_rss_kib,
            })).collect::<Vec<_>>(),
            "fuzz": replays.fuzz.as_ref().map(|f| json!({
                "mutations": f.mutations,
                "errors": f.errors,
                "panics": f.panics,
                "seconds": f.seconds,
            })),
        })),
    })
}

/// Writes target/bench/results.{md,json} (quick runs: quick-results.*) and prints the markdown.
pub fn write(machine: &Machine, plan: Plan, results: &Results) -> anyhow::Result<()> {
    let md = markdown(machine, plan, results)?;
    let json = to_json(machine, plan, results);
    let dir = crate::tasks::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let stem = if plan.rounds < 3 {
        "quick-results"
    } else {
        "results"
    };
    std::fs::write(dir.join(format!("{stem}.md")), &md)?;
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    println!("{md}");
    println!("written to {}", dir.join(stem).display());
    Ok(())
}
