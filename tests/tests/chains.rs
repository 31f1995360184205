//! Reference chains (`held_by` on retained rows): the holders target keeps every session in the global map
//! `main.sessions`, and each round's batch on a goroutine that blocks for ever. Each retained row at
//! `main.openSessions` must be held by the map, down to an object of the row's type, and the batches by a frame of
//! the leaked goroutines (go-targets/holders/TRUTH.md); the map's chains are typed from the global's DWARF type,
//! each step named by its Go path and a map value's step by its key. Stripped binaries get chains too, from the
//! words of bss the GC's bitmaps mark as pointers, with offsets for names.

use e2e::{target_path, trace_until_done, trace_until_done_as, trace_until_done_with, Target};
use serde_json::Value;

fn check(go: &str, stripped: bool) {
    let bin = target_path(go, if stripped { "holders-stripped" } else { "holders" });
    let (done, report) = trace_until_done(Target::start(&bin, &[]));
    assert!(done.contains("sessions=100"), "{done}");
    let chains = &report["chains"];
    // The checks on what the target's memory says (span records, stack bounds, frame pointers, the goroutine list)
    // reject nothing a Go runtime wrote: in a stopped target, nothing is unreadable (a running one may be caught
    // mid-write).
    if chains["walk_within_pause"] == true {
        for count in ["unreadable_objects", "unreadable_spans", "unreadable_roots"] {
            assert_eq!(chains[count], 0, "{count}: {chains:#}");
        }
    }
    let precision = chains["precision"].as_str().unwrap();
    assert!(
        precision.starts_with(if stripped {
            "untyped: no DWARF"
        } else {
            "typed where DWARF"
        }),
        "{chains:#}"
    );
    assert!(chains["unavailable"].is_null(), "{chains:#}");
    // The default --max-pause (10 ms) stops the target for the walk (whether the walk fits is a matter of speed).
    assert_eq!(chains["max_pause_seconds"].as_f64(), Some(0.01), "{chains:#}");
    assert!(
        chains["paused_seconds"].as_f64().unwrap() > 0.0 && chains.get("pause_failed").is_none(),
        "{chains:#}"
    );
    let retained_at = |function: &str| -> Vec<&Value> {
        report["retained"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["stack"][0]["function"] == function)
            .collect()
    };
    let batches = retained_at("main.makeBatch");
    assert_eq!(batches.len(), 1, "{:#}", report["retained"]);
    let held = &batches[0]["held_by"];
    assert_eq!(
        (&held["root"]["kind"], &held["root"]["name"]),
        (&Value::from("goroutine"), &Value::from("main.startWorker.func1")),
        "{held:#}"
    );
    assert_eq!(
        held["root"]["goroutine"][1], "chan receive",
        "the leaked goroutine waits on a channel: {held:#}"
    );
    // Since a GC cycle that saw it waiting: every round runs one after starting its worker.
    assert!(
        held["root"]["blocked_ms"].as_u64().is_some(),
        "how long it has been blocked: {held:#}"
    );
    assert_eq!(
        held["unreached"], 0,
        "every batch is held (through its goroutine's frame, or its closure): {held:#}"
    );
    let last = held["hops"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["size"].as_u64(), &last["type"]),
        (Some(1024), &Value::from("[]main.Record")),
        "{held:#}"
    );
    // The frame's variable names the slot (DWARF locations), without DWARF its offset in the frame; the GC's
    // stack maps, which stripped binaries keep, say it is a live pointer.
    assert_eq!(
        (&held["precise"], &last["via"]),
        (
            &Value::from(true),
            &if stripped { Value::Null } else { Value::from("batch") }
        ),
        "{held:#}"
    );
    let rows = retained_at("main.openSessions");
    assert!(
        rows.iter()
            .any(|r| r["type"] == "[]uint8" || r["type"] == "main.Session"),
        "{:#}",
        report["retained"]
    );
    let mut roots = std::collections::HashSet::new();
    for row in rows {
        let held = &row["held_by"];
        assert_eq!(held["root"]["kind"], "global", "{held:#}");
        // A classic map caught growing holds some sessions in its old buckets: another chain shape, listed next,
        // from the same variable. Every object searched is one shape's or unreached.
        let also = row["also_held_by"].as_array().cloned().unwrap_or_default();
        let counted: u64 = std::iter::once(held)
            .chain(&also)
            .map(|h| h["objects"].as_u64().unwrap())
            .sum();
        assert_eq!(
            counted + held["unreached"].as_u64().unwrap(),
            held["searched"].as_u64().unwrap(),
            "{row:#}"
        );
        assert!(
            also.iter()
                .all(|h| h["root"] == held["root"] && h["objects"].as_u64() <= held["objects"].as_u64()),
            "{row:#}"
        );
        assert!(held["objects"].as_u64().unwrap() >= 1, "{held:#}");
        let hops = held["hops"].as_array().unwrap();
        let last = hops.last().unwrap();
        if stripped {
            // No DWARF: the variable is a word of bss the GC's bitmap marks as a pointer, and every hop is
            // an offset; the objects still have the types maptrace saw them allocated with. The runtime's heap
            // bitmaps say which words are pointers, so no stale word (a P's write-barrier buffer) holds them.
            roots.insert(held["root"]["name"].as_str().unwrap().to_string());
            assert!(held["root"]["name"].as_str().unwrap().starts_with("bss 0x"), "{held:#}");
            assert_eq!(held["precise"], true, "{held:#}");
            if row["type"] == "[]uint8" {
                assert_eq!(
                    (last["size"].as_u64(), last["offset"].as_u64(), &last["type"]),
                    (Some(4096), Some(8), &Value::from("[]uint8")),
                    "{held:#}"
                );
                assert_eq!(hops[hops.len() - 2]["type"], "main.Session", "{held:#}");
            }
            continue;
        }
        assert_eq!(
            held["root"]["name"], "main.sessions",
            "every retained row is held by the global map: {row:#}"
        );
        assert_eq!(held["precise"], true, "typed from the global down: {held:#}");
        // The map's header: Go 1.24's Swiss map<K,V>, the classic hash<K,V> before.
        let header = hops[0]["type"].as_str().unwrap_or_default();
        assert!(
            header == "map<int,*main.Session>" || header == "hash<int,*main.Session>",
            "{held:#}"
        );
        assert_eq!(hops[0]["via"], "", "the global is the map pointer: {held:#}");
        // The session's step names the map entry it is the value of: its key, a session id (0 … 99), one key
        // per session of the group.
        if let Some(session) = hops.iter().find(|h| h["type"] == "main.Session") {
            let entry = &session["map_entry"];
            let key: u64 = entry["key"]
                .as_str()
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("an integer key: {held:#}"));
            assert!(
                key < 100 && entry["part"] == "value" && entry["keys"] == held["objects"],
                "{held:#}"
            );
        }
        match row["type"].as_str().unwrap() {
            "[]uint8" => {
                assert_eq!(
                    (last["size"].as_u64(), &last["type"]),
                    (Some(4096), &Value::from("[]uint8")),
                    "{held:#}"
                );
                // The buffer is reached from its Session, through Buf's pointer (the struct's second word).
                let session = &hops[hops.len() - 2];
                assert_eq!(
                    (session["size"].as_u64(), last["offset"].as_u64()),
                    (Some(32), Some(8)),
                    "{held:#}"
                );
                assert_eq!(session["type"], "main.Session", "{held:#}");
                assert_eq!(last["via"], ".Buf", "{held:#}");
            }
            "main.Session" => {
                assert_eq!(
                    (last["size"].as_u64(), &last["type"]),
                    (Some(32), &Value::from("main.Session")),
                    "{held:#}"
                );
                // A map value: a Swiss group's slot, or a classic bucket's values.
                let via = last["via"].as_str().unwrap_or_default();
                assert!(via == "[…].slots[…].elem" || via == "[…].values[…]", "{held:#}");
            }
            _ => {}
        }
    }
    assert!(roots.len() <= 1, "one variable holds them all: {roots:?}");
}

e2e::go_matrix!(super::check);

/// `--max-pause 0`: the target is never stopped (no thread seized), and the chains are still found, against the
/// running program.
fn never_stopped(go: &str) {
    let (done, report) = trace_until_done_with(Target::start(&target_path(go, "holders"), &[]), &["--max-pause", "0"]);
    assert!(done.contains("sessions=100"), "{done}");
    let chains = &report["chains"];
    assert_eq!(
        (chains["paused_seconds"].as_f64(), &chains["walk_within_pause"]),
        (Some(0.0), &Value::from(false)),
        "{chains:#}"
    );
    let rows = report["retained"].as_array().unwrap();
    let held: Vec<&Value> = rows
        .iter()
        .filter(|r| r["stack"][0]["function"] == "main.openSessions")
        .map(|r| &r["held_by"])
        .collect();
    assert!(
        !held.is_empty() && held.iter().all(|h| h["root"]["name"] == "main.sessions"),
        "{held:#?}"
    );
}

/// A program of a hundred thousand parked goroutines: reading their stacks takes far longer than the default
/// 10 ms budget, which holds all the same (the target was stopped 2.0 s before the budget was checked while
/// stacks were read). The bound allows for a loaded machine's scheduling, not for reading the stacks.
fn pause_budget_with_many_goroutines(go: &str) {
    let target = Target::start(&target_path(go, "holders"), &["-idle=100000"]);
    let (done, report) = trace_until_done_with(target, &[]);
    assert!(done.contains("sessions=100"), "{done}");
    let chains = &report["chains"];
    let paused = chains["paused_seconds"].as_f64().unwrap();
    assert!(
        paused > 0.0 && paused < 1.0,
        "stopped {paused} s against a 10 ms budget: {chains:#}"
    );
    assert_eq!(chains["walk_within_pause"], Value::from(false), "{chains:#}");
}

/// `--max-depth 2`: the sessions lie three steps or more below `main.sessions` (header, buckets or directory,
/// [table, groups,] session), and objects two steps down are not scanned, so the walk finds none of them through the map and says how many objects the limit
/// left unscanned, while the batches, one step from their goroutines' frames, are still held.
fn depth_limit(go: &str) {
    let (done, report) = trace_until_done_with(Target::start(&target_path(go, "holders"), &[]), &["--max-depth", "2"]);
    assert!(done.contains("sessions=100"), "{done}");
    let chains = &report["chains"];
    assert_eq!(chains["max_depth"], 2, "{chains:#}");
    assert!(chains["depth_limited"].as_u64() > Some(0), "{chains:#}");
    let rows = report["retained"].as_array().unwrap();
    let at = |f: &str| -> Vec<&Value> { rows.iter().filter(|r| r["stack"][0]["function"] == f).collect() };
    for r in at("main.openSessions")
        .into_iter()
        .filter(|r| r["type"] == "main.Session" || r["type"] == "[]uint8")
    {
        assert!(
            r["held_by"]["root"]["name"] != "main.sessions",
            "beyond the depth limit: {r:#}"
        );
    }
    let batch = at("main.makeBatch")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(batch["held_by"]["hops"].as_array().map(Vec::len), Some(1), "{batch:#}");
}

/// Go's own pprof (from Debian's Go 1.19, which `./x` installs) reads the profile.
const GO: &str = "/usr/lib/go-1.19/bin/go";

/// Traces holders until done with `--format FORMAT --output FILE`, then runs `tool` with `args` and the file:
/// its standard output.
fn rendered(go: &str, format: &str, tool: &str, args: &[&str]) -> String {
    let path = std::env::temp_dir().join(format!("maptrace-chains-{go}-{}.{format}", std::process::id()));
    let out = path.to_str().unwrap();
    let (done, _) = trace_until_done_as(
        Target::start(&target_path(go, "holders"), &[]),
        &["--no-live", "--format", format, "--output", out],
    );
    assert!(done.contains("sessions=100"), "{done}");
    let run = std::process::Command::new(tool)
        .args(args)
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let _ = std::fs::remove_file(&path);
    assert!(
        run.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

/// `--format pprof`: `go tool pprof -top` lists the chains (root, hops, the retained objects by type).
fn pprof(go: &str) {
    let top = rendered(
        go,
        "pprof",
        GO,
        &["tool", "pprof", "-top", "-sample_index=retained_space"],
    );
    for want in [
        "Type: retained_space",
        "main.sessions (map[int]*main.Session)",
        "4.0 KiB []uint8",
        "32 B main.Session",
        "main.startWorker.func1",
        "[]main.Record",
    ] {
        assert!(top.contains(want), "{want:?} in go tool pprof -top:\n{top}");
    }
}

/// `--format dot`: Graphviz's `dot` (Debian's graphviz, which `./x` installs) renders the chains as SVG.
fn dot(go: &str) {
    let svg = rendered(go, "dot", "dot", &["-Tsvg"]);
    for want in [
        "<svg",
        "main.sessions (map[int]*main.Session)",
        "main.startWorker.func1",
        "32 B main.Session",
    ] {
        assert!(svg.contains(want), "{want:?} in the SVG:\n{svg}");
    }
    // The chains' ends carry the rows' shares: the 100 sessions and their 100 buffers (a classic map caught
    // growing splits a row between its buckets and old buckets), beside the map's own storage.
    let retained: u64 = svg
        .split(" retained, ")
        .zip(svg.split(" retained, ").skip(1))
        .filter(|(_, after)| {
            after
                .split('<')
                .next()
                .is_some_and(|l| l.ends_with("(main.openSessions)"))
        })
        .filter_map(|(before, _)| before.rsplit('>').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        (200..210).contains(&retained),
        "{retained} retained at main.openSessions in the SVG:\n{svg}"
    );
}

/// `--format flamegraph`: librsvg (Debian's librsvg2-bin, which `./x` installs) renders the SVG, whose frames
/// are the chains.
fn flamegraph(go: &str) {
    // The file is `$0` of the shell: rendered (to a PNG thrown away: it must parse and draw), then printed.
    let svg = rendered(
        go,
        "flamegraph",
        "sh",
        &["-c", r#"rsvg-convert "$0" >/dev/null && cat "$0""#],
    );
    for want in [
        "<svg",
        "main.sessions (map[int]*main.Session)",
        "32 B main.Session",
        "(at .Buf)",
        "main.startWorker.func1",
    ] {
        assert!(svg.contains(want), "{want:?} in the SVG:\n{svg}");
    }
}

/// A test module of `check`'s name, with one test per Go version these checks cover (1.21, 1.24, 1.27).
macro_rules! issue_versions {
    ($check:ident) => {
        mod $check {
            #[test]
            fn go1_21() {
                super::$check(e2e::GO1_21);
            }
            #[test]
            fn go1_24() {
                super::$check(e2e::GO1_24);
            }
            #[test]
            fn go1_27() {
                super::$check(e2e::GO1_27);
            }
        }
    };
}

issue_versions!(never_stopped);
issue_versions!(pause_budget_with_many_goroutines);
issue_versions!(depth_limit);
issue_versions!(pprof);
issue_versions!(dot);
issue_versions!(flamegraph);
