//! `test`: what CI runs. Bootstrap, build everything, then the whole Rust test suite with the paths
//! the end-to-end tests need, and the time each phase took. `test --fast`: the unit layer alone.
//!
//! Two layers, one cargo profile (release) and one package set, so a full run reuses what `--fast`
//! built and the other way round:
//! - `--fast`: the unit tests of tracer, tracer-common and xtask. Needs bpf-linker and the eBPF
//!   object (the tracer embeds it) and nothing else: no Go toolchain, no go-targets, no root. Unit
//!   tests that read go-targets are `#[ignore]`d and do not run.
//! - the whole suite: everything `setup` installs, maptrace, the go-targets, then every test of the
//!   workspace with `--include-ignored`: the unit tests, those that read go-targets, and the
//!   end-to-end tests (the `e2e` crate, tests/) that run maptrace as root.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{Context, Result};

use crate::go_versions::GoVersion;
use crate::layout::Layout;
use crate::timings::Timings;
use crate::{go_targets, process, rust_build, setup};

/// Which tests a run covers.
pub enum Layer<'a> {
    /// Unit tests only (`./x test --fast`).
    Unit,
    /// Everything, with the go-targets of these versions.
    Full(&'a [&'static GoVersion]),
}

/// Returns cargo test's exit code. Timings are printed whatever happens.
pub fn test(layout: &Layout, layer: Layer, cargo_test_args: &[String]) -> Result<i32> {
    if matches!(layer, Layer::Full(_)) && !process::is_root() {
        eprintln!("test: warning: not root; the end-to-end tests attach eBPF probes and need root (sudo ./x test)");
    }
    let mut timings = Timings::default();
    let mut tally = Tally::default();
    let result = run_phases(layout, &layer, cargo_test_args, &mut timings, &mut tally);
    timings.print();
    // One closing line for the whole run, last: cargo prints one per test binary, the last
    // of them often for a binary with no tests.
    println!(
        "\ntests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

fn run_phases(
    layout: &Layout,
    layer: &Layer,
    cargo_test_args: &[String],
    timings: &mut Timings,
    tally: &mut Tally,
) -> Result<i32> {
    let mut cmd = process::cargo(&layout.root);
    // tracer-ebpf only builds for bpfel-unknown-none (build-ebpf did that).
    cmd.args(["test", "--workspace", "--exclude", "tracer-ebpf", "--release"]);
    match layer {
        Layer::Unit => {
            // bpf-linker and the eBPF object only: setup's Go toolchains and kubernetes-validate
            // serve the go-targets and the end-to-end tests.
            timings.phase("build-ebpf", || rust_build::build_ebpf(layout))?;
            // The end-to-end tests live in the e2e crate; its library (the harness) has none.
            cmd.args(["--exclude", "e2e"])
                .args(cargo_test_args)
                // Nowhere: a unit test that reads go-targets without being #[ignore]d fails here
                // instead of passing on machines where a full run left them in .cache/.
                .env(
                    "MAPTRACE_GO_TARGETS",
                    layout.target_dir().join("no-go-targets-in-the-unit-layer"),
                );
        }
        Layer::Full(versions) => {
            timings.phase("setup", || setup::setup(layout))?;
            timings.phase("build", || rust_build::build(layout))?;
            timings.phase("build-targets", || go_targets::build_targets(layout, versions))?;
            cmd.args(with_ignored_tests(cargo_test_args))
                .env("MAPTRACE_BIN", layout.maptrace_bin())
                .env("MAPTRACE_GO_TARGETS", layout.go_targets_out())
                .env(
                    "MAPTRACE_KUBERNETES_VALIDATE",
                    layout.python_tool(setup::KUBERNETES_VALIDATE.0, setup::KUBERNETES_VALIDATE.1),
                );
        }
    }
    cmd.env("MAPTRACE_EBPF_OBJECT", layout.ebpf_object());
    timings.phase("cargo test", || {
        println!("$ {}", process::describe(&cmd));
        let mut child = cmd.stdout(Stdio::piped()).spawn().context("cannot start cargo test")?;
        for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
            let line = line.context("reading cargo test's output")?;
            println!("{line}");
            tally.add(&line);
        }
        let status = child.wait().context("waiting for cargo test")?;
        Ok(status.code().unwrap_or(1))
    })
}

/// The full run's `cargo test` arguments: the caller's, with `--include-ignored` for the test binaries
/// (after the caller's own `--`, or after a new one) unless the caller chose `--ignored` or
/// `--include-ignored` already. The tests ignored in the unit layer are the full run's too, except the
/// regression tests of fuzz crashes not fixed yet (named [`FUZZ_CRASH_PREFIX`]..., ignored until their fix).
fn with_ignored_tests(args: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    let binary_args = args.iter().position(|a| a == "--").map(|i| &args[i + 1..]);
    if binary_args.is_some_and(|b| b.iter().any(|a| a == "--ignored" || a == "--include-ignored")) {
        return args;
    }
    if binary_args.is_none() {
        args.push("--".to_owned());
    }
    args.extend(["--include-ignored", "--skip", FUZZ_CRASH_PREFIX].map(str::to_owned));
    args
}

/// How tracer's regression tests of fuzz crashes that wait for a fix are named (see tracer/src/fuzz/tests.rs).
const FUZZ_CRASH_PREFIX: &str = "fuzz_crash_";

/// Sums cargo test's per-binary "test result:" lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{with_ignored_tests, Tally};

    #[test]
    fn the_full_run_includes_ignored_tests() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let skip = ["--skip", "fuzz_crash_"];
        assert_eq!(
            with_ignored_tests(&[]),
            args(&[&["--", "--include-ignored"][..], &skip].concat())
        );
        assert_eq!(
            with_ignored_tests(&args(&["-p", "e2e", "--test", "errors"])),
            args(&[&["-p", "e2e", "--test", "errors", "--", "--include-ignored"][..], &skip].concat())
        );
        assert_eq!(
            with_ignored_tests(&args(&["-p", "tracer", "--", "--test-threads", "1"])),
            args(
                &[
                    &["-p", "tracer", "--", "--test-threads", "1", "--include-ignored"][..],
                    &skip
                ]
                .concat()
            )
        );
        for chosen in [&["--", "--ignored"][..], &["--", "--include-ignored", "gobin"]] {
            assert_eq!(with_ignored_tests(&args(chosen)), args(chosen));
        }
    }

    #[test]
    fn sums_cargo_result_lines() {
        let mut t = Tally::default();
        t.add("test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 38.93s");
        t.add("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add("running 3 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (20, 2, 1));
    }
}
