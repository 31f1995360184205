//! One attached target, owned: its process, binary, probes and the correlated state. The CLI runs
//! one (`trace`), the node agent many side by side (`agent`).

mod names;
pub mod trace;

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

use names::{Names, ProcessOrFile};

use crate::{
    error::Failure,
    events::recording::{Recorder, Recording},
    events::TraceEvent,
    gobin::{GoBinary, TargetError},
    heap::{
        self,
        search::{ChainQuery, ChainSearch},
    },
    lifecycle::correlate::Correlator,
    lifecycle::finalizers::{FinalizerSection, NeverRan, NeverRanRow},
    lifecycle::retention::RetainedRow,
    lifecycle::sites::{SiteRow, ValueKind},
    lifecycle::LifecycleConfig,
    memory::Memory,
    probes::sampling::{Mode, SampleRate, SampleRates, SamplingInfo, SamplingOptions, SCALING},
    probes::{ProbePlan, Tracer},
    process::Process,
    report::{EndReason, ProbeInfo, Report, TargetInfo},
};

/// Replays a recording made of `binary` through decoding and correlation, with names from the
/// binary alone (types the program made at run time stay unnamed): what the pipeline does with a
/// session's records, without the session. Returns the correlator and the records that did not decode.
pub fn replay(binary: Arc<GoBinary>, recording: &Recording, retain_cycles: u32) -> (Correlator, u64) {
    let mut state = correlator(&binary, retain_cycles, Mode::Full);
    let mut names = Names::new(binary, None, recording.load_bias);
    let mut malformed = 0;
    for record in &recording.records {
        match TraceEvent::decode(record) {
            Ok(ev) => state.record(&ev, &mut names),
            Err(_) => malformed += 1,
        }
    }
    (state, malformed)
}

/// Objects sampled mode tracks at once. Each stands for a whole sample interval of the heap (512 KiB at Go's
/// default rate), so this many stand for 16 GiB of it; past that the oldest are evicted, as in full mode. It
/// keeps a node agent's memory per traced process flat while that process leaks: the lifecycle engine holds a
/// hundred-odd bytes per tracked object (`./x bench`).
const SAMPLED_MAX_TRACKED: usize = 1 << 15;

fn correlator(binary: &GoBinary, retain_cycles: u32, mode: Mode) -> Correlator {
    let defaults = LifecycleConfig::default();
    let max_tracked = match mode {
        Mode::Full => defaults.max_tracked,
        Mode::Sampled => SAMPLED_MAX_TRACKED,
    };
    Correlator::new(
        LifecycleConfig {
            retain_cycles,
            max_tracked,
        },
        binary.layout().cleanups,
    )
}

/// `--restore-memprofilerate`: writes `value` into the target's `runtime.MemProfileRate`, and nothing else;
/// returns the value it replaced.
pub fn write_memprofilerate(pid: u32, value: u64) -> Result<u64, Failure> {
    let process = Process::open(pid)?;
    let binary = open_binary(&process)?;
    let load_bias = process.load_bias(binary.load_vaddr()).unwrap_or(0);
    let addr = binary
        .layout()
        .sampling
        .rate_addr
        .map(|a| a.wrapping_add(load_bias))
        .ok_or_else(|| anyhow::anyhow!("cannot find runtime.MemProfileRate in this binary"))?;
    let unreadable = |e: std::io::Error| anyhow::anyhow!("runtime.MemProfileRate at {addr:#x}: {e}");
    let before = process.read_u64(addr).map_err(unreadable)?;
    process.write(addr, &value.to_le_bytes()).map_err(unreadable)?;
    Ok(before)
}

/// Opens and inspects the executable `process` runs.
pub fn open_binary(process: &Process) -> Result<GoBinary, Failure> {
    GoBinary::open(&process.exe_path).map_err(|e| binary_failure(process, e))
}

/// What a binary that cannot be traced means for the user.
pub fn binary_failure(process: &Process, e: TargetError) -> Failure {
    let (pid, exe) = (process.pid, process.exe_display.clone());
    match e {
        TargetError::NotElf(_) | TargetError::NotGo(_) => Failure::NotGo {
            pid,
            exe,
            why: e.to_string(),
        },
        TargetError::UnsupportedVersion { version, reason } => Failure::UnsupportedGo { version, why: reason },
        TargetError::TooLarge { .. } | TargetError::Corrupt { .. } | TargetError::Truncated { .. } => {
            Failure::RefusedBinary {
                pid,
                exe,
                too_large: matches!(e, TargetError::TooLarge { .. }),
                why: e.to_string(),
            }
        }
        other => Failure::Other(anyhow::anyhow!("reading {exe}: {other}")),
    }
}

/// How stale the correlator may get while the kernel batches wakeups
/// ([`tracer_common::WAKE_AFTER_BYTES`]): reports, the live view and the agent's metrics lag by
/// at most this much.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Retained objects per site whose chains are searched (and grouped by shape).
const CHAIN_OBJECTS_PER_SITE: usize = 64;

/// What [`Session::step`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Records,
    Exited,
}

/// How to trace a target.
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// K: GC cycles an object must survive to count as retained.
    pub retain_cycles: u32,
    pub mode: Mode,
    /// Sampled mode only.
    pub sampling: SamplingOptions,
    /// Walk the heap for reference chains to the retained objects when reporting on a live target; None: no
    /// walk.
    pub chains: Option<ChainOptions>,
}

/// How the heap walk behind the chains may go.
#[derive(Clone, Copy, Debug)]
pub struct ChainOptions {
    /// Longest the target may be stopped (zero: never).
    pub max_pause: Duration,
    /// Steps from a root past which objects are not scanned.
    pub max_depth: u32,
}

/// An attached target.
pub struct Session {
    pub process: Arc<Process>,
    pub binary: Arc<GoBinary>,
    pub plan: ProbePlan,
    tracer: Tracer,
    records: AsyncFd<RingBuf<MapData>>,
    /// Readable once the target has exited.
    exit: AsyncFd<OwnedFd>,
    /// The kernel wakes us for frequent records only in batches; this drains the rest.
    drain_timer: tokio::time::Interval,
    pub state: Correlator,
    names: Names,
    recorder: Option<Recorder>,
    load_bias: u64,
    /// Sampled mode: the target's sample rate.
    rate: Option<SampleRate>,
    chains: Option<ChainOptions>,
    pub started: Instant,
}

impl Session {
    /// Opens the process and its binary, and attaches the probes (needs a tokio reactor).
    pub fn attach(pid: u32, opts: &SessionOptions) -> Result<Self, Failure> {
        let process = Process::open(pid)?;
        let binary = Arc::new(open_binary(&process)?);
        Session::attach_with(process, binary, opts)
    }

    /// Attaches to `process`, whose executable `binary` was inspected already (the node agent inspects each
    /// executable once for all the processes that run it).
    pub fn attach_with(process: Process, binary: Arc<GoBinary>, opts: &SessionOptions) -> Result<Self, Failure> {
        let process = Arc::new(process);
        let plan = ProbePlan::for_binary(&binary, opts.mode)?;
        let load_bias = process.load_bias(binary.load_vaddr()).unwrap_or(0);
        let mut state = correlator(&binary, opts.retain_cycles, opts.mode);
        let rate = match opts.mode {
            Mode::Sampled => Some(SampleRate::attach(
                process.clone(),
                &binary.layout().sampling,
                load_bias,
                &opts.sampling,
            )?),
            Mode::Full => None,
        };
        if let Some(rate) = &rate {
            state.set_sample_rates(SampleRates::fixed(rate.current().unwrap_or(0)));
        }
        // On an error from here on, `rate` is dropped, which puts the target's rate back.
        let mut tracer = Tracer::attach(&binary, &process, &plan, load_bias, opts.sampling.budget)?;
        let records = readable(tracer.take_records().map_err(Failure::Other)?)?;
        let exit_fd = process
            .exit_fd()
            .try_clone_to_owned()
            .map_err(|e| Failure::Other(e.into()))?;
        let mut drain_timer = tokio::time::interval(DRAIN_EVERY);
        drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Session {
            exit: readable(exit_fd)?,
            drain_timer,
            state,
            names: Names::new(binary.clone(), Some(process.clone()), load_bias),
            process,
            binary,
            plan,
            tracer,
            records,
            recorder: None,
            load_bias,
            rate,
            chains: opts.chains,
            started: Instant::now(),
        })
    }

    /// Also write every record to `recorder` from now on.
    pub fn record_to(&mut self, recorder: Recorder) {
        self.recorder = Some(recorder);
    }

    pub fn uprobes(&self) -> usize {
        self.tracer.attached
    }

    pub fn attach_seconds(&self) -> f64 {
        self.tracer.attach_time.as_secs_f64()
    }

    pub fn lost_records(&self) -> u64 {
        self.tracer.lost_records()
    }

    pub fn mode(&self) -> Mode {
        self.plan.mode
    }

    /// Sampled mode: the rate, the budget and what it did (None in full mode).
    pub fn sampling(&self) -> Option<SamplingInfo> {
        let rate = self.rate.as_ref()?;
        let budget = self.tracer.sample_budget();
        Some(SamplingInfo {
            rate: rate.info(),
            budget_per_second: self.tracer.budget,
            samples_seen: budget.total_hits,
            samples_thinned: budget.thinned,
            scaling: SCALING,
        })
    }

    /// The largest `n` allocation sites so far.
    pub fn top_sites(&mut self, n: usize) -> Vec<SiteRow> {
        self.state.sites.rows(&mut self.names, n)
    }

    /// The target's memory (the binary file for static data once it has exited).
    pub fn memory(&self) -> impl Memory {
        ProcessOrFile {
            process: Some(self.process.clone()),
            binary: self.binary.clone(),
            load_bias: self.load_bias,
        }
    }

    /// Waits until records arrive or the drain timer fires (and correlates every queued record), or
    /// the target exits.
    pub async fn step(&mut self) -> Result<Step, Failure> {
        tokio::select! {
            guard = self.records.readable_mut() => {
                guard.map_err(|e| Failure::Other(e.into()))?.clear_ready();
                self.drain();
                Ok(Step::Records)
            }
            _ = self.drain_timer.tick() => {
                self.drain();
                self.govern_rate();
                Ok(Step::Records)
            }
            _ = self.exit.readable() => Ok(Step::Exited),
        }
    }

    /// Sampled mode with `--write-memprofilerate`: lets the governor move the rate; samples taken
    /// after a change are scaled at the new rate.
    fn govern_rate(&mut self) {
        let Some(rate) = &mut self.rate else { return };
        let tracer = &self.tracer;
        if let Some(change) = rate.govern(|| tracer.sample_budget().total_hits, Instant::now()) {
            self.state.sample_rate_changed(&change, monotonic_ns());
        }
    }

    /// Correlates every queued record (they stay valid after the target exits).
    pub fn drain(&mut self) {
        let ring = self.records.get_mut();
        while let Some(item) = ring.next() {
            if let Some(r) = &mut self.recorder {
                if let Err(e) = r.write(&item) {
                    eprintln!("maptrace: recording stopped: {e}");
                    self.recorder = None;
                }
            }
            match TraceEvent::decode(&item) {
                Ok(ev) => self.state.record(&ev, &mut self.names),
                Err(e) => log_once(&format!("maptrace: skipping a malformed record: {e}")),
            }
        }
    }

    /// The report as of now; `ended_by` says why tracing stopped.
    pub fn report(&mut self, ended_by: EndReason, top: usize) -> Report {
        self.drain();
        if let Some(Err(e)) = self.recorder.take().map(Recorder::finish) {
            eprintln!("maptrace: writing the recording: {e}");
        }
        let exited = ended_by == EndReason::TargetExited;
        let now = monotonic_ns();
        let mut retained = self.state.retained(&mut self.names, exited, now);
        let memory = self.memory();
        let mut finalizers = self
            .state
            .finalizer_section(&mut self.names, &memory, self.binary.layout(), now);
        let held = |f: &FinalizerSection| f.never_ran.iter().any(NeverRanRow::wants_chain);
        let chains = self
            .chains
            .filter(|_| !exited && (!retained.is_empty() || held(&finalizers)))
            .map(|options| self.search_chains(&mut retained, &mut finalizers.never_ran, options));
        Report {
            maptrace_version: env!("CARGO_PKG_VERSION"),
            target: TargetInfo {
                pid: self.process.pid,
                binary: self.process.exe_display.clone(),
                go_version: self.binary.version().to_string(),
                experiments: self.binary.experiments().to_vec(),
                stripped: !self.binary.has_symtab(),
            },
            mode: self.plan.mode,
            sampling: self.sampling(),
            duration_seconds: self.started.elapsed().as_secs_f64(),
            ended_by,
            probes: ProbeInfo {
                functions: self.plan.points.iter().map(|p| p.function.name.clone()).collect(),
                uprobes: self.tracer.attached,
                attach_seconds: self.attach_seconds(),
            },
            totals: self.state.sites.totals,
            lost_records: self.lost_records(),
            sites: self.state.sites.rows(&mut self.names, top),
            finalizers,
            gc: self.state.gc_info(exited),
            distributions: self.state.distributions(),
            retained,
            chains,
        }
    }

    /// Walks the live target's heap from its roots to the retained rows' objects, and to the objects of the
    /// finalizers and cleanups that never ran because they are reachable, and fills in their `held_by`.
    fn search_chains(
        &mut self,
        rows: &mut [RetainedRow],
        never_ran: &mut [NeverRanRow],
        options: ChainOptions,
    ) -> ChainSearch {
        let objects = self.state.retained_objects(CHAIN_OBJECTS_PER_SITE);
        let unexplained = || never_ran.iter().filter(|r| r.wants_chain());
        let query = ChainQuery {
            binary: &self.binary,
            memory: &*self.process,
            pid: self.process.pid,
            load_bias: self.load_bias,
            max_pause: options.max_pause,
            max_depth: options.max_depth,
            targets: rows
                .iter()
                .filter_map(|r| objects.get(&r.site))
                .flatten()
                .chain(unexplained().flat_map(|r| &r.objects))
                .copied()
                .collect(),
            closure_targets: unexplained().flat_map(|r| &r.objects).copied().collect(),
            closures: self
                .state
                .unrun_closures()
                .into_iter()
                .map(|(m, funcval)| (m.as_str(), funcval))
                .collect(),
            now_ns: monotonic_ns(),
        };
        let (state, names) = (&self.state, &mut self.names);
        let found = heap::search::search_chains(&query, &mut |base, size| state.allocation_in(base, size, names));
        let mut type_of = |base, size| Some(self.state.allocation_in(base, size, &mut self.names)?.1);
        for r in rows.iter_mut() {
            if let Some(objs) = objects.get(&r.site) {
                let mut shapes = heap::held_by(objs, &found.from_roots, &mut type_of);
                // Each shape's diagnosis, with its share of the row's bytes.
                let total: u64 = shapes.iter().map(|h| h.objects).sum();
                for h in &mut shapes {
                    h.diagnose(r.retained_bytes * h.objects / total.max(1), r.kind == ValueKind::Map);
                }
                let mut shapes = shapes.into_iter();
                r.held_by = shapes.next();
                r.also_held_by = shapes.collect();
            }
        }
        for r in never_ran.iter_mut().filter(|r| r.wants_chain()) {
            // Its own closure explains a finalizer that holds its object; the program's roots explain the rest,
            // and the closures whatever the program's roots do not reach.
            let (first, then) = match r.reason {
                NeverRan::ReachableFromOwnFinalizer => (&found.from_closures, &found.from_roots),
                _ => (&found.from_roots, &found.from_closures),
            };
            let merged: HashMap<u64, heap::Chain> = r
                .objects
                .iter()
                .filter_map(|o| Some((*o, first.get(o).or_else(|| then.get(o))?.clone())))
                .collect();
            r.held_by = heap::held_by(&r.objects, &merged, &mut type_of).into_iter().next();
        }
        found.search
    }

    /// Removes the probes: ~0.1 s per probe in the kernel, so callers report first.
    pub fn detach(self) {
        let Session { rate, tracer, .. } = self;
        // The target's own rate first: removing the probes takes the kernel seconds.
        drop(rate);
        tracer.detach();
    }
}

/// Registers a descriptor with the reactor for readability.
fn readable<T: AsRawFd>(fd: T) -> Result<AsyncFd<T>, Failure> {
    // SAFETY: callers pass an owner (the ring buffer map, or an owned pidfd) whose descriptor
    // stays open and unchanged while registered.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| Failure::Other(anyhow::anyhow!("polling a descriptor: {e}")))
}

/// CLOCK_MONOTONIC, the clock of the kernel's record timestamps (bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn log_once(msg: &str) {
    static SEEN: std::sync::Once = std::sync::Once::new();
    SEEN.call_once(|| eprintln!("{msg}"));
}
/// The agent moves sessions between threads (detaching blocks for seconds, off the reactor).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Session>();
};
