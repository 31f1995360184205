//! `test`: what CI runs. Bootstrap, build everything, then the whole Rust test suite with the paths
//! the end-to-end tests need, and the time each phase took.

use anyhow::{Context, Result};

use crate::go_versions::GoVersion;
use crate::layout::Layout;
use crate::timings::Timings;
use crate::{go_targets, process, rust_build, setup};

/// Returns cargo test's exit code. Timings are printed whatever happens.
pub fn test(
    layout: &Layout,
    versions: &[&'static GoVersion],
    cargo_test_args: &[String],
) -> Result<i32> {
    if !process::is_root() {
        eprintln!("test: warning: not root; the end-to-end tests attach eBPF probes and need root (sudo ./x test)");
    }
    let mut timings = Timings::default();
    let result = run_phases(layout, versions, cargo_test_args, &mut timings);
    timings.print();
    result
}

fn run_phases(
    layout: &Layout,
    versions: &[&'static GoVersion],
    cargo_test_args: &[String],
    timings: &mut Timings,
) -> Result<i32> {
    timings.phase("setup", || setup::setup(layout))?;
    timings.phase("build", || rust_build::build(layout))?;
    timings.phase("build-targets", || {
        go_targets::build_targets(layout, versions)
    })?;

    let names: Vec<&str> = versions.iter().map(|v| v.name).collect();
    let mut cmd = process::cargo(&layout.root);
    // tracer-ebpf only builds for bpfel-unknown-none (build-ebpf did that).
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--release",
    ])
    .args(cargo_test_args)
    .env("MAPTRACE_BIN", layout.maptrace_bin())
    .env("MAPTRACE_GO_TARGETS", layout.go_targets_out())
    // The versions built in this run: .cache/go-targets/ may hold others from earlier runs.
    .env("MAPTRACE_GO_VERSIONS", names.join(","))
    .env("MAPTRACE_EBPF_OBJECT", layout.ebpf_object());
    timings.phase("cargo test", || {
        println!("$ {}", process::describe(&cmd));
        let status = cmd.status().context("cannot start cargo test")?;
        Ok(status.code().unwrap_or(1))
    })
}
