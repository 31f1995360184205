//! The benchmark's floor, run by `cargo xtask bench` (root): `floor PID` attaches an empty eBPF
//! program at every place `maptrace --pid PID` would attach its own, prints `attached N`, and
//! stays until the process exits. The target's slowdown then is the kernel's uprobe cost alone.

use std::time::Duration;

use tracer::{
    gobin::GoBinary,
    probes::{ProbePlan, Tracer},
    process::Process,
};

fn main() {
    let pid: u32 = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .and_then(|a| a.parse().ok())
        .expect("usage: floor PID");
    let process = Process::open(pid).unwrap_or_else(|e| panic!("PID {pid}: {e}"));
    let binary = GoBinary::open(&process.exe_path).unwrap_or_else(|e| panic!("PID {pid}: {e}"));
    let plan = ProbePlan::for_binary(&binary, tracer::probes::sampling::Mode::Full)
        .unwrap_or_else(|e| panic!("PID {pid}: {e}"));
    let load_bias = process.load_bias(binary.load_vaddr()).unwrap_or(0);
    let tracer = Tracer::attach_empty(&binary, &process, &plan, load_bias).unwrap_or_else(|e| panic!("PID {pid}: {e}"));
    println!("attached {}", tracer.attached);
    while !process.has_exited() {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracer.detach();
}
