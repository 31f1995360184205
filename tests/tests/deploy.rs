//! deploy/: the Kubernetes manifests validate against the API schemas (kubernetes-validate, which
//! carries them, so this runs offline), the PodMonitor selects the DaemonSet's pods and port, the
//! plain Prometheus configuration passes `promtool check config`, and the Grafana dashboard is
//! JSON whose queries use only metrics the agent exports.

use std::{path::PathBuf, process::Command};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs python3 with kubernetes-validate (and its PyYAML) importable.
fn python(args: &[&str]) -> std::process::Output {
    let tool = std::env::var_os("MAPTRACE_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo(".cache/python/kubernetes-validate-1.37.0"));
    assert!(tool.is_dir(), "{} is missing: `./x setup` installs it", tool.display());
    Command::new("python3")
        .env("PYTHONPATH", &tool)
        .args(args)
        .output()
        .expect("python3")
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    // 1.30: the oldest release with securityContext.appArmorProfile.
    let manifests = repo("deploy/maptrace.yaml");
    let out = python(&[
        "-m",
        "kubernetes_validate",
        "--strict",
        "-k",
        "1.30.0",
        manifests.to_str().unwrap(),
    ]);
    ok(&out, "kubernetes-validate");
    // It does refuse a broken one (so the check above means something).
    let broken = std::env::temp_dir().join(format!("maptrace-broken-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(&manifests)
        .unwrap()
        .replace("hostPID: true", "hostPID: true\n      hostPIDs: true");
    std::fs::write(&broken, text).unwrap();
    let out = python(&[
        "-m",
        "kubernetes_validate",
        "--strict",
        "-k",
        "1.30.0",
        broken.to_str().unwrap(),
    ]);
    std::fs::remove_file(&broken).unwrap();
    assert!(!out.status.success(), "a misspelt field must not validate");
}

#[test]
fn the_pod_monitor_selects_the_daemonset() {
    let script = r#"
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
ds = next(d for d in docs if d["kind"] == "DaemonSet")
pm = yaml.safe_load(open(sys.argv[2]))
assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor", pm
pod_labels = ds["spec"]["template"]["metadata"]["labels"]
for k, v in pm["spec"]["selector"]["matchLabels"].items():
    assert pod_labels.get(k) == v, (k, v, pod_labels)
assert pm["metadata"]["namespace"] == ds["metadata"]["namespace"]
ports = {p["name"] for c in ds["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
for e in pm["spec"]["podMetricsEndpoints"]:
    assert e["port"] in ports, (e["port"], ports)
spec = ds["spec"]["template"]["spec"]
assert spec["hostPID"] is True
caps = spec["containers"][0]["securityContext"]["capabilities"]
assert caps["drop"] == ["ALL"] and {"BPF", "PERFMON", "SYS_PTRACE"} <= set(caps["add"]), caps
assert spec["containers"][0]["securityContext"]["privileged"] is False
"#;
    let out = python(&[
        "-c",
        script,
        repo("deploy/maptrace.yaml").to_str().unwrap(),
        repo("deploy/podmonitor.yaml").to_str().unwrap(),
    ]);
    ok(&out, "PodMonitor against the DaemonSet");
}

#[test]
fn the_scrape_config_passes_promtool() {
    // Debian builds Prometheus without Kubernetes service discovery, so promtool checks a copy
    // whose kubernetes_sd_configs (checked here by hand) is swapped for a static target; the rest
    // (relabelling rules, their regexes, the global section) is promtool's to judge.
    let copy = std::env::temp_dir().join(format!("maptrace-scrape-{}.yml", std::process::id()));
    let script = r#"
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
job = c["scrape_configs"][0]
sd = job.pop("kubernetes_sd_configs")
assert sd[0]["role"] == "pod" and sd[0]["namespaces"]["names"] == ["maptrace"], sd
job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
yaml.safe_dump(c, open(sys.argv[2], "w"))
"#;
    ok(
        &python(&[
            "-c",
            script,
            repo("deploy/prometheus-scrape.yml").to_str().unwrap(),
            copy.to_str().unwrap(),
        ]),
        "the scrape config",
    );
    let out = Command::new("promtool")
        .args(["check", "config", copy.to_str().unwrap()])
        .output()
        .expect("promtool (Debian package prometheus; ./x installs it)");
    std::fs::remove_file(&copy).unwrap();
    ok(&out, "promtool check config");
}

#[test]
fn the_dashboard_queries_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana-dashboard.json")).unwrap()).unwrap();
    // What the agent exports, from its table of families (`name`, then `kind`): counters get `_total`.
    let source = std::fs::read_to_string(repo("tracer/src/agent/metrics.rs")).unwrap();
    let mut exported = std::collections::HashSet::new();
    for (i, _) in source.match_indices("name: \"maptrace_") {
        let name: String = source[i + "name: \"".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let counter = source[i..]
            .split("kind: MetricType::")
            .nth(1)
            .is_some_and(|t| t.starts_with("Counter"));
        exported.insert(if counter { format!("{name}_total") } else { name });
    }
    assert!(exported.len() >= 15, "{exported:?}");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let used: Vec<String> = expr
                .match_indices("maptrace_")
                .map(|(i, _)| {
                    expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect()
                })
                .collect();
            assert!(!used.is_empty(), "{expr}");
            for name in used {
                assert!(
                    exported.contains(&name),
                    "panel {:?} queries {name}, which the agent does not export ({exported:?})",
                    p["title"]
                );
            }
        }
    }
}
