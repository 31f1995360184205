//! `maptrace agent` end to end: it finds Go processes started after it (also in new PID and mount
//! namespaces), traces them, serves their series on /metrics in a form `promtool check metrics`
//! accepts and a real Prometheus server scrapes, and drops a target's series when it exits or
//! execs into a non-Go binary.
//!
//! The agent is told to `--include` binaries with names unique to this test run (copies of the
//! go-targets), so that it leaves every other process on the machine alone.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use e2e::{
    agent::{promtool_check_metrics, sample, unique_copy, wait_for, Agent, Prometheus, FOUND_WITHIN},
    target_path, Lines, Target, TempDir,
};

const GO: &str = e2e::GO1_24;
const N: f64 = 10.0;

#[test]
fn agent_finds_traces_exports_and_forgets() {
    let dir = TempDir::new("agent");
    let (fin, fin_name) = unique_copy(GO, dir.path(), "finalizers");
    let (execer, exec_name) = unique_copy(GO, dir.path(), "execer");
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
    if let Err(e) = promtool_check_metrics(&text) {
        panic!("promtool check metrics: {e}");
    }

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
    let inside = dir.path().join("ns");
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
