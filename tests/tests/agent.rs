//! `maptrace agent` end to end: it finds Go processes started after it (also in new PID and mount
//! namespaces), traces them, serves their series on /metrics in a form `promtool check metrics`
//! accepts and a real Prometheus server scrapes, and drops a target's series when it exits or
//! execs into a non-Go binary.
//!
//! The agent is told to `--include` binaries with names unique to this test run (copies of the
//! go-targets), so that it leaves every other process on the machine alone.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{maptrace_bin, target_path, Lines, Target};
use serde_json::Value;

const GO: &str = e2e::GO1_24;
const N: f64 = 10.0;
/// Discovery scans every second here; a new target must show up within this.
const FOUND_WITHIN: Duration = Duration::from_secs(15);

struct Agent {
    child: Child,
    stderr: Lines,
    port: u16,
    log: Vec<String>,
}

impl Agent {
    fn start(include: &[&str]) -> Self {
        let mut child = Command::new(maptrace_bin())
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--scan-every",
                "1s",
                "--include",
                &include.join(","),
            ])
            // The default sampled mode, every allocation sampled: the targets never use the heap
            // profiler, so their rate is 0 until the agent sets it.
            .args(["--sample-rate", "1", "--write-memprofilerate"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting maptrace agent");
        let stderr = Lines::spawn(child.stderr.take().unwrap());
        let log = stderr.until("the agent's listening line", |l| {
            l.contains("listening") || l.contains("error")
        });
        let line = log.last().unwrap();
        let port = line
            .rsplit_once(':')
            .and_then(|(_, p)| p.trim_end_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Agent {
            child,
            stderr,
            port,
            log,
        }
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
    }

    /// Every log line so far.
    fn log(&mut self) -> &[String] {
        self.log.extend(self.stderr.so_far());
        &self.log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    body.to_string()
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            labels
                .iter()
                .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())?
        })
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A copy of a go-target under a name unique to this run.
fn unique_copy(dir: &Path, name: &str) -> (PathBuf, String) {
    let unique = format!("{name}-{}", std::process::id());
    let path = dir.join(&unique);
    std::fs::copy(target_path(GO, name), &path).unwrap();
    (path, unique)
}

/// A Prometheus server on loopback scraping the agent every second.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn start(agent_port: u16) -> Self {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: maptrace\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (Debian package prometheus; ./x installs it)");
        Prometheus { child, port, _dir: dir }
    }

    /// The value of an instant query's single result, if there is one.
    fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let body = std::panic::catch_unwind(|| http_get(self.port, &format!("/api/v1/query?query={encoded}"))).ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        (result.len() == 1).then(|| result[0]["value"][1].as_str()?.parse().ok())?
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let p = std::env::temp_dir().join(format!("maptrace-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn agent_finds_traces_exports_and_forgets() {
    let dir = TempDir::new("agent");
    let (fin, fin_name) = unique_copy(&dir.0, "finalizers");
    let (execer, exec_name) = unique_copy(&dir.0, "execer");
    let ns_name = format!("nsquiet-{}", std::process::id());
    let mut agent = Agent::start(&[&fin_name, &exec_name, &ns_name]);
    let prometheus = Prometheus::start(agent.port);

    // A target started after the agent is found, and its finalizer findings are exported.
    let mut target = Target::start(&fin, &["-scenario=all", &format!("-n={N}")]);
    let pid = target.pid.to_string();
    let me = [("binary", fin_name.as_str()), ("pid", pid.as_str())];
    wait_for("the new target's series", FOUND_WITHIN, || {
        sample(&agent.metrics(), "maptrace_probes_attached", &me)
    });
    target.go();
    target.wait_done();
    let still = [
        ("binary", fin_name.as_str()),
        ("kind", "finalizer"),
        ("reason", "still_reachable"),
        ("function", "main.finalize"),
    ];
    wait_for("10 still-reachable finalizers", FOUND_WITHIN, || {
        sample(&agent.metrics(), "maptrace_finalizers_never_ran", &still).filter(|&v| v == N)
    });
    let text = agent.metrics();
    assert_eq!(
        sample(
            &text,
            "maptrace_finalizers_registered_total",
            &[("binary", &fin_name), ("kind", "finalizer")]
        ),
        Some(4.0 * N + 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "maptrace_finalizer_goroutine_blocked_seconds",
            &[("binary", &fin_name)]
        )
        .unwrap()
            > 0.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "maptrace_allocations_total",
            &[("binary", &fin_name), ("kind", "object")]
        )
        .unwrap()
            >= 4.0 * N,
        "{text}"
    );
    assert_eq!(sample(&text, "maptrace_agent_targets", &[]), Some(1.0), "{text}");
    // Sampled mode says so on every series, with the rate its estimates are scaled at.
    assert!(
        sample(
            &text,
            "maptrace_probes_attached",
            &[("binary", &fin_name), ("mode", "sampled")]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "maptrace_sample_rate_bytes",
            &[("binary", &fin_name), ("mode", "sampled")]
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "maptrace_allocation_size_bytes_count", &[("binary", &fin_name)]).unwrap() >= 4.0 * N,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "maptrace_allocation_size_bytes_bucket",
            &[("binary", &fin_name), ("le", "+Inf")]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        sample(&text, "maptrace_agent_resident_bytes", &[]).unwrap() > 0.0,
        "{text}"
    );

    // promtool accepts the exposition.
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .output_with_stdin(text.as_bytes());
    assert!(
        promtool.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );

    // A real Prometheus scrapes the same numbers.
    let q = format!("maptrace_finalizers_never_ran{{binary=\"{fin_name}\",reason=\"queued_behind_blocked_finalizer\",function=\"main.finalize\"}}");
    let queued = wait_for("Prometheus to scrape the agent", Duration::from_secs(30), || {
        prometheus.query(&q)
    });
    assert_eq!(queued, N);

    // Exit: the series go.
    target.finish();
    wait_for("the exited target's series to go", FOUND_WITHIN, || {
        sample(&agent.metrics(), "maptrace_probes_attached", &me)
            .is_none()
            .then_some(())
    });
    wait_for("the detach log line", FOUND_WITHIN, || {
        agent
            .log()
            .iter()
            .any(|l| l.contains("detach") && l.contains(&pid) && l.contains("target exited"))
            .then_some(())
    });

    // Exec into a non-Go binary: the agent lets go of it.
    let mut execing = Target::start(&execer, &[]);
    let exec_pid = execing.pid.to_string();
    let it = [("binary", exec_name.as_str()), ("pid", exec_pid.as_str())];
    wait_for("the exec target's series", FOUND_WITHIN, || {
        sample(&agent.metrics(), "maptrace_probes_attached", &it)
    });
    execing.go();
    wait_for("the exec'd target's series to go", FOUND_WITHIN, || {
        sample(&agent.metrics(), "maptrace_probes_attached", &it)
            .is_none()
            .then_some(())
    });
    wait_for("its detach log line", FOUND_WITHIN, || {
        agent
            .log()
            .iter()
            .any(|l| l.contains("detach") && l.contains(&exec_pid))
            .then_some(())
    });
    execing.kill();

    // New PID and mount namespaces: the binary exists only inside, under a private tmpfs.
    let inside = dir.0.join("ns");
    std::fs::create_dir_all(&inside).unwrap();
    let script = format!(
        "mount -t tmpfs none {inside} && cp {quiet} {inside}/{ns_name} && exec {inside}/{ns_name}",
        inside = inside.display(),
        quiet = target_path(GO, "quiet").display(),
    );
    let mut ns = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare");
    let ns_out = Lines::spawn(ns.stdout.take().unwrap());
    let ready = ns_out.until("the namespaced target's ready line", |l| l.starts_with("ready"));
    assert_eq!(
        ready.last().unwrap(),
        "ready 1",
        "the target is PID 1 of its own PID namespace"
    );
    let host_pid = wait_for("the namespaced target's series", FOUND_WITHIN, || {
        let text = agent.metrics();
        let line = text
            .lines()
            .find(|l| l.starts_with("maptrace_probes_attached{") && l.contains(&format!("binary=\"{ns_name}\"")))?
            .to_string();
        line.split("pid=\"").nth(1)?.split('"').next().map(String::from)
    });
    assert_ne!(host_pid, "1", "labelled with the host PID");
    let _ = ns.kill();
    let _ = ns.wait();
    drop(prometheus);
}

/// `Command::output` with bytes on stdin.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}
