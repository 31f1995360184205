//! Stopping the target for a consistent heap walk, within a budget. Every thread is seized with ptrace and
//! interrupted (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`: no signal reaches the program, a blocking syscall is
//! restarted on resume), and detached again as soon as the budget is spent: the walk then goes on against the
//! running program, as with no budget at all.
//!
//! The budget holds from the first seize: a thread that does not reach its stop in time (a parent waiting in
//! vfork, a thread in uninterruptible sleep) ends the pause for every thread, and the walk runs against the
//! running program. That needs one thing ptrace does not offer, releasing a thread that has been seized but has
//! not stopped; what does it is the end of the tracer: the kernel detaches every tracee of a thread that exits.
//! So the stops are held by a thread of their own ([`Holder`]), which ends when the pause does. If maptrace
//! dies meanwhile the kernel detaches the threads too, and they resume.

use std::collections::HashSet;
use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How a walk pauses the target: the budget, and what happened.
pub struct Pause {
    pid: u32,
    budget: Duration,
    /// The thread holding the target stopped, while it is.
    holder: Option<Holder>,
    since: Option<Instant>,
    /// How long the target was stopped (0: never).
    pub paused: Duration,
    /// Why the target could not be stopped, if it could not (a debugger already traces it, say, or a thread did
    /// not stop within the budget).
    pub failed: Option<String>,
}

/// Rounds of listing `/proc/PID/task` while new threads keep appearing (Go starts threads at any time).
const MAX_ROUNDS: usize = 8;

/// How often the holder looks whether the seized threads have stopped.
const STOP_POLL: Duration = Duration::from_micros(50);

/// The thread that seized the target's threads; telling it to release them (or dropping it) ends the pause.
struct Holder {
    release: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Holder {
    /// Seizes and stops every thread of `pid` by `deadline`, on a new thread that then holds them until released.
    fn stop(pid: u32, deadline: Instant) -> Result<Holder, String> {
        let (stopped_tx, stopped_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("maptrace-pause".into())
            .spawn(move || {
                let mut seized = Vec::new();
                let outcome = seize_all(pid, deadline, &mut seized);
                let ok = outcome.is_ok();
                let _ = stopped_tx.send(outcome);
                if ok {
                    // Held until released (or until the walk's side of the channel is gone).
                    let _ = release_rx.recv();
                }
                for tid in seized {
                    // SAFETY: plain syscall on a thread this thread seized; failure (it exited, or never stopped)
                    // leaves nothing to undo: this thread's end detaches whatever remains.
                    unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
                }
            })
            .map_err(|e| format!("starting the pause's thread: {e}"))?;
        match stopped_rx.recv() {
            Ok(Ok(())) => Ok(Holder { release, thread }),
            Ok(Err(why)) => {
                let _ = thread.join();
                Err(why)
            }
            Err(_) => Err("the pause's thread ended".into()),
        }
    }

    fn release(self) {
        let _ = self.release.send(());
        let _ = self.thread.join();
    }
}

impl Pause {
    /// A budget of zero never stops the target.
    pub fn new(pid: u32, budget: Duration) -> Self {
        Pause {
            pid,
            budget,
            holder: None,
            since: None,
            paused: Duration::ZERO,
            failed: None,
        }
    }

    /// Stops every thread of the target within the budget, unless the budget is zero. On failure the target
    /// runs on (whatever was seized is released) and `failed` says why.
    pub fn stop(&mut self) {
        if self.budget.is_zero() || self.since.is_some() {
            return;
        }
        let since = Instant::now();
        self.since = Some(since);
        match Holder::stop(self.pid, since + self.budget) {
            Ok(holder) => self.holder = Some(holder),
            Err(e) => {
                // The walk goes on with the target running: say why, and how to avoid trying.
                self.failed = Some(format!(
                    "{e}; the walk went on with the target running (--max-pause 0 does not try)"
                ));
                self.resume();
            }
        }
    }

    /// Whether the budget is spent: if so, the target is resumed (the walk goes on without it stopped).
    pub fn check(&mut self) {
        if self.since.is_some_and(|s| s.elapsed() >= self.budget) {
            self.resume();
        }
    }

    /// Resumes the target if it is stopped.
    pub fn resume(&mut self) {
        if let Some(holder) = self.holder.take() {
            holder.release();
        }
        if let Some(since) = self.since.take() {
            self.paused += since.elapsed();
        }
    }

    /// Whether the target is stopped now.
    pub fn is_stopped(&self) -> bool {
        self.holder.is_some()
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.resume();
    }
}

/// Seizes every thread of `pid` (recording each in `seized`) and waits until all have stopped, by `deadline`.
fn seize_all(pid: u32, deadline: Instant, seized: &mut Vec<libc::pid_t>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for _ in 0..MAX_ROUNDS {
        let tids = tasks(pid).map_err(|e| format!("listing the target's threads: {e}"))?;
        let new: Vec<_> = tids.into_iter().filter(|t| seen.insert(*t)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut waiting = Vec::new();
        for tid in new {
            match seize(tid) {
                Ok(()) => {
                    seized.push(tid);
                    waiting.push(tid);
                }
                // The thread exited between the listing and the seize.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(format!("ptrace(PTRACE_SEIZE) on thread {tid}: {e}")),
            }
        }
        wait_stopped(&mut waiting, deadline)?;
    }
    Err("the target kept starting threads".into())
}

/// Waits until every thread of `waiting` has stopped (or exited), by `deadline`.
fn wait_stopped(waiting: &mut Vec<libc::pid_t>, deadline: Instant) -> Result<(), String> {
    loop {
        waiting.retain(|&tid| {
            let mut status = 0;
            // SAFETY: plain syscall on a thread this thread seized; WNOHANG never blocks.
            let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
            // 0: not stopped yet; the thread's id: stopped; -1: gone (nothing to wait for).
            r == 0
        });
        let Some(&tid) = waiting.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "thread {tid} did not stop within the pause budget (waiting in vfork, or in uninterruptible sleep?), so the pause ended for every thread"
            ));
        }
        std::thread::sleep(STOP_POLL);
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

/// Seizes one thread and asks it to stop.
fn seize(tid: libc::pid_t) -> io::Result<()> {
    // SAFETY: plain syscalls; results are checked.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 || libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) != 0 {
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
        // The tracer is one of this process's threads (the pause's holder), which /proc names by its thread id.
        let ours = |tracer: &str| {
            tasks(std::process::id())
                .unwrap()
                .iter()
                .any(|t| t.to_string() == tracer)
        };

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
                .all(|(state, tracer)| state.starts_with('t') && ours(tracer)),
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

    /// A parent blocked in vfork: its thread cannot stop until the child execs or exits (here after 3 s).
    fn vfork_parent() -> std::process::Child {
        let dir = std::env::temp_dir().join(format!("maptrace-vfork-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("vfork.c");
        std::fs::write(
            &src,
            "#include <unistd.h>\nint main(void) { if (vfork() == 0) { sleep(3); _exit(0); } return 0; }\n",
        )
        .unwrap();
        let exe = dir.join("vfork");
        let cc = std::process::Command::new("cc").arg("-o").arg(&exe).arg(&src).status();
        assert!(
            cc.is_ok_and(|s| s.success()),
            "cc (the build needs gcc: ./x installs it)"
        );
        std::process::Command::new(&exe).spawn().unwrap()
    }

    #[test]
    fn a_thread_that_cannot_stop_ends_the_pause_for_all_within_the_budget() {
        let mut parent = vfork_parent();
        let pid = parent.id();
        // Until the parent is inside vfork (its child exists).
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).map_or(true, |c| c.trim().is_empty())
        {
            assert!(Instant::now() < deadline, "no vfork child");
            std::thread::sleep(Duration::from_millis(5));
        }
        let budget = Duration::from_millis(20);
        let mut pause = Pause::new(pid, budget);
        let started = Instant::now();
        pause.stop();
        let took = started.elapsed();
        assert!(!pause.is_stopped(), "not stopped: the pause ended");
        let why = pause.failed.clone().unwrap_or_default();
        assert!(why.contains("did not stop within the pause budget"), "{why}");
        assert!(
            // Waiting for the stuck thread would take the child's 3 s.
            took < budget + Duration::from_millis(1500),
            "stop returned after {took:?}"
        );
        // Once the child exits, the parent goes on and exits: nothing left it stopped or traced.
        let status = parent.wait().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(pause.paused < Duration::from_millis(1600), "{:?}", pause.paused);
    }
}
