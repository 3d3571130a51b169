//! Processes that live well under a millisecond must not be missed: a burst of 2000 of them
//! yields exactly 2000 fork and 2000 exit events, and the agent reports no losses.

use std::time::Duration;

use procmon_tests::{
    as_pid, count_children, events_for, require_root, run_workload, wait_for, Agent,
};
use serde_json::Value;

const CHILDREN: usize = 2000;
/// Bounds the wait for events to reach the file (a wait, not a speed assertion).
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn burst_of_short_lived_children_is_fully_seen() {
    if !require_root("short_lived::burst_of_short_lived_children_is_fully_seen") {
        return;
    }
    let agent = Agent::start(&[]);
    let burst = run_workload(env!("CARGO_BIN_EXE_burst"), &[&CHILDREN.to_string()]);
    let pid = as_pid(&burst["pid"]);

    // The burst's own exit comes after its children's; wait for it and for the counts, so a
    // shortfall is reported only after the agent had every chance to catch up.
    let complete = |ev: &[Value]| {
        !events_for(ev, "exit", pid).is_empty()
            && count_children(ev, "fork", pid) >= CHILDREN
            && count_children(ev, "exit", pid) >= CHILDREN
    };
    let events = wait_for(EVENT_TIMEOUT, || {
        Some(agent.events()).filter(|ev| complete(ev))
    })
    .unwrap_or_else(|| agent.events());
    assert_eq!(
        events_for(&events, "exit", pid).len(),
        1,
        "exit events of the burst process {pid}"
    );
    assert_eq!(
        count_children(&events, "fork", pid),
        CHILDREN,
        "fork events with ppid {pid}"
    );
    let exits = count_children(&events, "exit", pid);
    if exits != CHILDREN {
        // Say what became of the children whose exit is missing: other events of theirs,
        // and what the agent counted about the kernel side.
        let missing: Vec<&Value> = events
            .iter()
            .filter(|e| e["kind"] == "fork" && e["ppid"] == pid)
            .filter(|f| {
                !events
                    .iter()
                    .any(|e| e["kind"] == "exit" && e["pid"] == f["pid"] && e["ppid"] == pid)
            })
            .collect();
        let other: Vec<&Value> = missing
            .iter()
            .flat_map(|f| {
                events
                    .iter()
                    .filter(move |e| e["pid"] == f["pid"] && e["kind"] != "fork")
            })
            .take(5)
            .collect();
        let metrics = agent.metrics();
        let kernel: Vec<_> = metrics
            .samples
            .iter()
            .filter(|s| {
                s.name.starts_with("procmon_kernel_") || s.name == "procmon_events_lost_total"
            })
            .filter(|s| s.value != 0.0)
            .collect();
        panic!(
            "exit events with ppid {pid}: {exits}, expected {CHILDREN}; first children \
             without one: {:#?}; their other events: {other:#?}; kernel-side counters: \
             {kernel:#?}",
            &missing[..missing.len().min(5)]
        );
    }
    for e in events
        .iter()
        .filter(|e| e["kind"] == "exit" && e["ppid"] == pid)
    {
        assert_eq!(e["outcome"], "clean", "burst child exit {e}");
    }

    let metrics = agent.metrics();
    let lost: Vec<_> = metrics
        .series("procmon_events_lost_total")
        .filter(|s| s.value != 0.0)
        .collect();
    assert!(
        lost.is_empty(),
        "procmon_events_lost_total must stay 0, got {lost:#?}"
    );
}
