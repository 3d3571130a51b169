//! deploy/ is checked as users will use it: the kustomize base renders with kubectl and
//! every object validates against Kubernetes' schemas (kubernetes-validate, offline); the
//! systemd unit passes `systemd-analyze verify`; the Grafana dashboard is JSON whose every
//! query names procmon metrics that docs/metrics.md documents.

use std::{path::Path, process::Command, time::Duration};

use procmon_tests::{procmon_bin, require_tool, run_with_timeout, TempDir};

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn render(dir: &str) -> String {
    let out = run_with_timeout(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(workspace().join(dir)),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

#[test]
fn kubernetes_manifests_render_and_validate() {
    let test = "deploy::kubernetes_manifests_render_and_validate";
    if !require_tool(test, "kubectl", "it renders deploy/kubernetes") {
        return;
    }
    let rendered = render("deploy/kubernetes");
    // The overlay for old kernels is the base plus one capability.
    let old_kernels = render("deploy/kubernetes-old-kernels");
    assert!(
        old_kernels.contains("\n            - SYS_RESOURCE\n"),
        "deploy/kubernetes-old-kernels does not add SYS_RESOURCE:\n{old_kernels}"
    );
    assert_eq!(
        old_kernels.replace(
            "            - PERFMON\n            - SYS_RESOURCE\n",
            "            - PERFMON\n"
        ),
        rendered,
        "deploy/kubernetes-old-kernels differs from the base by more than SYS_RESOURCE"
    );
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ResourceQuota",
        "DaemonSet",
        "Service",
        "PodMonitor",
    ] {
        assert!(
            rendered.contains(&format!("\nkind: {kind}\n")),
            "no {kind} in the rendered manifests:\n{rendered}"
        );
    }
    let validate = match std::env::var_os("PROCMON_KUBERNETES_VALIDATE") {
        Some(path) => path.into(),
        None if require_tool(test, "kubernetes-validate", "PyPI kubernetes-validate") => {
            std::path::PathBuf::from("kubernetes-validate")
        }
        None => return,
    };
    let dir = TempDir::new("manifests");
    let file = dir.path().join("procmon.yaml");
    std::fs::write(&file, &rendered).expect("writing the rendered manifests");
    let out = run_with_timeout(
        Command::new(&validate).arg("--strict").arg(&file),
        Duration::from_secs(120),
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{report}"
    );
    for object in [
        "namespace/procmon",
        "serviceaccount/procmon",
        "service/procmon",
        "daemonset/procmon",
        "resourcequota/procmon-node-critical",
    ] {
        assert!(
            report.contains(&format!("passed for resource {object} ")),
            "{object} was not validated:\n{report}"
        );
    }
    // Custom resources have no schema there; only the PodMonitor may be unchecked.
    for line in report
        .lines()
        .filter(|l| !l.contains(" passed for resource "))
    {
        assert!(
            line.contains("PodMonitor"),
            "unexpected kubernetes-validate output: {line}"
        );
    }
}

#[test]
fn systemd_unit_verifies() {
    let test = "deploy::systemd_unit_verifies";
    if !require_tool(
        test,
        "systemd-analyze",
        "it verifies deploy/systemd/procmon.service",
    ) {
        return;
    }
    // verify checks that ExecStart exists: point it at the agent under test, nothing else
    // changes.
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/procmon.service"))
        .expect("reading the unit")
        .replace(
            "/usr/local/bin/procmon",
            &procmon_bin().display().to_string(),
        );
    let dir = TempDir::new("unit");
    let path = dir.path().join("procmon.service");
    std::fs::write(&path, unit).expect("writing the unit");
    let out = run_with_timeout(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify reports a bad key or value on stderr, prefixed by the unit's path, and still
    // exits 0: those lines are what fails the test.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("procmon.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify found problems in the unit ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn dashboard_queries_use_documented_metrics() {
    let path = workspace().join("deploy/grafana/procmon.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reading the dashboard"))
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let documented = std::fs::read_to_string(workspace().join("docs/metrics.md"))
        .expect("reading docs/metrics.md");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            queries += 1;
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("procmon_"))
                .collect();
            assert!(
                !names.is_empty() || expr.contains("scrape_duration_seconds"),
                "a query on no procmon metric: {expr}"
            );
            for name in names {
                let family = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(
                    documented.contains(&format!("`{family}`")),
                    "{expr}: {family} is not in docs/metrics.md"
                );
            }
        }
    }
    assert!(queries >= 10, "only {queries} queries in the dashboard");
}
