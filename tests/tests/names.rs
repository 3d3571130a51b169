//! A process is named after its thread-group leader's comm, as `ps` shows it, even when
//! the leader ends first and a worker thread named otherwise ends the process (issue 11,
//! item 5: `rustc` was reported as `ctrl-c`, its Ctrl-C handler thread).

use std::{path::Path, process::Command, time::Duration};

use procmon_tests::{
    events_for, hot, procmon, require_root, run_with_timeout, wait_for, Agent, TempDir,
};

const TIMEOUT: Duration = Duration::from_secs(30);

fn run_hot(bin: &Path, how: &str) -> u32 {
    let mut child = Command::new(bin)
        .args(["leader-exits-first", how])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn exit_and_crash_events_name_the_leader_not_the_last_thread() {
    if !require_root("names::exit_and_crash_events_name_the_leader_not_the_last_thread") {
        return;
    }
    let dir = TempDir::new("names");
    let bin = hot::build(dir.path());
    let agent = Agent::start(&[]);
    let clean = run_hot(&bin, "exit");
    let crashed = run_hot(&bin, "crash");
    let events = wait_for(TIMEOUT, || {
        let ev = agent.events();
        (!events_for(&ev, "exit", clean).is_empty()
            && !events_for(&ev, "crash", crashed).is_empty())
        .then_some(ev)
    })
    .unwrap_or_else(|| panic!("no exit/crash events; agent stderr:\n{}", agent.stderr()));
    for (kind, pid) in [("exit", clean), ("exit", crashed), ("crash", crashed)] {
        let e = events_for(&events, kind, pid);
        assert_eq!(e.len(), 1, "{kind} {pid}: {e:?}");
        assert_eq!(
            e[0]["comm"], "hot",
            "{kind} of {pid} names the leader: {}",
            e[0]
        );
    }
}

#[test]
fn procmon_run_names_the_leader_not_the_last_thread() {
    if !require_root("names::procmon_run_names_the_leader_not_the_last_thread") {
        return;
    }
    let dir = TempDir::new("names-run");
    let bin = hot::build(dir.path());
    let json = dir.path().join("report.json");
    let out = run_with_timeout(
        &mut procmon(&[
            "run",
            "--json",
            json.to_str().unwrap(),
            "--",
            bin.to_str().unwrap(),
            "leader-exits-first",
            "exit",
        ]),
        TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["root"]["comm"], "hot", "{report}");
}
