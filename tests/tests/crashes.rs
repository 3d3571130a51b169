//! Real deaths, each classified correctly, with one exit event per process and one crash
//! event per crash: SIGSEGV, abort(), a real division by zero (SIGFPE), SIGKILL, exit(3),
//! exit(0), and a process whose secondary thread crashes.

use std::time::Duration;

use procmon_tests::{as_pid, events_for, require_root, run_workload, wait_for, Agent};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

/// (way, expected outcome, signal, exit code) — `None` fields must be null.
const EXPECTED: [(&str, &str, Option<i32>, Option<i32>); 7] = [
    ("segv", "crashed", Some(libc::SIGSEGV), None),
    ("abort", "crashed", Some(libc::SIGABRT), None),
    ("fpe", "crashed", Some(libc::SIGFPE), None),
    ("sigkill", "killed", Some(libc::SIGKILL), None),
    ("exit3", "error", None, Some(3)),
    ("exit0", "clean", None, Some(0)),
    ("thread_segv", "crashed", Some(libc::SIGSEGV), None),
];

/// The memory cgroup path of this process, as the agent names it ("/" for the root).
fn own_memory_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let field = |line: &str| line.splitn(3, ':').nth(2).map(str::to_string);
    text.lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory"))
        })
        .or_else(|| text.lines().find(|l| l.starts_with("0::")))
        .and_then(field)
        .unwrap_or_else(|| "/".into())
}

fn nullable(v: Option<i32>) -> Value {
    v.map_or(Value::Null, Value::from)
}

#[test]
fn crashes_and_exits_are_classified_once_per_process() {
    if !require_root("crashes::crashes_and_exits_are_classified_once_per_process") {
        return;
    }
    let agent = Agent::start(&[]);
    let report = run_workload(env!("CARGO_BIN_EXE_crashers"), &[]);
    let parent = as_pid(&report["parent"]);
    let events = wait_for(TIMEOUT, || {
        let ev = agent.events();
        (!events_for(&ev, "exit", parent).is_empty()).then_some(ev)
    })
    .unwrap_or_else(|| panic!("no exit event of crashers {parent}"));

    let cgroup = own_memory_cgroup();
    let workload = cgroup
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("crashers");
    for (way, outcome, signal, code) in EXPECTED {
        let child = &report["children"][way];
        let pid = as_pid(&child["pid"]);
        let status = child["status"].as_i64().unwrap() as i32;
        match signal {
            Some(sig) => assert_eq!(status & 0x7f, sig, "{way}: wait status {status:#x}"),
            None => assert_eq!(status >> 8, code.unwrap(), "{way}: wait status {status:#x}"),
        }
        let exits = events_for(&events, "exit", pid);
        assert_eq!(
            exits.len(),
            1,
            "{way}: one exit event per process: {exits:#?}"
        );
        let x = exits[0];
        assert_eq!(x["outcome"], outcome, "{way}: {x}");
        assert_eq!(x["signal"], nullable(signal), "{way}: {x}");
        assert_eq!(x["exit_code"], nullable(code), "{way}: {x}");
        assert_eq!(x["ppid"], parent, "{way}: {x}");

        let crashes = events_for(&events, "crash", pid);
        if outcome != "crashed" {
            assert!(crashes.is_empty(), "{way}: not a crash, yet {crashes:#?}");
            continue;
        }
        assert_eq!(crashes.len(), 1, "{way}: one crash event: {crashes:#?}");
        let c = crashes[0];
        for field in [
            "time",
            "pid",
            "ppid",
            "comm",
            "exit_code",
            "signal",
            "core_dumped",
            "outcome",
            "cpu_user_seconds",
            "cpu_system_seconds",
            "peak_rss_bytes",
            "lifetime_seconds",
        ] {
            assert_eq!(
                c[field], x[field],
                "{way}: crash `{field}` differs from exit {x}: {c}"
            );
        }
        assert_eq!(c["core_dumped"], false, "{way}: RLIMIT_CORE is 0: {c}");
        assert_eq!(c["cgroup"], cgroup.as_str(), "{way}: {c}");
        assert_eq!(c["workload"], workload, "{way}: {c}");
        assert_eq!(
            c["ancestry"][0],
            serde_json::json!({"pid": parent, "comm": "crashers"}),
            "{way}: {c}"
        );
        assert_eq!(c["ancestry"][1]["pid"], std::process::id(), "{way}: {c}");
        assert!(
            c.get("last_sample").is_some_and(Value::is_null),
            "{way}: {c}"
        );
    }

    let m = agent.metrics();
    for (signal, n) in [("SIGSEGV", 2.0), ("SIGABRT", 1.0), ("SIGFPE", 1.0)] {
        let got = m.get_or_zero(
            "procmon_crashes_total",
            &[("workload", workload), ("signal", signal)],
        );
        assert!(got >= n, "procmon_crashes_total{{workload={workload:?},signal={signal:?}}} = {got}, expected >= {n}");
    }
}
