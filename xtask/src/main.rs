//! `cargo xtask` (run it through `./x`): bootstrap the toolchain, build the eBPF object and the
//! tracer, build the Go test programs for every Go version, run the demo, the test suite and the lints.
//!
//! One module per responsibility: `layout` (paths), `go_versions` (which toolchains), `process`
//! (running commands with a rustup-free PATH), `setup` (installing tools into .cache/), `rust_build`,
//! `go_targets`, `demo`, `test`, `lint`, `bench`, `fuzz`, `timings`.

mod bench;
mod bigbin;
mod demo;
mod fuzz;
mod go_targets;
mod go_versions;
mod layout;
mod lint;
mod process;
mod rust_build;
mod setup;
mod test;
mod timings;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::layout::Layout;

#[derive(Parser)]
#[command(
    name = "x",
    bin_name = "./x",
    about = "Build, bootstrap and test maptrace (run through ./x)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install bpf-linker and the Go toolchains into .cache/ (skips what is there).
    Setup,
    /// Build the eBPF object: target/bpfel-unknown-none/release/tracer-ebpf.
    BuildEbpf,
    /// Build the eBPF object, then the maptrace binary: target/release/maptrace.
    Build,
    /// Build the Go test programs into .cache/go-targets/<version>/.
    BuildTargets(GoSelection),
    /// Run the leaky demo server and trace it with maptrace for 10 s (root).
    Demo,
    /// Set up, build everything, run the whole test suite (root, for the end-to-end tests); with
    /// --fast, the unit tests alone.
    Test {
        /// Only the unit tests: no Go toolchains, no go-targets, no root (bpf-linker and the eBPF
        /// object are still built: the tracer embeds it).
        #[arg(long, conflicts_with_all = ["go", "all_go"])]
        fast: bool,
        #[command(flatten)]
        go: GoSelection,
        /// Passed on to `cargo test` (put them after `--`).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Check formatting (cargo fmt --check) and lints (cargo clippy, warnings denied) of the workspace.
    Lint,
    /// Fuzz the readers of untrusted target input (the Go binary's tables, the heap walk over target memory)
    /// with libFuzzer: each harness for --minutes, from the go-targets and the corpus of earlier runs; fails
    /// if an input panics or exceeds 256 MiB or 1 s (the input is kept in .cache/fuzz/artifacts/).
    Fuzz {
        /// How long each harness runs, in minutes (fractions allowed); 0 replays the corpora once, without
        /// mutating (what CI runs).
        #[arg(long, value_name = "M", default_value_t = 10.0)]
        minutes: f64,
        /// Only this harness: gobin_patch, heap_walk or gobin_file.
        harness: Option<String>,
    },
    /// Measure what tracing costs (root): the allocation benchmark untraced and traced, attach
    /// time, maptrace's memory, and the pipeline's records per second on a recorded stream.
    Bench {
        /// Runs of each kind, interleaved.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Length of each benchmark run, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        run_ms: u64,
        /// Also run `maptrace agent` over ten demo servers for this many minutes (CPU, memory, series).
        #[arg(long, value_name = "MINUTES")]
        agent_minutes: Option<u64>,
        /// Only the agent's run (with --agent-minutes): skip the allocation benchmark and the rest.
        #[arg(long, requires = "agent_minutes")]
        agent_only: bool,
    },
}

/// Which Go versions to build for: every supported one unless `--go` narrows it down.
#[derive(Args)]
struct GoSelection {
    /// Every supported version (the toolchains of go-targets/go-versions.txt): the default, spelled out.
    #[arg(long, conflicts_with = "go")]
    all_go: bool,
    /// Only these versions (full, like 1.24.11, or a line, like 1.24); repeat or separate with commas.
    /// Quicker for local work; tests of the other versions then fail with "missing".
    #[arg(long = "go", value_name = "VER", num_args = 1.., value_delimiter = ',')]
    go: Vec<String>,
}

impl GoSelection {
    fn versions(&self) -> Result<Vec<&'static go_versions::GoVersion>> {
        // --all-go and no flag mean the same; clap rejects --all-go together with --go.
        go_versions::select(&self.go)
    }
}

fn run(cli: Cli) -> Result<i32> {
    let layout = Layout::new();
    match cli.command {
        Cmd::Setup => setup::setup(&layout)?,
        Cmd::BuildEbpf => rust_build::build_ebpf(&layout)?,
        Cmd::Build => rust_build::build(&layout)?,
        Cmd::BuildTargets(go) => {
            let versions = go.versions()?;
            setup::ensure_go(&layout, &versions)?;
            go_targets::build_targets(&layout, &versions)?;
        }
        Cmd::Demo => return demo::demo(&layout),
        Cmd::Lint => return lint::lint(&layout),
        Cmd::Fuzz { minutes, harness } => return fuzz::fuzz(&layout, minutes, harness.as_deref()),
        Cmd::Bench {
            rounds,
            run_ms,
            agent_minutes,
            agent_only,
        } => {
            return match (agent_minutes, agent_only) {
                (Some(minutes), true) => bench::agent_only(&layout, minutes),
                _ => bench::bench(
                    &layout,
                    rounds.max(1),
                    std::time::Duration::from_millis(run_ms),
                    agent_minutes,
                ),
            }
        }
        Cmd::Test {
            fast: true,
            cargo_test_args,
            ..
        } => return test::test(&layout, test::Layer::Unit, &cargo_test_args),
        Cmd::Test {
            fast: false,
            go,
            cargo_test_args,
        } => return test::test(&layout, test::Layer::Full(&go.versions()?), &cargo_test_args),
    }
    Ok(0)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
