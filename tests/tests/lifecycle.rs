//! A known process tree (`spawn_tree`) must come out of the agent as exactly the fork, exec
//! and exit events it produced, with the right parents and outcomes, and the outcome
//! counters must move accordingly.

use std::time::Duration;

use procmon_tests::{as_pid, events_for, require_root, run_workload, wait_for, Agent, Metrics};
use serde_json::Value;

/// Bounds the wait for events to reach the file (a wait, not a speed assertion).
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum End {
    Clean,
    Error(i64),
    Crashed(i64),
}

struct Member {
    role: String,
    pid: u32,
    ppid: u32,
    end: End,
}

/// The one event of `kind` for `pid`; panics listing what was there otherwise.
fn only<'a>(events: &'a [Value], kind: &str, m: &Member) -> &'a Value {
    match events_for(events, kind, m.pid).as_slice() {
        [e] => e,
        found => panic!(
            "{}: expected exactly one {kind} event for pid {}, got {found:#?}",
            m.role, m.pid
        ),
    }
}

/// Fields every event carries (contract: kind, time, pid, ppid, comm).
fn check_common(e: &Value, role: &str) {
    let time = e["time"]
        .as_str()
        .unwrap_or_else(|| panic!("{role}: no string `time` in {e}"));
    assert!(
        time.contains('T') && time.len() >= 20,
        "{role}: `time` {time:?} is not RFC 3339 in {e}"
    );
    assert!(e["comm"].is_string(), "{role}: no string `comm` in {e}");
}

fn check_exit(e: &Value, m: &Member) {
    let role = &m.role;
    check_common(e, role);
    assert_eq!(e["ppid"], m.ppid, "{role}: exit ppid in {e}");
    assert_eq!(
        e["core_dumped"], false,
        "{role}: core_dumped (RLIMIT_CORE is 0) in {e}"
    );
    let lifetime = e["lifetime_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("{role}: no lifetime_seconds in {e}"));
    assert!(
        lifetime > 0.0,
        "{role}: lifetime_seconds must be > 0 in {e}"
    );
    for field in ["cpu_user_seconds", "cpu_system_seconds", "peak_rss_bytes"] {
        assert!(
            e[field].as_f64().is_some_and(|v| v >= 0.0),
            "{role}: `{field}` missing or negative in {e}"
        );
    }
    match m.end {
        End::Clean => {
            assert_eq!(e["outcome"], "clean", "{role}: outcome in {e}");
            assert_eq!(e["exit_code"], 0, "{role}: exit_code in {e}");
            assert!(
                e["signal"].is_null(),
                "{role}: signal must be null on a normal exit in {e}"
            );
        }
        End::Error(code) => {
            assert_eq!(e["outcome"], "error", "{role}: outcome in {e}");
            assert_eq!(e["exit_code"], code, "{role}: exit_code in {e}");
            assert!(
                e["signal"].is_null(),
                "{role}: signal must be null on a normal exit in {e}"
            );
        }
        End::Crashed(sig) => {
            assert_eq!(e["outcome"], "crashed", "{role}: outcome in {e}");
            assert_eq!(e["signal"], sig, "{role}: signal in {e}");
            assert!(
                e["exit_code"].is_null(),
                "{role}: exit_code must be null when killed by a signal in {e}"
            );
        }
    }
}

/// The tree `spawn_tree` reported, with how each member should end.
fn members(tree: &Value) -> Vec<Member> {
    let parent = as_pid(&tree["parent"]);
    let mut out = vec![Member {
        role: "parent".into(),
        pid: parent,
        ppid: std::process::id(),
        end: End::Clean,
    }];
    let ends = [
        End::Clean,
        End::Error(3),
        End::Crashed(libc::SIGSEGV as i64),
    ];
    for (i, end) in ends.into_iter().enumerate() {
        let child = as_pid(&tree["children"][i]);
        out.push(Member {
            role: format!("child {i}"),
            pid: child,
            ppid: parent,
            end,
        });
        for (j, g) in tree["grandchildren"][i]
            .as_array()
            .expect("grandchildren array")
            .iter()
            .enumerate()
        {
            out.push(Member {
                role: format!("grandchild {i}.{j}"),
                pid: as_pid(g),
                ppid: child,
                end: End::Clean,
            });
        }
    }
    assert_eq!(out.len(), 10, "spawn_tree report {tree}");
    out
}

#[test]
fn spawn_tree_events_and_outcome_counters() {
    if !require_root("lifecycle::spawn_tree_events_and_outcome_counters") {
        return;
    }
    let agent = Agent::start(&[]);
    let before = agent.metrics();

    let tree = run_workload(env!("CARGO_BIN_EXE_spawn_tree"), &[]);
    let statuses: Vec<i64> = tree["child_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect();
    let expected_statuses = [0, 3 << 8, libc::SIGSEGV as i64];
    assert_eq!(
        statuses, expected_statuses,
        "spawn_tree's children did not end as designed (raw wait statuses)"
    );
    let members = members(&tree);
    let parent = members[0].pid;

    // Children end before the parent, so once its exit is in the file everything is.
    let events = wait_for(EVENT_TIMEOUT, || {
        let events = agent.events();
        (!events_for(&events, "exit", parent).is_empty()).then_some(events)
    })
    .unwrap_or_else(|| {
        let n = agent.events().len();
        panic!("no exit event for spawn_tree pid {parent} within {EVENT_TIMEOUT:?} ({n} events in the file); tree {tree}")
    });

    for m in &members {
        let fork = only(&events, "fork", m);
        check_common(fork, &m.role);
        assert_eq!(fork["ppid"], m.ppid, "{}: fork ppid in {fork}", m.role);
        check_exit(only(&events, "exit", m), m);
    }

    let exec = only(&events, "exec", &members[1]);
    check_common(exec, "child 0");
    assert_eq!(exec["ppid"], parent, "child 0: exec ppid in {exec}");
    let filename = exec["filename"]
        .as_str()
        .unwrap_or_else(|| panic!("child 0: no filename in {exec}"));
    assert!(
        filename.ends_with("sleep"),
        "child 0: exec filename {filename:?} in {exec}"
    );
    for m in members
        .iter()
        .filter(|m| m.role != "child 0" && m.role != "parent")
    {
        assert!(
            events_for(&events, "exec", m.pid).is_empty(),
            "{}: never execs, yet has an exec event",
            m.role
        );
    }

    // Other processes on the machine also exit meanwhile: counters must have moved by at
    // least this tree's share.
    let wanted = [("crashed", 1.0), ("error", 1.0), ("clean", 8.0)];
    let grown = |m: &Metrics| {
        wanted.iter().all(|(o, n)| {
            let key = [("outcome", *o)];
            m.get_or_zero("procmon_process_exits_total", &key)
                - before.get_or_zero("procmon_process_exits_total", &key)
                >= *n
        })
    };
    let after = wait_for(EVENT_TIMEOUT, || Some(agent.metrics()).filter(grown))
        .unwrap_or_else(|| agent.metrics());
    for (outcome, n) in wanted {
        let key = [("outcome", outcome)];
        let (b, a) = (
            before.get_or_zero("procmon_process_exits_total", &key),
            after.get_or_zero("procmon_process_exits_total", &key),
        );
        assert!(a - b >= n, "procmon_process_exits_total{{outcome=\"{outcome}\"}} went {b} -> {a}, expected +{n} or more");
    }
    let starts = |m: &Metrics| m.get_or_zero("procmon_process_starts_total", &[]);
    assert!(
        starts(&after) - starts(&before) >= 10.0,
        "procmon_process_starts_total went {} -> {}, expected +10 or more",
        starts(&before),
        starts(&after)
    );
}

#[test]
fn ready_line_and_clean_shutdown_on_sigterm() {
    if !require_root("lifecycle::ready_line_and_clean_shutdown_on_sigterm") {
        return;
    }
    let agent = Agent::start(&[]);
    let ready = format!("procmon: ready, listening on http://{}", agent.addr);
    // The line and /healthz come up together; allow the line a moment to reach the file.
    let seen = wait_for(Duration::from_secs(10), || {
        agent.stderr().contains(&ready).then_some(())
    });
    assert!(
        seen.is_some(),
        "stderr lacks {ready:?}:\n{}",
        agent.stderr()
    );
    let (status, stderr) = agent.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "agent exit status after SIGTERM: {status}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "agent panicked on shutdown:\n{stderr}"
    );
}
