//! The bench's results as a markdown table set and as JSON, in target/bench/.

use std::fmt::Write as _;

use serde_json::json;

use super::{Measured, Plan, Replays, loss::LossResult};

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

fn markdown(
    machine: &Machine,
    plan: Plan,
    measured: &[Measured],
    losses: &[LossResult],
    replays: &Replays,
) -> Result<String, std::fmt::Error> {
    let mut md = String::new();
    writeln!(
        md,
        "| configuration | median Gbit/s | spread | ratio to baseline (median, spread) |"
    )?;
    writeln!(md, "|---|---|---|---|")?;
    for m in measured {
        if let Some(why) = &m.unavailable {
            writeln!(md, "| {} | not available here: {why} | | |", m.name)?;
            continue;
        }
        let (lo, hi) = spread(&m.gbps);
        let (rlo, rhi) = spread(&m.ratios);
        writeln!(
            md,
            "| {} | {:.2} | {lo:.2}–{hi:.2} | {:.3} ({rlo:.3}–{rhi:.3}) |",
            m.name,
            median(&m.gbps),
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

    writeln!(md)?;
    writeln!(
        md,
        "| eBPF program (kernel accounting, last round) | configuration | runs | ns per run |"
    )?;
    writeln!(md, "|---|---|---|---|")?;
    for m in measured.iter().filter(|m| !m.programs.is_empty()) {
        for p in &m.programs {
            writeln!(
                md,
                "| {} | {} | {} | {:.0} |",
                p.name,
                m.name,
                p.runs,
                p.ns_per_run()
            )?;
        }
    }

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
    writeln!(md)?;
    writeln!(
        md,
        "| replay of a recording ({} events recorded, repeated) | events | M events per CPU-second | M events/s wall | peak RSS MiB |",
        replays.recorded_events
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    for (what, r) in &replays.runs {
        writeln!(
            md,
            "| {what} | {} | {:.2} | {:.2} | {:.1} |",
            r.events,
            r.per_cpu_second(&replays.startup) / 1e6,
            r.per_wall_second(&replays.startup) / 1e6,
            r.peak_rss_kib as f64 / 1024.0
        )?;
    }
    writeln!(
        md,
        "\nReplay rates leave out start-up (a replay of no events: {:.3} s CPU, {:.3} s wall).",
        replays.startup.cpu_s, replays.startup.wall_s
    )?;
    let f = &replays.fuzz;
    writeln!(
        md,
        "\nMutation fuzz of the start of the recording ({} bytes: flipped bits, cuts, repeated chunks, \
         rewritten lengths), each replayed through decode, correlation and rendering: {} \
         mutations in {:.0} s, {} refused with a clear error, **{} panics**.",
        f.file_bytes, f.mutations, f.seconds, f.errors, f.panics
    )?;
    writeln!(
        md,
        "\nMachine: {} cores ({}), kernel {}; load average {} before, {} after. {} rounds of {} s \
         iperf3 TCP per configuration, interleaved; loss trials of {} s.",
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

fn to_json(
    machine: &Machine,
    plan: Plan,
    measured: &[Measured],
    losses: &[LossResult],
    replays: &Replays,
) -> serde_json::Value {
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
        },
        "throughput": measured.iter().map(|m| json!({
            "config": m.name,
            "unavailable": m.unavailable,
            "gbps": m.gbps,
            "median_gbps": median(&m.gbps),
            "ratios": m.ratios,
            "median_ratio": median(&m.ratios),
            "notes": m.notes,
            "programs": m.programs.iter().map(|p| json!({
                "program": p.name,
                "runs": p.runs,
                "run_time_ns": p.run_time_ns,
                "ns_per_run": p.ns_per_run(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "loss": losses.iter().map(|loss| json!({
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
        "replay": {
            "recorded_events": replays.recorded_events,
            "startup_cpu_s": replays.startup.cpu_s,
            "startup_wall_s": replays.startup.wall_s,
            "runs": replays.runs.iter().map(|(what, r)| json!({
                "what": what,
                "events": r.events,
                "cpu_s": r.cpu_s,
                "wall_s": r.wall_s,
                "events_per_cpu_second": r.per_cpu_second(&replays.startup),
                "events_per_wall_second": r.per_wall_second(&replays.startup),
                "peak_rss_kib": r.peak_rss_kib,
            })).collect::<Vec<_>>(),
            "fuzz": {
                "mutations": replays.fuzz.mutations,
                "errors": replays.fuzz.errors,
                "panics": replays.fuzz.panics,
                "seconds": replays.fuzz.seconds,
            },
        },
    })
}

/// Writes target/bench/results.{md,json} (quick runs: quick-results.*) and prints the markdown.
pub fn write(
    machine: &Machine,
    plan: Plan,
    measured: &[Measured],
    losses: &[LossResult],
    replays: &Replays,
) -> anyhow::Result<()> {
    let md = markdown(machine, plan, measured, losses, replays)?;
    let json = to_json(machine, plan, measured, losses, replays);
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
