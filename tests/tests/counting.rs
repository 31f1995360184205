//! The counting target makes exactly N maps, M slices and K objects from three functions
//! (go-targets/counting/TRUTH.md); maptrace, attached in full mode, must report exactly those,
//! with the right kinds, types and sizes, for every Go version, stripped and not. The target's
//! own output and exit status must not change because it was traced.

use e2e::{assert_counts, site_functions, sites_at, target_path, trace_measured_phase, Target};

const MAPS: u64 = 100;
const SLICES: u64 = 200;
const OBJECTS: u64 = 300;
const APPENDS: u64 = 50;
/// Each append grows a full 1-element `[]uint64` to capacity 2.
const APPEND_BYTES: u64 = 16;
const SLICE_SIZE: u64 = 4096;
/// `main.Node`: a pointer, three 8-byte integers and a 16-byte array.
const NODE_SIZE: u64 = 48;

fn args() -> Vec<String> {
    vec![
        format!("-maps={MAPS}"),
        format!("-slices={SLICES}"),
        format!("-objects={OBJECTS}"),
        format!("-appends={APPENDS}"),
        format!("-slice-size={SLICE_SIZE}"),
    ]
}

fn run_untraced(bin: &std::path::Path) -> (Vec<String>, std::process::ExitStatus) {
    let args = args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut t = Target::start(bin, &args);
    t.go();
    t.finish()
}

fn check(go: &str, stripped: bool) {
    let bin = target_path(go, if stripped { "counting-stripped" } else { "counting" });
    let (plain_out, plain_status) = run_untraced(&bin);

    let args = args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let traced = trace_measured_phase(Target::start(&bin, &args));

    assert_eq!(
        traced.target_output, plain_out,
        "the target's output changed under tracing"
    );
    assert_eq!(
        traced.target_status.code(),
        plain_status.code(),
        "the target's exit status changed under tracing"
    );
    assert!(plain_status.success(), "counting failed: {plain_status}");
    let report = traced.report;
    assert_eq!(report["ended_by"], "target exited");
    assert_eq!(report["lost_records"], 0, "records lost");
    assert_eq!(report["target"]["stripped"], stripped);
    assert!(report["target"]["go_version"]
        .as_str()
        .unwrap()
        .starts_with(&format!("go{go}")[..6]));

    let one = |function: &str| {
        let rows = sites_at(&report, function);
        assert_eq!(rows.len(), 1, "exactly one site row at {function}, got {rows:#?}");
        rows[0].clone()
    };
    let maps = one("main.makeMaps");
    assert_eq!(maps["kind"], "map", "{maps:#}");
    assert_eq!(maps["type"], "map[string]int", "{maps:#}");
    assert_eq!(maps["count"], MAPS, "{maps:#}");
    assert!(maps["bytes"].as_u64().unwrap() > 0);

    let slices = one("main.makeSlices");
    assert_eq!(slices["kind"], "slice", "{slices:#}");
    assert_eq!(slices["type"], "[]uint8", "{slices:#}");
    assert_eq!(slices["count"], SLICES, "{slices:#}");
    assert_eq!(slices["bytes"], SLICES * SLICE_SIZE, "{slices:#}");

    let objects = one("main.makeObjects");
    assert_eq!(objects["kind"], "object", "{objects:#}");
    assert_eq!(objects["type"], "main.Node", "{objects:#}");
    assert_eq!(objects["count"], OBJECTS, "{objects:#}");
    assert_eq!(objects["bytes"], OBJECTS * NODE_SIZE, "{objects:#}");

    let grown = one("main.growSlices");
    assert_eq!(grown["kind"], "slice", "{grown:#}");
    assert_eq!(grown["type"], "[]uint64", "growslice's element type: {grown:#}");
    assert_eq!(grown["count"], APPENDS, "{grown:#}");
    assert_eq!(grown["bytes"], APPENDS * APPEND_BYTES, "{grown:#}");

    for row in [&maps, &slices, &objects, &grown] {
        let site = &row["stack"][0];
        assert!(
            site["file"].as_str().unwrap().ends_with("counting/main.go"),
            "site file: {site:#}"
        );
        assert!(site["line"].as_u64().unwrap() > 0, "site line: {site:#}");
        assert_eq!(row["stack"][1]["function"], "main.main", "caller of the site: {row:#}");
    }

    // Only the runtime's (and the standard library's) own allocations may add rows.
    let extra: Vec<String> = site_functions(&report)
        .into_iter()
        .filter(|f| {
            f.starts_with("main.")
                && ![
                    "main.makeMaps",
                    "main.makeSlices",
                    "main.makeObjects",
                    "main.growSlices",
                ]
                .contains(&f.as_str())
        })
        .collect();
    assert!(extra.is_empty(), "unexpected allocation sites in main: {extra:?}");

    let records = report["totals"]["records"].as_u64().unwrap();
    let seconds = report["duration_seconds"].as_f64().unwrap();
    eprintln!(
        "go{go}{}: {records} records in {seconds:.2} s ({:.0}/s over the session), {} uprobes, attach {:.3} s",
        if stripped { " stripped" } else { "" },
        records as f64 / seconds,
        report["probes"]["uprobes"],
        report["probes"]["attach_seconds"].as_f64().unwrap()
    );
}

e2e::go_matrix!(super::check);

/// The cgo build (externally linked) traces the same.
#[test]
fn cgo_build() {
    let bin = target_path(e2e::GO1_24, "counting-cgo");
    let traced = trace_measured_phase(Target::start(&bin, &["-maps=10", "-slices=20", "-objects=30"]));
    assert!(traced.target_status.success());
    assert_counts(
        &traced.report,
        &[("main.makeMaps", 10), ("main.makeSlices", 20), ("main.makeObjects", 30)],
    );
}
