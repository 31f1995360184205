//! `fuzz`: the coverage-guided fuzz harnesses of fuzz/ (libFuzzer through cargo-fuzz, built with
//! `--sanitizer none`: Debian's stable rustc has no sanitizer runtimes, and safe Rust needs none to show a
//! panic), each input under 1 s and 256 MiB held. Every go-target binary seeds them.
//!
//! The corpus a run grows is kept in `.cache/fuzz/corpus/<harness>/` (the next run starts from it); what
//! fails (a panic, an input over a limit) is written to `.cache/fuzz/artifacts/<harness>/` and fails the run.
//! The small checked-in corpus, `fuzz/corpus/<harness>/`, is read too.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::layout::Layout;
use crate::{go_targets, go_versions, process, rust_build, setup};

/// Limits per input, as the agent would have to hold them on a hostile target. The memory limit (256 MiB held at
/// once) is the fuzz crate's own (`INPUT_MEMORY_LIMIT`: libFuzzer's `-malloc_limit_mb` needs a sanitizer);
/// libFuzzer's `-rss_limit_mb` is a backstop for the whole process, which holds the corpus and the go-targets'
/// heap models besides the input.
const RSS_BACKSTOP_MB: u32 = 1024;
const TIME_LIMIT_S: u32 = 1;

/// A harness and the libFuzzer options its inputs need.
struct Harness {
    name: &'static str,
    /// Largest input libFuzzer makes.
    max_len: usize,
    seeds: fn(&Layout, &Path) -> Result<()>,
}

const HARNESSES: [Harness; 3] = [
    Harness {
        name: "gobin_patch",
        max_len: 4096,
        seeds: selector_seeds::<0>,
    },
    Harness {
        name: "heap_walk",
        max_len: 16384,
        seeds: selector_seeds::<64>,
    },
    Harness {
        name: "gobin_file",
        max_len: 3 << 20,
        seeds: binary_seeds,
    },
];

/// Every value of a harness's first byte (which picks the go-target binary it starts from), followed by `N`
/// zero bytes: one seed per go-target.
fn selector_seeds<const N: usize>(_: &Layout, dir: &Path) -> Result<()> {
    for selector in 0..=u8::MAX {
        let mut seed = vec![0u8; N + 1];
        seed[0] = selector;
        fs::write(dir.join(format!("select-{selector:03}")), seed)?;
    }
    Ok(())
}

/// The smallest stripped go-target of every Go version, whole: libFuzzer keeps its corpus in memory, and every
/// go-target at once (over 300 MB) would bloat it past the RSS backstop; the patch harness starts from all of them.
fn binary_seeds(layout: &Layout, dir: &Path) -> Result<()> {
    for version in fs::read_dir(layout.go_targets_out())? {
        let version = version?.path();
        let smallest = fs::read_dir(&version)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-stripped"))
            .filter_map(|p| Some((p.metadata().ok()?.len(), p)))
            .min();
        if let (Some((_, binary)), Some(v)) = (smallest, version.file_name()) {
            std::os::unix::fs::symlink(&binary, dir.join(v))?;
        }
    }
    Ok(())
}

/// Pinned: the `fuzz/` crate's layout and options are cargo-fuzz 0.13's.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Runs `only` (else every harness) for `minutes` each; the exit code is 1 if any input failed.
pub fn fuzz(layout: &Layout, minutes: f64, only: Option<&str>) -> Result<i32> {
    let harnesses: Vec<&Harness> = HARNESSES.iter().filter(|h| only.is_none_or(|o| o == h.name)).collect();
    if harnesses.is_empty() {
        let names: Vec<_> = HARNESSES.iter().map(|h| h.name).collect();
        bail!(
            "no harness {:?}; there are {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    let versions: Vec<_> = go_versions::all()?.iter().collect();
    setup::ensure_go(layout, &versions)?;
    go_targets::build_targets(layout, &versions)?;
    rust_build::build_ebpf(layout)?;
    setup::ensure_cargo_fuzz(layout, CARGO_FUZZ_VERSION)?;
    let started = Instant::now();
    process::run(cargo_fuzz(layout).args(["build", "--sanitizer", "none"]))?;
    println!("fuzz: harnesses built ({:.0}s)", started.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    for h in harnesses {
        let artifacts = run(layout, h, Duration::from_secs_f64(minutes * 60.0))?;
        if !artifacts.is_empty() {
            failed.push((h.name, artifacts));
        }
    }
    for (name, artifacts) in &failed {
        println!("fuzz: {name} failed on:");
        for a in artifacts {
            println!("  {}", a.display());
        }
    }
    Ok(i32::from(!failed.is_empty()))
}

/// `cargo fuzz` (cargo-fuzz from .cache/tools) run by Debian's cargo, with the go-targets and the eBPF object
/// the tracer embeds.
fn cargo_fuzz(layout: &Layout) -> std::process::Command {
    let mut cmd = process::cargo(&layout.root);
    cmd.arg("fuzz")
        .env("PATH", process::path_with(&layout.tools_bin()))
        .env("MAPTRACE_EBPF_OBJECT", layout.ebpf_object())
        .env("MAPTRACE_GO_TARGETS", layout.go_targets_out())
        .env("MAPTRACE_FUZZ_BASES", layout.cache().join("fuzz/bases"));
    cmd
}

/// One harness for `time`: its grown corpus, the checked-in one and fresh seeds, then mutations. Returns the
/// artifacts this run wrote.
fn run(layout: &Layout, h: &Harness, time: Duration) -> Result<Vec<PathBuf>> {
    let work = layout.cache().join("fuzz");
    let corpus = work.join("corpus").join(h.name);
    let seeds = work.join("seeds").join(h.name);
    let artifacts = work.join("artifacts").join(h.name);
    if seeds.exists() {
        fs::remove_dir_all(&seeds).with_context(|| format!("removing {}", seeds.display()))?;
    }
    for dir in [&corpus, &seeds, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    (h.seeds)(layout, &seeds).with_context(|| format!("writing {}", seeds.display()))?;
    let before = listing(&artifacts)?;
    let mut cmd = cargo_fuzz(layout);
    cmd.args(["run", "--sanitizer", "none", h.name])
        .arg(&corpus)
        .arg(layout.root.join("fuzz/corpus").join(h.name))
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_len={}", h.max_len))
        .args(limits())
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if time.is_zero() {
        // A replay: every input of the corpora run once, no mutation, so the same tree gives the same verdict
        // (what CI runs).
        cmd.arg("-runs=0");
    } else {
        cmd.arg(format!("-max_total_time={}", time.as_secs().max(1)))
            // Past a failing input the run goes on (each job a process of its own), so that one run finds more
            // than the first; every failure is an artifact.
            .args(["-fork=1", "-ignore_crashes=1", "-ignore_timeouts=1", "-ignore_ooms=1"]);
    }
    let started = Instant::now();
    // Failures are counted from the artifacts: in fork mode libFuzzer's exit code does not say.
    let status = run_with_deadline(&mut cmd, time + HANG_GRACE)?;
    let written: Vec<PathBuf> = listing(&artifacts)?
        .into_iter()
        .filter(|a| !before.contains(a))
        .collect();
    if !status.success() && written.is_empty() {
        bail!(
            "`{}` failed ({status}) without a failing input",
            process::describe(&cmd)
        );
    }
    let mut new = Vec::new();
    for artifact in written {
        // A timeout depends on the machine's load, the process's size on the corpus; a panic does not.
        let name = artifact.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let flaky = name.starts_with("timeout-") || name.starts_with("oom-");
        if !flaky || reproduces(layout, h, &artifact)? {
            new.push(artifact);
        } else {
            // A timeout on a loaded machine, or a process grown by its corpus: not the input's doing.
            println!("fuzz: {} passes when run again: not kept", artifact.display());
            fs::remove_file(&artifact)?;
        }
    }
    println!(
        "fuzz: {} ran {:.0}s ({status}), corpus {} inputs, {} new failing inputs",
        h.name,
        started.elapsed().as_secs_f64(),
        listing(&corpus)?.len(),
        new.len()
    );
    Ok(new)
}

/// How long past its time a run may take (the last job finishing, the corpus written) before it is taken for hung.
const HANG_GRACE: Duration = Duration::from_secs(120);

/// Runs `cmd` in a process group of its own, killed whole if it outlives `deadline`. Without a sanitizer's
/// allocator, libFuzzer's timeout handler can deadlock in malloc when the alarm interrupts it, and a fork-mode
/// run then waits for that job forever.
fn run_with_deadline(cmd: &mut std::process::Command, deadline: Duration) -> Result<std::process::ExitStatus> {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    let mut child = cmd
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start `{}`", process::describe(cmd)))?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if started.elapsed() > deadline {
            let group = libc::pid_t::try_from(child.id()).context("process id")?;
            // SAFETY: kill has no memory effects; the group is the child's own (process_group(0)).
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let status = child.wait()?;
            println!(
                "fuzz: killed `{}`: still running {deadline:?} after it started",
                process::describe(cmd)
            );
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Whether an input still fails when run on its own.
fn reproduces(layout: &Layout, h: &Harness, input: &Path) -> Result<bool> {
    let mut cmd = cargo_fuzz(layout);
    cmd.args(["run", "--sanitizer", "none", h.name])
        .arg(input)
        .arg("--")
        .args(limits())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let status = run_with_deadline(&mut cmd, HANG_GRACE)?;
    Ok(!status.success())
}

/// libFuzzer's limits.
fn limits() -> [String; 2] {
    [
        format!("-rss_limit_mb={RSS_BACKSTOP_MB}"),
        format!("-timeout={TIME_LIMIT_S}"),
    ]
}

fn listing(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        files.push(e?.path());
    }
    Ok(files)
}
