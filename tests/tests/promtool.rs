//! `/metrics` must pass `promtool check metrics` (the contract's lint bar), checked after
//! some activity so that labelled series (outcomes, event kinds, crashes by workload and
//! signal) and histogram buckets exist.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use procmon_tests::{require_root, require_tool, run_workload, wait_for, Agent, Workload};

/// Root and promtool: both are there in CI (it fails loudly otherwise).
fn promtool_runs(test: &str) -> bool {
    require_root(test)
        && require_tool(
            test,
            "promtool",
            "Debian package prometheus; `cargo xtask test` installs it",
        )
}

#[test]
fn metrics_pass_promtool_check() {
    let test = "promtool::metrics_pass_promtool_check";
    if !promtool_runs(test) {
        return;
    }
    let agent = Agent::start(&[]);
    run_workload(env!("CARGO_BIN_EXE_spawn_tree"), &[]);
    run_workload(env!("CARGO_BIN_EXE_crashers"), &[]);
    // Wait until the workloads' crashes show up, so the scrape covers labelled series.
    wait_for(Duration::from_secs(30), || {
        let m = agent.metrics();
        (m.get_or_zero("procmon_process_exits_total", &[("outcome", "crashed")]) >= 1.0
            && m.series("procmon_crashes_total").count() >= 3)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no crashed exit counted after spawn_tree; /metrics:\n{}",
            agent.scrape()
        )
    });
    promtool_check(&agent.scrape());
}

/// Per-child series of a watched process (`--watch comm:NAME`, matched at exec) must pass
/// too: they are the one place with pid labels.
#[test]
fn watched_children_metrics_pass_promtool_check() {
    let test = "promtool::watched_children_metrics_pass_promtool_check";
    if !promtool_runs(test) {
        return;
    }
    let agent = Agent::start(&["--watch", "comm:busy", "--sample-interval", "200ms"]);
    // Started after the agent: the selector matches it at exec. Two sleeping children.
    let mut w = Workload::spawn(env!("CARGO_BIN_EXE_busy"), &["0", "0"]);
    w.release();
    w.report(Duration::from_secs(30));
    let root = w.pid().to_string();
    let labels = [("watch", "comm:busy"), ("root_pid", root.as_str())];
    wait_for(Duration::from_secs(30), || {
        let m = agent.metrics();
        (m.matching("procmon_child_alive", &labels).count() == 2
            && m.matching("procmon_child_cpu_usage_ratio", &labels).count() == 2)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no procmon_child_alive / procmon_child_cpu_usage_ratio series for the 2 children \
             of busy (pid {root}, --watch comm:busy); /metrics:\n{}",
            agent.scrape()
        )
    });
    promtool_check(&agent.scrape());
    assert_eq!(w.finish().code(), Some(0), "busy exit status");
}

/// Runs `promtool check metrics` on `text`; panics with its output unless it passes.
fn promtool_check(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    // Write from a thread: with a large page and chatty output both pipes could fill.
    let mut stdin = promtool.stdin.take().unwrap();
    let page = text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(page.as_bytes()));
    let out = promtool.wait_with_output().expect("waiting for promtool");
    writer
        .join()
        .unwrap()
        .expect("writing /metrics to promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- /metrics ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
