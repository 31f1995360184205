//! Exposition that never breaks: a Go program whose function names hold double quotes and backslashes
//! (go-targets/generics: generic instantiations named after tagged structs; built with Go 1.21, one name also
//! runs to 983 bytes) is traced by `maptrace agent` beside a well-behaved one (go-targets/retainers). Its site
//! series are written escaped, in the classic text format (`promtool check metrics` accepts it) and in
//! OpenMetrics, long values cut; a real Prometheus server scraping the agent keeps ingesting every target's
//! series, each site label exactly the name the binary spells (cut at 512 bytes).

use std::time::Duration;

use e2e::{
    agent::{promql_string, promtool_check_metrics, sample, unique_copy, wait_for, Agent, Prometheus, FOUND_WITHIN},
    generics::{instantiations, names, N},
    Target, TempDir,
};

/// The longest label value the agent writes, in bytes; longer ones are cut and end in `…`.
const MAX_LABEL_VALUE: usize = 512;
/// Prometheus scrapes every second; a series reaches its storage within this.
const INGESTED_WITHIN: Duration = Duration::from_secs(30);

/// A label value as the agent must write it, in either format: cut at [`MAX_LABEL_VALUE`] bytes, then `\`,
/// `"` and newline escaped (the names here are ASCII, so the cut is a character boundary).
fn escaped(value: &str) -> String {
    let cut = &value[..value.len().min(MAX_LABEL_VALUE)];
    let mut out = cut.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    if cut.len() < value.len() {
        out.push('…');
    }
    out
}

/// A label value as Prometheus must store it: the name itself, cut like [`escaped`].
fn stored(value: &str) -> String {
    match value.len() > MAX_LABEL_VALUE {
        true => format!("{}…", &value[..MAX_LABEL_VALUE]),
        false => value.to_string(),
    }
}

#[test]
fn names_that_need_escaping_keep_the_scrape_whole() {
    // 1.21 names the wide instantiation in full (983 bytes: the cut), 1.24 as the other releases since 1.22 do.
    for go in [e2e::GO1_21, e2e::GO1_24] {
        check(go);
    }
}

/// One agent and one Prometheus server, the generics target built with `go`, then retainers beside it.
fn check(go: &str) {
    let dir = TempDir::new(&format!("exposition-{go}"));
    let (generics, generics_name) = unique_copy(go, dir.path(), "generics");
    let (retainers, retainers_name) = unique_copy(go, dir.path(), "retainers");
    let agent = Agent::start(&[&generics_name, &retainers_name]);
    let prometheus = Prometheus::start(agent.port);
    let attached = |binary: &str, pid: u32| {
        let pid = pid.to_string();
        wait_for(&format!("{binary}'s series"), FOUND_WITHIN, || {
            sample(
                &agent.metrics(),
                "maptrace_probes_attached",
                &[("binary", binary), ("pid", &pid)],
            )
        });
    };

    // The generics target runs its measured work under the agent and lingers.
    let mut target = Target::start(&generics, &[&format!("-n={N}")]);
    attached(&generics_name, target.pid);
    target.go();
    target.wait_done();
    // Sampled mode knows no allocation's type: the names to escape are the sites'.
    let expected: Vec<String> = instantiations().iter().map(|i| names(go, &i.arg).0).collect();
    let site_written = |text: &str, function: &str| {
        sample(
            text,
            "maptrace_site_allocated_bytes_total",
            &[("binary", &generics_name), ("site", &escaped(function))],
        )
    };
    let text = wait_for("every instantiation's site series", FOUND_WITHIN, || {
        let text = agent.metrics();
        expected
            .iter()
            .all(|function| site_written(&text, function).is_some_and(|v| v > 0.0))
            .then_some(text)
    });

    // The classic text format: promtool accepts it.
    if let Err(complaints) = promtool_check_metrics(&text) {
        panic!("promtool check metrics: {complaints}\n{text}");
    }
    // OpenMetrics, as Prometheus asks for it: the same values, escaped the same way, and a whole exposition.
    let (content_type, openmetrics) = agent.openmetrics();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    for function in &expected {
        assert!(
            site_written(&openmetrics, function).is_some(),
            "{function} in {openmetrics}"
        );
    }

    // Prometheus stores each name as the binary spells it.
    let of_generics = format!("{{binary={}}}", promql_string(&generics_name));
    let sites = wait_for(
        "Prometheus to ingest the generics target's sites",
        INGESTED_WITHIN,
        || {
            let series = prometheus.series(&format!("maptrace_site_allocated_bytes_total{of_generics}"))?;
            let mut sites: Vec<String> = series
                .into_iter()
                .map(|(labels, _)| labels["site"].clone())
                .filter(|site| site.starts_with("main.keep["))
                .collect();
            sites.sort();
            (sites.len() == expected.len()).then_some(sites)
        },
    );
    let mut want: Vec<String> = expected.iter().map(|f| stored(f)).collect();
    want.sort();
    assert_eq!(sites, want);
    // Each can be asked for by its name.
    for function in &expected {
        let q = format!(
            "maptrace_site_allocated_bytes_total{{binary={},site={}}}",
            promql_string(&generics_name),
            promql_string(&stored(function))
        );
        assert!(prometheus.query(&q).is_some_and(|v| v > 0.0), "{q}");
    }
    // Prometheus read the OpenMetrics exposition: that format names a counter family without `_total`.
    let metadata = prometheus.metadata("maptrace_site_allocated_bytes");
    assert!(
        metadata
            .as_ref()
            .is_some_and(|m| m.iter().all(|e| e["type"] == "counter") && !m.is_empty()),
        "{metadata:?}"
    );

    // A well-behaved target started now: its series can only come from scrapes that also held the generics
    // target's, and Prometheus takes them all.
    let mut well_behaved = Target::start(&retainers, &[]);
    attached(&retainers_name, well_behaved.pid);
    well_behaved.go();
    well_behaved.wait_done();
    let q = format!(
        "maptrace_site_allocated_bytes_total{{binary={},site=\"main.loadHeader\"}}",
        promql_string(&retainers_name)
    );
    let header_bytes = wait_for(
        "Prometheus to ingest the retainers target's site",
        INGESTED_WITHIN,
        || prometheus.query(&q),
    );
    assert!(header_bytes >= (5 << 20) as f64, "5 rounds of 1 MiB: {header_bytes}");
    assert_eq!(
        prometheus.query("up{job=\"maptrace\"}"),
        Some(1.0),
        "the last scrape succeeded"
    );
    let still = prometheus
        .series(&format!("maptrace_site_allocated_bytes_total{of_generics}"))
        .unwrap_or_default();
    assert!(
        still
            .iter()
            .filter(|(l, _)| l["site"].starts_with("main.keep["))
            .count()
            == expected.len(),
        "the generics target's series are still ingested: {still:?}"
    );
    eprintln!(
        "promtool check metrics: accepted {} lines; Prometheus ingested {} series of {generics_name}, \
         and {retainers_name}'s main.loadHeader at {header_bytes} bytes",
        text.lines().count(),
        still.len(),
    );
    well_behaved.finish();
    target.finish();
}
