//! The agent's `/metrics`: per-target series derived from each session's latest report, plus the
//! agent's own, encoded as OpenMetrics text by the Prometheus client crate at scrape time.
//!
//! Cardinality is bounded: per target, a fixed set of series plus at most `top_sites` site series
//! (the rest summed into one `site="other"` series) per site metric.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
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
use crate::{
    lifecycle::finalizers::{FinalizerCounts, Mechanism, NeverRanRow, RunnerGoroutine},
    lifecycle::sites::{FrameRow, SiteRow, ValueKind},
    lifecycle::Buckets,
    probes::sampling::Mode,
    report::Report,
};

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

/// A series' labels, as the encoder takes them.
type Labels = Vec<(String, String)>;

/// One series: its labels and value.
type Sample<'a> = (Labels, Value<'a>);

/// One series of a target: the labels it adds to the target's, and its value.
type Row<'a> = (Vec<(&'static str, String)>, Value<'a>);

/// A sample's value, in the number type the report keeps it in.
enum Value<'a> {
    Counter(u64),
    CounterF64(f64),
    Gauge(i64),
    GaugeF64(f64),
    Histogram(&'a Buckets),
}

impl EncodeMetric for Value<'_> {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        match *self {
            Value::Counter(v) => ConstCounter::new(v).encode(encoder),
            Value::CounterF64(v) => ConstCounter::new(v).encode(encoder),
            Value::Gauge(v) => ConstGauge::new(v).encode(encoder),
            Value::GaugeF64(v) => ConstGauge::new(v).encode(encoder),
            Value::Histogram(b) => ConstHistogram(b).encode(encoder),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Value::Counter(_) | Value::CounterF64(_) => MetricType::Counter,
            Value::Gauge(_) | Value::GaugeF64(_) => MetricType::Gauge,
            Value::Histogram(_) => MetricType::Histogram,
        }
    }
}

/// What one scrape reads: each target's labels and latest report, and the agent's own state.
struct Scrape<'a> {
    targets: Vec<(Labels, &'a Report)>,
    shared: &'a Shared,
    /// The agent's CPU seconds and resident bytes.
    usage: (f64, u64),
}

/// A metric family: its name, help and type, and its samples in a scrape.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: for<'a> fn(&Scrape<'a>) -> Vec<Sample<'a>>,
}

/// Every family `/metrics` shows, in the order it shows them.
const FAMILIES: &[Family] = &[
    Family {
        name: "maptrace_allocations",
        help: "Maps, slices, strings and objects allocated while traced, by kind (mode=\"sampled\": estimates, \
              scaled like go tool pprof).",
        kind: MetricType::Counter,
        samples: |s| by_target(s, |r| by_kind(r, |row| row.count)),
    },
    Family {
        name: "maptrace_allocated_bytes",
        help: "Bytes allocated while traced, by kind.",
        kind: MetricType::Counter,
        samples: |s| by_target(s, |r| by_kind(r, |row| row.bytes)),
    },
    Family {
        name: "maptrace_gc_cycles",
        help: "GC cycles completed while traced.",
        kind: MetricType::Counter,
        samples: |s| per_target(s, |r| Value::Counter(r.gc.cycles_seen)),
    },
    Family {
        name: "maptrace_live_objects",
        help: "Tracked objects alive as of the last sweeps.",
        kind: MetricType::Gauge,
        samples: |s| per_target(s, |r| Value::Gauge(r.gc.objects_tracked as i64)),
    },
    Family {
        name: "maptrace_live_bytes",
        help: "Bytes of tracked objects alive as of the last sweeps.",
        kind: MetricType::Gauge,
        samples: |s| per_target(s, |r| Value::Gauge(r.gc.tracked_bytes as i64)),
    },
    Family {
        name: "maptrace_retained_objects",
        help: "Objects alive after K GC cycles and after their creating frame returned.",
        kind: MetricType::Gauge,
        samples: |s| {
            per_target(s, |r| {
                Value::Gauge(r.retained.iter().map(|x| x.retained_count).sum::<u64>() as i64)
            })
        },
    },
    Family {
        name: "maptrace_retained_bytes",
        help: "Bytes of retained objects.",
        kind: MetricType::Gauge,
        samples: |s| {
            per_target(s, |r| {
                Value::Gauge(r.retained.iter().map(|x| x.retained_bytes).sum::<u64>() as i64)
            })
        },
    },
    Family {
        name: "maptrace_lost_records",
        help: "Records the kernel dropped because the ring buffer was full.",
        kind: MetricType::Counter,
        samples: |s| per_target(s, |r| Value::Counter(r.lost_records)),
    },
    Family {
        name: "maptrace_probes_attached",
        help: "Uprobes attached to the target.",
        kind: MetricType::Gauge,
        samples: |s| per_target(s, |r| Value::Gauge(r.probes.uprobes as i64)),
    },
    Family {
        name: "maptrace_sample_rate_bytes",
        help: "Sampled mode: the target's runtime.MemProfileRate, bytes allocated per sample on average (maptrace \
              raises it to its trap budget with --write-memprofilerate).",
        kind: MetricType::Gauge,
        samples: |s| {
            by_target(s, |r| {
                r.sampling
                    .as_ref()
                    .and_then(|x| x.rate.memprofilerate)
                    .map(|rate| (Vec::new(), Value::Gauge(rate as i64)))
            })
        },
    },
    Family {
        name: "maptrace_finalizers_registered",
        help: "Finalizers (kind=finalizer) and cleanups (kind=cleanup) registered while traced.",
        kind: MetricType::Counter,
        samples: |s| by_target(s, |r| by_mechanism(r, |c| (c.registered, c.cleanups_registered))),
    },
    Family {
        name: "maptrace_finalizers_queued",
        help: "Finalizers and cleanups queued by a sweep.",
        kind: MetricType::Counter,
        samples: |s| by_target(s, |r| by_mechanism(r, |c| (c.queued, c.cleanups_queued))),
    },
    Family {
        name: "maptrace_finalizers_started",
        help: "Finalizers and cleanups started.",
        kind: MetricType::Counter,
        samples: |s| by_target(s, |r| by_mechanism(r, |c| (c.started, c.cleanups_started))),
    },
    Family {
        name: "maptrace_finalizers_pending",
        help: "Finalizers and cleanups registered or queued and not started.",
        kind: MetricType::Gauge,
        samples: |s| per_target(s, |r| Value::Gauge(r.finalizers.pending as i64)),
    },
    Family {
        name: "maptrace_finalizers_never_ran",
        help: "Finalizers and cleanups that did not run after K cycles, by kind, reason and function.",
        kind: MetricType::Gauge,
        samples: |s| by_target(s, |r| never_ran(r, s.shared.top_sites)),
    },
    Family {
        name: "maptrace_finalizer_goroutine_blocked_seconds",
        help: "How long a goroutine running finalizers or cleanups has been stuck with others queued behind it (0: \
              not stuck).",
        kind: MetricType::Gauge,
        samples: |s| by_target(s, |r| runners_blocked(r, s.shared.top_sites)),
    },
    Family {
        name: "maptrace_object_lifetime_seconds",
        help: "Lifetimes of the objects seen dying (sweep, address reuse or exact free).",
        kind: MetricType::Histogram,
        samples: |s| per_target(s, |r| Value::Histogram(&r.distributions.lifetime_seconds)),
    },
    Family {
        name: "maptrace_allocation_size_bytes",
        help: "Requested sizes of the heap allocations traced.",
        kind: MetricType::Histogram,
        samples: |s| per_target(s, |r| Value::Histogram(&r.distributions.size_bytes)),
    },
    Family {
        name: "maptrace_site_allocated_bytes",
        help: "Bytes allocated at the top sites by bytes (site=\"other\": the rest).",
        kind: MetricType::Counter,
        samples: |s| by_target(s, |r| top_allocating(r, s.shared.top_sites)),
    },
    Family {
        name: "maptrace_site_retained_bytes",
        help: "Retained bytes at the top retained sites.",
        kind: MetricType::Gauge,
        samples: |s| by_target(s, |r| top_retaining(r, s.shared.top_sites)),
    },
    Family {
        name: "maptrace_agent_targets",
        help: "Go processes traced now.",
        kind: MetricType::Gauge,
        samples: |s| vec![(Labels::new(), Value::Gauge(s.shared.targets.len() as i64))],
    },
    Family {
        name: "maptrace_agent_attach_failures",
        help: "Go processes the agent could not attach to, by reason.",
        kind: MetricType::Counter,
        samples: |s| {
            let failures = s.shared.attach_failures.iter();
            failures
                .map(|(why, n)| (vec![("reason".to_string(), why.to_string())], Value::Counter(*n)))
                .collect()
        },
    },
    Family {
        name: "maptrace_agent_cpu_seconds",
        help: "CPU time the agent used (user + system).",
        kind: MetricType::Counter,
        samples: |s| vec![(Labels::new(), Value::CounterF64(s.usage.0))],
    },
    Family {
        name: "maptrace_agent_resident_bytes",
        help: "The agent's resident memory.",
        kind: MetricType::Gauge,
        samples: |s| vec![(Labels::new(), Value::Gauge(s.usage.1 as i64))],
    },
];

impl Collector for Exported {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut shared = self.0.lock().unwrap_or_else(|p| p.into_inner());
        shared.scrapes += 1;
        let scrape = Scrape {
            targets: shared
                .targets
                .values()
                .map(|t| (t.labels.pairs(t.report.mode), &t.report))
                .collect(),
            shared: &shared,
            usage: own_usage(),
        };
        for family in FAMILIES {
            write(&mut encoder, family, (family.samples)(&scrape))?;
        }
        Ok(())
    }
}

/// Writes a family's descriptor, then one sample per label set; a family without samples is left out.
fn write(encoder: &mut DescriptorEncoder, family: &Family, samples: Vec<Sample>) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
    for (labels, value) in merged(samples) {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The samples with their label values as written ([`label_value`]), those that then carry the same labels
/// summed into one: distinct sites can read the same once cut to the label cap, or when Go 1.19 names every
/// instantiation of a generic function `f[...]`, and a scrape with two samples of one series keeps only one.
fn merged(samples: Vec<Sample>) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::with_capacity(samples.len());
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(samples.len());
    for (labels, value) in samples {
        let labels: Labels = labels.into_iter().map(|(k, v)| (k, label_value(&v))).collect();
        match index.get(&labels) {
            Some(&i) => out[i].1.add(value),
            None => {
                index.insert(labels.clone(), out.len());
                out.push((labels, value));
            }
        }
    }
    out
}

impl Value<'_> {
    /// Adds another sample's value of the same series; histograms are per target, never merged.
    fn add(&mut self, other: Value<'_>) {
        match (self, other) {
            (Value::Counter(a), Value::Counter(b)) => *a += b,
            (Value::CounterF64(a), Value::CounterF64(b)) => *a += b,
            (Value::Gauge(a), Value::Gauge(b)) => *a += b,
            (Value::GaugeF64(a), Value::GaugeF64(b)) => *a += b,
            _ => {}
        }
    }
}

/// The longest label value written, in bytes: Go names (generic instantiations spell out their type
/// arguments, struct tags included) can run to kilobytes, and each series' labels are kept by Prometheus.
const MAX_LABEL_VALUE: usize = 512;

/// A label value as the text format and OpenMetrics both require it: `\`, `"` and newlines escaped (the encoder
/// writes values as given, and a name from the target may hold any of them), cut to [`MAX_LABEL_VALUE`] bytes
/// at a character boundary with `…` to show the cut.
fn label_value(v: &str) -> String {
    let mut cut = v.len().min(MAX_LABEL_VALUE);
    while !v.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 8);
    for c in v[..cut].chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    if cut < v.len() {
        out.push('…');
    }
    out
}

/// Every target's series, in target order: the target's labels followed by those of each row.
fn by_target<'a, I>(s: &Scrape<'a>, rows: impl Fn(&'a Report) -> I) -> Vec<Sample<'a>>
where
    I: IntoIterator<Item = Row<'a>>,
{
    s.targets
        .iter()
        .flat_map(|(labels, r)| rows(r).into_iter().map(move |(extra, v)| (with(labels, &extra), v)))
        .collect()
}

/// One series per target.
fn per_target<'a>(s: &Scrape<'a>, value: impl Fn(&'a Report) -> Value<'a>) -> Vec<Sample<'a>> {
    by_target(s, |r| [(Vec::new(), value(r))])
}

fn with(base: &[(String, String)], extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut v = base.to_vec();
    v.extend(extra.iter().map(|(k, val)| (k.to_string(), val.clone())));
    v
}

fn kinds() -> [ValueKind; 4] {
    [ValueKind::Map, ValueKind::Slice, ValueKind::String, ValueKind::Object]
}

/// Allocations by kind, summed over every site row (not only the top ones): `of` picks count or bytes.
fn by_kind<'a>(r: &Report, of: fn(&SiteRow) -> u64) -> Vec<Row<'a>> {
    let total = |k| r.sites.iter().filter(|s| s.kind == k).map(of).sum();
    kinds()
        .into_iter()
        .map(|k| (vec![("kind", k.as_str().into())], Value::Counter(total(k))))
        .collect()
}

/// Finalizers, then cleanups, at one stage: `of` picks the stage's pair of counts.
fn by_mechanism<'a>(r: &Report, of: fn(&FinalizerCounts) -> (u64, u64)) -> Vec<Row<'a>> {
    let (finalizers, cleanups) = of(&r.finalizers.counts);
    [(Mechanism::Finalizer, finalizers), (Mechanism::Cleanup, cleanups)]
        .into_iter()
        .map(|(m, n)| (vec![("kind", m.as_str().into())], Value::Counter(n)))
        .collect()
}

/// The `top` groups of finalizers that never ran, most objects first: like sites, one series per function, so
/// bounded as sites are.
fn never_ran<'a>(r: &Report, top: usize) -> Vec<Row<'a>> {
    let row = |row: &NeverRanRow| {
        // The reason as the JSON report spells it.
        let reason = serde_json::to_value(row.reason)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let labels = vec![
            ("kind", row.kind.as_str().into()),
            ("reason", reason),
            ("function", row.function.clone()),
        ];
        (labels, Value::Gauge(row.count as i64))
    };
    let mut groups: Vec<&NeverRanRow> = r.finalizers.never_ran.iter().collect();
    groups.sort_by_key(|g| Reverse(g.count));
    groups.into_iter().take(top).map(row).collect()
}

/// The `top` finalizer and cleanup goroutines blocked longest: a program may start many (one per cleanup queue in
/// recent releases), each its own series.
fn runners_blocked<'a>(r: &Report, top: usize) -> Vec<Row<'a>> {
    let row = |run: &RunnerGoroutine| {
        let seconds = run.blocked.as_ref().map_or(0.0, |b| b.blocked_seconds);
        let labels = vec![("runs", run.runs.into()), ("goid", run.goid.to_string())];
        (labels, Value::GaugeF64(seconds))
    };
    let blocked_seconds = |run: &&RunnerGoroutine| run.blocked.as_ref().map_or(0.0, |b| b.blocked_seconds);
    let mut runners: Vec<&RunnerGoroutine> = r.finalizers.runners.iter().collect();
    runners.sort_by(|a, b| blocked_seconds(b).total_cmp(&blocked_seconds(a)));
    runners.into_iter().take(top).map(row).collect()
}

/// The `top` sites by allocated bytes, and the rest summed into one `site="other"` series.
fn top_allocating<'a>(r: &Report, top: usize) -> Vec<Row<'a>> {
    let mut rows: Vec<_> = r.sites.iter().collect();
    rows.sort_by_key(|s| Reverse(s.bytes));
    let (top, rest) = rows.split_at(rows.len().min(top));
    let mut out: Vec<Row> = top
        .iter()
        .map(|s| (site_labels(&s.stack, s.kind, &s.type_name), Value::Counter(s.bytes)))
        .collect();
    if !rest.is_empty() {
        let other = vec![
            ("site", "other".into()),
            ("kind", String::new()),
            ("type", String::new()),
        ];
        out.push((other, Value::Counter(rest.iter().map(|s| s.bytes).sum())));
    }
    out
}

/// The `top` retained sites by retained bytes.
fn top_retaining<'a>(r: &Report, top: usize) -> Vec<Row<'a>> {
    let mut rows: Vec<_> = r.retained.iter().collect();
    rows.sort_by_key(|x| Reverse(x.retained_bytes));
    rows.iter()
        .take(top)
        .map(|x| {
            (
                site_labels(&x.stack, x.kind, &x.type_name),
                Value::Gauge(x.retained_bytes as i64),
            )
        })
        .collect()
}

/// A site series' labels: its innermost function, kind and type.
fn site_labels(stack: &[FrameRow], kind: ValueKind, type_name: &str) -> Vec<(&'static str, String)> {
    let site = stack
        .first()
        .map_or_else(|| "(runtime)".to_string(), |fr| fr.function.clone());
    vec![
        ("site", site),
        ("kind", kind.as_str().into()),
        ("type", type_name.to_string()),
    ]
}

/// A histogram computed elsewhere, encoded as is.
struct ConstHistogram<'a>(&'a Buckets);

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
    fn samples_that_read_the_same_are_one_series() {
        let site = |name: &str| vec![("site".to_string(), name.to_string())];
        let long = |tail: &str| format!("{}{tail}", "x".repeat(MAX_LABEL_VALUE));
        let samples = vec![
            (site("main.keep[...]"), Value::Counter(7680)),
            (site("main.keep[...]"), Value::Counter(480)),
            (site(&long("a")), Value::Gauge(2)),
            (site("main.f"), Value::Counter(1)),
            (site(&long("b")), Value::Gauge(3)),
        ];
        let values: Vec<(String, String)> = merged(samples)
            .into_iter()
            .map(|(labels, v)| {
                let v = match v {
                    Value::Counter(n) => n.to_string(),
                    Value::Gauge(n) => n.to_string(),
                    _ => "?".into(),
                };
                (labels[0].1.chars().take(12).collect(), v)
            })
            .collect();
        let want = [("main.keep[..", "8160"), ("xxxxxxxxxxxx", "5"), ("main.f", "1")];
        assert_eq!(values, want.map(|(a, b)| (a.to_string(), b.to_string())));
    }

    #[test]
    fn label_values_are_escaped_and_capped() {
        // A generic function instantiated with a tagged struct, as the compiler names it.
        let generic = r#"main.keep[go.shape.struct { ID int "json:\"id\"" }]"#;
        assert_eq!(
            label_value(generic),
            r#"main.keep[go.shape.struct { ID int \"json:\\\"id\\\"\" }]"#
        );
        assert_eq!(label_value("a\nb"), "a\\nb", "a newline cannot start a forged series");
        let long = "é".repeat(MAX_LABEL_VALUE);
        let capped = label_value(&long);
        assert!(
            capped.len() <= MAX_LABEL_VALUE + '…'.len_utf8() && capped.ends_with('…'),
            "{}",
            capped.len()
        );
        assert_eq!(label_value("main.f"), "main.f");
    }

    #[test]
    fn classic_text_names_counter_samples() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\n# UNIT a_b bytes\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n"
        );
    }
}
