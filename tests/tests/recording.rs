//! `--record FILE` writes every record the probes sent, in the documented format
//! (tracer/src/recording.rs): its allocation and constructor records are exactly the ones the
//! report counted.

use e2e::{target_path, Maptrace, Target};

/// Record kinds of `tracer_common::RecordKind` that the site table counts.
const ALLOC: u32 = 1;
const CONTAINER: u32 = 2;

fn check(go: &str) {
    let file = std::env::temp_dir().join(format!("maptrace-e2e-{go}-{}.records", std::process::id()));
    let mut target = Target::start(&target_path(go, "counting"), &["-maps=20", "-slices=30", "-objects=40"]);
    let pid = target.pid.to_string();
    let mut maptrace = Maptrace::start(&["--pid", &pid, "--json", "--no-live", "--record", file.to_str().unwrap()]);
    maptrace.wait_attached();
    target.go();
    target.finish();
    let outcome = maptrace.finish();
    assert!(outcome.status.success(), "{outcome:#?}");
    let report = outcome.json();

    let bytes = std::fs::read(&file).expect("the recording");
    std::fs::remove_file(&file).unwrap();
    let header_end = bytes.iter().position(|&b| b == b'\n').expect("a header line") + 1;
    let header = std::str::from_utf8(&bytes[..header_end]).unwrap();
    assert!(header.starts_with("maptrace-records 1 load_bias=0x"), "{header:?}");
    let (mut all, mut counted) = (0u64, 0u64);
    let mut rest = &bytes[header_end..];
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let record = &rest[4..4 + len];
        let kind = u32::from_ne_bytes(record[..4].try_into().unwrap());
        all += 1;
        counted += u64::from(kind == ALLOC || kind == CONTAINER);
        rest = &rest[4 + len..];
    }
    assert_eq!(
        counted,
        report["totals"]["records"].as_u64().unwrap(),
        "allocation records in the file ({all} in all) vs the report"
    );
    assert!(
        counted >= 20 + 30 + 40,
        "at least the target's own allocations: {counted}"
    );
}

#[test]
fn go1_24() {
    check(e2e::GO1_24);
}

#[test]
fn go1_27() {
    check(e2e::GO1_27);
}
