//! `maptrace agent` as the tests run it: started on loopback, scraped over plain HTTP, its log read
//! line by line; and what a test checks its exposition with: promtool, and a real Prometheus server.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{maptrace_bin, target_path, Lines, TempDir};

/// Discovery scans every second here; a new target must show up within this.
pub const FOUND_WITHIN: Duration = Duration::from_secs(15);

/// A running `maptrace agent` that told us its port.
pub struct Agent {
    child: Child,
    stderr: Lines,
    pub port: u16,
    log: Vec<String>,
}

impl Agent {
    /// Traces only the processes whose binary is named in `include`.
    pub fn start(include: &[&str]) -> Self {
        Self::start_with(Command::new(maptrace_bin()), include)
    }

    /// [`Agent::start`] through a prepared command (e.g. one that joins a cgroup before exec).
    pub fn start_with(mut cmd: Command, include: &[&str]) -> Self {
        let mut child = cmd
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the agent ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// /metrics in the classic text format, as curl and promtool get it.
    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
    }

    /// /metrics asked for as Prometheus asks for it: the response's content type, and the OpenMetrics body.
    pub fn openmetrics(&self) -> (String, String) {
        let (head, body) = try_http_request(
            self.port,
            "/metrics",
            &["Accept: application/openmetrics-text; version=1.0.0"],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("GET /metrics as OpenMetrics: {e}"));
        let content_type = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        (content_type, body)
    }

    /// Every log line so far.
    pub fn log(&mut self) -> &[String] {
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

/// The body of a `GET` that must succeed.
pub fn http_get(port: u16, path: &str) -> String {
    try_http_get(port, path, Duration::from_secs(10)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The body of a `GET` answered with 200 within `patience` (connecting, sending and reading all count).
pub fn try_http_get(port: u16, path: &str, patience: Duration) -> Result<String, String> {
    try_http_request(port, path, &[], patience).map(|(_, body)| body)
}

/// The head and body of a `GET` with extra header lines, answered with 200 within `patience`.
fn try_http_request(port: u16, path: &str, headers: &[&str], patience: Duration) -> Result<(String, String), String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), patience)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(patience)).unwrap();
    s.set_write_timeout(Some(patience)).unwrap();
    let request: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{request}\r\n").map_err(|e| format!("send: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read: {e}"))?;
    if start.elapsed() > patience {
        return Err(format!("answered after {:?}", start.elapsed()));
    }
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
        return Err(format!("status: {head}"));
    }
    Ok((head.to_string(), body.to_string()))
}

/// The value of the sample of `name` whose labels include all of `labels`, given as the exposition writes
/// them (escaped).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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

/// Polls `f` every 200 ms until it gives a value; panics after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A copy of a go-target under a name unique to this run (`counting-<our pid>`), for `--include`.
pub fn unique_copy(go: &str, dir: &Path, name: &str) -> (PathBuf, String) {
    let unique = format!("{name}-{}", std::process::id());
    let path = dir.join(&unique);
    std::fs::copy(target_path(go, name), &path).unwrap();
    (path, unique)
}

/// `promtool check metrics` on an exposition: its complaints when it rejects it.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// A Prometheus server on loopback scraping the agent every second, as job `maptrace`.
pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

/// One series of a query's result: its labels as Prometheus stored them (unescaped), and its value.
pub type Series = (BTreeMap<String, String>, f64);

impl Prometheus {
    pub fn start(agent_port: u16) -> Self {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: maptrace\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (Debian package prometheus; ./x installs it)");
        Prometheus { child, port, _dir: dir }
    }

    /// The value of an instant query's single result, if there is one.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let result = self.series(promql)?;
        (result.len() == 1).then(|| result[0].1)
    }

    /// Every series of an instant query's result, or None while Prometheus cannot answer.
    pub fn series(&self, promql: &str) -> Option<Vec<Series>> {
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        v["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect::<Option<_>>()?;
                Some((labels, r["value"][1].as_str()?.parse().ok()?))
            })
            .collect()
    }

    /// What Prometheus took from the scrapes' HELP and TYPE lines for the family `name`
    /// (`/api/v1/metadata`): one entry per distinct type and help, or None while it knows nothing of it.
    pub fn metadata(&self, name: &str) -> Option<Vec<Value>> {
        let v = self.api(&format!("/api/v1/metadata?metric={}", url_encode(name)))?;
        v["data"][name].as_array().cloned()
    }

    fn api(&self, path_and_query: &str) -> Option<Value> {
        let body = try_http_get(self.port, path_and_query, Duration::from_secs(10)).ok()?;
        serde_json::from_str(&body).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PromQL string literal that stands for exactly `s` (PromQL strings take Go's escapes).
pub fn promql_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
