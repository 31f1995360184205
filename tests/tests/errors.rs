//! Bad input: each case gets its one-line message and its own exit code, never a panic; the
//! target is never harmed.

use std::{os::unix::fs::PermissionsExt, process::Command};

use e2e::{maptrace_bin, run_maptrace, target_path, Maptrace, Target, TempDir};

const GO: &str = e2e::GO1_24;

fn assert_failure(outcome: &e2e::Outcome, code: i32, needle: &str) {
    assert_eq!(outcome.status.code(), Some(code), "{outcome:#?}");
    let errors: Vec<&String> = outcome
        .stderr
        .iter()
        .filter(|l| l.starts_with("maptrace: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {outcome:#?}");
    assert!(errors[0].contains(needle), "{:?} should mention {needle:?}", errors[0]);
    assert!(!outcome.stderr.iter().any(|l| l.contains("panicked")), "{outcome:#?}");
    assert!(outcome.stdout.is_empty(), "no partial report: {outcome:#?}");
}

/// A PID that is not in use now.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (1000..max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

#[test]
fn no_such_pid() {
    let pid = unused_pid().to_string();
    assert_failure(
        &run_maptrace(&["--pid", &pid]),
        3,
        &format!("no process with PID {pid}"),
    );
}

#[test]
fn not_a_go_program() {
    let mut sleep = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleep.id().to_string();
    let outcome = run_maptrace(&["--pid", &pid]);
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert_failure(&outcome, 4, "is not a Go program");
}

/// A copy of a real Go target whose `.go.buildinfo` names another version (same length, so the
/// program still runs: the runtime never reads that string).
fn with_build_version(from: &str, to: &str, dir: &TempDir) -> std::path::PathBuf {
    let mut bytes = std::fs::read(target_path(GO, "quiet")).unwrap();
    let magic = b"\xff Go buildinf:";
    let at = bytes
        .windows(magic.len())
        .position(|w| w == magic)
        .expect("buildinfo magic");
    let pos = at
        + bytes[at..]
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .expect("version string");
    bytes[pos..pos + to.len()].copy_from_slice(to.as_bytes());
    let path = dir.path().join(format!("quiet-{to}"));
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn unsupported_go_versions_are_named() {
    let dir = TempDir::new("versions");
    // 1.20 is between supported releases but has no layout table row: refused like the rest.
    for (to, why) in [
        ("go1.99.11", "newer than"),
        ("go1.16.11", "too old"),
        ("go1.20.14", "no runtime layout"),
    ] {
        let bin = with_build_version(&format!("go{GO}"), to, &dir);
        let target = Target::start(&bin, &["-sleep=1s"]);
        let outcome = run_maptrace(&["--pid", &target.pid.to_string()]);
        assert_failure(&outcome, 5, &format!("unsupported Go runtime {to}"));
        assert!(outcome.stderr.iter().any(|l| l.contains(why)), "{outcome:#?}");
        assert!(
            outcome
                .stderr
                .iter()
                .any(|l| l.contains("maptrace supports go1.19, go1.21–go1.27")),
            "{outcome:#?}"
        );
        target.kill();
    }
}

#[test]
fn missing_privileges_are_named() {
    let target = Target::start(&target_path(GO, "quiet"), &["-sleep=1s"]);
    // Root without any capability: what a user without the capabilities sees.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(maptrace_bin());
    let outcome = Maptrace::start_with(cmd, &["--pid", &target.pid.to_string()]).finish();
    assert_failure(&outcome, 6, "missing privileges: CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE");
    target.kill();
}

#[test]
fn deleted_binary() {
    let dir = TempDir::new("deleted");
    let path = dir.path().join("quiet");
    std::fs::copy(target_path(GO, "quiet"), &path).unwrap();
    let target = Target::start(&path, &["-sleep=1s"]);
    std::fs::remove_file(&path).unwrap();
    let outcome = run_maptrace(&["--pid", &target.pid.to_string()]);
    assert_failure(&outcome, 8, "was deleted or replaced");
    target.kill();
}

#[test]
fn bad_command_line() {
    let outcome = run_maptrace(&["--pid", "x"]);
    assert_eq!(outcome.status.code(), Some(2), "{outcome:#?}");
    let outcome = run_maptrace(&["--pid", "1", "--duration", "soon"]);
    assert_eq!(outcome.status.code(), Some(2), "{outcome:#?}");
}

/// The target dies while traced: maptrace prints what it saw and exits 0.
#[test]
fn target_killed_mid_trace() {
    let target = Target::start(&target_path(GO, "demo"), &[]);
    let pid = target.pid.to_string();
    let mut maptrace = Maptrace::start(&["--pid", &pid, "--json", "--no-live"]);
    maptrace.wait_attached();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    target.kill();
    let outcome = maptrace.finish();
    assert!(outcome.status.success(), "{outcome:#?}");
    let report = outcome.json();
    assert_eq!(report["ended_by"], "target exited");
    assert!(
        !e2e::sites_at(&report, "main.newSession").is_empty(),
        "the demo's sessions were seen: {report:#}"
    );
}
