//! The pipeline benchmark, run by `cargo xtask bench` (not a test: it prints numbers).
//!
//! `pipeline RECORDING BINARY [REPEAT]` replays a recording made with `maptrace --record` (of
//! `BINARY`) through decoding and correlation REPEAT times, then fills a correlator with a million
//! distinct allocations built from the recording's own allocation records, and prints one JSON line:
//! records per second (min/median/max over the repeats, one core) and resident bytes per tracked
//! object.

use std::{mem::offset_of, path::PathBuf, time::Instant};

use tracer::{events::recording, gobin::GoBinary, session::replay};
use tracer_common::{ContainerKind, Record, RecordKind};

/// Objects tracked for the memory measurement (the lifecycle engine's default bound).
const OBJECTS: u64 = 1_000_000;

fn main() {
    // cargo bench appends --bench; the rest are ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [file, binary, rest @ ..] = &args[..] else {
        eprintln!("usage: pipeline RECORDING BINARY [REPEAT]");
        std::process::exit(2);
    };
    let repeat: usize = rest.first().map_or(10, |r| r.parse().expect("REPEAT is a number"));
    let rec = recording::read(&PathBuf::from(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let bin = std::sync::Arc::new(GoBinary::open(&PathBuf::from(binary)).unwrap_or_else(|e| panic!("{binary}: {e}")));

    let mut rates = Vec::new();
    let mut malformed = 0;
    for _ in 0..repeat {
        let start = Instant::now();
        let (state, bad) = replay(bin.clone(), &rec, 2);
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(&state);
        malformed = bad;
        rates.push(rec.records.len() as f64 / seconds);
    }
    rates.sort_by(f64::total_cmp);

    // A million live objects: the recording's plain allocations again and again, each at an
    // address of its own, with no GC cycle to free any.
    let allocs: Vec<&Vec<u8>> = rec
        .records
        .iter()
        .filter(|r| {
            RecordKind::of(r) == Some(RecordKind::Alloc)
                && r.len() >= size_of::<Record>()
                && u32::from_ne_bytes(r[4..8].try_into().unwrap()) == ContainerKind::None as u32
        })
        .collect();
    assert!(!allocs.is_empty(), "the recording has no plain allocations");
    let ptr = offset_of!(Record, ptr);
    let many = recording::Recording {
        load_bias: rec.load_bias,
        records: (0..OBJECTS)
            .map(|i| {
                let mut r = allocs[i as usize % allocs.len()].clone();
                r[ptr..ptr + 8].copy_from_slice(&(0xc0_0000_0000 + 64 * i).to_ne_bytes());
                r
            })
            .collect(),
    };
    let before = resident_bytes();
    let (state, _) = replay(bin.clone(), &many, 2);
    let grown = resident_bytes().saturating_sub(before);
    let tracked = state.gc_info(false).objects_tracked as u64;
    println!(
        "{{\"records\":{},\"malformed\":{},\"repeats\":{},\"records_per_second\":{{\"min\":{:.0},\"median\":{:.0},\"max\":{:.0}}},\"tracked_objects\":{},\"resident_bytes_per_object\":{:.1}}}",
        rec.records.len(),
        malformed,
        repeat,
        rates[0],
        rates[rates.len() / 2],
        rates[rates.len() - 1],
        tracked,
        grown as f64 / tracked.max(1) as f64
    );
}

/// This process's resident set (`/proc/self/statm`, second field, in pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}
