//! `test`: what CI runs. Bootstrap, build everything, then the whole Rust test suite with the paths
//! the end-to-end tests need, and the time each phase took.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{Context, Result};

use crate::go_versions::GoVersion;
use crate::layout::Layout;
use crate::timings::Timings;
use crate::{go_targets, process, rust_build, setup};

/// Returns cargo test's exit code. Timings are printed whatever happens.
pub fn test(layout: &Layout, versions: &[&'static GoVersion], cargo_test_args: &[String]) -> Result<i32> {
    if !process::is_root() {
        eprintln!("test: warning: not root; the end-to-end tests attach eBPF probes and need root (sudo ./x test)");
    }
    let mut timings = Timings::default();
    let mut tally = Tally::default();
    let result = run_phases(layout, versions, cargo_test_args, &mut timings, &mut tally);
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
    versions: &[&'static GoVersion],
    cargo_test_args: &[String],
    timings: &mut Timings,
    tally: &mut Tally,
) -> Result<i32> {
    timings.phase("setup", || setup::setup(layout))?;
    timings.phase("build", || rust_build::build(layout))?;
    timings.phase("build-targets", || go_targets::build_targets(layout, versions))?;

    let mut cmd = process::cargo(&layout.root);
    // tracer-ebpf only builds for bpfel-unknown-none (build-ebpf did that).
    cmd.args(["test", "--workspace", "--exclude", "tracer-ebpf", "--release"])
        .args(cargo_test_args)
        .env("MAPTRACE_BIN", layout.maptrace_bin())
        .env("MAPTRACE_GO_TARGETS", layout.go_targets_out())
        .env("MAPTRACE_EBPF_OBJECT", layout.ebpf_object())
        .env(
            "MAPTRACE_KUBERNETES_VALIDATE",
            layout.python_tool(setup::KUBERNETES_VALIDATE.0, setup::KUBERNETES_VALIDATE.1),
        );
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
    use super::Tally;

    #[test]
    fn sums_cargo_result_lines() {
        let mut t = Tally::default();
        t.add("test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 38.93s");
        t.add("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add("running 3 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (20, 2, 1));
    }
}
