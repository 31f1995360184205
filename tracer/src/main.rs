//! The `maptrace` binary: parse the command line, run one session, print the report.

use std::io::{IsTerminal, Write};

use clap::Parser;
use tracer::{
    agent::{self, AgentOptions},
    cli::{AgentArgs, Cli, Command, Format, LogFormat},
    error::Failure,
    session::{
        trace::{run, stderr_is_terminal, TraceOptions},
        ChainOptions, SessionOptions,
    },
};

fn main() {
    tracer::session::trace::hold_stop_signals();
    let cli = Cli::parse();
    if let Some(Command::Agent(args)) = cli.command {
        run_agent(args);
    }
    if let (Some(value), Some(pid)) = (cli.restore_memprofilerate, cli.pid) {
        match tracer::session::write_memprofilerate(pid, value) {
            Ok(before) => {
                println!("maptrace: PID {pid}: runtime.MemProfileRate {before} -> {value}");
                std::process::exit(0)
            }
            Err(failure) => fail(failure.exit_code(), &failure.to_string()),
        }
    }
    let format = if cli.json { Format::Json } else { cli.format };
    if format == Format::Pprof && cli.output.is_none() && std::io::stdout().is_terminal() {
        fail(
            2,
            "a pprof profile is binary: write it with --output FILE (or redirect stdout)",
        );
    }
    // Created before tracing, so a bad path fails at once rather than after the whole trace.
    let output = cli.output.as_ref().map(|path| {
        tracer::output::create_private(path)
            .unwrap_or_else(|e| fail(2, &format!("--output {}: {e} (choose a writable path)", path.display())))
    });
    let opts = trace_options(cli, format);
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))
        .and_then(|rt| rt.block_on(run(&opts)));
    let (report, session) = result.unwrap_or_else(|failure| fail(failure.exit_code(), &failure.to_string()));
    let mut out: Box<dyn Write> = match output {
        Some(file) => Box::new(std::io::BufWriter::new(file)),
        None => Box::new(std::io::stdout().lock()),
    };
    let written = format.write(&report, &mut out).and_then(|()| out.flush());
    drop(out);
    session.detach();
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            fail(1, &format!("writing the report: {e}"));
        }
    }
}

/// What the command line asks of one trace.
fn trace_options(cli: Cli, format: Format) -> TraceOptions {
    TraceOptions {
        // clap requires --pid without a subcommand.
        pid: cli.pid.unwrap_or_default(),
        duration: cli.duration,
        live: !cli.no_live && stderr_is_terminal(),
        top: if format == Format::Text { cli.top } else { usize::MAX },
        session: SessionOptions {
            retain_cycles: cli.cycles,
            mode: cli.mode,
            sampling: cli.sampling.options(),
            chains: (!cli.no_chains).then_some(ChainOptions {
                max_pause: cli.max_pause,
                max_depth: cli.max_depth,
            }),
        },
        record: cli.record,
    }
}

/// Ends maptrace with a one-line error.
fn fail(code: i32, message: &str) -> ! {
    eprintln!("maptrace: error: {}", tracer::units::printable(message));
    std::process::exit(code);
}

/// Threads the agent's inspections, attaches, reports and detaches run on at once; more wait their turn.
const AGENT_BLOCKING_THREADS: usize = 4;

fn run_agent(args: AgentArgs) -> ! {
    let opts = AgentOptions {
        listen: args.listen,
        include: args.include,
        exclude: args.exclude,
        scan_every: args.scan_every,
        top_sites: args.top_sites,
        session: SessionOptions {
            retain_cycles: args.cycles,
            mode: args.mode,
            sampling: args.sampling.options(),
            chains: None,
        },
        log_json: args.log_format == LogFormat::Json,
    };
    // glibc gives each thread that allocates its own heap arena, up to eight per core, and an arena keeps what
    // it once held: with attaches and reports on many short-lived blocking threads, the agent's resident memory
    // grew with the node's process churn. Two arenas, and a bounded blocking pool, keep it flat.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(AGENT_BLOCKING_THREADS)
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))
        .and_then(|rt| rt.block_on(agent::run(opts)));
    match result {
        Ok(()) => std::process::exit(0),
        Err(failure) => fail(failure.exit_code(), &failure.to_string()),
    }
}
