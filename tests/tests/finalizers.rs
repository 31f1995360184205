//! Finalizers that never run, and why (go-targets/finalizers/TRUTH.md): still reachable, reachable
//! from their own finalizer, queued behind a blocked finalizer, sharing a tiny block; and the
//! control, where every finalizer runs and nothing is reported.

use e2e::{target_path, trace_until_done, Target};
use serde_json::Value;

const N: u64 = 10;

fn run(go: &str, stripped: bool, scenario: &str) -> (String, Value) {
    let bin = target_path(go, if stripped { "finalizers-stripped" } else { "finalizers" });
    trace_until_done(Target::start(&bin, &[&format!("-scenario={scenario}"), &format!("-n={N}")]))
}

/// The never-ran group for `reason` at `site`, checked against the truth; returns its count.
fn row(report: &Value, reason: &str, object_type: &str, finalizer: &str, site: &str) -> u64 {
    let rows = report["finalizers"]["never_ran"].as_array().expect("never_ran array");
    let found: Vec<&Value> =
        rows.iter().filter(|r| r["reason"] == reason && r["registered_at"][0]["function"] == site).collect();
    assert_eq!(found.len(), 1, "one {reason} group at {site}: {:#}", report["finalizers"]);
    let r = found[0];
    assert_eq!(r["object_type"], object_type, "{r:#}");
    assert_eq!(r["finalizer"], finalizer, "{r:#}");
    assert!(r["age_cycles"].as_u64().unwrap() >= 2, "{r:#}");
    r["count"].as_u64().unwrap()
}

fn check(go: &str, stripped: bool) {
    // held, cycle, tiny and blocked in one process: one finding of each kind, N each.
    let (done, report) = run(go, stripped, "all");
    assert_eq!(done, format!("done registered={N} ran=1"));
    let f = &report["finalizers"];
    assert_eq!(f["counts"]["registered"], 4 * N + 1, "{f:#}");
    assert_eq!(row(&report, "still_reachable", "main.Resource", "main.finalize", "main.openHeld"), N);
    assert_eq!(row(&report, "reachable_from_own_finalizer", "main.Resource", "main.openCycles.func1", "main.openCycles"), N);
    assert_eq!(row(&report, "queued_behind_blocked_finalizer", "main.Resource", "main.finalize", "main.dropFinalized"), N);
    // TRUTH.md: a tiny value can rarely land in a block of its own (the goroutine changed P, or the
    // allocation cache was flushed, between it and its kept neighbour); that block dies and its
    // finalizer is queued, here behind the blocked one. Every tiny finalizer is one or the other.
    let tiny = row(&report, "tiny_block_shared", "int64", "main.finalizeTiny", "main.openTiny");
    let tiny_queued = f["never_ran"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "queued_behind_blocked_finalizer" && r["registered_at"][0]["function"] == "main.openTiny")
        .map(|r| r["count"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(tiny + tiny_queued, N, "{f:#}");
    assert!(tiny >= N - 2, "{f:#}");
    let blocked = &f["blocked"];
    assert_eq!(blocked["finalizer"], "main.blockingFinalizer", "{f:#}");
    assert_eq!(blocked["object_type"], "main.Resource", "{f:#}");
    assert_eq!(blocked["state"], "chan receive", "{f:#}");
    assert_eq!(blocked["queue_depth"].as_u64(), Some(N + tiny_queued), "{f:#}");
    assert_eq!(f["goroutine"]["state"], "chan receive", "{f:#}");
    assert_eq!(f["goroutine"]["last_started"], "main.blockingFinalizer", "{f:#}");

    let (done, report) = run(go, stripped, "allrun");
    assert_eq!(done, format!("done registered={N} ran={N}"));
    let f = &report["finalizers"];
    assert_eq!(f["never_ran"], serde_json::json!([]), "the control has no finding: {f:#}");
    assert_eq!(f["blocked"], Value::Null, "{f:#}");
    assert_eq!(f["goroutine"]["state"], "finalizer wait", "idle once every finalizer ran: {f:#}");
    assert_eq!(f["goroutine"]["last_started"], "main.finalize", "{f:#}");
    assert_eq!((f["counts"]["registered"].as_u64(), f["counts"]["started"].as_u64()), (Some(N), Some(N)), "{f:#}");
}

e2e::go_matrix!(super::check);
