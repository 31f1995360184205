//! Controls and the end of a session: a target that allocates nothing gets no site of its own,
//! and an interrupted or timed session still prints its report.

use e2e::{assert_counts, site_functions, sites_at, target_path, trace_measured_phase, Maptrace, Target};

const GO: &str = e2e::GO1_24;

#[test]
fn quiet_target_has_no_sites_of_its_own() {
    for go in [e2e::GO1_21, e2e::GO1_27] {
        let traced = trace_measured_phase(Target::start(&target_path(go, "quiet"), &["-sleep=1s"]));
        assert!(traced.target_status.success());
        let report = traced.report;
        let mine: Vec<String> = site_functions(&report)
            .into_iter()
            .filter(|f| f.starts_with("main."))
            .collect();
        assert!(mine.is_empty(), "go{go}: quiet allocated from {mine:?}: {report:#}");
    }
}

#[test]
fn duration_ends_the_session_with_a_text_report() {
    let target = Target::start(&target_path(GO, "demo"), &[]);
    let pid = target.pid.to_string();
    let mut maptrace = Maptrace::start(&["--pid", &pid, "--duration", "2s", "--no-live"]);
    maptrace.wait_attached();
    let outcome = maptrace.finish();
    assert!(outcome.status.success(), "{outcome:#?}");
    assert!(outcome.stdout.contains("KIND"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("main.newSession"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("(duration)"), "{}", outcome.stdout);
    target.kill();
}

#[test]
fn interrupt_ends_the_session_and_leaves_the_target_running() {
    let target = Target::start(&target_path(GO, "demo"), &[]);
    let pid = target.pid.to_string();
    let mut maptrace = Maptrace::start(&["--pid", &pid, "--json", "--no-live"]);
    maptrace.wait_attached();
    std::thread::sleep(std::time::Duration::from_secs(1));
    maptrace.interrupt();
    let outcome = maptrace.finish();
    assert!(outcome.status.success(), "{outcome:#?}");
    let report = outcome.json();
    assert_eq!(report["ended_by"], "interrupted");
    assert!(!sites_at(&report, "main.newSession").is_empty(), "{report:#}");
    // The target carries on after maptrace detached.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the demo died");
    target.kill();
}

/// A target in its own mount namespace runs a binary that does not exist at that path outside
/// it (a container's view): maptrace reads and probes it through /proc/PID/exe.
#[test]
fn target_in_another_mount_namespace() {
    let dir = std::env::temp_dir().join(format!("maptrace-e2e-ns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = target_path(GO, "counting");
    let inside = dir.join("counting");
    let script = format!(
        "mount -t tmpfs none {d} && cp {bin} {inside} && exec {inside} -maps=5 -slices=6 -objects=7",
        d = dir.display(),
        bin = bin.display(),
        inside = inside.display()
    );
    let target = Target::start_command(std::process::Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    assert!(!inside.exists(), "the binary must not be visible outside the namespace");
    let traced = trace_measured_phase(target);
    let _ = std::fs::remove_dir(&dir);
    assert!(traced.target_status.success());
    assert_eq!(traced.report["target"]["binary"], inside.display().to_string());
    assert_counts(
        &traced.report,
        &[("main.makeMaps", 5), ("main.makeSlices", 6), ("main.makeObjects", 7)],
    );
}

/// The demo's truth (go-targets/demo/TRUTH.md): sessions, their buffers and keys are retained and
/// growing; the per-request garbage is not.
#[test]
fn demo_leak_is_retained_and_garbage_is_not() {
    let target = Target::start(&target_path(GO, "demo"), &[]);
    let pid = target.pid.to_string();
    let mut maptrace = Maptrace::start(&["--pid", &pid, "--duration", "5s", "--json", "--no-live"]);
    maptrace.wait_attached();
    let outcome = maptrace.finish();
    target.kill();
    assert!(outcome.status.success(), "{outcome:#?}");
    let report = outcome.json();
    let retained: Vec<(String, String, String)> = report["retained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
            (s(&r["stack"][0]["function"]), s(&r["type"]), s(&r["trend"]))
        })
        .collect();
    for (site, ty) in [
        ("main.newSession", "main.Session"),
        ("main.newSession", "[]uint8"),
        ("main.sessionKey", "string"),
    ] {
        assert!(
            retained
                .iter()
                .any(|(f, t, trend)| f == site && t == ty && trend == "growing"),
            "{site} {ty} retained and growing: {retained:?}"
        );
    }
    assert!(
        !retained.iter().any(|(f, _, _)| f == "main.newRequest"),
        "request garbage is not retained: {retained:?}"
    );
    assert!(report["gc"]["cycles_seen"].as_u64().unwrap() >= 3, "{:#}", report["gc"]);
}
