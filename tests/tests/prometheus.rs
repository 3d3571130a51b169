//! A real Prometheus server (Debian `prometheus`) scrapes a running agent: the target is
//! up, a podman container's CPU and RSS are there under its container id, and every query
//! of the Grafana dashboard (deploy/grafana/procmon.json) returns data.

use std::{path::Path, process::Command, time::Duration};

use procmon_tests::{
    cgroup::{hierarchy, Cgroup},
    container::{require_podman, Podman},
    free_loopback_addr, http_get, require_tool, wait_for, Agent, TempDir, Workload,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Percent-encodes a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping one target every second, stopped on drop.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
                 - job_name: procmon\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let addr = free_loopback_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("prometheus stderr"))
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_for(TIMEOUT, || {
            matches!(http_get(addr, "/-/ready"), Ok((200, _))).then_some(())
        })
        .expect("prometheus not ready");
        p
    }

    /// The result vector of an instant query; panics on an API error.
    fn query(&self, promql: &str) -> Vec<Value> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .unwrap_or_else(|e| panic!("querying {promql}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "{promql}: HTTP {status}: {body}"
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}

#[test]
fn prometheus_scrapes_the_agent_and_every_dashboard_query_has_data() {
    let test = "prometheus::prometheus_scrapes_the_agent_and_every_dashboard_query_has_data";
    if !require_podman(test) || !require_tool(test, "prometheus", "Debian package prometheus") {
        return;
    }
    let podman = Podman::new();
    let agent = Agent::start(&["--watch", "comm:busy", "--sample-interval", "200ms"]);
    let prometheus = Prometheus::start(agent.addr);

    // Something for every panel: a busy container, a process in a pod's cgroup (kubelet's
    // cgroupfs layout), a watched parent with children, a crash and an OOM kill in
    // containers.
    let pod = Cgroup::create(
        &hierarchy(),
        &[
            "kubepods",
            "burstable",
            "pod2c4e6a8b-1d3f-4a5b-8c7d-9e0f1a2b3c4d",
            "7c1e3a5b9d2f4e6a8c0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c",
        ],
    );
    let mut pod_process = pod.spawn_sleeper();
    let busy = podman.start(&[], &["/bin/sh", "-c", "while :; do :; done"]);
    let mut watched = Workload::spawn(env!("CARGO_BIN_EXE_busy"), &["0", "0"]);
    watched.release();
    watched.report(TIMEOUT);
    let crasher = podman.start(&[], &["/bin/sh", "-c", "sh -c 'kill -SEGV $$'; true"]);
    podman.wait(&crasher);
    let hog = podman.start(
        &["--memory=32m", "--memory-swap=32m"],
        &[
            "/bin/sh",
            "-c",
            "sh -c 'x=$(head -c 200000000 /dev/zero | tr \"\\000\" a)'",
        ],
    );
    podman.wait(&hog);

    let up = wait_for(TIMEOUT, || {
        let r = prometheus.query("up{job=\"procmon\"}");
        r.first().filter(|s| value(s) == 1.0).cloned()
    });
    assert!(up.is_some(), "the procmon target is not up");

    let cpu =
        format!("procmon_workload_cpu_seconds_total{{container_id=\"{busy}\",runtime=\"podman\"}}");
    let rss = format!("procmon_workload_rss_bytes{{container_id=\"{busy}\",runtime=\"podman\"}}");
    wait_for(TIMEOUT, || {
        let c = prometheus.query(&cpu);
        let r = prometheus.query(&rss);
        (c.first().is_some_and(|s| value(s) > 0.0) && r.first().is_some_and(|s| value(s) > 0.0))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no non-zero {cpu} and {rss} in Prometheus"));

    // Every dashboard query, with Grafana's variables as a user with "All" would have them.
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/procmon.json"
    ));
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "30s")
                .replace("$instance", ".*")
        })
        .collect();
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    let mut empty = Vec::new();
    // Rates need two scrapes of a series; the OOM and crash counters appear late.
    for expr in &exprs {
        if wait_for(Duration::from_secs(20), || {
            (!prometheus.query(expr).is_empty()).then_some(())
        })
        .is_none()
        {
            empty.push(expr.clone());
        }
    }
    let _ = pod_process.kill();
    let _ = pod_process.wait();
    assert!(
        empty.is_empty(),
        "dashboard queries without data: {empty:#?}"
    );
    eprintln!("{} dashboard queries returned data", exprs.len());
}
