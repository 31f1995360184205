//! Harness for maptrace's end-to-end tests: real `maptrace` against real go-targets, real eBPF.
//!
//! `./x test` (cargo xtask test) builds everything and sets `MAPTRACE_BIN` and
//! `MAPTRACE_GO_TARGETS`; the tests need root, like maptrace itself.

pub mod agent;
pub mod generics;

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::{mpsc, OnceLock},
    thread,
    time::Duration,
};

use serde_json::Value;

/// Declares, for every Go toolchain in go-targets/go-versions.txt (named as under `MAPTRACE_GO_TARGETS`), a
/// module named after its release line (`go1_24`) with two tests calling `check(go_version, stripped)`:
/// `go_matrix!(super::check);` (the path is seen from inside the generated modules).
/// `go_matrix!(since "1.24"; super::check);` does the same for the toolchains of that release line and newer.
#[macro_export]
macro_rules! go_matrix {
    (since $line:tt; $check:path) => {
        $crate::__go_matrix_versions!(since $line; $check);
    };
    ($check:path) => {
        $crate::__go_matrix_versions!($check);
    };
    (@each $check:path; $($name:ident $go:literal),*) => {
        $(
            mod $name {
                #[test]
                fn unstripped() {
                    $check($go, false);
                }
                #[test]
                fn stripped() {
                    $check($go, true);
                }
            }
        )*
    };
}

// `__go_matrix_versions!`: the versions go_matrix! expands to, written by build.rs from go-versions.txt.
include!(concat!(env!("OUT_DIR"), "/go_matrix.rs"));

/// A hang is a failure: nothing here should take this long.
const PATIENCE: Duration = Duration::from_secs(120);

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(default))
}

pub fn maptrace_bin() -> PathBuf {
    let p = env_path("MAPTRACE_BIN", "target/release/maptrace");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `./x test` (it builds maptrace)",
        p.display()
    );
    p
}

/// A go-target built by `cargo xtask build-targets`, e.g. `target_path("1.24.11", "counting-stripped")`.
pub fn target_path(go: &str, name: &str) -> PathBuf {
    let p = env_path("MAPTRACE_GO_TARGETS", ".cache/go-targets").join(go).join(name);
    assert!(
        p.exists(),
        "{} is missing: run `./x build-targets --all-go` (or the whole `./x test`)",
        p.display()
    );
    p
}

/// A directory of this test process (`maptrace-e2e-<tag>-<pid>` under the temporary directory), removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("maptrace-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines of a child's pipe, read on a thread so a test can wait with a deadline.
pub struct Lines(mpsc::Receiver<String>);

impl Lines {
    pub fn spawn<R: Read + Send + 'static>(r: R) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// Lines up to and including the first that satisfies `want`.
    pub fn until(&self, what: &str, want: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.0.recv_timeout(PATIENCE) {
                Ok(line) => {
                    let done = want(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("waiting for {what}: got only {seen:#?}"),
            }
        }
    }

    /// Lines that arrived so far, without waiting.
    pub fn so_far(&self) -> Vec<String> {
        self.0.try_iter().collect()
    }

    /// Every line until the pipe closes (or nothing arrives for a long while).
    pub fn rest(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.0.recv_timeout(PATIENCE) {
            out.push(line);
        }
        out
    }
}

/// A running go-target that has printed `ready <pid>`.
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
    pub pid: u32,
}

impl Target {
    pub fn start(path: &std::path::Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(path);
        cmd.args(args);
        Self::start_command(&mut cmd)
    }

    /// Starts a target through a command that ends by exec-ing it (so the PID is the child's).
    pub fn start_command(cmd: &mut Command) -> Self {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stdin = child.stdin.take();
        let stdout = Lines::spawn(child.stdout.take().unwrap());
        let first = stdout.until("the target's ready line", |_| true).remove(0);
        assert_eq!(first, format!("ready {}", child.id()), "protocol: first line of {what}");
        let pid = child.id();
        Self {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Lets the target run its measured work (stdin stays open: lingering targets wait for EOF).
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"go\n").unwrap();
    }

    /// Waits for the target's `done` line.
    pub fn wait_done(&mut self) -> String {
        self.stdout
            .until("the target's done line", |l| l.starts_with("done"))
            .pop()
            .unwrap()
    }

    /// Closes stdin and waits for exit: the output after the ready line, and the status.
    pub fn finish(mut self) -> (Vec<String>, ExitStatus) {
        drop(self.stdin.take());
        let out = self.stdout.rest();
        (out, wait_with_deadline(&mut self.child, "the target"))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_deadline(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running `maptrace`.
pub struct Maptrace {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Lines,
    pub stderr_seen: Vec<String>,
}

/// A finished `maptrace`.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: Vec<String>,
}

impl Outcome {
    /// The JSON report maptrace printed, checked against docs/report.schema.json.
    pub fn json(&self) -> Value {
        let report: Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "maptrace's stdout is not JSON ({e}):\n{}\nstderr: {:#?}",
                self.stdout, self.stderr
            )
        });
        check_report_schema(&report);
        report
    }
}

/// docs/report.schema.json, compiled once.
fn report_schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let schema: Value = serde_json::from_str(include_str!("../../docs/report.schema.json"))
            .expect("docs/report.schema.json is JSON");
        jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("docs/report.schema.json is not a 2020-12 schema: {e}"))
    })
}

/// Panics with every way `report` breaks docs/report.schema.json, and the report.
pub fn check_report_schema(report: &Value) {
    let errors: Vec<String> = report_schema()
        .iter_errors(report)
        .map(|e| format!("  {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "maptrace's JSON report breaks docs/report.schema.json:\n{}\nthe report: {report:#}",
        errors.join("\n")
    );
}

impl Maptrace {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(maptrace_bin()), args)
    }

    /// Starts maptrace through a wrapper command (e.g. one that drops privileges).
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Self {
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting maptrace");
        let stdout = child.stdout.take();
        let stderr: ChildStderr = child.stderr.take().unwrap();
        Self {
            child,
            stdout,
            stderr: Lines::spawn(stderr),
            stderr_seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the "attached" line: from then on every allocation is traced.
    pub fn wait_attached(&mut self) {
        let lines = self.stderr.until("maptrace to attach", |l| {
            l.starts_with("maptrace: attached") || l.starts_with("maptrace: error")
        });
        let last = lines.last().unwrap().clone();
        self.stderr_seen.extend(lines);
        assert!(
            last.starts_with("maptrace: attached"),
            "maptrace failed to attach: {:#?}",
            self.stderr_seen
        );
    }

    pub fn interrupt(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    pub fn finish(mut self) -> Outcome {
        let mut stdout = String::new();
        let mut pipe = self.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            pipe.read_to_string(&mut stdout).unwrap();
            stdout
        });
        let status = wait_with_deadline(&mut self.child, "maptrace");
        let stdout = reader.join().unwrap();
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        stderr.extend(self.stderr.rest());
        Outcome { status, stdout, stderr }
    }
}

/// A target's measured phase run under maptrace: what the target printed after its ready line,
/// how it exited, and maptrace's JSON report.
pub struct Traced {
    pub target_output: Vec<String>,
    pub target_status: ExitStatus,
    pub report: Value,
}

/// Starts maptrace (`--pid`, then `args`) on a ready target, waits until it is attached and lets
/// the target start its measured phase.
fn attach_and_go(target: &mut Target, args: &[&str]) -> Maptrace {
    let pid = target.pid.to_string();
    let args = [&["--pid", pid.as_str()], args].concat();
    let mut maptrace = Maptrace::start(&args);
    maptrace.wait_attached();
    target.go();
    maptrace
}

/// Attaches maptrace (JSON, no live view) to a ready target, lets the target run its measured
/// phase and waits for both to finish; maptrace must succeed.
pub fn trace_measured_phase(target: Target) -> Traced {
    trace_measured_phase_with(target, &[])
}

/// [`trace_measured_phase`] with more maptrace arguments (e.g. `--mode sampled`).
pub fn trace_measured_phase_with(mut target: Target, extra: &[&str]) -> Traced {
    let maptrace = attach_and_go(&mut target, &[&["--json", "--no-live"], extra].concat());
    let (target_output, target_status) = target.finish();
    let outcome = maptrace.finish();
    assert!(outcome.status.success(), "maptrace failed: {outcome:#?}");
    Traced {
        target_output,
        target_status,
        report: outcome.json(),
    }
}

/// Traces a target that stays alive after its measured phase: maptrace is interrupted once the
/// target printed its done line (so the target's memory can still be read), then the target is
/// let go. Returns the done line and the report.
pub fn trace_until_done(target: Target) -> (String, Value) {
    trace_until_done_with(target, &[])
}

/// [`trace_until_done`] with more maptrace arguments (e.g. `--mode sampled`).
pub fn trace_until_done_with(target: Target, extra: &[&str]) -> (String, Value) {
    let (done, outcome) = trace_until_done_as(target, &[&["--json", "--no-live"], extra].concat());
    (done, outcome.json())
}

/// [`trace_until_done`] with exactly these maptrace arguments after `--pid` (e.g. another
/// `--format`); maptrace must succeed.
pub fn trace_until_done_as(mut target: Target, args: &[&str]) -> (String, Outcome) {
    let maptrace = attach_and_go(&mut target, args);
    let done = target.wait_done();
    maptrace.interrupt();
    let outcome = maptrace.finish();
    let (_, status) = target.finish();
    assert!(status.success(), "the target failed: {status}");
    assert!(outcome.status.success(), "maptrace failed: {outcome:#?}");
    (done, outcome)
}

/// Asserts one site row per function with the given count.
pub fn assert_counts(report: &Value, expected: &[(&str, u64)]) {
    for (function, n) in expected {
        let rows = sites_at(report, function);
        assert_eq!(rows.len(), 1, "exactly one site row at {function}: {report:#}");
        assert_eq!(rows[0]["count"], *n, "{function}: {:#}", rows[0]);
    }
}

/// Runs maptrace to completion (for the error cases).
pub fn run_maptrace(args: &[&str]) -> Outcome {
    Maptrace::start(args).finish()
}

/// The JSON report's site rows whose site function is `function`.
pub fn sites_at<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["sites"]
        .as_array()
        .expect("sites array")
        .iter()
        .filter(|s| s["stack"][0]["function"] == function)
        .collect()
}

/// Site functions of every row (`"(runtime)"` for rows with no user frame).
pub fn site_functions(report: &Value) -> Vec<String> {
    report["sites"]
        .as_array()
        .expect("sites array")
        .iter()
        .map(|s| s["stack"][0]["function"].as_str().unwrap_or("(runtime)").to_string())
        .collect()
}
