//! Embeds the eBPF object that `cargo xtask build-ebpf` builds (it needs the BPF toolchain, so
//! it is built by xtask rather than from here).
use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=MAPTRACE_EBPF_OBJECT");
    let obj = env::var("MAPTRACE_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../target/bpfel-unknown-none/release/tracer-ebpf")
    });
    if !obj.exists() {
        panic!(
            "the eBPF object {} is missing: build it with `./x build` (or `cargo xtask build-ebpf`)",
            obj.display()
        );
    }
    println!("cargo::rerun-if-changed={}", obj.display());
    println!(
        "cargo::rustc-env=MAPTRACE_EBPF_OBJECT={}",
        obj.canonicalize().unwrap().display()
    );
}
