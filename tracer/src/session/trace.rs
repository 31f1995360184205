//! The CLI's session: attach, stream records into the correlator until the duration ends, the
//! user interrupts or the target exits (with a live view or progress lines meanwhile), then report.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use tokio::signal::unix::{signal, SignalKind};

use crate::{
    error::Failure,
    events::recording::Recorder,
    process::missing_capabilities,
    report::{write_table, EndReason, Report},
    session::{Session, SessionOptions, Step},
};

pub struct TraceOptions {
    pub pid: u32,
    pub duration: Option<Duration>,
    /// Redraw the top sites on stderr while tracing (a terminal); otherwise a progress line.
    pub live: bool,
    /// Rows in the report (`usize::MAX` for all).
    pub top: usize,
    pub session: SessionOptions,
    /// Also write every raw record here (`recording`).
    pub record: Option<std::path::PathBuf>,
}

/// Runs one session. The probes stay attached in the returned [`Session`]: removing them takes the
/// kernel ~0.1 s each, so the caller prints the report first, then detaches.
pub async fn run(opts: &TraceOptions) -> Result<(Report, Session), Failure> {
    // Handled from before the attach, which may write the target's MemProfileRate: a Ctrl-C, SIGTERM or hang-up
    // while attaching then ends the trace the normal way (report, rate put back) instead of killing maptrace
    // with the rate changed.
    let mut stop = Stop::install()?;
    if !crate::process::exists(opts.pid) {
        return Err(Failure::NoSuchProcess { pid: opts.pid });
    }
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err(Failure::Privileges { missing });
    }
    let mut session = Session::attach(opts.pid, &opts.session)?;
    eprintln!(
        "maptrace: attached {} uprobes on {} functions of PID {} ({}, {}) in {:.2} s; {} mode{}; tracing {}",
        session.uprobes(),
        session.plan.points.len(),
        session.process.pid,
        crate::units::printable(&session.process.exe_display),
        session.binary.version(),
        session.attach_seconds(),
        session.mode().as_str(),
        match session.sampling().map(|s| s.rate) {
            Some(r) if r.memprofilerate == Some(0) => {
                ", but the target's MemProfileRate is 0: no allocations will be sampled (see --sample-rate)".to_string()
            }
            Some(r) => match (r.memprofilerate, r.set_by_maptrace_from) {
                (Some(rate), Some(was)) => format!(", MemProfileRate {rate} (was {was})"),
                (Some(rate), None) => format!(", MemProfileRate {rate}"),
                (None, _) => ", MemProfileRate unknown".into(),
            },
            None => String::new(),
        },
        match opts.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C or the target exits".into(),
        }
    );
    if let Some(path) = &opts.record {
        let load_bias = session.process.load_bias(session.binary.load_vaddr()).unwrap_or(0);
        let recorder = Recorder::create(path, load_bias)
            .map_err(|e| Failure::Other(anyhow::anyhow!("--record {}: {e}", path.display())))?;
        session.record_to(recorder);
    }

    let deadline = tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(if opts.live {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    tick.tick().await;
    let start = Instant::now();

    let ended_by = loop {
        tokio::select! {
            step = session.step() => if step? == Step::Exited { break EndReason::TargetExited },
            _ = &mut deadline => break EndReason::Duration,
            _ = stop.recv() => break EndReason::Interrupted,
            _ = tick.tick() => progress(opts.live, start, &mut session),
        }
    };
    if opts.live {
        eprint!("\x1b[H\x1b[2J");
    }
    let report = session.report(ended_by, opts.top);
    Ok((report, session))
}

/// The signals that end a trace (or the agent) early: Ctrl-C, SIGTERM and a hang-up (the terminal closed).
pub struct Stop([tokio::signal::unix::Signal; 3]);

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Holds the stop signals back (pending, not lost) until [`Stop::install`] handles them: called first thing in
/// `main`, so that no moment is left where one would kill maptrace the default way. Threads started meanwhile
/// hold them back too; the thread that installs the handlers takes them.
pub fn hold_stop_signals() {
    set_stop_signals(libc::SIG_BLOCK);
}

fn set_stop_signals(how: libc::c_int) {
    // SAFETY: a zeroed sigset filled through the libc calls that own its layout; this thread's mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

impl Stop {
    /// Handles the stop signals from now on, including one that arrived while they were held.
    pub fn install() -> Result<Stop, Failure> {
        let on = |kind| signal(kind).map_err(|e| Failure::Other(e.into()));
        let stop = Stop([
            on(SignalKind::interrupt())?,
            on(SignalKind::terminate())?,
            on(SignalKind::hangup())?,
        ]);
        set_stop_signals(libc::SIG_UNBLOCK);
        Ok(stop)
    }

    pub async fn recv(&mut self) {
        let [int, term, hup] = &mut self.0;
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
}

fn progress(live: bool, start: Instant, session: &mut Session) {
    let t = session.state.sites.totals;
    let head = format!(
        "maptrace: {:.0} s, {} heap allocations ({}), {} sites, {} records lost",
        start.elapsed().as_secs_f64(),
        t.heap_allocations,
        crate::units::human_bytes(t.heap_bytes),
        session.state.sites.len(),
        session.lost_records()
    );
    let mut err = std::io::stderr().lock();
    if live {
        let _ = write!(err, "\x1b[H\x1b[2J{head}  (Ctrl-C for the report)\n\n");
        let _ = write_table(&mut crate::units::Printable(&mut err), &session.top_sites(15), 0);
    } else {
        let _ = writeln!(err, "{head}");
    }
}

/// Whether stderr is a terminal a live view can redraw.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
