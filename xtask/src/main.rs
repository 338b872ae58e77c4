//! `cargo xtask`: everything around the code, from a fresh machine to a demo.

mod bench;
mod demo;
mod deploy_check;
mod image;
mod interrupt;
mod lab;
mod privilege;
mod setup;
mod tasks;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "probe's project tasks",
    after_help = "Examples:\n  \
        cargo xtask demo                      # the built-in lab, traced end to end\n  \
        cargo xtask test                      # every test, with the toolchain set up first\n  \
        cargo xtask run -- trace --iface docker0\n  \
        cargo xtask lab up && sudo target/debug/probe trace --netns probe-lab-host --iface docker0"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (idempotent; root installs packages).
    Setup,
    /// Set up, then build probe (the eBPF object is embedded in the binary).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run probe as root with the given arguments (or inside a Debian kernel
    /// under qemu with --vm).
    #[command(after_help = "Examples:\n  \
        cargo xtask run -- trace --iface docker0 --json\n  \
        cargo xtask run --vm --kernel 6.12 -- doctor")]
    Run {
        #[arg(long)]
        release: bool,
        /// Run probe inside a stock Debian kernel under qemu instead of on this machine.
        #[arg(long, conflicts_with = "release")]
        vm: bool,
        /// Kernel line for --vm: 6.1, 6.12 or 5.10 (default 6.1).
        #[arg(long, requires = "vm", value_name = "LINE")]
        kernel: Option<String>,
        /// Arguments for probe.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Build, create a small lab of namespaces, trace traffic through it, print what probe saw,
    /// and remove the lab.
    Demo {
        /// Skip setup and build (used when re-running as root).
        #[arg(long, hide = true)]
        no_build: bool,
    },
    /// Set up, build, and run every test (as root: they create namespaces and load programs).
    Test {
        /// Skip the kernel matrix (the guest tests on Debian kernels under qemu).
        #[arg(long)]
        no_vm: bool,
        /// Run the matrix on this kernel line only (repeatable; default 6.1, 6.12 and 5.10).
        #[arg(long = "kernel", value_name = "LINE")]
        kernels: Vec<String>,
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure probe's overhead on the lab (throughput ratios, kernel cost per event, replay
    /// speed and memory); writes target/bench/results.{md,json}.
    Bench {
        #[arg(long, hide = true)]
        no_build: bool,
        /// One short round of everything, to check the bench itself (figures are not kept).
        #[arg(long)]
        quick: bool,
        /// Measure only these parts, comma-separated: tcp (with progs, the per-program
        /// costs), udp64, loss, startup, replay, fuzz. Default: all.
        #[arg(long, value_name = "PARTS")]
        only: Option<String>,
        /// Seconds of mutation fuzz on the bench's recording (default 30; --quick 5).
        #[arg(long, value_name = "SECS")]
        fuzz_seconds: Option<f64>,
    },
    /// Write probe's man pages (probe.1, probe-trace.1, ...) into target/man, generated from
    /// its command-line definitions; read one with `man -l target/man/probe-trace.1`.
    Man,
    /// Write the JSON Schemas of probe's JSON lines (probe.timeline.json, probe.event.json,
    /// ...) into docs/schema, generated from the types that write the lines; run it after
    /// changing a line's fields (a unit test of probe-user fails until then).
    Schema,
    /// Build a static probe (x86_64-unknown-linux-musl) and a container image holding only it,
    /// from the Dockerfile at the workspace root; nothing is pulled.
    #[command(after_help = "Examples:\n  \
        cargo xtask image\n  \
        docker run --rm --pid=host --net=host --cap-add SYS_ADMIN --cap-add NET_ADMIN \\\n      \
        --cap-add SYSLOG -v /sys/kernel:/sys/kernel -v /run/probe:/run/probe \\\n      \
        -v /run/netns:/run/netns probe:latest trace --netns NAME")]
    Image {
        /// The image's name and tag.
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// Leave probe running under traffic and interface churn and check that its memory and
    /// descriptors stay flat (within 10%); writes target/bench/soak.md.
    #[command(after_help = "Examples:\n  \
        cargo xtask soak                 # 10 minutes\n  \
        cargo xtask soak --minutes 1")]
    Soak {
        #[arg(long, hide = true)]
        no_build: bool,
        /// How long to run.
        #[arg(long, default_value_t = 10.0, value_parser = parse_minutes)]
        minutes: f64,
    },
    /// Run a command and print its CPU seconds, wall seconds and peak RSS (used by the bench).
    #[command(hide = true)]
    BenchRusage {
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command (default `probe doctor`) inside a stock Debian kernel under qemu, with
    /// probe and the network tools packed in.
    #[command(after_help = "Examples:\n  \
        cargo xtask vm -- probe doctor\n  \
        cargo xtask vm --kernel 6.1 -- probe trace --no-tc --count 5\n  \
        cargo xtask vm --test kernel_functions\n  \
        cargo xtask vm --kernel 5.10 --test filter:routing_lookups,a_dropped_packet")]
    Vm {
        /// Kernel line: 6.1, 6.12 or 5.10 (default 6.1); the newest Debian kernel of the line.
        #[arg(long)]
        kernel: Option<String>,
        /// Run these integration tests (tests/tests/NAME.rs) in the guest instead of a command;
        /// NAME:F1,F2 runs only the tests whose names contain F1 or F2.
        #[arg(long = "test", value_name = "NAME[:FILTERS]")]
        tests: Vec<String>,
        /// The command to run in the guest.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Create or remove the lab (namespaces with a Docker-like bridge) to explore by hand.
    Lab {
        #[arg(value_enum)]
        action: lab::Action,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Build { release } => tasks::build(release).map(|_| ()),
        Task::Run {
            vm: true,
            kernel,
            args,
            ..
        } => vm::run(
            kernel.as_deref(),
            &std::iter::once("probe".to_owned())
                .chain(args)
                .collect::<Vec<_>>(),
        ),
        Task::Run { release, args, .. } => tasks::run(release, &args),
        Task::Demo { no_build } => demo::run(no_build),
        Task::Test {
            no_vm,
            kernels,
            args,
        } => tasks::test(&args, (!no_vm).then_some(kernels)),
        Task::Lab { action } => lab::run(action),
        Task::Bench {
            no_build,
            quick,
            only,
            fuzz_seconds,
        } => bench::run(
            no_build,
            bench::Options {
                quick,
                only,
                fuzz_seconds,
            },
        ),
        Task::BenchRusage { command } => bench::rusage(&command),
        Task::Soak { no_build, minutes } => bench::soak(no_build, minutes),
        Task::Man => tasks::man(),
        Task::Schema => tasks::schema(),
        Task::Image { tag } => image::build(&tag),
        Task::Vm {
            kernel,
            tests,
            command,
        } if !tests.is_empty() => {
            let _ = command;
            vm::run_tests(kernel.as_deref(), &tests)
        }
        Task::Vm {
            kernel, command, ..
        } => {
            let command = if command.is_empty() {
                vec!["probe".to_owned(), "doctor".to_owned()]
            } else {
                command
            };
            vm::run(kernel.as_deref(), &command)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m > 0.0 && m <= 1440.0 => Ok(m),
        Ok(_) => Err("between 0 and 1440 minutes".to_owned()),
        Err(_) => Err(format!("'{s}' is not a number of minutes")),
    }
}
