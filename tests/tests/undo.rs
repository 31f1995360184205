//! Every change undone: `runtime.MemProfileRate`, the one write maptrace makes to a target (sampled mode with
//! `--sample-rate … --write-memprofilerate`), is put back however the trace ends — its duration, Ctrl-C,
//! SIGTERM or a hang-up at any moment (during the attach too), an error after the write, the agent's shutdown —
//! and after SIGKILL, which runs nothing, `--restore-memprofilerate` puts it back by hand.
//!
//! The target is allocbench with its heap profiler off (rate 0, as in a program that never uses it): it
//! allocates for a few seconds and prints the rate in force at the end (go-targets/allocbench/TRUTH.md), which
//! must be 0 again.

use std::{
    os::unix::process::ExitStatusExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{maptrace_bin, target_path, Lines, Maptrace, Target};

const GO: &str = e2e::GO1_24;
/// What maptrace writes: far from the target's own 0.
const WRITTEN: u64 = 4096;
/// How long the target allocates: past every maptrace's end below, detach included.
const TARGET_RUNS: &str = "-duration=10s";

/// allocbench, allocating already.
fn allocating() -> Target {
    let mut target = Target::start(&target_path(GO, "allocbench"), &[TARGET_RUNS, "-goroutines=1"]);
    target.go();
    target
}

/// The rate the target had when it finished allocating.
fn rate_at_end(mut target: Target) -> u64 {
    let done = target.wait_done();
    done.split_whitespace()
        .find_map(|kv| kv.strip_prefix("memprofilerate="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no memprofilerate in {done:?}"))
}

fn sampled_args(pid: u32) -> Vec<String> {
    [
        "--pid",
        &pid.to_string(),
        "--no-live",
        "--json",
        "--mode",
        "sampled",
        "--sample-rate",
        &WRITTEN.to_string(),
        "--write-memprofilerate",
    ]
    .map(String::from)
    .to_vec()
}

fn start(args: &[String]) -> Maptrace {
    Maptrace::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Sends `signal` to maptrace `after` its start, and checks it ended on its own (not by the signal) and left
/// the target's rate as it found it.
fn signalled(signal: i32, after: Duration) {
    let target = allocating();
    let maptrace = start(&sampled_args(target.pid));
    std::thread::sleep(after);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(maptrace.pid() as i32, signal) };
    let outcome = maptrace.finish();
    // Sent at once, the signal may land before maptrace's own code has run (in exec or the loader): it then
    // dies of it, having changed nothing. From `main` on, the signal is held until handled.
    if after > Duration::ZERO || outcome.status.signal() != Some(signal) {
        assert_eq!(
            outcome.status.signal(),
            None,
            "signal {signal} after {after:?} ended maptrace instead of being handled: {outcome:#?}"
        );
    }
    assert_eq!(
        rate_at_end(target),
        0,
        "signal {signal} after {after:?}: {:#?}",
        outcome.stderr
    );
}

#[test]
fn the_rate_is_put_back_at_the_end_of_the_duration() {
    let target = allocating();
    let mut args = sampled_args(target.pid);
    args.extend(["--duration".into(), "1s".into()]);
    let mut maptrace = start(&args);
    maptrace.wait_attached();
    assert!(
        maptrace
            .stderr_seen
            .iter()
            .any(|l| l.contains(&format!("MemProfileRate {WRITTEN} (was 0)"))),
        "maptrace wrote the rate: {:#?}",
        maptrace.stderr_seen
    );
    let outcome = maptrace.finish();
    assert!(outcome.status.success(), "{outcome:#?}");
    assert_eq!(rate_at_end(target), 0);
}

#[test]
fn ctrl_c_at_any_moment_puts_the_rate_back() {
    // From before the attach has started to well into the trace.
    for ms in [0, 5, 50, 200, 600, 2000] {
        signalled(libc::SIGINT, Duration::from_millis(ms));
    }
}

#[test]
fn sigterm_and_hangup_put_the_rate_back() {
    for ms in [100, 1500] {
        signalled(libc::SIGTERM, Duration::from_millis(ms));
        signalled(libc::SIGHUP, Duration::from_millis(ms));
    }
}

#[test]
fn an_error_after_the_write_puts_the_rate_back() {
    let target = allocating();
    let mut args = sampled_args(target.pid);
    // The recording is opened after the attach (and the write): it fails.
    args.extend(["--record".into(), "/nonexistent-maptrace-dir/trace.rec".into()]);
    let outcome = start(&args).finish();
    assert_eq!(outcome.status.code(), Some(1), "{outcome:#?}");
    assert!(
        outcome
            .stderr
            .iter()
            .any(|l| l.starts_with("maptrace: error: --record")),
        "{outcome:#?}"
    );
    assert_eq!(rate_at_end(target), 0);
}

#[test]
fn after_sigkill_the_rate_is_put_back_by_hand() {
    let target = allocating();
    let mut maptrace = start(&sampled_args(target.pid));
    maptrace.wait_attached();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(maptrace.pid() as i32, libc::SIGKILL) };
    let outcome = maptrace.finish();
    assert_eq!(outcome.status.signal(), Some(libc::SIGKILL));
    // SIGKILL runs nothing: the rate is still maptrace's until it is put back.
    let pid = target.pid.to_string();
    let restored = Command::new(maptrace_bin())
        .args(["--pid", &pid, "--restore-memprofilerate", "0"])
        .output()
        .unwrap();
    assert!(restored.status.success(), "{restored:?}");
    assert_eq!(
        String::from_utf8_lossy(&restored.stdout).trim(),
        format!("maptrace: PID {pid}: runtime.MemProfileRate {WRITTEN} -> 0")
    );
    assert_eq!(rate_at_end(target), 0);
}

#[test]
fn the_agent_puts_every_rate_back_when_it_stops() {
    // A name unique to this run, so that the agent leaves every other process alone.
    let name = format!("allocbench-undo-{}", std::process::id());
    let copy = std::env::temp_dir().join(&name);
    std::fs::copy(target_path(GO, "allocbench"), &copy).unwrap();
    let mut target = Target::start(&copy, &[TARGET_RUNS, "-goroutines=1"]);
    target.go();
    let mut agent = Command::new(maptrace_bin())
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--scan-every",
            "200ms",
            "--include",
            &name,
        ])
        .args(["--sample-rate", &WRITTEN.to_string(), "--write-memprofilerate"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Lines::spawn(agent.stderr.take().unwrap());
    let attached = log.until("the agent's attach", |l| {
        l.contains("attach pid=") || l.contains("error")
    });
    let line = attached.last().unwrap();
    assert!(line.contains("memprofilerate_was=\"0\""), "{attached:#?}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}: {:#?}", log.so_far());
    assert_eq!(rate_at_end(target), 0, "{:#?}", log.so_far());
    let _ = std::fs::remove_file(&copy);
}

#[test]
fn an_exec_while_the_rate_is_changed_gets_no_write() {
    // execer replaces itself with /bin/sleep after its stdin line (go-targets/execer/TRUTH.md).
    let mut target = Target::start(&target_path(GO, "execer"), &[]);
    let mut args = sampled_args(target.pid);
    args.extend(["--duration".into(), "3s".into()]);
    let mut maptrace = start(&args);
    maptrace.wait_attached();
    target.go();
    // The undo is pending: at the end maptrace would put the rate back, but the process now runs another
    // program, which its descriptors (opened at attach) no longer reach: it must not write.
    let outcome = maptrace.finish();
    assert!(outcome.status.success(), "{outcome:#?}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", target.pid)).unwrap();
    assert_eq!(comm.trim(), "sleep", "the exec'd program runs on, untouched");
    target.kill();
}
