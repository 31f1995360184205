//! Builds the Go test programs under `go-targets/` with every selected toolchain into
//! `.cache/go-targets/<version>/<binary>`.
//!
//! What gets built, per version: every target (a directory with a `package main`) as `<target>` and
//! `<target>-stripped` (`-ldflags=-s -w`: no symbol table, no DWARF), plus `counting-arm64` and
//! `counting-arm64-stripped` (not runnable here; for the binary parsers), plus, with the primary
//! version only, `counting-cgo` and `counting-cgo-stripped` (CGO_ENABLED=1 and a cgo file behind the
//! `maptrace_cgo` tag: externally linked by gcc, as cgo programs in the wild are).
//! No `-trimpath`: binaries keep real source paths so symbolized reports point at real files.
//!
//! Each binary has a stamp (a hash of its sources, its toolchain, its flags and environment) under
//! `.cache/stamps/go-targets/`; a binary whose stamp matches is not rebuilt. Versions are built in
//! parallel, one worker per core; within a version builds run one after the other, so the first
//! build compiles the standard library into GOCACHE and the others reuse it instead of compiling it
//! twice at once.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::go_versions::{GoVersion, PRIMARY};
use crate::layout::Layout;
use crate::process;

/// Bump to rebuild everything after a change to how builds are made that the stamp does not see.
const RECIPE: &str = "go-targets v1";
/// The target that gets the arm64 and cgo variants.
const COUNTING: &str = "counting";
/// The build tag that adds `counting/cgo.go`.
const CGO_TAG: &str = "maptrace_cgo";

/// One binary to build.
struct Build {
    /// Directory under go-targets/ holding the main package.
    target: String,
    /// File name under `.cache/go-targets/<version>/`.
    output: String,
    goarch: &'static str,
    cgo: bool,
    stripped: bool,
}

impl Build {
    fn new(target: &str, suffix: &str, goarch: &'static str, cgo: bool, stripped: bool) -> Build {
        let strip = if stripped { "-stripped" } else { "" };
        Build {
            target: target.to_owned(),
            output: format!("{target}{suffix}{strip}"),
            goarch,
            cgo,
            stripped,
        }
    }

    /// `go build` arguments after the output path.
    fn flags(&self) -> Vec<String> {
        let mut flags = vec!["-buildvcs=false".to_owned()]; // no git stamping: a clean clone may have no commit
        if self.cgo {
            flags.push(format!("-tags={CGO_TAG}"));
        }
        if self.stripped {
            flags.push("-ldflags=-s -w".to_owned());
        }
        flags.push(format!("./{}", self.target));
        flags
    }
}

/// A `go` command run in `dir` with only the Go environment maptrace sets: every inherited
/// GO*/CGO_* variable is removed first, so a developer's GOFLAGS or GOEXPERIMENT cannot change
/// what the tests see.
pub fn go_command(layout: &Layout, go: &Path, dir: &Path, goarch: &str, cgo: bool) -> Command {
    let mut cmd = Command::new(go);
    cmd.current_dir(dir).env("PATH", process::clean_path());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("GO") || k.starts_with("CGO_") {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.envs(go_env(layout, goarch, cgo));
    cmd
}

/// The Go environment maptrace builds with.
fn go_env(layout: &Layout, goarch: &str, cgo: bool) -> [(&'static str, OsString); 11] {
    let work = layout.go_work();
    [
        ("GOTOOLCHAIN", "local".into()), // never download another toolchain
        ("GOENV", "off".into()),
        ("GOWORK", "off".into()),
        ("GO111MODULE", "on".into()),
        ("GOPROXY", "off".into()), // the modules have no dependencies: no network
        ("GOSUMDB", "off".into()),
        ("GOCACHE", work.join("cache").into()),
        ("GOPATH", work.join("path").into()),
        ("GOOS", "linux".into()),
        ("GOARCH", goarch.into()),
        ("CGO_ENABLED", if cgo { "1" } else { "0" }.into()),
    ]
}

/// The binaries to build for one version.
fn plan(version: &GoVersion, targets: &[String]) -> Vec<Build> {
    let mut builds = Vec::new();
    for t in targets {
        builds.push(Build::new(t, "", "amd64", false, false));
        builds.push(Build::new(t, "", "amd64", false, true));
    }
    if targets.iter().any(|t| t == COUNTING) {
        if version.name == PRIMARY {
            builds.push(Build::new(COUNTING, "-cgo", "amd64", true, false));
            builds.push(Build::new(COUNTING, "-cgo", "amd64", true, true));
        }
        // Last: it compiles the standard library once more, for arm64.
        builds.push(Build::new(COUNTING, "-arm64", "arm64", false, false));
        builds.push(Build::new(COUNTING, "-arm64", "arm64", false, true));
    }
    builds
}

/// The targets: subdirectories of go-targets/ with a non-test .go file in `package main`.
pub fn discover(src: &Path) -> Result<Vec<String>> {
    let mut targets = Vec::new();
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let is_main = fs::read_dir(entry.path())?.filter_map(Result::ok).any(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            name.ends_with(".go")
                && !name.ends_with("_test.go")
                && fs::read_to_string(f.path()).is_ok_and(|text| text.lines().any(|l| l.trim() == "package main"))
        });
        if is_main {
            targets.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    targets.sort();
    if targets.is_empty() {
        bail!("no Go main package under {}", src.display());
    }
    Ok(targets)
}

/// FNV-1a, 64 bits: stable across Rust releases (unlike DefaultHasher), and enough for a stamp.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) -> &mut Fnv {
        for b in bytes.iter().chain(&[0xff]) {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
}

/// Files that can change a target's binary: go.mod/go.sum, and the sources of the target and of the
/// module's shared `internal/` packages (not docs such as TRUTH.md or truth.json).
fn source_files(src: &Path, target: &str) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("go" | "c" | "h" | "s" | "S" | "syso")
            ) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files: Vec<PathBuf> = ["go.mod", "go.sum"]
        .iter()
        .map(|f| src.join(f))
        .filter(|f| f.exists())
        .collect();
    walk(&src.join(target), &mut files)?;
    walk(&src.join("internal"), &mut files)?;
    files.sort();
    Ok(files)
}

/// Hash of a target's sources (paths and contents).
fn hash_sources(src: &Path, target: &str) -> Result<u64> {
    let mut h = Fnv::new();
    for file in source_files(src, target)? {
        h.add(file.strip_prefix(src).unwrap_or(&file).to_string_lossy().as_bytes());
        h.add(&fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
    }
    Ok(h.0)
}

/// Identity of a toolchain: its path, its VERSION file and the size and mtime of its `go` binary
/// (a reinstalled toolchain gets a new mtime).
fn hash_toolchain(go: &Path) -> Result<u64> {
    let meta = fs::metadata(go).with_context(|| format!("{} is missing; run `./x setup`", go.display()))?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let version_file = go.parent().and_then(Path::parent).map(|root| root.join("VERSION"));
    let version = version_file.and_then(|f| fs::read(f).ok()).unwrap_or_default();
    let mut h = Fnv::new();
    h.add(go.as_os_str().as_encoded_bytes())
        .add(&version)
        .add(&meta.len().to_le_bytes())
        .add(&mtime.to_le_bytes());
    Ok(h.0)
}

/// The stamp a binary must carry to count as up to date.
fn stamp_key(layout: &Layout, build: &Build, toolchain: u64, sources: u64) -> String {
    let mut h = Fnv::new();
    h.add(RECIPE.as_bytes())
        .add(&toolchain.to_le_bytes())
        .add(&sources.to_le_bytes());
    for flag in build.flags() {
        h.add(flag.as_bytes());
    }
    for (k, v) in go_env(layout, build.goarch, build.cgo) {
        h.add(k.as_bytes()).add(v.as_encoded_bytes());
    }
    format!("{:016x}\n", h.0)
}

/// One version's work, for a worker.
struct VersionJob {
    version: &'static GoVersion,
    toolchain: u64,
    builds: Vec<Build>,
}

#[derive(Default)]
struct Tally {
    built: usize,
    fresh: usize,
    failures: Vec<String>,
}

/// Builds every target with every given version (the toolchains must be installed: `setup::ensure_go`).
pub fn build_targets(layout: &Layout, versions: &[&'static GoVersion]) -> Result<()> {
    let start = Instant::now();
    let src = layout.go_targets_src();
    let targets = discover(&src)?;
    let sources: BTreeMap<&str, u64> = targets
        .iter()
        .map(|t| Ok((t.as_str(), hash_sources(&src, t)?)))
        .collect::<Result<_>>()?;
    let mut jobs = VecDeque::new();
    for &version in versions {
        let toolchain = hash_toolchain(&version.go_binary(layout))?;
        jobs.push_back(VersionJob {
            version,
            toolchain,
            builds: plan(version, &targets),
        });
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(jobs.len())
        .max(1);
    println!(
        "build-targets: {} with Go {} ({workers} at a time)",
        targets.join(", "),
        versions.iter().map(|v| v.name).collect::<Vec<_>>().join(", ")
    );
    let queue = Mutex::new(jobs);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    // Own statement: in `while let` the guard would live through the whole build.
                    let next = queue.lock().unwrap().pop_front();
                    let Some(job) = next else { break };
                    build_version(layout, &src, &sources, &job, &tally);
                }
            });
        }
    });
    let tally = tally.into_inner().unwrap();
    println!(
        "build-targets: {} built, {} up to date, in {:.1}s -> {}",
        tally.built,
        tally.fresh,
        start.elapsed().as_secs_f64(),
        layout.go_targets_out().display()
    );
    if !tally.failures.is_empty() {
        bail!(
            "{} Go build(s) failed:\n{}",
            tally.failures.len(),
            tally.failures.join("\n")
        );
    }
    Ok(())
}

/// Builds what is stale for one version, one binary after the other.
fn build_version(layout: &Layout, src: &Path, sources: &BTreeMap<&str, u64>, job: &VersionJob, tally: &Mutex<Tally>) {
    let name = job.version.name;
    let go = job.version.go_binary(layout);
    let out_dir = layout.go_targets_out().join(name);
    let stamp_dir = layout.go_stamps().join(name);
    if let Err(e) = fs::create_dir_all(&out_dir).and_then(|_| fs::create_dir_all(&stamp_dir)) {
        tally
            .lock()
            .unwrap()
            .failures
            .push(format!("[{name}] creating {}: {e}", out_dir.display()));
        return;
    }
    let mut fresh = 0;
    for build in &job.builds {
        let output = out_dir.join(&build.output);
        let stamp = stamp_dir.join(&build.output);
        let key = stamp_key(layout, build, job.toolchain, sources[build.target.as_str()]);
        if output.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == key) {
            fresh += 1;
            continue;
        }
        let started = Instant::now();
        match go_build(layout, &go, src, build, &output) {
            Ok(()) => {
                // A stamp that cannot be written only costs a rebuild next time.
                let _ = fs::write(&stamp, &key);
                println!(
                    "[{name}] built {} ({:.1}s)",
                    build.output,
                    started.elapsed().as_secs_f64()
                );
                tally.lock().unwrap().built += 1;
            }
            Err(e) => {
                let _ = fs::remove_file(&stamp);
                println!("[{name}] FAILED {}", build.output);
                tally
                    .lock()
                    .unwrap()
                    .failures
                    .push(format!("[{name}] {}: {e:#}", build.output));
            }
        }
    }
    if fresh > 0 {
        println!("[{name}] {fresh} binaries up to date");
    }
    tally.lock().unwrap().fresh += fresh;
}

/// One `go build`, into a temporary file renamed over the output on success, so that a failed or
/// interrupted build never leaves a half-written binary that looks current.
fn go_build(layout: &Layout, go: &Path, src: &Path, build: &Build, output: &Path) -> Result<()> {
    let partial = output.with_file_name(format!(".{}.partial", build.output));
    let mut cmd = go_command(layout, go, src, build.goarch, build.cgo);
    cmd.arg("build").arg("-o").arg(&partial).args(build.flags());
    let out = cmd.output().with_context(|| format!("cannot start {}", go.display()))?;
    if !out.status.success() {
        let _ = fs::remove_file(&partial);
        bail!(
            "`{}` (GOARCH={} CGO_ENABLED={}) failed ({}):\n{}",
            process::describe(&cmd),
            build.goarch,
            u8::from(build.cgo),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    fs::rename(&partial, output).with_context(|| format!("renaming {} to {}", partial.display(), output.display()))?;
    Ok(())
}
