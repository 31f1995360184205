//! `lint`: the project's style and lints, as CI checks them: `cargo fmt --check` over the workspace and fuzz/,
//! then clippy over every target of the host crates with warnings denied. Clippy compiles the tracer,
//! whose build script embeds the eBPF object, so that is built first.

use anyhow::Result;

use crate::layout::Layout;
use crate::{process, rust_build};

/// Runs both checks, even when the first fails, and returns 0 when both pass.
pub fn lint(layout: &Layout) -> Result<i32> {
    rust_build::build_ebpf(layout)?;
    let mut failed = Vec::new();

    // `cargo fmt --all --check`, and `cargo clippy … -- -D warnings` below, with Debian's tools.
    // The fuzz crate is outside the workspace; its shared code is clippy's too, through tracer's tests.
    for manifest in [None, Some("fuzz/Cargo.toml")] {
        let mut fmt = process::cargo_subcommand(&layout.root, process::CARGO_FMT);
        fmt.args(["--all", "--check"]);
        if let Some(m) = manifest {
            fmt.args(["--manifest-path", m]);
        }
        if let Err(e) = process::run(&mut fmt) {
            eprintln!("lint: {e:#}\nlint: `cargo fmt --all` fixes the formatting (rustfmt.toml)");
            failed.push("cargo fmt");
        }
    }

    let mut clippy = process::cargo_subcommand(&layout.root, process::CARGO_CLIPPY);
    // tracer-ebpf only builds for bpfel-unknown-none.
    clippy
        .args(["clippy", "--workspace", "--exclude", "tracer-ebpf", "--all-targets"])
        .args(["--", "-D", "warnings"])
        .env("MAPTRACE_EBPF_OBJECT", layout.ebpf_object());
    if let Err(e) = process::run(&mut clippy) {
        eprintln!("lint: {e:#}");
        failed.push("cargo clippy");
    }

    if failed.is_empty() {
        println!("lint: cargo fmt and cargo clippy: clean");
        Ok(0)
    } else {
        eprintln!("lint: failed: {}", failed.join(", "));
        Ok(1)
    }
}
