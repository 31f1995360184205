//! Object lifetimes across GC cycles (go-targets/cache and churn, TRUTH.md): the cache's maps are
//! retained and grow every cycle; churn's garbage is all freed and nothing of main's is retained.
//! GC cycle numbers are the target's own, as `GODEBUG=gctrace=1` prints them.

use std::process::Command;

use e2e::{target_path, trace_measured_phase, trace_measured_phase_with, Target};
use serde_json::Value;

const ROUNDS: u64 = 5;
const PER_ROUND: u64 = 20;
const SETTLE: u64 = 2;

fn retained_at<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["retained"]
        .as_array()
        .expect("retained array")
        .iter()
        .filter(|r| r["stack"][0]["function"] == function)
        .collect()
}

fn main_retained(report: &Value) -> Vec<String> {
    report["retained"]
        .as_array()
        .expect("retained array")
        .iter()
        .filter_map(|r| r["stack"][0]["function"].as_str())
        .filter(|f| f.starts_with("main."))
        .map(String::from)
        .collect()
}

/// The `gc N` numbers gctrace printed.
fn gctrace_cycles(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("gc ")?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn cache(go: &str, stripped: bool) {
    let bin = target_path(go, if stripped { "cache-stripped" } else { "cache" });
    let trace_file = std::env::temp_dir().join(format!("maptrace-gctrace-{}-{go}-{stripped}", std::process::id()));
    let mut cmd = Command::new(&bin);
    cmd.args([
        format!("-rounds={ROUNDS}"),
        format!("-per-round={PER_ROUND}"),
        format!("-settle={SETTLE}"),
    ])
    .env("GODEBUG", "gctrace=1")
    .stderr(std::fs::File::create(&trace_file).unwrap());
    let traced = trace_measured_phase(Target::start_command(&mut cmd));
    let gctrace = std::fs::read_to_string(&trace_file).unwrap();
    let _ = std::fs::remove_file(&trace_file);
    assert!(traced.target_status.success());
    let report = traced.report;

    let rows = retained_at(&report, "main.addEntries");
    assert_eq!(
        rows.len(),
        1,
        "one retained row at main.addEntries: {:#}",
        report["retained"]
    );
    let row = rows[0];
    assert_eq!(row["kind"], "map", "{row:#}");
    assert_eq!(row["type"], "map[string]int", "{row:#}");
    let maps = ROUNDS * PER_ROUND;
    assert_eq!(row["retained_count"], maps, "{row:#}");
    assert_eq!(row["live_count"], maps, "{row:#}");
    assert_eq!(row["allocated_count"], maps, "{row:#}");
    assert_eq!(row["freed_count"], 0, "{row:#}");
    assert_eq!(row["trend"], "growing", "{row:#}");
    assert!(
        row["survived_cycles_max"].as_u64().unwrap() >= ROUNDS + SETTLE - 1,
        "{row:#}"
    );
    assert_eq!(
        main_retained(&report),
        vec!["main.addEntries"],
        "{:#}",
        report["retained"]
    );

    let gc = &report["gc"];
    let (first, last) = (gc["first_cycle"].as_u64().unwrap(), gc["last_cycle"].as_u64().unwrap());
    assert!(gc["cycles_seen"].as_u64().unwrap() >= ROUNDS + SETTLE, "{gc:#}");
    assert_eq!(
        last - first + 1,
        gc["cycles_seen"].as_u64().unwrap(),
        "consecutive cycle numbers: {gc:#}"
    );
    // gctrace prints after a cycle ends; the target may exit before the last line is out.
    let printed: Vec<u64> = gctrace_cycles(&gctrace).into_iter().filter(|&c| c >= first).collect();
    assert_eq!(
        printed.first(),
        Some(&first),
        "gctrace printed {printed:?}, maptrace saw {first}..{last}"
    );
    assert!(
        printed.iter().all(|c| (first..=last).contains(c)),
        "gctrace printed {printed:?}, maptrace saw {first}..{last}"
    );
    assert!(
        printed.len() as u64 >= last - first,
        "gctrace printed {printed:?}, maptrace saw {first}..{last}"
    );
}

fn churn(go: &str, stripped: bool) {
    let bin = target_path(go, if stripped { "churn-stripped" } else { "churn" });
    let traced = trace_measured_phase(Target::start(&bin, &["-rounds=5", "-per-round=50"]));
    assert!(traced.target_status.success());
    let report = traced.report;
    assert_eq!(
        main_retained(&report),
        Vec::<String>::new(),
        "churn retains nothing: {:#}",
        report["retained"]
    );
    assert!(report["gc"]["cycles_seen"].as_u64().unwrap() >= 6, "{:#}", report["gc"]);
    assert!(report["gc"]["spans_swept"].as_u64().unwrap() > 0, "{:#}", report["gc"]);
}

fn check(go: &str, stripped: bool) {
    cache(go, stripped);
    churn(go, stripped);
}

/// Sampled mode at one sample per 4 KiB (the targets never use runtime.MemProfile, so their
/// rate is 0 until maptrace sets it).
const SAMPLED: &[&str] = &["--mode", "sampled", "--sample-rate", "4096", "--write-memprofilerate"];

/// TRUTH.md's tolerance for sampled mode: the cache's site is retained and growing, its bytes
/// estimated within half of what full mode measures on the same binary; counts are heap blocks
/// (a map may have several; a header the caller allocates is an "object" row of the same site)
/// and the type is not known. More maps than in full mode: up to Go 1.23 the P that ran `main`
/// first samples after ~512 KiB more (its countdown was drawn before the rate was 0). Churn
/// still retains nothing.
fn check_sampled(go: &str, stripped: bool) {
    let name = if stripped { "cache-stripped" } else { "cache" };
    let args = [
        format!("-rounds={ROUNDS}"),
        "-per-round=200".to_string(),
        format!("-settle={SETTLE}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let retained_bytes = |report: &Value| -> f64 {
        retained_at(report, "main.addEntries")
            .iter()
            .map(|r| r["retained_bytes"].as_f64().unwrap())
            .sum()
    };
    let full = trace_measured_phase(Target::start(&target_path(go, name), &args)).report;
    let exact = retained_bytes(&full);
    let traced = trace_measured_phase_with(Target::start(&target_path(go, name), &args), SAMPLED);
    assert!(traced.target_status.success());
    let report = traced.report;
    assert_eq!(report["mode"], "sampled");
    let sampling = &report["sampling"];
    assert_eq!(
        (
            sampling["memprofilerate"].as_u64(),
            sampling["set_by_maptrace_from"].as_u64()
        ),
        (Some(4096), Some(0)),
        "{sampling:#}"
    );
    let maps: Vec<&Value> = retained_at(&report, "main.addEntries")
        .into_iter()
        .filter(|r| r["kind"] == "map")
        .collect();
    assert_eq!(
        maps.len(),
        1,
        "one retained map row at main.addEntries: {:#}",
        report["retained"]
    );
    let row = maps[0];
    assert_eq!(row["type"], "map (type not sampled)", "{row:#}");
    assert_eq!(row["trend"], "growing", "{row:#}");
    assert!(row["samples"].as_u64().unwrap() > 0, "{row:#}");
    let estimate = retained_bytes(&report);
    assert!(
        (0.5 * exact..=1.5 * exact).contains(&estimate),
        "estimated {estimate} retained bytes, full mode measured {exact}: {:#}",
        report["retained"]
    );
    assert!(
        main_retained(&report).iter().all(|f| f == "main.addEntries"),
        "{:#}",
        report["retained"]
    );

    let bin = target_path(go, if stripped { "churn-stripped" } else { "churn" });
    let traced = trace_measured_phase_with(Target::start(&bin, &["-rounds=5", "-per-round=50"]), SAMPLED);
    assert!(traced.target_status.success());
    let report = traced.report;
    assert!(
        report["sampling"]["samples_seen"].as_u64().unwrap() > 0,
        "{:#}",
        report["sampling"]
    );
    assert_eq!(
        main_retained(&report),
        Vec::<String>::new(),
        "churn retains nothing: {:#}",
        report["retained"]
    );
}

e2e::go_matrix!(super::check);

mod sampled {
    e2e::go_matrix!(super::super::check_sampled);
}
