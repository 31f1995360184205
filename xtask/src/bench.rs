//! `bench`: what maptrace costs, measured, not assumed (numbers to read, never a test).
//!
//! 1. The allocation benchmark (`go-targets/allocbench`, several goroutines allocating objects,
//!    maps and slices) untraced, with empty eBPF programs on the same probe points (the floor the
//!    kernel's uprobes set, `tracer/benches/floor.rs`) and traced in full mode; and with its heap
//!    profiler at Go's default rate, untraced ("profiled") and in sampled mode; interleaved run by
//!    run so that drift in the machine hits all alike: operations per second (min/median/max), the ratio of medians,
//!    and the wall time added per allocation. From the traced runs: attach time, records lost,
//!    maptrace's peak resident memory.
//! 2. The pipeline: one traced run is recorded (`maptrace --record`) and replayed through
//!    decoding and correlation on one core (`tracer/benches/pipeline.rs`): records per second,
//!    and resident bytes per tracked object with a million objects tracked.
//! 3. With `--agent-minutes M`: `maptrace agent` tracing ten copies of the demo server for M
//!    minutes: its CPU (share of one core) and resident memory over time, and the series count.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use e2e::{Maptrace, Target};

use crate::go_versions::{self, PRIMARY};
use crate::layout::Layout;
use crate::{go_targets, process, rust_build, setup};

/// Goroutines allocating in the benchmark.
const GOROUTINES: u32 = 4;
/// `runtime.MemProfileRate` in a Go program that uses the heap profiler (512 KiB).
const GO_DEFAULT_MEMPROFILERATE: u64 = 512 * 1024;

/// One run of the allocation benchmark, from its done line.
struct Run {
    ops: f64,
    seconds: f64,
    mallocs: f64,
}

impl Run {
    fn parse(done: &str) -> Result<Self> {
        let field = |key: &str| -> Result<f64> {
            done.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key}= in the benchmark's done line {done:?}"))
        };
        Ok(Run { ops: field("ops")?, seconds: field("nanos")? / 1e9, mallocs: field("mallocs")? })
    }

    fn ops_per_second(&self) -> f64 {
        self.ops / self.seconds
    }

    fn allocations_per_second(&self) -> f64 {
        self.mallocs / self.seconds
    }
}

/// What a traced run adds to its `Run`.
struct Traced {
    run: Run,
    attach_seconds: f64,
    uprobes: u64,
    lost: u64,
    records: u64,
    peak_rss_kib: u64,
}

pub fn bench(layout: &Layout, rounds: usize, duration: Duration, agent_minutes: Option<u64>) -> Result<i32> {
    if !process::is_root() {
        bail!("the benchmark attaches eBPF uprobes and needs root: run `sudo ./x bench`");
    }
    let primary = go_versions::find(PRIMARY)?;
    setup::setup(layout)?;
    rust_build::build(layout)?;
    go_targets::build_targets(layout, &[primary])?;
    let target = layout.go_targets_out().join(PRIMARY).join("allocbench");
    let recording = layout.cache().join("bench.records");
    let duration_arg = format!("-duration={}ms", duration.as_millis());
    let goroutines_arg = format!("-goroutines={GOROUTINES}");
    let args = [duration_arg.as_str(), goroutines_arg.as_str()];

    // Sampled mode rides the heap profiler at Go's default rate, as in a program that uses it.
    let profiled_arg = format!("-memprofilerate={GO_DEFAULT_MEMPROFILERATE}");
    let profiled = [duration_arg.as_str(), goroutines_arg.as_str(), profiled_arg.as_str()];

    let mut untraced = Vec::new();
    let mut untraced_profiled = Vec::new();
    let mut floor = Vec::new();
    let mut traced = Vec::new();
    let mut sampled = Vec::new();
    for round in 0..rounds {
        println!("bench: round {}/{rounds}", round + 1);
        untraced.push(run_untraced(&target, &args)?);
        untraced_profiled.push(run_untraced(&target, &profiled)?);
        sampled.push(run_traced(&target, &profiled, &["--mode", "sampled"], None)?);
        floor.push(run_floor(layout, &target, &args)?);
        traced.push(run_traced(&target, &args, &[], (round == 0).then_some(recording.as_path()))?);
    }

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (u_min, u_med, u_max) = median(untraced.iter().map(Run::ops_per_second).collect());
    let (t_min, t_med, t_max) = median(traced.iter().map(|t| t.run.ops_per_second()).collect());
    let (f_min, f_med, f_max) = median(floor.iter().map(Run::ops_per_second).collect());
    let (_, f_allocs, _) = median(floor.iter().map(Run::allocations_per_second).collect());
    let (_, u_allocs, _) = median(untraced.iter().map(Run::allocations_per_second).collect());
    let (_, t_allocs, _) = median(traced.iter().map(|t| t.run.allocations_per_second()).collect());
    let (_, attach, _) = median(traced.iter().map(|t| t.attach_seconds).collect());
    let (_, rss, _) = median(traced.iter().map(|t| t.peak_rss_kib as f64).collect());
    let lost: u64 = traced.iter().map(|t| t.lost).sum();
    let records: u64 = traced.iter().map(|t| t.records).sum();

    println!("\nallocbench, Go {PRIMARY}, {GOROUTINES} goroutines, {:.1} s per run, {rounds} runs each, interleaved", duration.as_secs_f64());
    println!("{:<10} {:>12} {:>12} {:>12} {:>10} {:>14} {:>16}", "", "ops/s min", "median", "max", "÷ untraced", "allocs/s", "ns added/alloc");
    println!("{:<10} {u_min:>12.0} {u_med:>12.0} {u_max:>12.0} {:>10} {u_allocs:>14.0} {:>16}", "untraced", "1", "");
    let (p_min, p_med, p_max) = median(untraced_profiled.iter().map(Run::ops_per_second).collect());
    let (_, p_allocs, _) = median(untraced_profiled.iter().map(Run::allocations_per_second).collect());
    let (s_min, s_med, s_max) = median(sampled.iter().map(|t| t.run.ops_per_second()).collect());
    let (_, s_allocs, _) = median(sampled.iter().map(|t| t.run.allocations_per_second()).collect());
    let ns_added = |allocs: f64| 1e9 / allocs - 1e9 / u_allocs;
    println!(
        "{:<10} {p_min:>12.0} {p_med:>12.0} {p_max:>12.0} {:>10.3} {p_allocs:>14.0} {:>16.1}",
        "profiled",
        u_med / p_med,
        ns_added(p_allocs)
    );
    println!(
        "{:<10} {s_min:>12.0} {s_med:>12.0} {s_max:>12.0} {:>10.3} {s_allocs:>14.0} {:>16.1}",
        "sampled",
        u_med / s_med,
        ns_added(s_allocs)
    );
    let floor_ns = 1e9 / f_allocs - 1e9 / u_allocs;
    let full_ns = 1e9 / t_allocs - 1e9 / u_allocs;
    println!(
        "{:<10} {f_min:>12.0} {f_med:>12.0} {f_max:>12.0} {:>10.1} {f_allocs:>14.0} {floor_ns:>16.0}",
        "empty",
        u_med / f_med,
    );
    println!("{:<10} {t_min:>12.0} {t_med:>12.0} {t_max:>12.0} {:>10.1} {t_allocs:>14.0} {full_ns:>16.0}", "full", u_med / t_med);
    println!("profiled: untraced, the target's heap profiler on at Go's default rate ({GO_DEFAULT_MEMPROFILERATE} B); sampled: maptrace --mode sampled riding it ({:.1}% slower than profiled, {:.1}% than untraced)", (p_med / s_med - 1.0) * 100.0, (u_med / s_med - 1.0) * 100.0);
    let samples: u64 = sampled.iter().map(|t| t.records).sum();
    println!("sampled runs: {} uprobes attached in {:.3} s (median); {samples} records in all", sampled[0].uprobes, median(sampled.iter().map(|t| t.attach_seconds).collect()).1);
    println!("empty: an empty eBPF program at the same probe points (the kernel's uprobe cost alone); full mode adds {:.2}x the floor's time per allocation", full_ns / floor_ns);
    println!(
        "traced runs: {} uprobes attached in {attach:.3} s (median); {records} records, {lost} lost; maptrace peak RSS {:.1} MiB (median)",
        traced[0].uprobes,
        rss / 1024.0
    );

    let binary = layout.go_targets_out().join(PRIMARY).join("allocbench");
    let mut cmd = process::cargo(&layout.root);
    cmd.args(["bench", "-q", "-p", "tracer", "--bench", "pipeline", "--"]).arg(&recording).arg(&binary).arg("10");
    println!("\n$ {}", process::describe(&cmd));
    let out = cmd.output().context("running the pipeline benchmark")?;
    if !out.status.success() {
        bail!("the pipeline benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let p: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("the pipeline benchmark printed {stdout:?}"))?;
    let rate = &p["records_per_second"];
    println!(
        "pipeline (one core, the first traced run's {} records replayed {} times): {} records/s median (min {}, max {})",
        p["records"], p["repeats"], rate["median"], rate["min"], rate["max"]
    );
    let per_object = p["resident_bytes_per_object"].as_f64().unwrap_or(f64::NAN);
    println!(
        "lifecycle engine: {per_object:.0} resident bytes per tracked object ({} tracked): {:.0} MiB per million objects",
        p["tracked_objects"],
        per_object * 1e6 / f64::from(1 << 20)
    );
    if let Some(minutes) = agent_minutes {
        agent_bench(layout, minutes)?;
    }
    Ok(0)
}

fn run_untraced(target: &Path, args: &[&str]) -> Result<Run> {
    let mut t = Target::start(target, args);
    t.go();
    let done = t.wait_done();
    t.finish();
    Run::parse(&done)
}

/// A run with `tracer/benches/floor.rs` holding empty programs on the probe points.
fn run_floor(layout: &Layout, target: &Path, args: &[&str]) -> Result<Run> {
    let mut t = Target::start(target, args);
    let mut cmd = process::cargo(&layout.root);
    cmd.args(["bench", "-q", "-p", "tracer", "--bench", "floor", "--"]).arg(t.pid.to_string());
    let mut floor = cmd.stdout(std::process::Stdio::piped()).spawn().context("running the floor benchmark")?;
    let attached = e2e::Lines::spawn(floor.stdout.take().context("piped")?);
    attached.until("the empty programs to attach", |l| l.starts_with("attached"));
    t.go();
    let done = t.wait_done();
    t.finish();
    let status = floor.wait()?;
    if !status.success() {
        bail!("the floor benchmark failed: {status}");
    }
    Run::parse(&done)
}

fn run_traced(target: &Path, args: &[&str], extra: &[&str], record: Option<&Path>) -> Result<Traced> {
    let mut t = Target::start(target, args);
    let pid = t.pid.to_string();
    let mut maptrace_args = vec!["--pid", &pid, "--json", "--no-live"];
    maptrace_args.extend_from_slice(extra);
    let record_arg;
    if let Some(path) = record {
        record_arg = path.display().to_string();
        maptrace_args.extend(["--record", &record_arg]);
    }
    let mut m = Maptrace::start(&maptrace_args);
    let peak = peak_rss_watcher(m.pid());
    m.wait_attached();
    t.go();
    let done = t.wait_done();
    t.finish();
    let outcome = m.finish();
    if !outcome.status.success() {
        bail!("maptrace failed: {:?}", outcome.stderr);
    }
    let report = outcome.json();
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(Traced {
        run: Run::parse(&done)?,
        attach_seconds: report["probes"]["attach_seconds"].as_f64().unwrap_or(f64::NAN),
        uprobes: num(&report["probes"]["uprobes"]),
        lost: num(&report["lost_records"]),
        records: num(&report["totals"]["records"]),
        peak_rss_kib: peak.join().unwrap_or(0),
    })
}

/// Polls a process's VmHWM (peak resident set) until it exits; returns the last value, in KiB.
fn peak_rss_watcher(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()) {
                peak = kib;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}


/// Copies of the demo server the agent bench traces.
const AGENT_TARGETS: usize = 10;

pub fn agent_bench(layout: &Layout, minutes: u64) -> Result<()> {
    let demo = layout.go_targets_out().join(PRIMARY).join("demo");
    let dir = layout.cache().join("bench");
    std::fs::create_dir_all(&dir)?;
    let name = format!("demo-agentbench-{}", std::process::id());
    let copy = dir.join(&name);
    std::fs::copy(&demo, &copy).with_context(|| format!("copying {}", demo.display()))?;
    let duration = format!("-duration={}s", minutes * 60 + 60);
    let targets: Vec<Target> = (0..AGENT_TARGETS).map(|_| Target::start(&copy, &[duration.as_str()])).collect();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let log_path = dir.join("agent.log");
    let mut agent = std::process::Command::new(layout.maptrace_bin())
        .args(["agent", "--listen", &format!("127.0.0.1:{port}"), "--include", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("starting maptrace agent")?;
    println!("agent: log in {}", log_path.display());
    println!("\nagent: tracing {AGENT_TARGETS} demo servers for {minutes} min, scraped every 15 s (Prometheus's default is 1 min; 15 s is common)");
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_seconds = |pid: u32| -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        Some((fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?) / ticks_per_second)
    };
    let rss_kib = |pid: u32| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches(" kB").parse().ok()
    };
    let start = std::time::Instant::now();
    let first_cpu = cpu_seconds(agent.id()).unwrap_or(0.0);
    let mut samples = Vec::new();
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(minutes * 60) {
        std::thread::sleep(Duration::from_secs(5));
        tick += 1;
        if tick % 3 == 0 {
            let _ = scrape(port);
        }
        if tick % 2 != 0 {
            continue;
        }
        let (Some(cpu), Some(rss)) = (cpu_seconds(agent.id()), rss_kib(agent.id())) else { bail!("the agent exited") };
        samples.push((start.elapsed().as_secs_f64(), cpu - first_cpu, rss));
    }
    let metrics = scrape(port).unwrap_or_default();
    let series = metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    let traced = metrics
        .lines()
        .find(|l| l.starts_with("maptrace_agent_targets"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?")
        .to_string();
    let _ = agent.kill();
    let _ = agent.wait();
    drop(targets);
    let _ = std::fs::remove_file(&copy);
    let (elapsed, cpu, _) = *samples.last().context("no samples")?;
    let max_rss = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let last_rss = samples.last().map_or(0, |s| s.2);
    println!("{:>8} {:>12} {:>12}", "minute", "CPU (cores)", "RSS (MiB)");
    let mut prev = (0.0, 0.0);
    for &(t, c, r) in samples.iter().filter(|s| (s.0 as u64) % 60 < 10 && s.0 > 30.0) {
        println!("{:>8.0} {:>12.3} {:>12.1}", t / 60.0, (c - prev.1) / (t - prev.0), r as f64 / 1024.0);
        prev = (t, c);
    }
    println!(
        "agent over {:.1} min with {traced} targets: {:.3} cores on average, RSS {:.1} MiB at the end (max {:.1}); {series} series on /metrics",
        elapsed / 60.0,
        cpu / elapsed,
        last_rss as f64 / 1024.0,
        max_rss as f64 / 1024.0
    );
    Ok(())
}

fn scrape(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string()))
}
