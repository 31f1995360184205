//! `maptrace agent`: a long-running node agent. It finds every Go process on the node (by its
//! `.go.buildinfo`, not its name), attaches to each as it appears, detaches when it exits or
//! execs, and serves what it sees on `/metrics` for Prometheus.
//!
//! One tokio task per target owns its [`Session`] and publishes the session's report into
//! [`metrics::Shared`], which the HTTP server encodes at scrape time: once at attach, then after
//! each scrape, at most every [`PUBLISH_EVERY`]. Detaching (seconds, in the kernel) runs on a
//! blocking thread.

pub mod discover;
pub mod metrics;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    error::Failure,
    gobin::{GoBinary, TargetError},
    report::EndReason,
    session::{Session, SessionOptions, Step},
};
use discover::{Candidate, ProcessKey};
use metrics::{SharedMetrics, TargetLabels, TargetMetrics};

/// The most often a target's report is rebuilt for /metrics, and only when /metrics was read since
/// the last: a report walks every tracked object (retention, survival histograms). With ten targets
/// leaking steadily, rebuilding every second took the agent from 0.2 to 0.9 cores over ten minutes
/// (`cargo xtask bench --agent-minutes`). A scrape sees numbers at most this much older than the
/// previous scrape's.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

pub struct AgentOptions {
    pub listen: SocketAddr,
    /// Trace only processes whose binary name, container ID (or a prefix of it) or pod UID is one of
    /// these (all when empty)…
    pub include: Vec<String>,
    /// …and none of these.
    pub exclude: Vec<String>,
    /// How often `/proc` is scanned for new processes.
    pub scan_every: Duration,
    /// Site series per target and metric.
    pub top_sites: usize,
    /// K, the mode and sampled mode's settings, for every target.
    pub session: SessionOptions,
    pub log_json: bool,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(opts: AgentOptions) -> Result<(), Failure> {
    let missing = crate::process::missing_capabilities();
    if !missing.is_empty() {
        return Err(Failure::Privileges { missing });
    }
    let shared: SharedMetrics = Arc::new(Mutex::new(metrics::Shared {
        top_sites: opts.top_sites,
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Failure::Other(anyhow::anyhow!("listening on {}: {e}", opts.listen)))?;
    let log = Log { json: opts.log_json };
    log.event(
        "listening",
        &[(
            "address",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        )],
    );
    tokio::spawn(serve(listener, Arc::new(metrics::registry(shared.clone()))));

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Failure::Other(e.into()))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Other(e.into()))?;
    let mut scan = tokio::time::interval(opts.scan_every);
    // Sessions by process; dropping a sender tells its task to stop.
    let mut running: HashMap<ProcessKey, watch::Sender<bool>> = HashMap::new();
    // Binaries (device, inode) known not to be traceable Go programs, so they are read once.
    let mut skipped: HashSet<(u64, u64)> = HashSet::new();
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<ProcessKey>();
    loop {
        tokio::select! {
            _ = scan.tick() => {
                let now: Vec<Candidate> = discover::processes();
                let present: HashSet<ProcessKey> = now.iter().map(|c| c.key).collect();
                // Gone, or exec'd into another binary: stop tracing.
                running.retain(|key, _| present.contains(key));
                for c in now {
                    if running.contains_key(&c.key) || skipped.contains(&(c.key.exe_dev, c.key.exe_ino)) || !opts.wanted(&c) {
                        continue;
                    }
                    if !is_go(&c) {
                        skipped.insert((c.key.exe_dev, c.key.exe_ino));
                        continue;
                    }
                    let (stop_tx, stop_rx) = watch::channel(false);
                    running.insert(c.key, stop_tx);
                    tokio::spawn(trace(c, opts.session, shared.clone(), log, stop_rx, ended_tx.clone()));
                }
            }
            Some(key) = ended_rx.recv() => { running.remove(&key); }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    log.event("stopping", &[("targets", running.len().to_string())]);
    Ok(())
}

impl AgentOptions {
    fn wanted(&self, c: &Candidate) -> bool {
        let matches = |p: &String| {
            c.binary == *p
                || c.container
                    .as_deref()
                    .is_some_and(|id| !p.is_empty() && id.starts_with(p.as_str()))
                || c.pod.as_deref() == Some(p.as_str())
        };
        (self.include.is_empty() || self.include.iter().any(matches)) && !self.exclude.iter().any(matches)
    }
}

/// Whether the process runs a Go binary (its build info is readable): the agent's filter, cheap
/// next to attaching.
fn is_go(c: &Candidate) -> bool {
    match GoBinary::open(std::path::Path::new(&format!("/proc/{}/exe", c.key.pid))) {
        Ok(_) => true,
        Err(TargetError::NotElf(_) | TargetError::NotGo(_)) => false,
        // Go, but something else is wrong: let the attach say what.
        Err(_) => true,
    }
}

/// One target's task: attach, correlate, publish a report now and then, stop when the target
/// exits or the agent says so (an exec, or shutdown), then detach off the reactor.
async fn trace(
    c: Candidate,
    session: SessionOptions,
    shared: SharedMetrics,
    log: Log,
    mut stop: watch::Receiver<bool>,
    ended: tokio::sync::mpsc::UnboundedSender<ProcessKey>,
) {
    let labels = TargetLabels::of(&c);
    let fields = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("pid", c.key.pid.to_string()),
            ("binary", c.binary.clone()),
            ("container", labels.container.clone()),
            ("pod", labels.pod.clone()),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let mut session = match Session::attach(c.key.pid, &session) {
        Ok(s) => s,
        Err(e) => {
            let reason = match e {
                Failure::NoSuchProcess { .. } => "exited",
                Failure::UnsupportedGo { .. } => "unsupported_go",
                Failure::NotGo { .. } => "not_go",
                Failure::BinaryGone { .. } => "binary_gone",
                Failure::Privileges { .. } => "privileges",
                _ => "other",
            };
            if reason != "not_go" && reason != "exited" {
                *shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .attach_failures
                    .entry(reason)
                    .or_default() += 1;
                log.event("error", &fields(&[("error", e.to_string())]));
            }
            let _ = ended.send(c.key);
            return;
        }
    };
    log.event(
        "attach",
        &fields(&[
            ("go", session.binary.version().to_string()),
            ("uprobes", session.uprobes().to_string()),
        ]),
    );
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    // Scrapes seen at the last publication (None: publish at once).
    let mut published_at_scrape = None;
    let ended_by = loop {
        tokio::select! {
            step = session.step() => match step {
                Ok(Step::Records) => {}
                Ok(Step::Exited) => break "target exited",
                Err(e) => { log.event("error", &fields(&[("error", e.to_string())])); break "error" }
            },
            _ = publish.tick() => {
                let scrapes = shared.lock().unwrap_or_else(|p| p.into_inner()).scrapes;
                if published_at_scrape != Some(scrapes) {
                    let report = session.report(EndReason::Running, usize::MAX);
                    shared.lock().unwrap_or_else(|p| p.into_inner()).targets.insert(c.key, TargetMetrics { labels: labels.clone(), report });
                    published_at_scrape = Some(scrapes);
                }
            }
            // The agent dropped the sender (exec, or the process left the scan) or is stopping.
            _ = stop.changed() => break "detached",
        }
    };
    shared.lock().unwrap_or_else(|p| p.into_inner()).targets.remove(&c.key);
    log.event("detach", &fields(&[("reason", ended_by.to_string())]));
    let _ = ended.send(c.key);
    let _ = tokio::task::spawn_blocking(move || session.detach()).await;
}

/// One line per event on stderr: `maptrace agent: attach pid=… binary=…`, or a JSON object.
#[derive(Clone, Copy)]
struct Log {
    json: bool,
}

impl Log {
    fn event(&self, event: &str, fields: &[(&str, String)]) {
        if self.json {
            let mut m = serde_json::Map::new();
            m.insert("event".into(), event.into());
            for (k, v) in fields {
                m.insert((*k).into(), v.clone().into());
            }
            eprintln!("{}", serde_json::Value::Object(m));
        } else {
            let kv: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            eprintln!("maptrace agent: {event} {}", kv.join(" "));
        }
    }
}

/// Serves `GET /metrics` (OpenMetrics text, or the classic text format) and a short index on `/`.
async fn serve(listener: tokio::net::TcpListener, registry: Arc<prometheus_client::registry::Registry>) {
    use http_body_util::Full;
    use hyper::{body::Bytes, service::service_fn, Request, Response, StatusCode};

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    // Prometheus asks for OpenMetrics; others (curl, promtool) get the classic format.
                    let openmetrics = req
                        .headers()
                        .get(hyper::header::ACCEPT)
                        .and_then(|a| a.to_str().ok())
                        .is_some_and(|a| a.contains("application/openmetrics-text"));
                    let response = match req.uri().path() {
                        "/metrics" => {
                            let mut body = String::new();
                            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                                Ok(()) if openmetrics => Response::builder()
                                    .header(
                                        "Content-Type",
                                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                    )
                                    .body(Full::new(Bytes::from(body))),
                                Ok(()) => Response::builder()
                                    .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                                    .body(Full::new(Bytes::from(metrics::to_prometheus_text(&body)))),
                                Err(_) => Response::builder()
                                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                                    .body(Full::new(Bytes::from("encoding failed\n"))),
                            }
                        }
                        "/" => {
                            Response::builder().body(Full::new(Bytes::from("maptrace agent: metrics at /metrics\n")))
                        }
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from("not found\n"))),
                    };
                    response
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
