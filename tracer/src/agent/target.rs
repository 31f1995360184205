//! One target's life in the agent: inspect its executable, attach, correlate, publish a report now and then, stop
//! when the target exits or the agent says so (an exec, or shutdown), then detach.
//!
//! The task is supervised: whatever happens inside it, a panic included, its series are removed and the agent's
//! loop hears how it ended, so no entry goes stale and the agent goes on serving every other target. The parts
//! that take long without awaiting (reading the executable's tables, attaching uprobes, building a report,
//! detaching) run on blocking threads or with [`tokio::task::block_in_place`], so that they never hold up the
//! async workers the other targets share.

use std::{any::Any, future::Future, time::Duration};

use tokio::sync::{mpsc, watch};

use super::discover::{Candidate, ProcessKey};
use super::inspect::Binaries;
use super::metrics::{SharedMetrics, TargetLabels, TargetMetrics};
use super::Log;
use crate::{
    error::Failure,
    gobin::FileIdentity,
    process::Process,
    report::EndReason,
    session::{binary_failure, Session, SessionOptions, Step},
};

/// The most often a target's report is rebuilt for /metrics, and only when /metrics was read since
/// the last: a report walks every tracked object (retention, survival histograms). With ten targets
/// leaking steadily, rebuilding every second took the agent from 0.2 to 0.9 cores over ten minutes
/// (`cargo xtask bench --agent-minutes`). A scrape sees numbers at most this much older than the
/// previous scrape's.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// What every target's task shares.
#[derive(Clone)]
pub(super) struct Context {
    pub session: SessionOptions,
    pub shared: SharedMetrics,
    pub log: Log,
    pub binaries: Binaries,
    pub ended: mpsc::UnboundedSender<Ended>,
}

/// How a target's task ended, for the agent's loop to remember.
#[derive(Debug)]
pub(super) struct Ended {
    pub key: ProcessKey,
    pub exe: FileIdentity,
    pub outcome: Outcome,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Stopped by the agent (exec, gone from the scan, shutdown).
    Detached,
    /// The process exited (also before the attach finished).
    Exited,
    /// Its executable cannot be traced, with this reason: not again while the file stays the same.
    Refused(&'static str),
    /// The attach failed in a way another attempt may not: try again later.
    Failed,
    /// Its tracing panicked after the attach: not again while the process runs.
    Dropped,
}

/// Starts `c`'s task and its supervisor.
pub(super) fn spawn(c: Candidate, cx: Context, stop: watch::Receiver<bool>) {
    supervise(c.clone(), cx.clone(), trace(c, cx, stop));
}

/// Runs `work` for `c` as a task of its own, and when it ends, however it ends, removes `c`'s series and tells
/// the agent's loop.
fn supervise(c: Candidate, cx: Context, work: impl Future<Output = Outcome> + Send + 'static) {
    let (key, exe) = (c.key, c.exe);
    let task = tokio::spawn(work);
    tokio::spawn(async move {
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => {
                    cx.failed(&c, "panic", &panic_message(panic.as_ref()));
                    Outcome::Dropped
                }
                // Cancelled: only when the runtime shuts down.
                Err(_) => Outcome::Detached,
            },
        };
        cx.shared.lock().unwrap_or_else(|p| p.into_inner()).targets.remove(&key);
        let _ = cx.ended.send(Ended { key, exe, outcome });
    });
}

async fn trace(c: Candidate, cx: Context, mut stop: watch::Receiver<bool>) -> Outcome {
    let mut session = match attach(&c, &cx).await {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    cx.log.event(
        "attach",
        &cx.fields(
            &c,
            &[
                ("go", session.binary.version().to_string()),
                ("uprobes", session.uprobes().to_string()),
                // What `--restore-memprofilerate` would put back, should the agent die by SIGKILL.
                (
                    "memprofilerate_was",
                    session
                        .sampling()
                        .and_then(|s| s.rate.set_by_maptrace_from)
                        .map(|r| r.to_string())
                        .unwrap_or_default(),
                ),
            ],
        ),
    );
    let labels = TargetLabels::of(&c);
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    // Scrapes seen at the last publication (None: publish at once).
    let mut published_at_scrape = None;
    let (ended_by, outcome) = loop {
        tokio::select! {
            step = session.step() => match step {
                Ok(Step::Records) => {}
                Ok(Step::Exited) => break ("target exited", Outcome::Exited),
                Err(e) => {
                    cx.log.event("error", &cx.fields(&c, &[("error", e.to_string())]));
                    break ("error", Outcome::Failed)
                }
            },
            _ = publish.tick() => {
                let scrapes = cx.shared.lock().unwrap_or_else(|p| p.into_inner()).scrapes;
                if published_at_scrape != Some(scrapes) {
                    let report = tokio::task::block_in_place(|| session.report(EndReason::Running, usize::MAX));
                    let metrics = TargetMetrics { labels: labels.clone(), report };
                    cx.shared.lock().unwrap_or_else(|p| p.into_inner()).targets.insert(c.key, metrics);
                    published_at_scrape = Some(scrapes);
                }
            }
            // The agent dropped the sender (exec, or the process left the scan) or is stopping.
            _ = stop.changed() => break ("detached", Outcome::Detached),
        }
    };
    cx.shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .targets
        .remove(&c.key);
    cx.log
        .event("detach", &cx.fields(&c, &[("reason", ended_by.to_string())]));
    let _ = tokio::task::spawn_blocking(move || session.detach()).await;
    outcome
}

/// Inspects `c`'s executable (once per file, see [`Binaries`]) and attaches, on a blocking thread; a failure is
/// logged and counted here.
async fn attach(c: &Candidate, cx: &Context) -> Result<Session, Outcome> {
    let (pid, exe, options, binaries) = (c.key.pid, c.exe, cx.session, cx.binaries.clone());
    let attached = tokio::task::spawn_blocking(move || {
        let process = Process::open(pid)?;
        let binary = binaries
            .get_or_inspect(&process.exe_path, exe)
            .map_err(|e| binary_failure(&process, e))?;
        Session::attach_with(process, binary, &options)
    })
    .await;
    let failure = match attached {
        Ok(Ok(session)) => return Ok(session),
        Ok(Err(failure)) => failure,
        Err(e) => {
            let why = e
                .try_into_panic()
                .map_or_else(|_| "cancelled".into(), |p| panic_message(p.as_ref()));
            cx.failed(c, "panic", &why);
            // Inspecting this file panicked once; it would again.
            return Err(Outcome::Refused("panic"));
        }
    };
    let reason = failure.reason();
    Err(match failure {
        Failure::NoSuchProcess { .. } => Outcome::Exited,
        Failure::NotGo { .. } => Outcome::Refused(reason),
        Failure::UnsupportedGo { .. } | Failure::RefusedBinary { .. } | Failure::BinaryGone { .. } => {
            cx.failed(c, reason, &failure.to_string());
            Outcome::Refused(reason)
        }
        Failure::Privileges { .. } | Failure::KernelSupport { .. } | Failure::Other(_) => {
            cx.failed(c, reason, &failure.to_string());
            Outcome::Failed
        }
    })
}

impl Context {
    /// Logs and counts a failure of `c`'s attach or tracing.
    fn failed(&self, c: &Candidate, reason: &'static str, error: &str) {
        *self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attach_failures
            .entry(reason)
            .or_default() += 1;
        self.log.event(
            "error",
            &self.fields(c, &[("reason", reason.to_string()), ("error", error.to_string())]),
        );
    }

    fn fields(&self, c: &Candidate, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let labels = TargetLabels::of(c);
        let mut v = vec![
            ("pid", c.key.pid.to_string()),
            ("binary", c.binary.clone()),
            ("container", labels.container),
            ("pod", labels.pod),
        ];
        v.extend(extra.iter().cloned());
        v
    }
}

/// A panic's message, as `panic!` was given it.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn panic_messages_as_given() {
        let caught = |f: fn()| std::panic::catch_unwind(f).unwrap_err();
        assert_eq!(panic_message(caught(|| panic!("plain")).as_ref()), "plain");
        assert_eq!(
            panic_message(caught(|| panic!("formatted {}", 42)).as_ref()),
            "formatted 42"
        );
    }

    #[tokio::test]
    async fn a_panicking_target_is_counted_and_dropped_and_the_agent_goes_on() {
        let (ended, mut ended_rx) = mpsc::unbounded_channel();
        let cx = Context {
            session: SessionOptions {
                retain_cycles: 2,
                mode: crate::probes::sampling::Mode::Sampled,
                sampling: Default::default(),
                chains: None,
            },
            shared: Arc::new(Mutex::new(Default::default())),
            log: Log { json: true },
            binaries: Binaries::default(),
            ended,
        };
        let candidate = |pid| Candidate {
            key: ProcessKey {
                pid,
                start_ticks: 1,
                exe_dev: 1,
                exe_ino: 2,
            },
            exe: FileIdentity {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4,
            },
            binary: "hostile".into(),
            container: None,
            pod: None,
        };
        supervise(candidate(7), cx.clone(), async {
            panic!("a bug one target's input found")
        });
        supervise(candidate(8), cx.clone(), async { Outcome::Exited });
        let mut outcomes = vec![ended_rx.recv().await.unwrap(), ended_rx.recv().await.unwrap()];
        outcomes.sort_by_key(|e| e.key.pid);
        let outcomes: Vec<_> = outcomes.into_iter().map(|e| (e.key.pid, e.outcome)).collect();
        assert_eq!(outcomes, [(7, Outcome::Dropped), (8, Outcome::Exited)]);
        let shared = cx.shared.lock().unwrap();
        assert_eq!(shared.attach_failures.get("panic"), Some(&1));
        assert!(shared.targets.is_empty());
    }
}
