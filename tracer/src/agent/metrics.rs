//! The agent's `/metrics`: per-target series derived from each session's latest report, plus the
//! agent's own, encoded as OpenMetrics text by the Prometheus client crate at scrape time.
//!
//! Cardinality is bounded: per target, a fixed set of series plus at most `top_sites` site series
//! (the rest summed into one `site="other"` series) per site metric.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::discover::{Candidate, ProcessKey};
use crate::{lifecycle::finalizers::Mechanism, lifecycle::sites::ValueKind, probes::sampling::Mode, report::Report};

/// The labels every per-target series carries (and `mode`, from the report).
#[derive(Clone, Debug)]
pub struct TargetLabels {
    pub pid: u32,
    pub binary: String,
    pub container: String,
    pub pod: String,
}

impl TargetLabels {
    pub fn of(c: &Candidate) -> Self {
        TargetLabels {
            pid: c.key.pid,
            binary: c.binary.clone(),
            container: c.container.clone().unwrap_or_default(),
            pod: c.pod.clone().unwrap_or_default(),
        }
    }

    fn pairs(&self, mode: Mode) -> Vec<(String, String)> {
        vec![
            ("pid".into(), self.pid.to_string()),
            ("binary".into(), self.binary.clone()),
            ("container".into(), self.container.clone()),
            ("pod".into(), self.pod.clone()),
            ("mode".into(), mode.as_str().into()),
        ]
    }
}

/// The latest numbers of one target.
#[derive(Debug)]
pub struct TargetMetrics {
    pub labels: TargetLabels,
    pub report: Report,
}

/// Everything `/metrics` shows; shared by the sessions (writers) and the server (reader).
#[derive(Debug, Default)]
pub struct Shared {
    pub targets: BTreeMap<ProcessKey, TargetMetrics>,
    /// Attach failures by reason (`not_go` is not one: those are skipped quietly).
    pub attach_failures: BTreeMap<&'static str, u64>,
    pub top_sites: usize,
    /// Times /metrics was encoded: a target's report is rebuilt only when this moved.
    pub scrapes: u64,
}

pub type SharedMetrics = Arc<Mutex<Shared>>;

/// The registry `/metrics` encodes.
pub fn registry(shared: SharedMetrics) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Exported(shared)));
    r
}

#[derive(Debug)]
struct Exported(SharedMetrics);

/// One metric's samples: label pairs and value.
type Samples<M> = Vec<(Vec<(String, String)>, M)>;

/// One metric family being written: its name, help and type, then one sample per label set.
struct Family<'a, 'b> {
    encoder: &'b mut DescriptorEncoder<'a>,
}

impl Family<'_, '_> {
    fn write<M: EncodeMetric>(&mut self, name: &str, help: &str, samples: Samples<M>, kind: MetricType) -> fmt::Result {
        if samples.is_empty() {
            return Ok(());
        }
        let mut family = self.encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, m) in samples {
            m.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn with(base: &[(String, String)], extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut v = base.to_vec();
    v.extend(extra.iter().map(|(k, val)| (k.to_string(), val.clone())));
    v
}

fn kinds() -> [ValueKind; 4] {
    [ValueKind::Map, ValueKind::Slice, ValueKind::String, ValueKind::Object]
}

impl Collector for Exported {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut shared = self.0.lock().unwrap_or_else(|p| p.into_inner());
        shared.scrapes += 1;
        let mut f = Family { encoder: &mut encoder };
        let targets: Vec<(Vec<(String, String)>, &Report)> = shared
            .targets
            .values()
            .map(|t| (t.labels.pairs(t.report.mode), &t.report))
            .collect();
        let counter = |v: u64| ConstCounter::new(v);
        let gauge = |v: i64| ConstGauge::new(v);
        let per_target =
            |get: &dyn Fn(&Report) -> u64| targets.iter().map(|(l, r)| (l.clone(), get(r))).collect::<Vec<_>>();

        // Allocations by kind, from the site rows (every site: JSON-like top = all).
        let mut allocs = Vec::new();
        let mut bytes = Vec::new();
        for (l, r) in &targets {
            for k in kinds() {
                let rows = r.sites.iter().filter(|s| s.kind == k);
                let (n, b) = rows.fold((0, 0), |(n, b), s| (n + s.count, b + s.bytes));
                allocs.push((with(l, &[("kind", k.as_str().into())]), counter(n)));
                bytes.push((with(l, &[("kind", k.as_str().into())]), counter(b)));
            }
        }
        f.write("maptrace_allocations", "Maps, slices, strings and objects allocated while traced, by kind (mode=\"sampled\": estimates, scaled like go tool pprof).", allocs, MetricType::Counter)?;
        f.write(
            "maptrace_allocated_bytes",
            "Bytes allocated while traced, by kind.",
            bytes,
            MetricType::Counter,
        )?;
        let c = |get: &dyn Fn(&Report) -> u64| {
            per_target(get)
                .into_iter()
                .map(|(l, v)| (l, counter(v)))
                .collect::<Vec<_>>()
        };
        let g = |get: &dyn Fn(&Report) -> u64| {
            per_target(get)
                .into_iter()
                .map(|(l, v)| (l, gauge(v as i64)))
                .collect::<Vec<_>>()
        };
        f.write(
            "maptrace_gc_cycles",
            "GC cycles completed while traced.",
            c(&|r| r.gc.cycles_seen),
            MetricType::Counter,
        )?;
        f.write(
            "maptrace_live_objects",
            "Tracked objects alive as of the last sweeps.",
            g(&|r| r.gc.objects_tracked as u64),
            MetricType::Gauge,
        )?;
        f.write(
            "maptrace_live_bytes",
            "Bytes of tracked objects alive as of the last sweeps.",
            g(&|r| r.gc.tracked_bytes),
            MetricType::Gauge,
        )?;
        f.write(
            "maptrace_retained_objects",
            "Objects alive after K GC cycles and after their creating frame returned.",
            g(&|r| r.retained.iter().map(|x| x.retained_count).sum()),
            MetricType::Gauge,
        )?;
        f.write(
            "maptrace_retained_bytes",
            "Bytes of retained objects.",
            g(&|r| r.retained.iter().map(|x| x.retained_bytes).sum()),
            MetricType::Gauge,
        )?;
        f.write(
            "maptrace_lost_records",
            "Records the kernel dropped because the ring buffer was full.",
            c(&|r| r.lost_records),
            MetricType::Counter,
        )?;
        f.write(
            "maptrace_probes_attached",
            "Uprobes attached to the target.",
            g(&|r| r.probes.uprobes as u64),
            MetricType::Gauge,
        )?;
        let rates = targets
            .iter()
            .filter_map(|(l, r)| Some((l.clone(), gauge(r.sampling.as_ref()?.rate.memprofilerate? as i64))))
            .collect();
        f.write("maptrace_sample_rate_bytes", "Sampled mode: the target's runtime.MemProfileRate, bytes allocated per sample on average (maptrace raises it to its trap budget with --write-memprofilerate).", rates, MetricType::Gauge)?;

        // Finalizers and cleanups.
        let mut by_kind: [Samples<ConstCounter>; 3] = Default::default();
        let mut pending = Vec::new();
        let mut never = Vec::new();
        let mut blocked = Vec::new();
        for (l, r) in &targets {
            let fc = &r.finalizers.counts;
            for (m, (reg, queued, started)) in [
                (Mechanism::Finalizer, (fc.registered, fc.queued, fc.started)),
                (
                    Mechanism::Cleanup,
                    (fc.cleanups_registered, fc.cleanups_queued, fc.cleanups_started),
                ),
            ] {
                let labels = with(l, &[("kind", m.as_str().into())]);
                by_kind[0].push((labels.clone(), counter(reg)));
                by_kind[1].push((labels.clone(), counter(queued)));
                by_kind[2].push((labels.clone(), counter(started)));
            }
            pending.push((l.clone(), gauge(r.finalizers.pending as i64)));
            for row in &r.finalizers.never_ran {
                let reason = serde_json::to_value(row.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                never.push((
                    with(
                        l,
                        &[
                            ("kind", row.kind.as_str().into()),
                            ("reason", reason),
                            ("function", row.function.clone()),
                        ],
                    ),
                    gauge(row.count as i64),
                ));
            }
            for run in &r.finalizers.runners {
                let seconds = run.blocked.as_ref().map_or(0.0, |b| b.blocked_seconds);
                blocked.push((
                    with(l, &[("runs", run.runs.into()), ("goid", run.goid.to_string())]),
                    ConstGauge::new(seconds),
                ));
            }
        }
        let [registered, queued, started] = by_kind;
        f.write(
            "maptrace_finalizers_registered",
            "Finalizers (kind=finalizer) and cleanups (kind=cleanup) registered while traced.",
            registered,
            MetricType::Counter,
        )?;
        f.write(
            "maptrace_finalizers_queued",
            "Finalizers and cleanups queued by a sweep.",
            queued,
            MetricType::Counter,
        )?;
        f.write(
            "maptrace_finalizers_started",
            "Finalizers and cleanups started.",
            started,
            MetricType::Counter,
        )?;
        f.write(
            "maptrace_finalizers_pending",
            "Finalizers and cleanups registered or queued and not started.",
            pending,
            MetricType::Gauge,
        )?;
        f.write(
            "maptrace_finalizers_never_ran",
            "Finalizers and cleanups that did not run after K cycles, by kind, reason and function.",
            never,
            MetricType::Gauge,
        )?;
        f.write("maptrace_finalizer_goroutine_blocked_seconds", "How long a goroutine running finalizers or cleanups has been stuck with others queued behind it (0: not stuck).", blocked, MetricType::Gauge)?;

        let hist = |get: &dyn Fn(&Report) -> &crate::lifecycle::Buckets| {
            targets
                .iter()
                .map(|(l, r)| (l.clone(), ConstHistogram(get(r))))
                .collect::<Vec<_>>()
        };
        f.write(
            "maptrace_object_lifetime_seconds",
            "Lifetimes of the objects seen dying (sweep, address reuse or exact free).",
            hist(&|r| &r.distributions.lifetime_seconds),
            MetricType::Histogram,
        )?;
        f.write(
            "maptrace_allocation_size_bytes",
            "Requested sizes of the heap allocations traced.",
            hist(&|r| &r.distributions.size_bytes),
            MetricType::Histogram,
        )?;

        // Top sites by allocated bytes; the rest summed.
        let mut site_bytes = Vec::new();
        let mut site_retained = Vec::new();
        for (l, r) in &targets {
            let mut rows: Vec<_> = r.sites.iter().collect();
            rows.sort_by_key(|s| std::cmp::Reverse(s.bytes));
            let (top, rest) = rows.split_at(rows.len().min(shared.top_sites));
            for s in top {
                let site = s
                    .stack
                    .first()
                    .map_or_else(|| "(runtime)".to_string(), |fr| fr.function.clone());
                site_bytes.push((
                    with(
                        l,
                        &[
                            ("site", site),
                            ("kind", s.kind.as_str().into()),
                            ("type", s.type_name.clone()),
                        ],
                    ),
                    counter(s.bytes),
                ));
            }
            if !rest.is_empty() {
                let other = rest.iter().map(|s| s.bytes).sum();
                site_bytes.push((
                    with(
                        l,
                        &[
                            ("site", "other".into()),
                            ("kind", String::new()),
                            ("type", String::new()),
                        ],
                    ),
                    counter(other),
                ));
            }
            let mut ret: Vec<_> = r.retained.iter().collect();
            ret.sort_by_key(|x| std::cmp::Reverse(x.retained_bytes));
            for x in ret.iter().take(shared.top_sites) {
                let site = x
                    .stack
                    .first()
                    .map_or_else(|| "(runtime)".to_string(), |fr| fr.function.clone());
                site_retained.push((
                    with(
                        l,
                        &[
                            ("site", site),
                            ("kind", x.kind.as_str().into()),
                            ("type", x.type_name.clone()),
                        ],
                    ),
                    gauge(x.retained_bytes as i64),
                ));
            }
        }
        f.write(
            "maptrace_site_allocated_bytes",
            "Bytes allocated at the top sites by bytes (site=\"other\": the rest).",
            site_bytes,
            MetricType::Counter,
        )?;
        f.write(
            "maptrace_site_retained_bytes",
            "Retained bytes at the top retained sites.",
            site_retained,
            MetricType::Gauge,
        )?;

        // The agent itself.
        let none: Vec<(String, String)> = Vec::new();
        f.write(
            "maptrace_agent_targets",
            "Go processes traced now.",
            vec![(none.clone(), gauge(shared.targets.len() as i64))],
            MetricType::Gauge,
        )?;
        let failures = shared
            .attach_failures
            .iter()
            .map(|(why, n)| (vec![("reason".to_string(), why.to_string())], counter(*n)))
            .collect();
        f.write(
            "maptrace_agent_attach_failures",
            "Go processes the agent could not attach to, by reason.",
            failures,
            MetricType::Counter,
        )?;
        let (cpu, rss) = own_usage();
        f.write(
            "maptrace_agent_cpu_seconds",
            "CPU time the agent used (user + system).",
            vec![(none.clone(), ConstCounter::new(cpu))],
            MetricType::Counter,
        )?;
        f.write(
            "maptrace_agent_resident_bytes",
            "The agent's resident memory.",
            vec![(none, gauge(rss as i64))],
            MetricType::Gauge,
        )?;
        Ok(())
    }
}

/// A histogram computed elsewhere, encoded as is.
struct ConstHistogram<'a>(&'a crate::lifecycle::Buckets);

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        // The encoder writes f64::MAX as +Inf.
        let buckets: Vec<(f64, u64)> = self
            .0
            .upper_bounds
            .iter()
            .zip(&self.0.counts)
            .map(|(&b, &n)| (if b.is_finite() { b } else { f64::MAX }, n))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// This process's CPU seconds and resident bytes.
fn own_usage() -> (f64, u64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = secs(usage.ru_utime) + secs(usage.ru_stime);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        // SAFETY: sysconf has no preconditions.
        .map_or(0, |pages| pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64);
    (cpu, rss)
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers and tools
/// that ask for it (`promtool check metrics`, curl): a counter's HELP and TYPE name its `_total`
/// sample, and the `# EOF` and `# UNIT` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter")) {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_samples() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\n# UNIT a_b bytes\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n"
        );
    }
}
