//! Sampled mode's rate governor (`--write-memprofilerate`): on a target that samples far more
//! allocations per second than the trap budget, maptrace raises `runtime.MemProfileRate`, says
//! so in the report, scales each sample at the rate it was taken at, and puts the target's own
//! rate back when it detaches (go-targets/allocbench/TRUTH.md).

use e2e::{target_path, Maptrace, Target};

/// The target's own rate, Go's default for a program that uses the heap profiler.
const RATE: u64 = 524_288;

fn check(go: &str, stripped: bool) {
    let bin = target_path(go, if stripped { "allocbench-stripped" } else { "allocbench" });
    // The target allocates for 4 s; maptrace stops after 2 s, while it still runs.
    let mut target = Target::start(
        &bin,
        &["-duration=4s", "-goroutines=2", &format!("-memprofilerate={RATE}")],
    );
    let pid = target.pid.to_string();
    let mut maptrace = Maptrace::start(&[
        "--pid",
        &pid,
        "--json",
        "--no-live",
        "-d",
        "2s",
        "--mode",
        "sampled",
        "--write-memprofilerate",
        "--trap-budget",
        "200",
    ]);
    maptrace.wait_attached();
    target.go();
    let outcome = maptrace.finish();
    assert!(outcome.status.success(), "maptrace failed: {outcome:#?}");
    let done = target.wait_done();
    let (_, status) = target.finish();
    assert!(status.success(), "the target failed: {status}");

    let report = outcome.json();
    let sampling = &report["sampling"];
    let governor = &sampling["governor"];
    assert_eq!(
        governor["floor"].as_u64(),
        Some(RATE),
        "never below the target's own rate: {sampling:#}"
    );
    assert!(
        governor["changes"].as_u64().unwrap() >= 1,
        "the rate was raised: {sampling:#}"
    );
    assert!(governor["highest"].as_u64().unwrap() > RATE, "{sampling:#}");
    assert!(
        sampling["memprofilerate"].as_u64().unwrap() > RATE,
        "the rate in force at the report: {sampling:#}"
    );
    assert_eq!(sampling["set_by_maptrace_from"].as_u64(), Some(RATE), "{sampling:#}");
    assert!(
        done.split_whitespace().any(|kv| kv == format!("memprofilerate={RATE}")),
        "maptrace put the target's rate back at detach: {done}"
    );
    // Samples taken at each rate are scaled at that rate: the estimate stays near the truth,
    // about half the allocations of the target's 4 s. The budget leaves few samples, each standing for up to
    // rate/size allocations (small objects weigh most): loose bounds. At a budget of 50 one run in a few dozen
    // fell outside them (3.6x); 200 keeps the rate raised and the spread smaller.
    let mallocs: f64 = done
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("mallocs="))
        .unwrap()
        .parse()
        .unwrap();
    let estimate = report["totals"]["heap_allocations"].as_f64().unwrap();
    assert!(
        (0.4 * mallocs / 2.0..=2.5 * mallocs / 2.0).contains(&estimate),
        "estimated {estimate} allocations in 2 s; the target made {mallocs} in 4 s: {sampling:#}"
    );
}

e2e::go_matrix!(super::check);
