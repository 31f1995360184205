//! Tells the eBPF crate which CPU's `pt_regs` it reads: the bpf target itself has no such notion.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\"))");
    let arch = std::env::var("CARGO_CFG_BPF_TARGET_ARCH").unwrap_or_else(|_| {
        let host = std::env::var("HOST").unwrap_or_default();
        host.split('-').next().unwrap_or_default().to_string()
    });
    println!("cargo::rustc-cfg=bpf_target_arch=\"{arch}\"");
    println!("cargo::rerun-if-env-changed=CARGO_CFG_BPF_TARGET_ARCH");
}
