//! What the fuzz harnesses (fuzz/, `./x fuzz`) found, replayed as they run an input: each failing input is kept
//! in `fuzz/regressions/<harness>/` and must give a clean result (an error or none) within the harnesses' time
//! limit, without a panic. The checked-in corpus is replayed too, so that it stays one that passes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "../../../fuzz/src/replay.rs"]
mod replay;

/// libFuzzer's `-timeout` in `./x fuzz`.
const TIME_LIMIT: Duration = Duration::from_secs(1);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs `input` as `harness` does; the time it took.
fn replay(harness: &str, input: &[u8]) -> Duration {
    let start = Instant::now();
    match harness {
        "gobin_file" => drop(replay::gobin_file(input)),
        "gobin_patch" => drop(replay::gobin_patch(input)),
        "heap_walk" => replay::heap_walk(input),
        other => panic!("no harness {other}"),
    }
    start.elapsed()
}

/// libFuzzer's `-rss_limit_mb` in `./x fuzz`.
const MEMORY_LIMIT: u64 = 256 << 20;

/// The process's peak resident memory so far (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() << 10
}

/// The regression input `name` of `harness`, replayed within the time limit, its peak memory within the memory
/// limit (what the test process held before counts too: checked from the peak before the replay).
fn regression(harness: &str, name: &str) {
    let path = fuzz_dir().join("regressions").join(harness).join(name);
    let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The go-targets are read (and the heap models built) before the clock starts, as the harnesses do.
    replay(harness, &[]);
    let before = peak_rss();
    let took = replay(harness, &input);
    // The fuzzers' limit, with room for a machine running other tests: these inputs took 3-18 s before their fix.
    assert!(took < 2 * TIME_LIMIT, "{harness} took {took:?} on {name}");
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < MEMORY_LIMIT,
        "{harness} grew the peak memory by {} MiB on {name}",
        grew >> 20
    );
}

// Inputs that failed once, each with what it did: arithmetic overflows on target values, which panicked where
// overflow checks are on (the fuzz build, `cargo test` without --release) and read the wrong memory where they
// are off; the walk now checks that arithmetic.

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn heap_walk_goroutine_address_overflow() {
    // A goroutine's address from allgs plus a field's offset.
    regression("heap_walk", "goroutine-address-overflow");
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn heap_walk_arena_index_overflow() {
    // The arena index pointer plus the index.
    regression("heap_walk", "arena-index-overflow");
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn heap_walk_arena_spans_overflow() {
    // An arena's address plus its spans array plus the page's slot.
    regression("heap_walk", "arena-spans-overflow");
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn heap_walk_huge_stacks() {
    // Goroutines each claiming a stack of up to 1 GiB: their word maps, read a bit at a time, took 3-18 s.
    for input in ["huge-stacks-1", "huge-stacks-2", "huge-stacks-3"] {
        regression("heap_walk", input);
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn the_checked_in_corpus_replays_cleanly() {
    for harness in ["gobin_file", "gobin_patch", "heap_walk"] {
        let dir = fuzz_dir().join("corpus").join(harness);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} is empty", dir.display());
        replay(harness, &[]);
        for input in inputs {
            let took = replay(harness, &std::fs::read(&input).unwrap());
            // Looser than the fuzzer's limit: the suite runs tests in parallel on a shared machine.
            assert!(took < 5 * TIME_LIMIT, "{harness} took {took:?} on {}", input.display());
        }
    }
}
