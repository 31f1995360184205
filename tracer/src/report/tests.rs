//! Reports built by hand, written in every format and checked against the JSON Schema.

use super::*;
use crate::lifecycle::finalizers::{Blocked, FinalizerCounts, Mechanism, NeverRan, NeverRanRow, RunnerGoroutine};
use crate::lifecycle::retention::RetainedRow;
use crate::lifecycle::sites::{FrameRow, ValueKind};

pub(crate) fn report() -> Report {
    Report {
        maptrace_version: "0.1.0",
        target: TargetInfo {
            pid: 42,
            binary: "/bin/demo".into(),
            go_version: "go1.24.11".into(),
            experiments: vec![],
            stripped: true,
        },
        mode: crate::probes::sampling::Mode::Full,
        sampling: None,
        duration_seconds: 1.5,
        ended_by: EndReason::TargetExited,
        probes: ProbeInfo {
            functions: vec!["runtime.mallocgc".into()],
            uprobes: 4,
            attach_seconds: 0.2,
        },
        totals: Totals {
            heap_allocations: 3,
            heap_bytes: 5000,
            records: 4,
            samples: 0,
        },
        lost_records: 0,
        sites: vec![SiteRow {
            kind: ValueKind::Map,
            type_name: "map[string]*main.Session".into(),
            count: 3,
            bytes: 5000,
            stack: vec![
                FrameRow {
                    function: "main.put".into(),
                    file: "/src/main.go".into(),
                    line: 12,
                    pc: "0x1".into(),
                },
                FrameRow {
                    function: "main.main".into(),
                    file: "/src/main.go".into(),
                    line: 30,
                    pc: "0x2".into(),
                },
            ],
        }],
        gc: GcInfo {
            retain_cycles: 2,
            cycles_seen: 5,
            first_cycle: Some(3),
            last_cycle: Some(7),
            ..GcInfo::default()
        },
        retained: vec![RetainedRow {
            kind: ValueKind::Map,
            type_name: "map[string]*main.Session".into(),
            retained_count: 2,
            retained_bytes: 4000,
            live_count: 3,
            live_bytes: 5000,
            allocated_count: 3,
            allocated_bytes: 5000,
            freed_count: 0,
            samples: None,
            survived_cycles_p50: 3,
            survived_cycles_max: 4,
            oldest_age_seconds: 1.5,
            dead_lifetime_p50_seconds: None,
            trend: "growing",
            live_by_cycle: vec![(5, 1, 1000), (6, 2, 3000), (7, 3, 5000)],
            evicted_count: 0,
            held_by: None,
            also_held_by: Vec::new(),
            site: 1,
            stack: vec![FrameRow {
                function: "main.put".into(),
                file: "/src/main.go".into(),
                line: 12,
                pc: "0x1".into(),
            }],
        }],
        chains: None,
        distributions: Default::default(),
        finalizers: FinalizerSection {
            counts: FinalizerCounts {
                registered: 3,
                ..FinalizerCounts::default()
            },
            pending: 3,
            never_ran: vec![
                NeverRanRow {
                    kind: Mechanism::Finalizer,
                    reason: NeverRan::ReachableFromOwnFinalizer,
                    count: 3,
                    object_type: "main.Resource".into(),
                    function: "main.open.func1".into(),
                    age_cycles: 4,
                    age_seconds: 0.5,
                    registered_at: vec![FrameRow {
                        function: "main.open".into(),
                        file: "/src/main.go".into(),
                        line: 40,
                        pc: "0x3".into(),
                    }],
                    held_by: None,
                    objects: Vec::new(),
                },
                NeverRanRow {
                    kind: Mechanism::Cleanup,
                    reason: NeverRan::QueuedBehindBlockedFinalizer,
                    count: 5,
                    object_type: "main.File".into(),
                    function: "main.closeFile".into(),
                    age_cycles: 2,
                    age_seconds: 0.2,
                    registered_at: vec![FrameRow {
                        function: "main.openFile".into(),
                        file: "/src/main.go".into(),
                        line: 50,
                        pc: "0x4".into(),
                    }],
                    held_by: None,
                    objects: Vec::new(),
                },
            ],
            runners: vec![RunnerGoroutine {
                goid: 18,
                runs: "cleanups",
                state: "chan receive".into(),
                last_started: "main.stuckCleanup".into(),
                last_started_kind: Mechanism::Cleanup,
                last_started_seconds_ago: 1.25,
                blocked: Some(Blocked {
                    object_type: "main.File".into(),
                    blocked_seconds: 1.25,
                    queue_depth: 5,
                }),
            }],
        },
    }
}

#[test]
fn text_names_everything_a_reader_needs() {
    let mut out = Vec::new();
    report().write_text(&mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert!(s.contains("PID 42 /bin/demo (go1.24.11, stripped), full mode"), "{s}");
    assert!(s.contains("map[string]*main.Session"), "{s}");
    assert!(s.contains("4.9 KiB"), "{s}");
    assert!(s.contains("main.put /src/main.go:12"), "{s}");
    assert!(s.contains("← main.main /src/main.go:30"), "{s}");
    assert!(s.contains("Retained: alive after ≥ 2 GC cycles"), "{s}");
    assert!(s.contains("GC cycles 3–7 seen"), "{s}");
    assert!(s.contains("2 (3.9 KiB)"), "{s}");
    assert!(s.contains("growing"), "{s}");
    assert!(s.contains("gc5:1 gc6:2 gc7:3"), "{s}");
    assert!(s.contains("3 finalizer never ran: reachable from its own finalizer or cleanup (a cycle: it can never run) — main.Resource with finalizer main.open.func1, 4 cycles (0.5 s) after SetFinalizer at main.open /src/main.go:40"), "{s}");
    assert!(
        s.contains(
            "5 cleanup never ran: queued behind a blocked finalizer or cleanup — main.File with cleanup main.closeFile"
        ),
        "{s}"
    );
    assert!(
        s.contains("goroutine 18 (runs cleanups): chan receive; last started cleanup main.stuckCleanup 1.2 s ago"),
        "{s}"
    );
    assert!(s.contains("blocked for 1.2 s in cleanup main.stuckCleanup (object main.File, state: chan receive), 5 queued behind it"), "{s}");
}

/// The report with a chain on its retained row.
pub(crate) fn held_report() -> Report {
    let mut r = report();
    r.retained[0].held_by = Some(crate::heap::HeldBy {
        root: crate::heap::Root {
            kind: "global",
            name: "main.cache".into(),
            type_name: Some("map[string]*main.Session".into()),
            goroutine: None,
            blocked_ms: None,
        },
        hops: vec![
            crate::heap::HopRow {
                offset: 0,
                offset_varies: false,
                via: None,
                size: 48,
                type_name: None,
                slice: None,
                map_len: Some(2),
                map_entry: None,
            },
            crate::heap::HopRow {
                offset: 0x28,
                offset_varies: true,
                via: Some("[…].elem".into()),
                size: 2000,
                type_name: Some("map[string]*main.Session".into()),
                slice: None,
                map_len: None,
                map_entry: Some(crate::heap::MapEntry {
                    key: "\"u-17\"".into(),
                    part: crate::heap::EntryPart::Value,
                    keys: 2,
                }),
            },
        ],
        objects: 2,
        bytes: 4000,
        searched: 3,
        unreached: 1,
        precise: false,
        goroutines: 0,
        diagnosis: Some(crate::heap::Diagnosis {
            kind: "map_kept_storage",
            text: "the map has 2 entries but keeps 3.9 KiB".into(),
        }),
    });
    // A second shape: the third object, from a goroutine blocked for 3.2 s.
    let mut other = r.retained[0].held_by.clone().unwrap();
    other.root = crate::heap::Root {
        kind: "goroutine",
        name: "main.worker".into(),
        type_name: None,
        goroutine: Some((18, "chan receive".into())),
        blocked_ms: Some(3200),
    };
    (other.objects, other.bytes, other.diagnosis) = (1, 2000, None);
    other.hops.truncate(1);
    r.retained[0].also_held_by = vec![other];
    r
}

#[test]
fn text_says_what_holds_a_retained_row() {
    let mut out = Vec::new();
    held_report().write_text(&mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert!(
        s.contains("held by main.cache (map[string]*main.Session) → +0x0 → 48 B → […].elem (value for key \"u-17\", 1 of 2 keys) → 2.0 KiB map[string]*main.Session  (2 of 3 objects searched (3.9 KiB), 1 not reached, conservative)"),
        "{s}"
    );
    assert!(s.contains("also held by goroutine 18 (chan receive, ≥ 3.2 s) main.worker → +0x0 → 48 B  (1 of 3 objects searched (2.0 KiB), 1 not reached, conservative)"), "{s}");
}

#[test]
fn json_is_one_document_with_the_rows() {
    let mut out = Vec::new();
    report().write_json(&mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["sites"][0]["kind"], "map");
    assert_eq!(v["sites"][0]["type"], "map[string]*main.Session");
    assert_eq!(v["sites"][0]["stack"][0]["function"], "main.put");
    assert_eq!(v["target"]["go_version"], "go1.24.11");
    assert_eq!(v["lost_records"], 0);
    assert_eq!(v["retained"][0]["retained_count"], 2);
    assert_eq!(v["retained"][0]["trend"], "growing");
    assert_eq!(v["gc"]["last_cycle"], 7);
    assert_eq!(
        v["finalizers"]["never_ran"][0]["reason"],
        "reachable_from_own_finalizer"
    );
    assert_eq!(v["finalizers"]["never_ran"][1]["kind"], "cleanup");
    assert_eq!(v["finalizers"]["runners"][0]["blocked"]["queue_depth"], 5);
}

/// docs/report.schema.json, compiled (checked against the 2020-12 meta-schema on the way).
fn schema() -> (serde_json::Value, jsonschema::Validator) {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/report.schema.json")).expect("the schema is JSON");
    let validator = jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|e| panic!("docs/report.schema.json is not a 2020-12 schema: {e}"));
    (schema, validator)
}

fn json(r: &Report) -> serde_json::Value {
    let mut out = Vec::new();
    r.write_json(&mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

/// Every way `v` breaks the schema, one per line with where.
fn schema_errors(validator: &jsonschema::Validator, v: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The held report with every optional key present: sampled mode with a governor, a chain search that
/// says why it paused and what it lacked, a goroutine root, a slice hop, a finalizer group's chain.
fn every_key_report() -> Report {
    let mut r = held_report();
    r.mode = crate::probes::sampling::Mode::Sampled;
    r.sampling = Some(crate::probes::sampling::SamplingInfo {
        rate: crate::probes::sampling::RateInfo {
            memprofilerate: Some(4096),
            set_by_maptrace_from: Some(524288),
            governor: Some(crate::probes::sampling::GovernorInfo {
                floor: 4096,
                highest: 65536,
                changes: 3,
            }),
        },
        budget_per_second: 500,
        samples_seen: 1200,
        samples_thinned: 200,
        scaling: crate::probes::sampling::SCALING,
    });
    r.totals.samples = 1000;
    r.chains = Some(ChainSearch {
        roots: "package-level variables and goroutine stacks",
        precision: "typed where DWARF describes the value, by the runtime's heap bitmaps for other heap objects and its stack maps for goroutine stacks, conservative elsewhere (frames without maps)",
        max_pause_seconds: 0.01,
        max_depth: 100,
        paused_seconds: 0.0,
        walk_within_pause: false,
        pause_failed: Some("another tracer holds it".into()),
        unavailable: Some("no DWARF".into()),
        walk: crate::heap::WalkStats::default(),
    });
    let row = &mut r.retained[0];
    row.samples = Some(2);
    row.dead_lifetime_p50_seconds = Some(0.25);
    let held = row.held_by.as_mut().unwrap();
    held.root.goroutine = Some((18, "chan receive".into()));
    held.hops[1].slice = Some(crate::heap::SliceView {
        len_bytes: 16,
        cap_bytes: 2000,
    });
    r.finalizers.never_ran[0].held_by = r.retained[0].held_by.clone();
    r.distributions.size_bytes = crate::lifecycle::Buckets {
        upper_bounds: vec![16.0, f64::INFINITY],
        counts: vec![2, 1],
        sum: 5000.0,
        count: 3,
    };
    r
}

#[test]
fn json_matches_the_schema() {
    let (_, validator) = schema();
    for (name, r) in [
        ("report", report()),
        ("held_report", held_report()),
        ("every_key_report", every_key_report()),
    ] {
        let v = json(&r);
        let errors = schema_errors(&validator, &v);
        assert!(
            errors.is_empty(),
            "{name} breaks docs/report.schema.json:\n{}\n{v:#}",
            errors.join("\n")
        );
    }
}

/// Every reason a report can give for its end is one the schema allows: the CLI's three, and the agent's
/// report of a target it still traces.
#[test]
fn every_end_reason_matches_the_schema() {
    let (_, validator) = schema();
    for reason in [
        EndReason::Duration,
        EndReason::Interrupted,
        EndReason::TargetExited,
        EndReason::Running,
    ] {
        let mut r = report();
        r.ended_by = reason;
        let v = json(&r);
        assert_eq!(v["ended_by"], reason.as_str());
        let errors = schema_errors(&validator, &v);
        assert!(
            errors.is_empty(),
            "ended_by {reason:?} breaks the schema:\n{}",
            errors.join("\n")
        );
    }
}

#[test]
fn schema_rejects_unknown_keys() {
    let (_, validator) = schema();
    let v = json(&held_report());
    let places: [&dyn Fn(&mut serde_json::Value) -> &mut serde_json::Value; 4] = [
        &|v| v,
        &|v| &mut v["sites"][0]["stack"][0],
        &|v| &mut v["retained"][0]["held_by"]["hops"][0],
        &|v| &mut v["finalizers"]["runners"][0]["blocked"],
    ];
    for place in places {
        let mut bad = v.clone();
        place(&mut bad)
            .as_object_mut()
            .unwrap()
            .insert("unexpected".into(), 1.into());
        let errors = schema_errors(&validator, &bad);
        assert!(
            errors.iter().any(|e| e.contains("unexpected")),
            "an unknown key passed: {errors:?}\n{bad:#}"
        );
    }
    let mut bad = v.clone();
    bad["retained"][0]["trend"] = "sideways".into();
    assert!(!validator.is_valid(&bad), "an unknown trend passed");
    let mut bad = v;
    bad.as_object_mut().unwrap().remove("gc");
    assert!(!validator.is_valid(&bad), "a report without gc passed");
}

/// The schema documents what reports hold: every object closed to other keys, every property described, and
/// no property name the fullest report never writes.
#[test]
fn schema_describes_every_key_and_only_those() {
    fn walk(s: &serde_json::Value, at: &str, names: &mut std::collections::BTreeSet<String>, faults: &mut Vec<String>) {
        match s {
            serde_json::Value::Object(m) => {
                if let Some(props) = m.get("properties").and_then(|p| p.as_object()) {
                    if m.get("additionalProperties") != Some(&serde_json::Value::Bool(false)) {
                        faults.push(format!("{at}: additionalProperties is not false"));
                    }
                    for (k, p) in props {
                        names.insert(k.clone());
                        if p.get("description").and_then(|d| d.as_str()).is_none_or(str::is_empty) {
                            faults.push(format!("{at}.{k}: no description"));
                        }
                    }
                }
                for (k, v) in m {
                    walk(v, &format!("{at}/{k}"), names, faults);
                }
            }
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(v, &format!("{at}/{i}"), names, faults)),
            _ => {}
        }
    }
    fn keys(v: &serde_json::Value, names: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| {
                names.insert(k.clone());
                keys(v, names);
            }),
            serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, names)),
            _ => {}
        }
    }
    let (schema, _) = schema();
    let (mut documented, mut faults, mut written) = Default::default();
    walk(&schema, "#", &mut documented, &mut faults);
    assert!(faults.is_empty(), "{}", faults.join("\n"));
    keys(&json(&every_key_report()), &mut written);
    let stale: Vec<_> = documented.difference(&written).collect();
    assert!(
        stale.is_empty(),
        "the schema documents keys no report writes: {stale:?}"
    );
}
