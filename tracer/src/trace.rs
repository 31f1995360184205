//! One tracing session: open the process, attach, stream records into the site table until the
//! duration ends, the user interrupts or the target exits, then build the report.

use std::{
    io::{IsTerminal, Write},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    correlate::Correlator,
    error::Failure,
    events::TraceEvent,
    lifecycle::LifecycleConfig,
    gotype::{GoType, Memory, TypeNames},
    probes::{ProbePlan, Tracer},
    process::{missing_capabilities, Process},
    recording::Recorder,
    report::{write_table, ProbeInfo, Report, TargetInfo},
    sites::{Resolve, SiteTable},
    symbolize::Symbolizer,
    target::{Frame, GoBinary, TargetError},
};

pub struct TraceOptions {
    pub pid: u32,
    pub duration: Option<Duration>,
    /// Redraw the top sites on stderr while tracing (a terminal); otherwise a progress line.
    pub live: bool,
    /// Rows in the report (`usize::MAX` for all).
    pub top: usize,
    /// K: GC cycles an object must survive to count as retained.
    pub retain_cycles: u32,
    /// Also write every raw record here (`recording`).
    pub record: Option<std::path::PathBuf>,
}

/// Names from the live process, falling back to the binary file for static data (type
/// descriptors) once the process has exited.
struct Names<'a> {
    symbols: Symbolizer<'a>,
    types: TypeNames,
    memory: ProcessOrFile<'a>,
}

/// The process when there is one (`None` when replaying a recording), else the binary file.
struct ProcessOrFile<'a> {
    process: Option<&'a Process>,
    binary: &'a GoBinary,
    load_bias: u64,
}

impl Memory for ProcessOrFile<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let live = match self.process {
            Some(p) => p.read(addr, buf),
            None => Err(std::io::ErrorKind::NotFound.into()),
        };
        live.or_else(|e| self.binary.read_static(addr.wrapping_sub(self.load_bias), buf).map_err(|_| e))
    }
}

impl<'a> Names<'a> {
    fn new(binary: &'a GoBinary, process: Option<&'a Process>, load_bias: u64) -> Self {
        Names {
            symbols: Symbolizer::new(binary, load_bias),
            types: TypeNames::new(binary.types_base().map(|b| b.wrapping_add(load_bias))),
            memory: ProcessOrFile { process, binary, load_bias },
        }
    }
}

/// Replays a recording made of `binary` through decoding and correlation, with names from the
/// binary alone (types the program made at run time stay unnamed): what the pipeline does with a
/// session's records, without the session. Returns the correlator and the records that did not decode.
pub fn replay(binary: &GoBinary, recording: &crate::recording::Recording, retain_cycles: u32) -> (Correlator, u64) {
    let mut names = Names::new(binary, None, recording.load_bias);
    let mut state = correlator(binary, retain_cycles);
    let mut malformed = 0;
    for record in &recording.records {
        match TraceEvent::decode(record) {
            Ok(ev) => state.record(&ev, &mut names),
            Err(_) => malformed += 1,
        }
    }
    (state, malformed)
}

fn correlator(binary: &GoBinary, retain_cycles: u32) -> Correlator {
    Correlator::new(LifecycleConfig { retain_cycles, ..LifecycleConfig::default() }, binary.layout().cleanups)
}

impl Resolve for Names<'_> {
    fn frame(&mut self, pc: u64) -> Option<Arc<Frame>> {
        self.symbols.frame(pc)
    }

    fn go_type(&mut self, type_ptr: u64) -> Option<Arc<GoType>> {
        self.types.resolve(&self.memory, type_ptr)
    }

    fn memory(&self) -> &dyn Memory {
        &self.memory
    }
}

fn open_binary(process: &Process) -> Result<GoBinary, Failure> {
    GoBinary::open(&process.exe_path).map_err(|e| match e {
        TargetError::NotElf(_) | TargetError::NotGo(_) => {
            Failure::NotGo { pid: process.pid, exe: process.exe_display.clone(), why: e.to_string() }
        }
        TargetError::UnsupportedVersion { version, reason } => Failure::UnsupportedGo { version, why: reason },
        other => Failure::Other(anyhow::anyhow!("reading {}: {other}", process.exe_display)),
    })
}

/// Runs one session. The probes stay attached in the returned [`Tracer`]: removing them takes the
/// kernel ~0.1 s each, so the caller prints the report first, then detaches.
pub async fn run(opts: &TraceOptions) -> Result<(Report, Tracer), Failure> {
    if !crate::process::exists(opts.pid) {
        return Err(Failure::NoSuchProcess { pid: opts.pid });
    }
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err(Failure::Privileges { missing });
    }
    let process = Process::open(opts.pid)?;
    let binary = open_binary(&process)?;
    let plan = ProbePlan::for_binary(&binary)?;
    let load_bias = process.load_bias(binary.load_vaddr()).unwrap_or(0);
    let mut tracer = Tracer::attach(&binary, &process, &plan, load_bias)?;
    let start = Instant::now();
    eprintln!(
        "maptrace: attached {} uprobes on {} functions of PID {} ({}, {}) in {:.2} s; tracing {}",
        tracer.attached,
        plan.points.len(),
        process.pid,
        process.exe_display,
        binary.version(),
        tracer.attach_time.as_secs_f64(),
        match opts.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C or the target exits".into(),
        }
    );

    let mut names = Names::new(&binary, Some(&process), load_bias);
    let mut state = correlator(&binary, opts.retain_cycles);
    let mut recorder = match &opts.record {
        Some(path) => Some(Recorder::create(path, load_bias).map_err(|e| Failure::Other(anyhow::anyhow!("--record {}: {e}", path.display())))?),
        None => None,
    };
    let mut records = readable(tracer.take_records().map_err(Failure::Other)?)?;
    let exit = readable(process.exit_fd())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Failure::Other(e.into()))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Failure::Other(e.into()))?;
    let deadline = tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(if opts.live { Duration::from_secs(1) } else { Duration::from_secs(5) });
    tick.tick().await;

    let ended_by = loop {
        tokio::select! {
            guard = records.readable_mut() => {
                let mut guard = guard.map_err(|e| Failure::Other(e.into()))?;
                drain(guard.get_inner_mut(), &mut state, &mut names, &mut recorder);
                guard.clear_ready();
            }
            _ = exit.readable() => break "target exited",
            _ = &mut deadline => break "duration",
            _ = sigint.recv() => break "interrupted",
            _ = sigterm.recv() => break "interrupted",
            _ = tick.tick() => progress(opts.live, start, &state.sites, tracer.lost_records(), &mut names),
        }
    };
    // Records already queued are still valid after the target exits.
    drain(records.get_mut(), &mut state, &mut names, &mut recorder);
    if let Some(Err(e)) = recorder.map(Recorder::finish) {
        eprintln!("maptrace: writing the recording: {e}");
    }
    let exited = ended_by == "target exited";
    let lost = tracer.lost_records();
    if opts.live {
        eprint!("\x1b[H\x1b[2J");
    }

    let report = Report {
        maptrace_version: env!("CARGO_PKG_VERSION"),
        target: TargetInfo {
            pid: process.pid,
            binary: process.exe_display.clone(),
            go_version: binary.version().to_string(),
            experiments: binary.experiments().to_vec(),
            stripped: !binary.has_symtab(),
        },
        mode: "full",
        duration_seconds: start.elapsed().as_secs_f64(),
        ended_by,
        probes: ProbeInfo {
            functions: plan.points.iter().map(|p| p.function.name.clone()).collect(),
            uprobes: tracer.attached,
            attach_seconds: tracer.attach_time.as_secs_f64(),
        },
        totals: state.sites.totals,
        lost_records: lost,
        sites: state.sites.rows(&mut names, opts.top),
        finalizers: state.finalizer_section(
            &mut names,
            &ProcessOrFile { process: Some(&process), binary: &binary, load_bias },
            binary.layout(),
            monotonic_ns(),
        ),
        gc: state.gc_info(exited),
        retained: state.retained(&mut names, exited, monotonic_ns()),
    };
    Ok((report, tracer))
}

/// Registers a descriptor with the reactor for readability.
fn readable<T: AsRawFd>(fd: T) -> Result<AsyncFd<T>, Failure> {
    // SAFETY: both callers pass an owner (the ring buffer map, or a borrow of the process's
    // pidfd that outlives the AsyncFd) whose descriptor stays open and unchanged while registered.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| Failure::Other(anyhow::anyhow!("polling a descriptor: {e}")))
}

fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, state: &mut Correlator, names: &mut Names, recorder: &mut Option<Recorder>) {
    while let Some(item) = ring.next() {
        if let Some(r) = recorder {
            if let Err(e) = r.write(&item) {
                eprintln!("maptrace: recording stopped: {e}");
                *recorder = None;
            }
        }
        match TraceEvent::decode(&item) {
            Ok(ev) => state.record(&ev, names),
            Err(e) => log_once(&format!("maptrace: skipping a malformed record: {e}")),
        }
    }
}

/// CLOCK_MONOTONIC, the clock of the kernel's record timestamps (bpf_ktime_get_ns).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn log_once(msg: &str) {
    static SEEN: std::sync::Once = std::sync::Once::new();
    SEEN.call_once(|| eprintln!("{msg}"));
}

fn progress(live: bool, start: Instant, table: &SiteTable, lost: u64, names: &mut Names) {
    let t = &table.totals;
    let head = format!(
        "maptrace: {:.0} s, {} heap allocations ({}), {} sites, {} records lost",
        start.elapsed().as_secs_f64(),
        t.heap_allocations,
        crate::report::human_bytes(t.heap_bytes),
        table.len(),
        lost
    );
    let mut err = std::io::stderr().lock();
    if live {
        let _ = write!(err, "\x1b[H\x1b[2J{head}  (Ctrl-C for the report)\n\n");
        let _ = write_table(&mut err, &table.rows(names, 15), 0);
    } else {
        let _ = writeln!(err, "{head}");
    }
}

/// Whether stderr is a terminal a live view can redraw.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
