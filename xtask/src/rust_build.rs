//! The two Rust builds: the eBPF object (bpfel-unknown-none, Debian toolchain, bpf-linker) and the
//! userspace `maptrace` binary that embeds it.

use anyhow::{bail, Result};

use crate::layout::Layout;
use crate::{process, setup};

/// Builds `target/bpfel-unknown-none/release/tracer-ebpf` with the one toolchain known to work here:
/// Debian's cargo (prebuilt core for the BPF target, no nightly, no rust-src), bpf-linker on PATH,
/// BTF emitted so the kernel can check the programs.
pub fn build_ebpf(layout: &Layout) -> Result<()> {
    setup::ensure_bpf_linker(layout)?;
    let mut cmd = process::cargo(&layout.root);
    cmd.args([
        "build",
        "-p",
        "tracer-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
    ])
    .env("RUSTFLAGS", "-Cdebuginfo=2 -Clink-arg=--btf")
    .env("PATH", process::path_with(&layout.tools_bin()));
    process::run(&mut cmd)?;
    let object = layout.ebpf_object();
    if !object.exists() {
        bail!("the eBPF build succeeded but {} does not exist", object.display());
    }
    println!("build-ebpf: {}", object.display());
    Ok(())
}

/// build-ebpf, then the `maptrace` binary; tracer's build.rs finds the object through
/// MAPTRACE_EBPF_OBJECT.
pub fn build(layout: &Layout) -> Result<()> {
    build_ebpf(layout)?;
    let mut cmd = process::cargo(&layout.root);
    cmd.args(["build", "--release", "-p", "tracer"])
        .env("MAPTRACE_EBPF_OBJECT", layout.ebpf_object());
    process::run(&mut cmd)?;
    let bin = layout.maptrace_bin();
    if !bin.exists() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    println!("build: {}", bin.display());
    Ok(())
}
