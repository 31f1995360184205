//! `bench`: what maptrace costs, measured, not assumed (numbers to read, never a test).
//!
//! 1. The allocation benchmark (`go-targets/allocbench`, several goroutines allocating objects,
//!    maps and slices) untraced, with empty eBPF programs on the same probe points (the floor the
//!    kernel's uprobes set, `tracer/benches/floor.rs`) and traced in full mode; and with its heap
//!    profiler at Go's default rate, untraced ("profiled"), in sampled mode, and in sampled mode
//!    allowed to raise the rate to its trap budget ("governed"); interleaved run by
//!    run so that drift in the machine hits all alike: operations per second (min/median/max), the ratio of medians,
//!    and the wall time added per allocation. From the traced runs: attach time, records lost,
//!    maptrace's peak resident memory.
//! 2. The pipeline: one traced run is recorded (`maptrace --record`) and replayed through
//!    decoding and correlation on one core (`tracer/benches/pipeline.rs`): records per second,
//!    and resident bytes per tracked object with a million objects tracked.
//! 3. Where loss starts: maptrace stopped for longer and longer in the middle of a full-mode
//!    trace, and the records the ring buffer could not hold.
//! 4. Attach time on large binaries: a generated one (`bigbin.rs`, ~65 MB) and Debian's Prometheus
//!    server (a real ~50 MB service), in both modes.
//! 5. With `--agent-minutes M`: `maptrace agent` tracing ten copies of the demo server for M
//!    minutes: its CPU (share of one core) and resident memory over time, and the series count.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use e2e::{Maptrace, Target};

use crate::go_versions::{self, PRIMARY};
use crate::layout::Layout;
use crate::{bigbin, go_targets, process, rust_build, setup};

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
        Ok(Run {
            ops: field("ops")?,
            seconds: field("nanos")? / 1e9,
            mallocs: field("mallocs")?,
        })
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
    /// Sampled mode: allocations the runtime sampled, and MemProfileRate when tracing ended.
    samples_seen: u64,
    final_rate: u64,
}

/// Setup, maptrace and the primary Go version's targets, as root.
fn prepare(layout: &Layout) -> Result<&'static go_versions::GoVersion> {
    if !process::is_root() {
        bail!("the benchmark attaches eBPF uprobes and needs root: run `sudo ./x bench`");
    }
    let primary = go_versions::find(PRIMARY)?;
    setup::setup(layout)?;
    rust_build::build(layout)?;
    go_targets::build_targets(layout, &[primary])?;
    Ok(primary)
}

/// `--agent-only`: the agent's run alone.
pub fn agent_only(layout: &Layout, minutes: u64) -> Result<i32> {
    prepare(layout)?;
    agent_bench(layout, minutes)?;
    Ok(0)
}

pub fn bench(layout: &Layout, rounds: usize, duration: Duration, agent_minutes: Option<u64>) -> Result<i32> {
    let primary = prepare(layout)?;
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
    let mut governed = Vec::new();
    for round in 0..rounds {
        println!("bench: round {}/{rounds}", round + 1);
        untraced.push(run_untraced(&target, &args)?);
        untraced_profiled.push(run_untraced(&target, &profiled)?);
        sampled.push(run_traced(&target, &profiled, &["--mode", "sampled"], None)?);
        governed.push(run_traced(
            &target,
            &profiled,
            &["--mode", "sampled", "--write-memprofilerate"],
            None,
        )?);
        floor.push(run_floor(layout, &target, &args)?);
        traced.push(run_traced(
            &target,
            &args,
            &[],
            (round == 0).then_some(recording.as_path()),
        )?);
    }

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (_, u_med, _) = median(untraced.iter().map(Run::ops_per_second).collect());
    let (_, u_allocs, _) = median(untraced.iter().map(Run::allocations_per_second).collect());
    let ns_added = |allocs: f64| 1e9 / allocs - 1e9 / u_allocs;
    // One table row: ops/s min/median/max, the ratio to untraced, allocations/s, ns added per
    // allocation; returns (median ops/s, ns added).
    let row = |name: &str, runs: &[&Run]| {
        let (min, med, max) = median(runs.iter().map(|r| r.ops_per_second()).collect());
        let (_, allocs, _) = median(runs.iter().map(|r| r.allocations_per_second()).collect());
        let added = ns_added(allocs);
        println!(
            "{name:<10} {min:>12.0} {med:>12.0} {max:>12.0} {:>10.3} {allocs:>14.0} {added:>16.1}",
            u_med / med
        );
        (med, added)
    };

    println!(
        "\nallocbench, Go {PRIMARY}, {GOROUTINES} goroutines, {:.1} s per run, {rounds} runs each, interleaved",
        duration.as_secs_f64()
    );
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>10} {:>14} {:>16}",
        "", "ops/s min", "median", "max", "÷ untraced", "allocs/s", "ns added/alloc"
    );
    row("untraced", &untraced.iter().collect::<Vec<_>>());
    let (p_med, _) = row("profiled", &untraced_profiled.iter().collect::<Vec<_>>());
    let (s_med, _) = row("sampled", &runs_of(&sampled));
    let (g_med, _) = row("governed", &runs_of(&governed));
    let (_, floor_ns) = row("empty", &floor.iter().collect::<Vec<_>>());
    let (_, full_ns) = row("full", &runs_of(&traced));
    let slower = |med: f64| {
        format!(
            "{:.1}% slower than profiled, {:.1}% than untraced",
            (p_med / med - 1.0) * 100.0,
            (u_med / med - 1.0) * 100.0
        )
    };
    println!("profiled: untraced, the target's heap profiler on at Go's default rate ({GO_DEFAULT_MEMPROFILERATE} B)");
    println!("sampled: maptrace --mode sampled riding it ({})", slower(s_med));
    println!(
        "governed: the same with --write-memprofilerate, the rate raised to the trap budget ({}); rate at the end {} B (median)",
        slower(g_med),
        median(governed.iter().map(|t| t.final_rate as f64).collect()).1
    );
    for (name, runs) in [("sampled", &sampled), ("governed", &governed)] {
        let records: u64 = runs.iter().map(|t| t.records).sum();
        let samples: u64 = runs.iter().map(|t| t.samples_seen).sum();
        println!(
            "{name} runs: {} uprobes attached in {:.3} s (median); {samples} samples taken by the runtime, {records} records in all",
            runs[0].uprobes,
            median(runs.iter().map(|t| t.attach_seconds).collect()).1
        );
    }
    println!("empty: an empty eBPF program at the same probe points (the kernel's uprobe cost alone); full mode adds {:.2}x the floor's time per allocation", full_ns / floor_ns);
    let (_, attach, _) = median(traced.iter().map(|t| t.attach_seconds).collect());
    let (_, rss, _) = median(traced.iter().map(|t| t.peak_rss_kib as f64).collect());
    let lost: u64 = traced.iter().map(|t| t.lost).sum();
    let records: u64 = traced.iter().map(|t| t.records).sum();
    println!(
        "full runs: {} uprobes attached in {attach:.3} s (median); {records} records, {lost} lost; maptrace peak RSS {:.1} MiB (median)",
        traced[0].uprobes,
        rss / 1024.0
    );

    let binary = layout.go_targets_out().join(PRIMARY).join("allocbench");
    let mut cmd = process::cargo(&layout.root);
    cmd.args(["bench", "-q", "-p", "tracer", "--bench", "pipeline", "--"])
        .arg(&recording)
        .arg(&binary)
        .arg("10");
    println!("\n$ {}", process::describe(&cmd));
    let out = cmd.output().context("running the pipeline benchmark")?;
    if !out.status.success() {
        bail!(
            "the pipeline benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    stall_bench(&target)?;
    pause_bench(layout)?;
    attach_bench(layout, primary)?;
    if let Some(minutes) = agent_minutes {
        agent_bench(layout, minutes)?;
    }
    Ok(0)
}

/// The longest the heap walk stops a target, against `--max-pause` (10 ms by default): holders (its
/// leaked sessions and goroutines, go-targets/holders/TRUTH.md), plain and with 100 000 parked
/// goroutines, whose stacks take far longer to read than the budget.
fn pause_bench(layout: &Layout) -> Result<()> {
    let holders = layout.go_targets_out().join(PRIMARY).join("holders");
    println!("\npause (--max-pause 10ms, the default; 3 runs each): how long the target was stopped for the heap walk");
    println!(
        "{:<34} {:>12} {:>12} {:>14}",
        "target", "median ms", "max ms", "within pause"
    );
    for (name, args) in [("holders", vec![]), ("holders -idle=100000", vec!["-idle=100000"])] {
        let mut paused = Vec::new();
        let mut within = 0;
        for _ in 0..3 {
            let mut target = Target::start(&holders, &args);
            let pid = target.pid.to_string();
            let mut m = Maptrace::start(&["--pid", &pid, "--json", "--no-live"]);
            m.wait_attached();
            target.go();
            target.wait_done();
            m.interrupt();
            let outcome = m.finish();
            target.kill();
            let chains = &outcome.json()["chains"];
            paused.push(chains["paused_seconds"].as_f64().unwrap_or(f64::NAN) * 1e3);
            within += usize::from(chains["walk_within_pause"] == true);
        }
        paused.sort_by(f64::total_cmp);
        println!("{name:<34} {:>12.1} {:>12.1} {:>12}/3", paused[1], paused[2], within);
    }
    Ok(())
}

/// Where loss starts. The kernel's trap cost caps what a target can produce (full mode on
/// allocbench: tens of thousands of records a second on this machine) far below what the
/// pipeline drains (millions), so records are lost only when maptrace does not run: descheduled,
/// or throttled by a CPU limit. Each run stops maptrace (SIGSTOP) for a while in the middle of a
/// full-mode trace and counts what the ring buffer could not hold.
fn stall_bench(target: &Path) -> Result<()> {
    println!(
        "\nwhere loss starts: maptrace stopped (SIGSTOP) mid-trace, full mode, allocbench with {GOROUTINES} goroutines"
    );
    println!(
        "{:>8} {:>12} {:>12} {:>10} {:>14}",
        "stall s", "records", "lost", "lost %", "records/s"
    );
    for stall_ms in [250u64, 500, 1000, 2000, 4000] {
        let stall = Duration::from_millis(stall_ms);
        let run = format!("-duration={}ms", stall_ms + 2000);
        let goroutines = format!("-goroutines={GOROUTINES}");
        let traced = run_traced_with(target, &[run.as_str(), goroutines.as_str()], &[], None, &|maptrace| {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(maptrace as i32, libc::SIGSTOP) };
            std::thread::sleep(stall);
            // SAFETY: as above.
            unsafe { libc::kill(maptrace as i32, libc::SIGCONT) };
        })?;
        let (records, lost) = (traced.records, traced.lost);
        println!(
            "{:>8.2} {records:>12} {lost:>12} {:>10.2} {:>14.0}",
            stall.as_secs_f64(),
            100.0 * lost as f64 / (records + lost).max(1) as f64,
            (records + lost) as f64 / traced.run.seconds
        );
    }
    Ok(())
}

/// Debian's Prometheus server: a real Go service of ~50 MB (`./x` installs the package for the
/// agent's tests).
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Attach time on large binaries: the wall time from starting maptrace to its "attached" line
/// (reading the ELF, pclntab and DWARF, planning the probes, loading and attaching the eBPF
/// programs), and the probe attachment alone, in both modes; median of three.
fn attach_bench(layout: &Layout, primary: &go_versions::GoVersion) -> Result<()> {
    let big = bigbin::build(layout, primary)?;
    println!("\nattach time (median of 3): wall = maptrace started -> attached; probes = loading and attaching the eBPF programs alone");
    println!(
        "{:<34} {:>8} {:>9} {:>8} {:>9} {:>8} {:>10}",
        "binary", "MB", "Go", "mode", "uprobes", "wall s", "probes s"
    );
    let scratch = layout.cache().join("bench").join("prometheus");
    let config = scratch.join("prometheus.yml");
    fs::create_dir_all(&scratch)?;
    fs::write(&config, "global: {}\n")?;
    let prometheus_args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", scratch.join("data").display()),
        "--web.listen-address=127.0.0.1:0".to_string(),
    ];
    let mut binaries: Vec<(String, std::path::PathBuf, Vec<String>)> =
        vec![("generated (bench/bigbin)".into(), big, Vec::new())];
    if Path::new(PROMETHEUS).exists() {
        binaries.push((PROMETHEUS.into(), PROMETHEUS.into(), prometheus_args.to_vec()));
    }
    for (name, path, args) in &binaries {
        let mb = fs::metadata(path)?.len() as f64 / 1e6;
        for mode in ["full", "sampled"] {
            let mut wall = Vec::new();
            let mut probes = Vec::new();
            let mut report = serde_json::Value::Null;
            for _ in 0..3 {
                let target = Service::start(path, args)?;
                let pid = target.pid().to_string();
                let started = std::time::Instant::now();
                let mut m = Maptrace::start(&["--pid", &pid, "--json", "--no-live", "-d", "1s", "--mode", mode]);
                m.wait_attached();
                wall.push(started.elapsed().as_secs_f64());
                let outcome = m.finish();
                target.stop();
                if !outcome.status.success() {
                    bail!("maptrace on {name} failed: {:?}", outcome.stderr);
                }
                report = outcome.json();
                probes.push(report["probes"]["attach_seconds"].as_f64().unwrap_or(f64::NAN));
            }
            wall.sort_by(f64::total_cmp);
            probes.sort_by(f64::total_cmp);
            println!(
                "{name:<34} {mb:>8.1} {:>9} {mode:>8} {:>9} {:>8.3} {:>10.3}",
                report["target"]["go_version"]
                    .as_str()
                    .unwrap_or("?")
                    .trim_start_matches("go"),
                report["probes"]["uprobes"].as_u64().unwrap_or(0),
                wall[1],
                probes[1]
            );
        }
    }
    Ok(())
}

/// A program the attach benchmark starts and stops: a go-target-style one (`ready <pid>`, then
/// stdin) or a service, given a second to start.
enum Service {
    Target(Target),
    Process(std::process::Child),
}

impl Service {
    fn start(path: &Path, args: &[String]) -> Result<Self> {
        if args.is_empty() {
            return Ok(Service::Target(Target::start(path, &[])));
        }
        let child = std::process::Command::new(path)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        std::thread::sleep(Duration::from_secs(1));
        Ok(Service::Process(child))
    }

    fn pid(&self) -> u32 {
        match self {
            Service::Target(t) => t.pid,
            Service::Process(c) => c.id(),
        }
    }

    fn stop(self) {
        match self {
            Service::Target(t) => t.kill(),
            Service::Process(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
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
    cmd.args(["bench", "-q", "-p", "tracer", "--bench", "floor", "--"])
        .arg(t.pid.to_string());
    let mut floor = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running the floor benchmark")?;
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
    run_traced_with(target, args, extra, record, &|_| {})
}

/// [`run_traced`], calling `during` with maptrace's PID once the target runs its measured phase.
fn run_traced_with(
    target: &Path,
    args: &[&str],
    extra: &[&str],
    record: Option<&Path>,
    during: &dyn Fn(u32),
) -> Result<Traced> {
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
    during(m.pid());
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
        samples_seen: num(&report["sampling"]["samples_seen"]),
        final_rate: num(&report["sampling"]["memprofilerate"]),
    })
}

fn runs_of(traced: &[Traced]) -> Vec<&Run> {
    traced.iter().map(|t| &t.run).collect()
}

/// Polls a process's VmHWM (peak resident set) until it exits; returns the last value, in KiB.
fn peak_rss_watcher(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            {
                peak = kib;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// Copies of the demo server the agent bench traces.
const AGENT_TARGETS: usize = 10;

/// The agent's memory goal (sampled mode): this much for the agent itself…
const AGENT_OWN_MIB: f64 = 128.0;
/// …and this much per traced process.
const AGENT_PER_TARGET_MIB: f64 = 8.0;

pub fn agent_bench(layout: &Layout, minutes: u64) -> Result<()> {
    let demo = layout.go_targets_out().join(PRIMARY).join("demo");
    let dir = layout.cache().join("bench");
    std::fs::create_dir_all(&dir)?;
    let name = format!("demo-agentbench-{}", std::process::id());
    let copy = dir.join(&name);
    std::fs::copy(&demo, &copy).with_context(|| format!("copying {}", demo.display()))?;
    let duration = format!("-duration={}s", minutes * 60 + 60);
    let targets: Vec<Target> = (0..AGENT_TARGETS)
        .map(|_| Target::start(&copy, &[duration.as_str()]))
        .collect();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let log_path = dir.join("agent.log");
    let mut agent = std::process::Command::new(layout.maptrace_bin())
        .args(["agent", "--listen", &format!("127.0.0.1:{port}"), "--include", &name])
        // Sampled mode (the agent's default) at Go's default heap-profile rate, as in a service
        // that serves net/http/pprof; the demo servers never use the profiler, so their rate is 0.
        .args([
            "--sample-rate",
            &GO_DEFAULT_MEMPROFILERATE.to_string(),
            "--write-memprofilerate",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("starting maptrace agent")?;
    println!("agent: log in {}", log_path.display());
    println!("\nagent: tracing {AGENT_TARGETS} demo servers for {minutes} min in sampled mode at MemProfileRate {GO_DEFAULT_MEMPROFILERATE}, scraped every 15 s (Prometheus's default is 1 min; 15 s is common)");
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_seconds = |pid: u32| -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        Some((fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?) / ticks_per_second)
    };
    // Resident KiB: all, anonymous (the agent's heap), and file and shared pages (the BPF ring buffers, mapped
    // twice by the kernel, and the targets' executables, shared with them).
    let rss_kib = |pid: u32| -> Option<[u64; 3]> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))?
                .trim()
                .trim_end_matches(" kB")
                .parse()
                .ok()
        };
        Some([
            field("VmRSS:")?,
            field("RssAnon:")?,
            field("RssFile:")? + field("RssShmem:")?,
        ])
    };
    let start = std::time::Instant::now();
    let first_cpu = cpu_seconds(agent.id()).unwrap_or(0.0);
    let mut samples = Vec::new();
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(minutes * 60) {
        std::thread::sleep(Duration::from_secs(5));
        tick += 1;
        if tick.is_multiple_of(3) {
            let _ = scrape(port);
        }
        if !tick.is_multiple_of(2) {
            continue;
        }
        let (Some(cpu), Some(rss)) = (cpu_seconds(agent.id()), rss_kib(agent.id())) else {
            bail!("the agent exited")
        };
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
    let mib = |kib: u64| kib as f64 / 1024.0;
    let max_rss = samples.iter().map(|s| s.2[0]).max().unwrap_or(0);
    let last_rss = samples.last().map_or(0, |s| s.2[0]);
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>16}",
        "minute", "CPU (cores)", "RSS (MiB)", "heap", "rings and files"
    );
    let mut prev = (0.0, 0.0);
    for &(t, c, [all, anon, file]) in samples.iter().filter(|s| (s.0 as u64) % 60 < 10 && s.0 > 30.0) {
        println!(
            "{:>8.0} {:>12.3} {:>10.1} {:>10.1} {:>16.1}",
            t / 60.0,
            (c - prev.1) / (t - prev.0),
            mib(all),
            mib(anon),
            mib(file)
        );
        prev = (t, c);
    }
    println!(
        "agent over {:.1} min with {traced} targets: {:.3} cores on average, RSS {:.1} MiB at the end (max {:.1}); {series} series on /metrics",
        elapsed / 60.0,
        cpu / elapsed,
        mib(last_rss),
        mib(max_rss)
    );
    // Flat: the last minute's RSS against the second's (the first holds the attaches).
    let at_minute_two = samples.iter().find(|s| s.0 >= 120.0).map_or(last_rss, |s| s.2[0]);
    let goal = AGENT_OWN_MIB + AGENT_PER_TARGET_MIB * AGENT_TARGETS as f64;
    println!(
        "goal: at most {goal:.0} MiB ({AGENT_OWN_MIB:.0} + {AGENT_PER_TARGET_MIB:.0} per target), flat: max {:.1} MiB ({}), growth after minute 2: {:+.1} MiB",
        mib(max_rss),
        if mib(max_rss) <= goal { "met" } else { "NOT met" },
        mib(last_rss) - mib(at_minute_two)
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
