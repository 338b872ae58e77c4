//! `cargo xtask vm`: commands and integration tests inside stock Debian kernels under qemu
//! (software emulation), with probe and the tools it needs. This is how probe's
//! kernel-function backends (kprobes, fentry), which the project's own machines lack, and the
//! tc fallback of kernels without tcx are exercised.
//!
//! - [`apt`] finds the newest kernel of a line (6.1, 6.12, 5.10) in Debian's archives and
//!   caches it under ~/.cache/probe/vm;
//! - [`image`] builds the initramfs (modules, busybox, probe, tools, the job);
//! - [`qemu`] boots it and reads the job's status from the serial console.

pub mod apt;
pub mod image;
mod qemu;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::setup::status;

/// What runs in every guest of the matrix: test binary (tests/tests/NAME.rs) and name filters
/// (none: all its tests). The tc tests are those of the tc slice that depend on the kernel's
/// tc mechanisms (tcx or the clsact fallback); the rest of tc.rs is kernel-independent.
pub const GUEST_TESTS: &[(&str, &[&str])] = &[
    ("doctor", &[]),
    // Each kernel's own drop reasons against the knowledge (5.10 has none: by function).
    ("explain", &[]),
    ("kernel_functions", &[]),
    // The kernel-side filter and latency programs, through each kernel's verifier (the
    // address-filter test, two minutes under emulation, runs on 6.1 only: see LINE_TESTS).
    (
        "filter",
        &[
            "packets_the_filter_turns_away_write_no_event",
            "admitted_connection_is_followed_through_dnat_and_back",
            "a_dropped_packet_the_filter_admits_is_reported",
            "routing_lookups_follow_the_filter",
        ],
    ),
    // Diagnoses that differ by kernel: reasons or places, the facts read in the guest.
    (
        "diagnoses",
        &[
            "no_socket_for_udp_and_tcp",
            "an_unreachable_route_is_named",
            "ttl_running_out_at_the_router",
            // Hook verdicts (fentry/kprobe) beside --rules verdicts, and skbs the kernel
            // reuses for the reply: one journey per packet.
            "a_packet_conntrack_calls_invalid_is_named_with_the_rule",
            "hairpin_nat_is_named_with_its_rewrite",
        ],
    ),
    ("latency", &[]),
    // The stories on production kernels, where hook and chain verdicts come from fentry and
    // kprobes beside the tc sightings (the firewall and icc stories need drop reasons, which
    // 5.10 lacks).
    (
        "stories",
        &[
            "vpn_shadows_the_container_subnet",
            "published_port_is_dnatted_to_the_container_and_back",
            "host_reaching_its_published_port_goes_through_output_dnat",
        ],
    ),
    // probe watch's counting programs; its Prometheus test needs a server the guest lacks.
    (
        "watch",
        &["counts_drops_and_hop_latency_through_this_kernels_verifier"],
    ),
    // Lookups in their own namespace: twin namespaces with the same addresses, a failed input
    // lookup (its namespace from fentry on ip_route_input_noref there), a container's own.
    ("route_namespaces", &[]),
    (
        "tc",
        &[
            "udp_and_tcp_sightings_match_what_was_sent",
            "every_packet_arrives_with_",
            "clsact_qdisc_is_removed_only_when_probe_created_it",
            // The production backend of 6.1 and 5.10: nothing left after a kill, no harm to
            // a second probe.
            "a_killed_clsact_probe_is_cleaned_up_after",
            "two_clsact_probes_one_exits_the_other_sees_every_packet",
            // The packet copy of --snaplen through each kernel's verifier.
            "snaplen_copies_the_packets_first_bytes_through_this_kernels_verifier",
        ],
    ),
    // Owned nftables tables (5.12+) on 6.1 and 6.12; 5.10 deletes and sweeps its own. The
    // filter's marking rules (payload, conntrack tuples) through each kernel's nftables.
    (
        "rules",
        &[
            "a_killed_probes_trace_table_is_gone",
            // Where nft_do_chain is probed, probe's own table must stay out of timelines.
            "probes_own_trace_table_is_no_hop_of_a_timeline",
            "the_trace_table_comes_back_after_a_ruleset_flush",
            "with_a_filter_only_admitted_packets_are_marked_for_tracing",
            // Verdicts join their packets where hooks and chains are probed too: a policy drop
            // (its hook reports after the drop), a flood read late, untimed rows, and rule
            // texts read off the event loop.
            "a_chain_policy_drop_is_diagnosed_as_the_policy",
            "a_flood_under_rules_shows_no_verdict_only_timelines",
            "untimed_verdicts_show_no_time_and_leave_the_deltas_to_kernel_times",
            "a_rule_added_while_tracing_is_named_with_its_text",
        ],
    ),
];
/// Added on some kernel lines only: (line, test binary, name filters). The stories and the
/// timelines on the production kernels (6.1, 6.12), where hook and chain verdicts come from
/// fentry and kprobes beside the tc sightings; 5.10 lacks the drop reasons the firewall and
/// icc stories and one timeline test need.
pub const LINE_TESTS: &[(&str, &str, &[&str])] = &[
    (
        "6.1",
        "stories",
        &["firewalld_forward_chain", "icc_false_drops"],
    ),
    (
        "6.12",
        "stories",
        &["firewalld_forward_chain", "icc_false_drops"],
    ),
    ("6.1", "timelines", &[]),
    ("6.12", "timelines", &[]),
    // Address filters in every trace mode, on the production kernel whose verifier once took
    // minutes over them (it passes on 5.10 and 6.12 too: `cargo xtask vm --test filter`).
    ("6.1", "filter", &["address_filters"]),
];

/// What runs on kernel line `line`: the whole matrix's tests, then that line's own.
pub fn tests_for(line: &str) -> Vec<(&'static str, &'static [&'static str])> {
    GUEST_TESTS
        .iter()
        .copied()
        .chain(
            LINE_TESTS
                .iter()
                .filter(|t| t.0 == line)
                .map(|&(_, name, filters)| (name, filters)),
        )
        .collect()
}

/// Guests run the optimised build: under software emulation an unoptimised probe takes
/// several times as long to start (reading BTF, loading programs), and every guest test
/// starts probe at least once.
pub const GUEST_RELEASE: bool = true;
/// Tells the tests they run on a stock Debian kernel, which has kprobes and fentry.
const GUEST_ENV: (&str, &str) = ("PROBE_EXPECT_KERNEL_FUNCTIONS", "1");
/// Printed in the guest before each test binary runs, to attribute its results.
const BINARY_MARKER: &str = "PROBE-VM-TESTS";
/// Printed in the guest after each test binary: its name and the seconds it took.
const TIME_MARKER: &str = "PROBE-VM-TIME";

/// One test's result: binary, test name, "ok" / "FAILED" / "ignored".
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub binary: String,
    pub name: String,
    pub result: String,
}

/// Reads libtest's `test NAME ... RESULT` lines, attributed to the binary announced last.
pub fn parse_results(output: &str, default_binary: &str) -> Vec<TestResult> {
    let mut binary = default_binary.to_owned();
    let mut results = Vec::new();
    for line in output.lines() {
        if let Some(name) = line.trim().strip_prefix(BINARY_MARKER) {
            binary = name.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, result)) = rest.rsplit_once(" ... ")
        {
            results.push(TestResult {
                binary: binary.clone(),
                name: name.trim().to_owned(),
                result: result.trim().to_owned(),
            });
        }
    }
    results
}

/// Reads the guest's `PROBE-VM-TIME NAME SECONDS` lines: how long each binary ran.
pub fn parse_times(output: &str) -> Vec<(String, f64)> {
    output
        .lines()
        .filter_map(|l| {
            let mut words = l.trim().strip_prefix(TIME_MARKER)?.split_whitespace();
            let name = words.next()?.to_owned();
            Some((name, words.next()?.parse().ok()?))
        })
        .collect()
}

/// Builds integration test binaries and returns their paths, in the order of `names`.
fn test_binaries(names: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(crate::tasks::workspace_root())
        .args([
            "test",
            "--package",
            "probe-tests",
            "--no-run",
            "--message-format=json",
        ])
        .args(names.iter().flat_map(|n| ["--test", n]))
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "building the tests failed");
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str()) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    names
        .iter()
        .map(|n| {
            found
                .remove(*n)
                .with_context(|| format!("test binary {n} was not built"))
        })
        .collect()
}

/// The guest's job: each binary with its filters, one test at a time (the guest has one CPU),
/// every binary even after a failure, failing at the end if any failed.
fn test_script(tests: &[(&str, &[&str])], bins: &[PathBuf]) -> Vec<String> {
    // Seconds since boot, to tell which binaries the guest's time goes to.
    let mut script = String::from("failed=0\nnow() { cut -d' ' -f1 /proc/uptime; }\n");
    for ((name, filters), bin) in tests.iter().zip(bins) {
        let file = bin.file_name().map(|f| f.to_string_lossy().into_owned());
        script.push_str(&format!(
            "echo '{BINARY_MARKER} {name}'\nstart=$(now)\n{} --test-threads=1 {} || failed=1\n\
             echo \"{TIME_MARKER} {name} $(awk -v a=$start -v b=$(now) 'BEGIN {{ print b - a }}')\"\n",
            file.unwrap_or_default(),
            filters.join(" ")
        ));
    }
    script.push_str("exit $failed\n");
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// One kernel's run of the guest tests.
pub struct KernelRun {
    pub line: String,
    pub outcome: Result<Ran, String>,
}

pub struct Ran {
    pub release: String,
    pub code: i32,
    pub results: Vec<TestResult>,
    /// Seconds each test binary took in the guest.
    pub times: Vec<(String, f64)>,
    pub output: String,
    /// Download/preparation excluded: boot, tests and power-off.
    pub vm_time: Duration,
}

/// Finds the kernel of `line` and runs `tests` in it. A kernel that cannot be found is an
/// `Err` with the reason (reported as unavailable); a guest that panics or hangs is an error.
fn run_line(
    line: &str,
    probe: &Path,
    tests: &[(&str, &[&str])],
    bins: &[PathBuf],
) -> anyhow::Result<KernelRun> {
    let kernel = match apt::kernel(line) {
        Ok(k) => k,
        Err(e) => {
            status(&format!("kernel line {line} is unavailable: {e:#}"));
            return Ok(KernelRun {
                line: line.to_owned(),
                outcome: Err(format!("{e:#}")),
            });
        }
    };
    status(&format!(
        "running the guest tests on Debian kernel {} under qemu",
        kernel.release
    ));
    let env = [(GUEST_ENV.0.to_owned(), GUEST_ENV.1.to_owned())];
    let out = qemu::boot(&kernel, probe, &test_script(tests, bins), &env, bins)
        .with_context(|| format!("on {}", kernel.release))?;
    status(&format!(
        "{}: exit {} after {:.0?}",
        kernel.release, out.code, out.elapsed
    ));
    Ok(KernelRun {
        line: line.to_owned(),
        outcome: Ok(Ran {
            release: kernel.release,
            code: out.code,
            results: parse_results(&out.output, tests[0].0),
            times: parse_times(&out.output),
            output: out.output,
            vm_time: out.elapsed,
        }),
    })
}

/// `cargo xtask vm --test NAME[:FILTERS]...`: those test binaries on one kernel, each with all
/// its tests or only those whose names contain one of its filters.
pub fn run_tests(line: Option<&str>, names: &[String]) -> anyhow::Result<()> {
    let probe = crate::tasks::build(GUEST_RELEASE)?;
    // NAME or NAME:FILTER,FILTER (libtest's name filters).
    let split: Vec<(&str, Vec<&str>)> = names
        .iter()
        .map(|n| match n.split_once(':') {
            Some((name, filters)) => (name, filters.split(',').filter(|f| !f.is_empty()).collect()),
            None => (n.as_str(), Vec::new()),
        })
        .collect();
    let names: Vec<&str> = split.iter().map(|(n, _)| *n).collect();
    let bins = test_binaries(&names)?;
    let tests: Vec<(&str, &[&str])> = split.iter().map(|(n, f)| (*n, f.as_slice())).collect();
    let line = line.unwrap_or(apt::DEFAULT_LINE);
    let run = run_line(line, &probe, &tests, &bins)?;
    let ran = match &run.outcome {
        Ok(ran) => ran,
        Err(why) => bail!("no kernel of line {line}: {why}"),
    };
    println!("{}", ran.output);
    print_table(&[], std::slice::from_ref(&run));
    ensure!(
        ran.code == 0,
        "tests failed on {} (exit {})",
        ran.release,
        ran.code
    );
    Ok(())
}

/// The matrix of `cargo xtask test`: the guest tests on every kernel line, then one table with
/// the host's results of the same tests. Fails if any kernel failed, showing its console.
pub fn matrix(probe: &Path, lines: &[String], host: &[TestResult]) -> anyhow::Result<()> {
    let mut names: Vec<&str> = GUEST_TESTS
        .iter()
        .map(|t| t.0)
        .chain(LINE_TESTS.iter().map(|t| t.1))
        .collect();
    names.sort_unstable();
    names.dedup();
    let built: BTreeMap<&str, PathBuf> =
        names.iter().copied().zip(test_binaries(&names)?).collect();
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for line in lines {
        let tests = tests_for(line);
        let bins: Vec<PathBuf> = tests.iter().map(|t| built[t.0].clone()).collect();
        match run_line(line, probe, &tests, &bins) {
            Ok(run) => runs.push(run),
            // A panic, an oops or a hang: the console is in the error.
            Err(e) => {
                eprintln!("xtask: {line}: {e:#}");
                failures.push(format!("{line}: the VM failed"));
                runs.push(KernelRun {
                    line: line.clone(),
                    outcome: Err("the VM failed (console above)".into()),
                });
            }
        }
    }
    for run in &runs {
        if let Ok(ran) = &run.outcome
            && ran.code != 0
        {
            eprintln!(
                "\nxtask: console of {} (tests failed):\n{}",
                ran.release, ran.output
            );
            failures.push(format!("{}: tests failed", ran.release));
        }
    }
    print_table(host, &runs);
    println!("VM matrix: {:.0?} in all", started.elapsed());
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// kernel × test → result: one row per test, one column per kernel (the host first).
fn print_table(host: &[TestResult], runs: &[KernelRun]) {
    let mut columns: Vec<String> = Vec::new();
    if !host.is_empty() {
        columns.push(format!("host {}", host_release()));
    }
    for run in runs {
        columns.push(match &run.outcome {
            Ok(ran) => format!("{} (qemu)", ran.release),
            Err(_) => format!("{} (unavailable)", run.line),
        });
    }
    // Rows: every test any kernel ran, in the order first seen.
    let mut rows: Vec<(String, String)> = Vec::new();
    for run in runs {
        if let Ok(ran) = &run.outcome {
            for r in &ran.results {
                let key = (r.binary.clone(), r.name.clone());
                if !rows.contains(&key) {
                    rows.push(key);
                }
            }
        }
    }
    let width = rows
        .iter()
        .map(|(b, n)| b.len() + n.len() + 2)
        .max()
        .unwrap_or(10)
        .max(10);
    let col = columns.iter().map(|c| c.len()).max().unwrap_or(8).max(8) + 2;
    let mut out = format!("\n{:<width$}", "test");
    for c in &columns {
        out.push_str(&format!("  {c:<col$}"));
    }
    out.push('\n');
    for (binary, name) in &rows {
        out.push_str(&format!("{:<width$}", format!("{binary}::{name}")));
        if !host.is_empty() {
            let r = host
                .iter()
                .find(|r| &r.name == name)
                .map_or("not run", |r| r.result.as_str());
            out.push_str(&format!("  {r:<col$}"));
        }
        for run in runs {
            let r = match &run.outcome {
                Ok(ran) => ran
                    .results
                    .iter()
                    .find(|r| &r.binary == binary && &r.name == name)
                    .map_or("not run", |r| r.result.as_str()),
                Err(_) => "unavailable",
            };
            out.push_str(&format!("  {r:<col$}"));
        }
        out.push('\n');
    }
    out.push_str(&format!("{:<width$}", "VM time (boot + tests)"));
    if !host.is_empty() {
        out.push_str(&format!("  {:<col$}", "-"));
    }
    for run in runs {
        let t = match &run.outcome {
            Ok(ran) => format!("{:.0?}", ran.vm_time),
            Err(_) => "-".to_owned(),
        };
        out.push_str(&format!("  {t:<col$}"));
    }
    out.push('\n');
    for run in runs {
        match &run.outcome {
            Err(why) => out.push_str(&format!("kernel line {} unavailable: {why}\n", run.line)),
            Ok(ran) if !ran.times.is_empty() => {
                let each: Vec<String> = ran
                    .times
                    .iter()
                    .map(|(n, t)| format!("{n} {t:.0}s"))
                    .collect();
                out.push_str(&format!("{}: {}\n", ran.release, each.join(", ")));
            }
            Ok(_) => {}
        }
    }
    println!("{out}");
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// `cargo xtask vm [--kernel LINE] -- COMMAND`: the command's output and exit status.
pub fn run(line: Option<&str>, command: &[String]) -> anyhow::Result<()> {
    let probe = crate::tasks::build(GUEST_RELEASE)?;
    let kernel = apt::kernel(line.unwrap_or(apt::DEFAULT_LINE))?;
    status(&format!(
        "booting Debian kernel {} under qemu (software emulation)",
        kernel.release
    ));
    let out = qemu::boot(&kernel, &probe, command, &[], &[])?;
    println!("{}", out.output);
    if out.code != 0 {
        std::process::exit(out.code);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_times_are_read_from_the_guests_markers() {
        let output = "PROBE-VM-TESTS doctor\nPROBE-VM-TIME doctor 41.5\n\
                      PROBE-VM-TIME tc not-a-number\nPROBE-VM-TIME latency 300\n";
        assert_eq!(
            parse_times(output),
            vec![("doctor".to_owned(), 41.5), ("latency".to_owned(), 300.0)]
        );
    }

    #[test]
    fn results_are_attributed_to_the_binary_announced_before_them() {
        let output = "PROBE-VM-TESTS doctor\n\nrunning 1 test\ntest backends ... ok\n\
                      [   12.3] some kernel line\nPROBE-VM-TESTS tc\n\
                      test every_packet_arrives_with_tcx ... FAILED\n\
                      test result: FAILED. 0 passed; 1 failed\n";
        let got = parse_results(output, "none");
        assert_eq!(
            got,
            vec![
                TestResult {
                    binary: "doctor".into(),
                    name: "backends".into(),
                    result: "ok".into()
                },
                TestResult {
                    binary: "tc".into(),
                    name: "every_packet_arrives_with_tcx".into(),
                    result: "FAILED".into()
                },
            ]
        );
    }
}
