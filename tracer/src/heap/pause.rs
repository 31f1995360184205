//! Stopping the target for a consistent heap walk, within a budget. Every thread is seized with ptrace and
//! interrupted (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`: no signal reaches the program, a blocking syscall is
//! restarted on resume), and detached again as soon as the budget is spent: the walk then goes on against the
//! running program, as with no budget at all. If maptrace dies meanwhile the kernel detaches the threads, which
//! resume. Must be used from one OS thread: ptrace ties a tracee to the thread that seized it.

use std::collections::HashSet;
use std::io;
use std::time::{Duration, Instant};

/// How a walk pauses the target: the budget, and what happened.
pub struct Pause {
    pid: u32,
    budget: Duration,
    /// The seized threads while the target is stopped.
    stopped: Vec<libc::pid_t>,
    since: Option<Instant>,
    /// How long the target was stopped (0: never).
    pub paused: Duration,
    /// Why the target could not be stopped, if it could not (a debugger already traces it, say).
    pub failed: Option<String>,
}

/// Rounds of listing `/proc/PID/task` while new threads keep appearing (Go starts threads at any time).
const MAX_ROUNDS: usize = 8;

impl Pause {
    /// A budget of zero never stops the target.
    pub fn new(pid: u32, budget: Duration) -> Self {
        Pause {
            pid,
            budget,
            stopped: Vec::new(),
            since: None,
            paused: Duration::ZERO,
            failed: None,
        }
    }

    /// Stops every thread of the target, unless the budget is zero. On failure the target runs on (whatever
    /// was seized is released) and `failed` says why.
    pub fn stop(&mut self) {
        if self.budget.is_zero() || self.since.is_some() {
            return;
        }
        self.since = Some(Instant::now());
        if let Err(e) = self.seize_all() {
            // The walk goes on with the target running: say why, and how to avoid trying.
            self.failed = Some(format!(
                "{e} (a debugger or another tracer attached? --max-pause 0 does not try)"
            ));
            self.resume();
        }
    }

    fn seize_all(&mut self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for _ in 0..MAX_ROUNDS {
            let tids = tasks(self.pid).map_err(|e| format!("listing the target's threads: {e}"))?;
            let new: Vec<_> = tids.into_iter().filter(|t| seen.insert(*t)).collect();
            if new.is_empty() {
                return Ok(());
            }
            for tid in new {
                match seize(tid) {
                    Ok(()) => self.stopped.push(tid),
                    // The thread exited between the listing and the seize.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(format!("ptrace(PTRACE_SEIZE) on thread {tid}: {e}")),
                }
            }
        }
        Err("the target kept starting threads".into())
    }

    /// Whether the budget is spent: if so, the target is resumed (the walk goes on without it stopped).
    pub fn check(&mut self) {
        if self.since.is_some_and(|s| s.elapsed() >= self.budget) {
            self.resume();
        }
    }

    /// Resumes the target if it is stopped.
    pub fn resume(&mut self) {
        for tid in self.stopped.drain(..) {
            // SAFETY: plain syscall on a thread this thread seized; failure (it exited) leaves nothing to undo.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
        }
        if let Some(since) = self.since.take() {
            self.paused += since.elapsed();
        }
    }

    /// Whether the target is stopped now.
    pub fn is_stopped(&self) -> bool {
        !self.stopped.is_empty()
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.resume();
    }
}

fn tasks(pid: u32) -> io::Result<Vec<libc::pid_t>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
    }
    Ok(out)
}

/// Seizes one thread and waits until it has stopped.
fn seize(tid: libc::pid_t) -> io::Result<()> {
    // SAFETY: plain syscalls; results are checked.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 || libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut status = 0;
        if libc::waitpid(tid, &mut status, libc::__WALL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `State:` and `TracerPid:` of every thread of `pid`.
    fn threads(pid: u32) -> Vec<(String, String)> {
        let field = |status: &str, name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        tasks(pid)
            .unwrap()
            .into_iter()
            .map(|tid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
                (field(&status, "State:"), field(&status, "TracerPid:"))
            })
            .collect()
    }

    #[test]
    fn stops_every_thread_within_the_budget_and_resumes_them() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // SAFETY: plain syscall. ptrace's tracer is this thread, which /proc names by its thread id.
        let me = unsafe { libc::gettid() }.to_string();

        let mut never = Pause::new(pid, Duration::ZERO);
        never.stop();
        assert!(
            !never.is_stopped() && threads(pid).iter().all(|(_, tracer)| tracer == "0"),
            "a zero budget never stops"
        );

        let mut pause = Pause::new(pid, Duration::from_secs(60));
        pause.stop();
        assert!(pause.is_stopped() && pause.failed.is_none(), "{:?}", pause.failed);
        assert!(
            threads(pid)
                .iter()
                .all(|(state, tracer)| state.starts_with('t') && *tracer == me),
            "{:?}",
            threads(pid)
        );
        pause.check();
        assert!(pause.is_stopped(), "within the budget");
        pause.resume();
        assert!(!pause.is_stopped() && pause.paused > Duration::ZERO);
        assert!(
            threads(pid)
                .iter()
                .all(|(state, tracer)| !state.starts_with('t') && tracer == "0"),
            "{:?}",
            threads(pid)
        );

        let mut spent = Pause::new(pid, Duration::from_nanos(1));
        spent.stop();
        spent.check();
        assert!(!spent.is_stopped(), "a spent budget resumes the target");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
