//! The `maptrace` binary: parse the command line, run one session, print the report.

use std::io::Write;

use clap::Parser;
use tracer::{
    cli::Cli,
    trace::{run, stderr_is_terminal, TraceOptions},
};

fn main() {
    let cli = Cli::parse();
    let opts = TraceOptions {
        pid: cli.pid,
        duration: cli.duration,
        live: !cli.no_live && stderr_is_terminal(),
        top: if cli.json { usize::MAX } else { cli.top },
        retain_cycles: cli.cycles,
        record: cli.record,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| tracer::error::Failure::Other(e.into()))
        .and_then(|rt| rt.block_on(run(&opts)));
    match result {
        Ok((report, session)) => {
            let mut out = std::io::stdout().lock();
            let written = if cli.json { report.write_json(&mut out) } else { report.write_text(&mut out) };
            let _ = out.flush();
            drop(out);
            session.detach();
            if let Err(e) = written {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    eprintln!("maptrace: error: writing the report: {e}");
                    std::process::exit(1);
                }
            }
        }
        Err(failure) => {
            eprintln!("maptrace: error: {failure}");
            std::process::exit(failure.exit_code());
        }
    }
}
