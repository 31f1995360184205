//! Finalizers that never run, and why (go-targets/finalizers/TRUTH.md): still reachable, reachable
//! from their own finalizer, queued behind a blocked finalizer, sharing a tiny block; and the
//! control, where every finalizer runs and nothing is reported; the same for cleanups (Go 1.24+).

use e2e::{target_path, trace_until_done_with, Target};
use serde_json::Value;

const N: u64 = 10;

/// maptrace's mode: the findings are the same in both (registrations, queueing and runs are
/// traced in sampled mode too; the target's MemProfileRate stays 0, so nothing is sampled).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Sampled,
}

fn run(go: &str, stripped: bool, scenario: &str, mode: Mode) -> (String, Value) {
    let bin = target_path(go, if stripped { "finalizers-stripped" } else { "finalizers" });
    let extra: &[&str] = match mode {
        Mode::Full => &[],
        Mode::Sampled => &["--mode", "sampled"],
    };
    let (done, report) = trace_until_done_with(
        Target::start(&bin, &[&format!("-scenario={scenario}"), &format!("-n={N}")]),
        extra,
    );
    assert_eq!(report["mode"], if mode == Mode::Full { "full" } else { "sampled" });
    (done, report)
}

/// The never-ran group of `kind` for `reason` at `site`, checked against the truth; returns its count.
fn row(report: &Value, kind: &str, reason: &str, object_type: &str, function: &str, site: &str) -> u64 {
    let rows = report["finalizers"]["never_ran"].as_array().expect("never_ran array");
    let found: Vec<&Value> = rows
        .iter()
        .filter(|r| r["kind"] == kind && r["reason"] == reason && r["registered_at"][0]["function"] == site)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} {reason} group at {site}: {:#}",
        report["finalizers"]
    );
    let r = found[0];
    assert_eq!(r["object_type"], object_type, "{r:#}");
    assert_eq!(r["function"], function, "{r:#}");
    assert!(r["age_cycles"].as_u64().unwrap() >= 2, "{r:#}");
    r["count"].as_u64().unwrap()
}

/// What holds the objects of the never-ran group of `kind` for `reason` at `site` (the heap walk's chain):
/// the root's kind and name, and the objects found held by it; the chain must reach every object searched.
fn holder(report: &Value, kind: &str, reason: &str, site: &str) -> (String, String, u64) {
    let rows = report["finalizers"]["never_ran"].as_array().expect("never_ran array");
    let r = rows
        .iter()
        .find(|r| r["kind"] == kind && r["reason"] == reason && r["registered_at"][0]["function"] == site)
        .expect("the group");
    let h = &r["held_by"];
    assert_eq!(h["unreached"], 0, "{r:#}");
    let root = |k: &str| {
        h["root"][k]
            .as_str()
            .unwrap_or_else(|| panic!("held_by.root.{k}: {r:#}"))
            .to_string()
    };
    (root("kind"), root("name"), h["objects"].as_u64().unwrap())
}

/// Held by the package-level variable `want` (the chain shown: the most common shape; a classic map caught
/// growing holds some objects in its old buckets, another shape). Without DWARF the variable has no name (the
/// report gives its section and address).
fn assert_global(kind: &str, name: &str, objects: u64, want: &str, stripped: bool) {
    assert_eq!(kind, "global");
    assert!(objects >= 1, "{objects}");
    if stripped {
        assert!(name.starts_with("bss 0x") || name.starts_with("data 0x"), "{name}");
    } else {
        assert_eq!(name, want);
    }
}

/// The one goroutine seen running a `kind` (finalizer or cleanup) last.
fn runner<'a>(f: &'a Value, kind: &str) -> &'a Value {
    let found: Vec<&Value> = f["runners"]
        .as_array()
        .expect("runners array")
        .iter()
        .filter(|r| r["last_started_kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one goroutine last ran a {kind}: {f:#}");
    found[0]
}

fn check(go: &str, stripped: bool) {
    check_mode(go, stripped, Mode::Full);
}

fn check_sampled(go: &str, stripped: bool) {
    check_mode(go, stripped, Mode::Sampled);
}

fn check_mode(go: &str, stripped: bool, mode: Mode) {
    // held, cycle, tiny and blocked in one process: one finding of each kind, N each.
    let (done, report) = run(go, stripped, "all", mode);
    assert_eq!(done, format!("done registered={N} ran=1"));
    let f = &report["finalizers"];
    assert_eq!(f["counts"]["registered"], 4 * N + 1, "{f:#}");
    let fin = |reason, object_type, function, site| row(&report, "finalizer", reason, object_type, function, site);
    assert_eq!(
        fin("still_reachable", "main.Resource", "main.finalize", "main.openHeld"),
        N
    );
    assert_eq!(
        fin(
            "reachable_from_own_finalizer",
            "main.Resource",
            "main.openCycles.func1",
            "main.openCycles"
        ),
        N
    );
    assert_eq!(
        fin(
            "queued_behind_blocked_finalizer",
            "main.Resource",
            "main.finalize",
            "main.dropFinalized"
        ),
        N
    );
    // What holds them: the global map, and each resource's own finalizer closure.
    let (kind, name, objects) = holder(&report, "finalizer", "still_reachable", "main.openHeld");
    assert_global(&kind, &name, objects, "main.registry", stripped);
    let held = holder(&report, "finalizer", "reachable_from_own_finalizer", "main.openCycles");
    assert_eq!(held, ("finalizer".into(), "main.openCycles.func1".into(), N));
    // TRUTH.md: a tiny value can rarely land in a block of its own (the goroutine changed P, or the
    // allocation cache was flushed, between it and its kept neighbour); that block dies and its
    // finalizer is queued, here behind the blocked one. Every tiny finalizer is one or the other.
    let tiny = fin("tiny_block_shared", "int64", "main.finalizeTiny", "main.openTiny");
    let tiny_queued = f["never_ran"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["reason"] == "queued_behind_blocked_finalizer" && r["registered_at"][0]["function"] == "main.openTiny"
        })
        .map(|r| r["count"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(tiny + tiny_queued, N, "{f:#}");
    assert!(tiny >= N - 2, "{f:#}");
    let fing = runner(f, "finalizer");
    assert_eq!(fing["last_started"], "main.blockingFinalizer", "{f:#}");
    assert_eq!(fing["state"], "chan receive", "{f:#}");
    let blocked = &fing["blocked"];
    assert_eq!(blocked["object_type"], "main.Resource", "{f:#}");
    assert_eq!(blocked["queue_depth"].as_u64(), Some(N + tiny_queued), "{f:#}");

    let (done, report) = run(go, stripped, "allrun", mode);
    assert_eq!(done, format!("done registered={N} ran={N}"));
    let f = &report["finalizers"];
    assert_eq!(
        f["never_ran"],
        serde_json::json!([]),
        "the control has no finding: {f:#}"
    );
    let fing = runner(f, "finalizer");
    assert_eq!(fing["blocked"], Value::Null, "{f:#}");
    assert_eq!(fing["state"], "finalizer wait", "idle once every finalizer ran: {f:#}");
    assert_eq!(fing["last_started"], "main.finalize", "{f:#}");
    assert_eq!(
        (f["counts"]["registered"].as_u64(), f["counts"]["started"].as_u64()),
        (Some(N), Some(N)),
        "{f:#}"
    );
}

/// The cleanup variants (Go 1.24+): held, cycle (through an owner the cleanup captures) and
/// blocked in one process, then the control.
fn check_cleanups(go: &str, stripped: bool) {
    check_cleanups_mode(go, stripped, Mode::Full);
}

fn check_cleanups_sampled(go: &str, stripped: bool) {
    check_cleanups_mode(go, stripped, Mode::Sampled);
}

fn check_cleanups_mode(go: &str, stripped: bool, mode: Mode) {
    let (done, report) = run(go, stripped, "call", mode);
    assert_eq!(done, format!("done registered={N} ran=1"));
    let f = &report["finalizers"];
    let c = &f["counts"];
    assert_eq!(
        (c["cleanups_registered"].as_u64(), c["registered"].as_u64()),
        (Some(3 * N + 1), Some(0)),
        "{f:#}"
    );
    // A cleanup's registration does not carry the object's type: full mode knows it from the
    // traced allocation; sampled mode (nothing sampled here) does not.
    let object_type = if mode == Mode::Full { "main.Resource" } else { "?" };
    let cleanup = |reason, function, site| row(&report, "cleanup", reason, object_type, function, site);
    assert_eq!(
        cleanup("still_reachable", "main.cleanupDone", "main.openHeldCleanups"),
        N
    );
    if mode == Mode::Full {
        assert_eq!(
            cleanup(
                "reachable_from_own_finalizer",
                "main.openCycleCleanups.func1",
                "main.openCycleCleanups"
            ),
            N
        );
    } else {
        // The cycle goes through an owner object the cleanup captures (1.26+ refuses a direct
        // capture); sampled mode follows pointers only through objects it tracked, none here, so
        // it names these still reachable (TRUTH.md's tolerance).
        assert_eq!(
            cleanup(
                "still_reachable",
                "main.openCycleCleanups.func1",
                "main.openCycleCleanups"
            ),
            N
        );
    }
    assert_eq!(
        cleanup(
            "queued_behind_blocked_finalizer",
            "main.cleanupDone",
            "main.dropCleaned"
        ),
        N
    );
    assert_eq!(f["never_ran"].as_array().unwrap().len(), 3, "nothing else: {f:#}");
    // What holds them: the global map; the cleanup's closure, through the owner it captured.
    let (kind, name, objects) = holder(&report, "cleanup", "still_reachable", "main.openHeldCleanups");
    assert_global(&kind, &name, objects, "main.registry", stripped);
    let cycle = if mode == Mode::Full {
        "reachable_from_own_finalizer"
    } else {
        "still_reachable"
    };
    let held = holder(&report, "cleanup", cycle, "main.openCycleCleanups");
    assert_eq!(held, ("cleanup".into(), "main.openCycleCleanups.func1".into(), N));
    let cleaner = runner(f, "cleanup");
    // Go 1.24 runs cleanups on the finalizer goroutine, later releases on goroutines of their own.
    assert_eq!(
        cleaner["runs"],
        if go.starts_with("1.24") {
            "finalizers and cleanups"
        } else {
            "cleanups"
        },
        "{f:#}"
    );
    assert_eq!(cleaner["last_started"], "main.blockingCleanup", "{f:#}");
    assert_eq!(cleaner["state"], "chan receive", "{f:#}");
    assert_eq!(cleaner["blocked"]["queue_depth"].as_u64(), Some(N), "{f:#}");
    assert_eq!(cleaner["blocked"]["object_type"], object_type, "{f:#}");

    let (done, report) = run(go, stripped, "callrun", mode);
    assert_eq!(done, format!("done registered={N} ran={N}"));
    let f = &report["finalizers"];
    assert_eq!(
        f["never_ran"],
        serde_json::json!([]),
        "the control has no finding: {f:#}"
    );
    let c = &f["counts"];
    assert_eq!(
        (
            c["cleanups_registered"].as_u64(),
            c["cleanups_queued"].as_u64(),
            c["cleanups_started"].as_u64()
        ),
        (Some(N), Some(N), Some(N)),
        "{f:#}"
    );
    let cleaner = runner(f, "cleanup");
    assert_eq!(cleaner["blocked"], Value::Null, "{f:#}");
    assert_eq!(cleaner["last_started"], "main.cleanupDone", "{f:#}");
    assert_eq!(
        cleaner["state"],
        if go.starts_with("1.24") {
            "finalizer wait"
        } else {
            "cleanup wait"
        },
        "idle: {f:#}"
    );
}

e2e::go_matrix!(super::check);

/// AddCleanup exists since Go 1.24.
mod cleanups {
    e2e::go_matrix!(since "1.24"; super::super::check_cleanups);
}

/// The same findings in sampled mode.
mod sampled {
    e2e::go_matrix!(super::super::check_sampled);

    mod cleanups {
        e2e::go_matrix!(since "1.24"; super::super::super::check_cleanups_sampled);
    }
}
