//! Command-line interface.

use std::io::{self, Write};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::probes::sampling::{Mode, SamplingOptions, DEFAULT_BUDGET};
use crate::report::Report;

const AFTER_HELP: &str = "\
Examples:
  sudo maptrace --pid 4242                 trace until Ctrl-C, then print the site table
  sudo maptrace --pid 4242 -d 30s --json   trace for 30 seconds, write one JSON document
  sudo maptrace --pid 4242 -d 1m --format pprof -o held.pb.gz && go tool pprof -top held.pb.gz
                                           what holds the retained memory, for pprof
  sudo maptrace agent                      trace every Go process on the node, metrics on
                                           http://127.0.0.1:9464/metrics (see: maptrace agent --help)

What you see: while tracing, the top allocation sites are redrawn on stderr (a progress line
when stderr is not a terminal). At the end, stdout gets three sections:
  Allocation sites  one row per site: the kind of value (map, slice, string, object), its Go
                    type, how many were allocated, their bytes, and the stack from the first
                    non-runtime frame outwards. Slices and maps count once per make/append
                    growth/makemap, with the bytes of all the storage made for them.
  Retained          sites whose objects are alive after K completed GC cycles (--cycles) and
                    after the frame that created them returned: retained, live (in use) and
                    allocated counts and bytes, cycles survived, live count cycle by cycle and
                    whether it grows. Cycle numbers are the target's own (GODEBUG=gctrace=1).
                    Held by: what keeps them alive, a chain from a package-level variable, a
                    goroutine's stack frame (its variable named) or a finalizer's closure
                    through the heap, each step named by its Go path where DWARF types it
                    (main.tenants → […] → .Account → .Profile → .Avatar), with a diagnosis
                    where a known pattern applies (a short sub-slice of a large array, a map
                    that kept its storage after deletes, a goroutine leak). Found by walking
                    the live target's heap at the end, the target stopped for at most
                    --max-pause; a stripped binary gets chains by address and offset.
                    --no-chains skips the walk.
  Finalizers        finalizers and (Go 1.24+) cleanups: registered, queued, started, pending;
                    the goroutines that run them; each group that never ran after K cycles,
                    and why: still reachable, reachable from its own finalizer or cleanup (it
                    can never run), queued behind a blocked one (named, with its wait reason),
                    or sharing a tiny-allocator block with live values; for the reachable
                    ones, the chain that holds them.

Modes (--mode): full (the default here) traps every allocation of the target into the kernel:
exact counts, types and slice/map kinds, at microseconds per allocation; use it for
investigations, not on hot services for long. sampled (the agent's default) takes only the
allocations the Go runtime's own heap profiler samples (one per runtime.MemProfileRate bytes on
average, 512 KiB by default) and their deaths, plus GC cycles and finalizers: cheap enough to
leave on; counts are estimates scaled like `go tool pprof` scales heap profiles, and types are
not known. Programs that never use runtime.MemProfile (no runtime/pprof, no net/http/pprof) run
with the rate at 0 and sample nothing: --sample-rate BYTES --write-memprofilerate sets it.
Each sample costs two traps (its allocation and its death). A trap budget (--trap-budget, samples
per second) thins what the kernel sends when the target allocates faster; with
--write-memprofilerate maptrace also raises the rate (in powers of two, back down when the
target calms, never below its own) so the traps themselves stay within the budget. Writing
runtime.MemProfileRate is the one write maptrace ever makes to a target's memory, and it is
undone however the trace ends (its end, Ctrl-C, SIGTERM, a hang-up, an error) except by
SIGKILL, which runs nothing: then `maptrace --pid PID --restore-memprofilerate N` puts back
the N the attach line gave as \"was\". Without --write-memprofilerate maptrace only reads the
target's memory.

Exit codes:
  0  report printed (also when the target exits while traced)
  1  internal error     2  bad command line    3  no such process
  4  not a Go program   5  unsupported Go runtime   6  missing privileges
  7  kernel lacks uprobes/BPF ring buffer   8  target binary deleted or replaced
  9  target binary refused: over a limit (1 GiB file, 4 million functions, 64 KiB names) or malformed";

/// Trace a running Go program's map, slice and object allocations with eBPF uprobes, without
/// restarting it.
#[derive(Debug, Parser)]
#[command(name = "maptrace", version, after_help = AFTER_HELP, subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The Go process to trace.
    #[arg(short, long, value_name = "PID", required = true)]
    pub pid: Option<u32>,

    /// Stop after this long (e.g. 500ms, 30s, 5m); default: until Ctrl-C or the target exits.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Write the final report as one JSON document instead of a table (same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// The final report: text (tables), json (one document), pprof (a gzip'd profile of the
    /// retained rows, valued in objects and bytes, whose stacks are what holds them, or their
    /// allocation stacks: `go tool pprof -top FILE`; needs --output or a redirected stdout), dot
    /// (what holds them as a Graphviz graph: `dot -Tsvg FILE`), or flamegraph (an SVG flame graph
    /// of the retained bytes, each row's tower rising from what holds it: open it in a browser).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the final report to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// Rows in the final table, largest first (JSON always has every site).
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub top: usize,

    /// GC cycles an object must survive (after its creating frame returned) to count as retained.
    #[arg(short = 'k', long = "cycles", value_name = "K", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: u32,

    /// No live view on stderr, even on a terminal.
    #[arg(long)]
    pub no_live: bool,

    /// Also write every raw record the probes send to FILE (for a bug report, or to replay the
    /// session through maptrace's pipeline: `cargo xtask bench` does).
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,

    /// full: trap every allocation (exact, costly); sampled: the runtime's heap-profile samples.
    #[arg(long, value_enum, default_value_t = Mode::Full)]
    pub mode: Mode,

    /// Do not walk the target's heap for what holds the retained objects (the final report's
    /// "held by" lines).
    #[arg(long)]
    pub no_chains: bool,

    /// Longest the target may be stopped for the heap walk behind "held by" (its threads are
    /// interrupted with ptrace, no signal sent). A walk that takes longer finishes with the target
    /// running again: chains may then be stale where the program moved pointers meanwhile. 0
    /// never stops the target.
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_duration)]
    pub max_pause: Duration,

    /// Steps from a GC root (a variable, a stack frame) past which the heap walk behind "held by"
    /// scans no further: bounds the walk through long linked structures. Objects found only beyond
    /// it count as not reached, and the report says how many objects the limit left unscanned.
    #[arg(long, value_name = "STEPS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_depth: u32,

    /// Write BYTES into the target's runtime.MemProfileRate, print what it was, and exit: no
    /// tracing. For the one case maptrace cannot undo itself, a maptrace killed with SIGKILL
    /// after it set the rate: put back the value its attach line (or the agent's attach log)
    /// gave as "was".
    #[arg(long, value_name = "BYTES")]
    pub restore_memprofilerate: Option<u64>,

    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Sampled mode's settings, shared by the CLI and the agent.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Sampled mode: set the target's runtime.MemProfileRate to BYTES (one sample per that many
    /// bytes allocated, on average; 1 samples everything). Needs --write-memprofilerate.
    #[arg(long, value_name = "BYTES", requires = "write_memprofilerate", value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_rate: Option<u64>,

    /// Allow maptrace to write the target's runtime.MemProfileRate: to --sample-rate, and higher
    /// while samples exceed --trap-budget (the old value is put back at detach).
    #[arg(long)]
    pub write_memprofilerate: bool,

    /// Sampled mode: samples per second passed on in full; beyond it the kernel keeps one in 2^k
    /// (and weights it 2^k), and with --write-memprofilerate the rate is raised to match.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BUDGET, value_parser = clap::value_parser!(u64).range(1..))]
    pub trap_budget: u64,
}

impl SamplingArgs {
    pub fn options(&self) -> SamplingOptions {
        SamplingOptions {
            rate: self.sample_rate,
            write_rate: self.write_memprofilerate,
            budget: self.trap_budget,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a node agent: trace every Go process on this node (in any container) as it starts,
    /// and serve Prometheus metrics about them.
    #[command(after_help = AGENT_HELP)]
    Agent(AgentArgs),
}

const AGENT_HELP: &str = "\
Go processes are recognised by their build information (.go.buildinfo), in any PID or mount
namespace (binaries are read through /proc/PID/exe); each is attached when it appears,
detached when it exits or execs, and its series disappear from /metrics. A one-line log per
attach, detach and error goes to stderr. Series are labelled pid, binary, container (the
container ID from the cgroup path) and pod (the Kubernetes pod UID); per-site series are
limited to the --top-sites largest per target, the rest summed into site=\"other\".

Needs CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE, and the host's PID namespace (hostPID on
Kubernetes: see deploy/). The agent runs in sampled mode by default (see maptrace --help):
it traps only on the allocations each program's own heap profiler samples, so programs that
never use runtime.MemProfile report GC cycles and finalizers but no allocations unless
--sample-rate and --write-memprofilerate are given. --mode full traps every allocation of
every traced process: narrow it down with --include.

Every executable and process is read as untrusted input, within limits: executables up to
1 GiB (mapped, not copied; inspected once for all the processes that run it), 4 million
functions, names up to 64 KiB (128 MiB in all), DWARF sections up to 256 MiB. A binary past a
limit or with corrupt tables is refused (reason too_large or malformed) and not read again
while it is unchanged (the last 8192 such files are remembered); other failed attaches are
retried after --scan-every, then twice as long each time, up to 5 minutes. A panic in one
target's work drops that target (reason panic) and the agent goes on. All are counted in
maptrace_agent_attach_failures_total{reason} and logged.

/metrics is plain HTTP without authentication, and its series name every traced program's
binary, pod, functions and types: keep --listen on loopback and put an authenticating proxy in
front (deploy/ runs kube-rbac-proxy beside the agent). The endpoint serves 16 connections at
once and closes those past them at once (maptrace_agent_http_refused_connections_total); a
client has 5 s to send a request's head, also between requests on a kept-alive connection; a
connection is closed after 30 s, once its response in flight is written (10 s more at most);
failed accepts (out of descriptors) are retried every 100 ms
(maptrace_agent_http_accept_errors_total).";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address for the metrics endpoint (/metrics): plain HTTP, no authentication, so loopback
    /// unless a firewall or proxy guards it.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,

    /// Only processes whose binary name, container ID (or its prefix) or pod UID is one of these
    /// (repeat, or separate with commas); default: every Go process.
    #[arg(long, value_name = "NAME|ID|UID", value_delimiter = ',')]
    pub include: Vec<String>,

    /// Never these (same matching as --include).
    #[arg(long, value_name = "NAME|ID|UID", value_delimiter = ',')]
    pub exclude: Vec<String>,

    /// How often to look for new processes.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub scan_every: Duration,

    /// Per-site series per target and metric (the rest are summed into site="other").
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top_sites: usize,

    /// GC cycles an object must survive (after its creating frame returned) to count as retained.
    #[arg(short = 'k', long = "cycles", value_name = "K", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: u32,

    /// Log lines as text or as one JSON object each.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// sampled: the runtime's heap-profile samples (cheap); full: every allocation (costly).
    #[arg(long, value_enum, default_value_t = Mode::Sampled)]
    pub mode: Mode,

    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Pprof,
    Dot,
    Flamegraph,
}

impl Format {
    /// Writes `report` in this format.
    pub fn write(self, report: &Report, w: &mut dyn Write) -> io::Result<()> {
        match self {
            Format::Text => report.write_text(&mut crate::units::Printable(w)),
            Format::Json => report.write_json(w),
            Format::Pprof => report.write_pprof(w),
            Format::Dot => report.write_dot(w),
            Format::Flamegraph => report.write_flamegraph(w),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))
}
