//! Controls and the end of a session: a target that allocates nothing gets no site of its own,
//! and an interrupted or timed session still prints its report.

use e2e::{site_functions, sites_at, target_path, Maptrace, Target};

const GO: &str = "1.24.11";

#[test]
fn quiet_target_has_no_sites_of_its_own() {
    for go in ["1.21.13", "1.27.3"] {
        let mut target = Target::start(&target_path(go, "quiet"), &["-sleep=1s"]);
        let pid = target.pid.to_string();
        let mut maptrace = Maptrace::start(&["--pid", &pid, "--json", "--no-live"]);
        maptrace.wait_attached();
        target.go();
        let (_, status) = target.finish();
        assert!(status.success());
        let outcome = maptrace.finish();
        assert!(outcome.status.success(), "{outcome:#?}");
        let report = outcome.json();
        let mine: Vec<String> = site_functions(&report).into_iter().filter(|f| f.starts_with("main.")).collect();
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
