//! `maptrace agent`: a long-running node agent. It finds every Go process on the node (by its
//! `.go.buildinfo`, not its name), attaches to each as it appears, detaches when it exits or
//! execs, and serves what it sees on `/metrics` for Prometheus.
//!
//! Everything a target gives the agent is untrusted, so one target's work can neither stall nor end
//! the others': `/metrics` has a thread of its own ([`serve`]); each target is a supervised task
//! ([`target`]) whose inspection, attach and report building run off the async workers, and whose
//! panic is caught, counted and ends that target alone; what the agent remembers of executables and
//! failed attaches is bounded ([`inspect`]).

pub mod discover;
mod inspect;
pub mod metrics;
mod serve;
mod target;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use crate::{
    error::Failure,
    session::{trace::Stop, SessionOptions},
};
use discover::{Candidate, ProcessKey};
use inspect::{Binaries, Retries, Verdicts, VERDICTS_KEPT};
use metrics::SharedMetrics;
use target::{Ended, Outcome};

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

/// Runs until SIGINT, SIGTERM or SIGHUP.
pub async fn run(opts: AgentOptions) -> Result<(), Failure> {
    let missing = crate::process::missing_capabilities();
    if !missing.is_empty() {
        return Err(Failure::Privileges { missing });
    }
    let shared: SharedMetrics = Arc::new(Mutex::new(metrics::Shared {
        top_sites: opts.top_sites,
        ..Default::default()
    }));
    let listener = std::net::TcpListener::bind(opts.listen)
        .map_err(|e| Failure::Other(anyhow::anyhow!("listening on {}: {e}", opts.listen)))?;
    let log = Log { json: opts.log_json };
    log.event(
        "listening",
        &[(
            "address",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        )],
    );
    serve::spawn(listener, metrics::registry(shared.clone()))
        .map_err(|e| Failure::Other(anyhow::anyhow!("serving /metrics: {e}")))?;

    let mut stop = Stop::install()?;
    let mut scan = tokio::time::interval(opts.scan_every);
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Ended>();
    let mut targets = Targets {
        running: HashMap::new(),
        verdicts: Verdicts::new(VERDICTS_KEPT),
        retries: Retries::default(),
        context: target::Context {
            session: opts.session,
            shared,
            log,
            binaries: Binaries::default(),
            ended: ended_tx,
        },
    };
    loop {
        tokio::select! {
            _ = scan.tick() => targets.scan(&opts, discover::processes()),
            Some(ended) = ended_rx.recv() => targets.ended(ended, opts.scan_every),
            _ = stop.recv() => break,
        }
    }
    log.event("stopping", &[("targets", targets.running.len().to_string())]);
    targets.stop_all(&mut ended_rx).await;
    Ok(())
}

/// How long the agent waits at shutdown for its targets to detach (each puts its target's MemProfileRate back
/// first, then removes its probes, which takes the kernel up to seconds).
const DETACH_WITHIN: Duration = Duration::from_secs(20);

/// The processes being traced, and what is known of those that are not.
struct Targets {
    /// Sessions by process; dropping a sender tells its task to stop.
    running: HashMap<ProcessKey, watch::Sender<bool>>,
    /// Executables that cannot be traced, so that they are read once.
    verdicts: Verdicts,
    /// Processes whose attach failed, and when to try again.
    retries: Retries,
    context: target::Context,
}

impl Targets {
    /// Starts tracing the wanted Go processes of a scan that are not traced yet, and stops those that have gone
    /// or exec'd into another binary.
    fn scan(&mut self, opts: &AgentOptions, now: Vec<Candidate>) {
        let present: HashSet<ProcessKey> = now.iter().map(|c| c.key).collect();
        self.running.retain(|key, _| present.contains(key));
        self.retries.keep_only(|key| present.contains(key));
        let at = Instant::now();
        for c in now {
            if self.running.contains_key(&c.key)
                || self.verdicts.get(&c.exe).is_some()
                || !self.retries.due(&c.key, at)
                || !opts.wanted(&c)
            {
                continue;
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            self.running.insert(c.key, stop_tx);
            target::spawn(c, self.context.clone(), stop_rx);
        }
    }

    /// Tells every target to stop and waits, up to [`DETACH_WITHIN`], until each has detached.
    async fn stop_all(&mut self, ended: &mut mpsc::UnboundedReceiver<Ended>) {
        let mut waiting: HashSet<ProcessKey> = self.running.drain().map(|(key, _)| key).collect();
        let _ = tokio::time::timeout(DETACH_WITHIN, async {
            while !waiting.is_empty() {
                match ended.recv().await {
                    Some(e) => waiting.remove(&e.key),
                    None => break,
                };
            }
        })
        .await;
    }

    /// Remembers how a target's task ended.
    fn ended(&mut self, ended: Ended, scan_every: Duration) {
        self.running.remove(&ended.key);
        match ended.outcome {
            Outcome::Detached | Outcome::Exited => {}
            Outcome::Refused(reason) => self.verdicts.insert(ended.exe, reason),
            Outcome::Failed => self.retries.failed(ended.key, scan_every, Instant::now()),
            Outcome::Dropped => self.retries.dropped(ended.key),
        }
    }
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
