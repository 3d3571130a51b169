//! `/metrics` must pass `promtool check metrics` (the contract's lint bar), checked after
//! some activity so that labelled series (outcomes, event kinds, crashes by workload and
//! signal) and histogram buckets exist.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use procmon_tests::{require_root, require_tool, run_workload, wait_for, Agent};

#[test]
fn metrics_pass_promtool_check() {
    let test = "promtool::metrics_pass_promtool_check";
    if !require_root(test)
        || !require_tool(
            test,
            "promtool",
            "Debian package prometheus; `cargo xtask test` installs it",
        )
    {
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
    let text = agent.scrape();

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    // Write from a thread: with a large page and chatty output both pipes could fill.
    let mut stdin = promtool.stdin.take().unwrap();
    let page = text.clone();
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
