//! `demo`: the README's first command. Runs the leaky demo server and shows what maptrace reports
//! about it, so a new user sees a real report without writing a Go program.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::go_versions::{self, PRIMARY};
use crate::layout::Layout;
use crate::{go_targets, process, rust_build, setup};

/// How long maptrace watches the demo.
const TRACE_FOR: &str = "10s";
/// How long the demo may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Kills the demo server when the demo ends in any way, so no leaking process is left behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// SIGTERM (the demo prints its done line and exits), then SIGKILL after 3 s.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn demo(layout: &Layout) -> Result<i32> {
    if !process::is_root() {
        bail!(
            "the demo attaches eBPF uprobes and needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE): run `sudo ./x demo`"
        );
    }
    let primary = go_versions::find(PRIMARY)?;
    setup::setup(layout)?;
    rust_build::build(layout)?;
    go_targets::build_targets(layout, &[primary])?;

    let server_bin = layout.go_targets_out().join(PRIMARY).join("demo");
    println!("demo: starting {}", server_bin.display());
    let child = Command::new(&server_bin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", server_bin.display()))?;
    let mut server = Server(child);
    let stdout = server.0.stdout.take().expect("stdout is piped");
    // A thread reads the server's stdout: it hands over the first line, then echoes the rest.
    let (first_line, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = first_line.send(lines.next());
        for line in lines.map_while(Result::ok) {
            println!("demo server: {line}");
        }
    });
    let Ok(Some(Ok(line))) = ready.recv_timeout(READY_TIMEOUT) else {
        bail!("the demo server printed no ready line within {READY_TIMEOUT:?}");
    };
    let pid = match line.strip_prefix("ready ").map(str::trim) {
        Some(pid) if pid.parse::<u32>().is_ok() => pid.to_owned(),
        _ => bail!("the demo server's first line is {line:?}, expected \"ready <pid>\""),
    };
    println!("demo: server running as pid {pid}; tracing it for {TRACE_FOR}\n");

    let mut maptrace = Command::new(layout.maptrace_bin());
    maptrace.args(["--pid", &pid, "--duration", TRACE_FOR]);
    println!("$ {}", process::describe(&maptrace));
    let status = maptrace.status().context("cannot start maptrace")?;
    stop(&mut server.0);
    if !status.success() {
        eprintln!("demo: maptrace exited with {status}");
    }
    Ok(status.code().unwrap_or(1))
}
