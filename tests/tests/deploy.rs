//! deploy/: the Kubernetes manifests validate against the API schemas (kubernetes-validate, which
//! carries them, so this runs offline); the agent listens on the pod's loopback behind
//! kube-rbac-proxy, which alone has a token and whose RBAC is in place; the NetworkPolicy admits only
//! the monitoring namespace on the proxy's port; the ServiceMonitor scrapes the proxy's port with
//! Prometheus's token; the plain Prometheus configuration does the same and passes `promtool check
//! config`; and the Grafana dashboard is JSON whose queries use only metrics the agent exports.

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

/// Python that loads deploy/maptrace.yaml (argv[1]) and names its parts, for the checks below.
const MANIFESTS: &str = r#"
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
def one(kind, name=None):
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, found)
    return found[0]
ds = one("DaemonSet")
namespace = ds["metadata"]["namespace"]
pod = ds["spec"]["template"]["spec"]
pod_labels = ds["spec"]["template"]["metadata"]["labels"]
containers = {c["name"]: c for c in pod["containers"]}
agent, proxy = containers["maptrace"], containers["kube-rbac-proxy"]
https = next(p["containerPort"] for p in proxy["ports"] if p["name"] == "https")
def selects_the_pods(match_labels):
    return match_labels and all(pod_labels.get(k) == v for k, v in match_labels.items())
def proxy_port(port):
    return https if port == "https" else port
"#;

/// Runs `checks` after [`MANIFESTS`], with deploy/maptrace.yaml and then `more` files as arguments.
fn check_manifests(what: &str, checks: &str, more: &[&str]) {
    let script = format!("{MANIFESTS}{checks}");
    let mut args = vec![
        "-c".to_string(),
        script,
        repo("deploy/maptrace.yaml").display().to_string(),
    ];
    args.extend(more.iter().map(|m| repo(m).display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&python(&args), what);
}

#[test]
fn the_agent_listens_on_loopback_behind_kube_rbac_proxy() {
    check_manifests(
        "the agent behind kube-rbac-proxy",
        r#"
assert pod["hostPID"] is True and "hostNetwork" not in pod, pod
caps = agent["securityContext"]["capabilities"]
assert caps["drop"] == ["ALL"] and {"BPF", "PERFMON", "SYS_PTRACE"} <= set(caps["add"]), caps
assert agent["securityContext"]["privileged"] is False
# The agent: loopback only, no port for the kubelet or a Service, no token.
listen = [a.split("=", 1)[1] for a in agent["args"] if a.startswith("--listen=")]
assert len(listen) == 1 and listen[0].startswith("127.0.0.1:"), agent["args"]
agent_port = int(listen[0].rsplit(":", 1)[1])
assert agent_port != https and "ports" not in agent and "volumeMounts" not in agent, agent
assert pod["automountServiceAccountToken"] is False
# The proxy: TLS on the pod IP at its https port, passing /metrics to the agent.
assert proxy["image"].startswith("quay.io/brancz/kube-rbac-proxy:v0."), proxy["image"]
assert f"--secure-listen-address=[$(POD_IP)]:{https}" in proxy["args"], proxy["args"]
assert f"--upstream=http://127.0.0.1:{agent_port}/" in proxy["args"], proxy["args"]
env = {e["name"]: e for e in proxy["env"]}
assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", env
assert proxy_port(proxy["readinessProbe"]["tcpSocket"]["port"]) == https, proxy["readinessProbe"]
security = proxy["securityContext"]
assert security["runAsNonRoot"] and security["capabilities"]["drop"] == ["ALL"], security
# Its token, mounted where client-go looks, in its container alone.
mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
volume = next(v for v in pod["volumes"] if v["name"] == mounts["/var/run/secrets/kubernetes.io/serviceaccount"])
assert any("serviceAccountToken" in s for s in volume["projected"]["sources"]), volume
# The proxy's service account may review tokens and access; the scraper's may get /metrics.
def bound(role, account, account_namespace):
    binding = one("ClusterRoleBinding", role)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
    assert {"kind": "ServiceAccount", "name": account, "namespace": account_namespace} in binding["subjects"]
    return one("ClusterRole", role)["rules"]
rules = bound("maptrace-kube-rbac-proxy", pod["serviceAccountName"], namespace)
granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
assert granted == {("authentication.k8s.io", "tokenreviews", "create"),
                   ("authorization.k8s.io", "subjectaccessreviews", "create")}, granted
rules = bound("maptrace-metrics-reader", "prometheus-k8s", "monitoring")
assert rules == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}], rules
"#,
        &[],
    );
}

#[test]
fn the_network_policy_admits_only_the_monitoring_namespace_on_the_proxy_port() {
    check_manifests(
        "the NetworkPolicy",
        r#"
policy = one("NetworkPolicy")
spec = policy["spec"]
assert policy["metadata"]["namespace"] == namespace
assert selects_the_pods(spec["podSelector"]["matchLabels"]), spec["podSelector"]
assert spec["policyTypes"] == ["Ingress"], spec
[rule] = spec["ingress"]
assert [(p["protocol"], proxy_port(p["port"])) for p in rule["ports"]] == [("TCP", https)], rule["ports"]
assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}], rule
"#,
        &[],
    );
}

#[test]
fn the_service_monitor_scrapes_the_proxy_with_prometheus_token() {
    check_manifests(
        "the ServiceMonitor against the Service and the DaemonSet",
        r#"
service = one("Service")
assert service["metadata"]["namespace"] == namespace and selects_the_pods(service["spec"]["selector"])
monitor = yaml.safe_load(open(sys.argv[2]))
assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor", monitor
assert monitor["metadata"]["namespace"] == namespace
for k, v in monitor["spec"]["selector"]["matchLabels"].items():
    assert service["metadata"]["labels"].get(k) == v, (k, v, service["metadata"]["labels"])
service_ports = {p["name"]: p for p in service["spec"]["ports"]}
for e in monitor["spec"]["endpoints"]:
    assert proxy_port(service_ports[e["port"]]["targetPort"]) == https, (e["port"], service_ports)
    assert e["scheme"] == "https" and e["tlsConfig"] == {"insecureSkipVerify": True}, e
    assert e["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token", e
"#,
        &["deploy/servicemonitor.yaml"],
    );
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
# Through kube-rbac-proxy: TLS, the pod's service-account token, only the proxy's port.
assert job["scheme"] == "https" and job["tls_config"] == {"insecure_skip_verify": True}, job
auth = job["authorization"]
assert auth == {"credentials_file": "/var/run/secrets/kubernetes.io/serviceaccount/token"}, auth
auth["credentials_file"] = sys.argv[3]  # promtool wants the file to exist
port = next(r for r in job["relabel_configs"] if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"])
assert port == {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "https", "action": "keep"}, port
yaml.safe_dump(c, open(sys.argv[2], "w"))
"#;
    let token = std::env::temp_dir().join(format!("maptrace-scrape-token-{}", std::process::id()));
    std::fs::write(&token, "token\n").unwrap();
    ok(
        &python(&[
            "-c",
            script,
            repo("deploy/prometheus-scrape.yml").to_str().unwrap(),
            copy.to_str().unwrap(),
            token.to_str().unwrap(),
        ]),
        "the scrape config",
    );
    let out = Command::new("promtool")
        .args(["check", "config", copy.to_str().unwrap()])
        .output()
        .expect("promtool (Debian package prometheus; ./x installs it)");
    std::fs::remove_file(&copy).unwrap();
    std::fs::remove_file(&token).unwrap();
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
