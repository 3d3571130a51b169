//! A watched parent that forks fast must not grow the agent: with a small
//! `--max-child-series`, its 3,000 short-lived children past the cap share `pid="_other"`
//! and keep nothing of their own, and exited children beyond `--max-exited-series` are
//! dropped oldest first and counted. `_other`'s CPU is still exact: it is checked against
//! each child's own wait4 rusage, as the kernel reported it to the parent.

use std::{collections::BTreeSet, time::Duration};

use procmon_tests::{as_pid, require_root, wait_for, Agent, Metrics, Workload};

/// Bounds waits for the agent to catch up (waits, not speed assertions).
const CATCH_UP: Duration = Duration::from_secs(60);
const WORK_TIMEOUT: Duration = Duration::from_secs(180);

const CHILDREN: usize = 3000;
const MAX_CHILD_SERIES: usize = 20;
const MAX_EXITED_SERIES: usize = 5;

#[test]
fn fast_forking_parent_keeps_attribution_bounded_and_other_exact() {
    if !require_root(
        "attribution_bounds::fast_forking_parent_keeps_attribution_bounded_and_other_exact",
    ) {
        return;
    }
    let mut w = Workload::spawn(env!("CARGO_BIN_EXE_cpu_children"), &[&CHILDREN.to_string()]);
    let root = w.pid();
    let watch = format!("pid:{root}");
    let agent = Agent::start(&[
        "--watch",
        &watch,
        "--sample-interval",
        "200ms",
        // Long enough that only the cap drops exited children during the test.
        "--retain-exited",
        "1h",
        "--max-child-series",
        &MAX_CHILD_SERIES.to_string(),
        "--max-exited-series",
        &MAX_EXITED_SERIES.to_string(),
        "--event-kinds",
        "fork",
    ]);
    let (root_s, watch_s) = (root.to_string(), watch.clone());
    let root_labels = [("watch", watch_s.as_str()), ("pid", root_s.as_str())];
    if wait_for(CATCH_UP, || {
        first(
            &agent.metrics(),
            "procmon_watched_cpu_seconds_total",
            &root_labels,
        )
    })
    .is_none()
    {
        panic!(
            "no procmon_watched_cpu_seconds_total for --watch {watch} within {CATCH_UP:?}; \
             /metrics:\n{}",
            agent.scrape()
        );
    }
    w.release();
    let report = w.report(WORK_TIMEOUT);
    assert_eq!(
        report["failed"], 0,
        "cpu_children: children failed: {report}"
    );
    let per_child = report["per_child"]
        .as_object()
        .unwrap_or_else(|| panic!("no per_child object in the cpu_children report"));
    assert_eq!(per_child.len(), CHILDREN, "per_child entries in the report");

    let child_labels = [("watch", watch_s.as_str()), ("root_pid", root_s.as_str())];
    let other_labels = [
        ("watch", watch_s.as_str()),
        ("root_pid", root_s.as_str()),
        ("pid", "_other"),
    ];
    // Every child reaped: wait until the agent has booked them all (the overflow count is
    // final, no child of _other runs, and the grandchildren were all seen).
    let complete = |m: &Metrics| {
        m.get_or_zero("procmon_child_series_overflow_total", &[])
            >= (CHILDREN - MAX_CHILD_SERIES) as f64
            && first(m, "procmon_child_alive", &other_labels) == Some(0.0)
            && m.sum("procmon_watched_descendants_started_total", &root_labels)
                >= (CHILDREN + CHILDREN / 10 * 2) as f64
    };
    let m = wait_for(CATCH_UP, || Some(agent.metrics()).filter(complete))
        .unwrap_or_else(|| agent.metrics());

    // The children that got series are the first MAX_CHILD_SERIES the agent saw forked
    // (fork records of one parent arrive in fork order); every later one went to _other.
    let labelled: BTreeSet<u32> = agent
        .events()
        .iter()
        .filter(|e| e["kind"] == "fork" && e["ppid"] == root)
        .map(|e| as_pid(&e["pid"]))
        .take(MAX_CHILD_SERIES)
        .collect();
    assert_eq!(
        labelled.len(),
        MAX_CHILD_SERIES,
        "fork events of {root}'s children"
    );
    let expected_other: f64 = per_child
        .iter()
        .filter(|(pid, _)| !labelled.contains(&pid.parse().expect("pid key")))
        .map(|(_, ru)| ru.as_f64().expect("per_child seconds"))
        .sum();
    let other_cpu =
        first(&m, "procmon_child_cpu_seconds_total", &other_labels).unwrap_or_else(|| {
            panic!(
                "no _other series under root {root}; /metrics:\n{}",
                agent.scrape()
            )
        });
    let other_started = m.sum("procmon_child_descendants_started_total", &other_labels);
    let evicted = m.get_or_zero("procmon_exited_series_evicted_total", &[]);
    let units = m.get_or_zero("procmon_attribution_units", &[]);
    let series: Vec<String> = m
        .matching("procmon_child_cpu_seconds_total", &child_labels)
        .map(|s| s.labels["pid"].clone())
        .collect();
    println!(
        "fast fork: _other cpu {other_cpu:.6} s vs wait4 rusage of its {} children \
         {expected_other:.6} s (ratio {:.4}); child series {series:?}; evicted {evicted}; \
         attribution units {units}; agent VmRSS {} kB",
        CHILDREN - MAX_CHILD_SERIES,
        other_cpu / expected_other,
        vm_rss_kb(agent.pid()),
    );

    assert!(
        (other_cpu - expected_other).abs() <= 0.02 * expected_other,
        "procmon_child_cpu_seconds_total{{pid=\"_other\"}} {other_cpu:.6} s vs the wait4 \
         rusage of the {} children past the cap {expected_other:.6} s: outside ± 2%",
        CHILDREN - MAX_CHILD_SERIES
    );
    // Every 10th child forks 2 grandchildren; the first MAX_CHILD_SERIES children have series.
    let other_grandchildren = (CHILDREN / 10 - MAX_CHILD_SERIES / 10) * 2;
    assert_eq!(
        other_started, other_grandchildren as f64,
        "procmon_child_descendants_started_total{{pid=\"_other\"}}"
    );
    assert_eq!(
        m.get_or_zero("procmon_child_series_overflow_total", &[]),
        (CHILDREN - MAX_CHILD_SERIES) as f64,
        "procmon_child_series_overflow_total"
    );
    assert_eq!(
        evicted,
        (MAX_CHILD_SERIES - MAX_EXITED_SERIES) as f64,
        "procmon_exited_series_evicted_total: {MAX_CHILD_SERIES} children exited with series, \
         {MAX_EXITED_SERIES} kept"
    );
    let kept: BTreeSet<u32> = series
        .iter()
        .filter(|p| *p != "_other")
        .map(|p| p.parse().expect("pid label"))
        .collect();
    assert_eq!(
        kept.len(),
        MAX_EXITED_SERIES,
        "child series kept besides _other: {series:?}"
    );
    assert!(
        kept.is_subset(&labelled),
        "kept child series {kept:?} are not among the first children forked {labelled:?}"
    );
    // The agent's attribution state: the root, the kept children and one _other unit,
    // however many children the root forked.
    assert_eq!(
        units,
        (1 + MAX_EXITED_SERIES + 1) as f64,
        "procmon_attribution_units after {CHILDREN} children"
    );
    assert_eq!(w.finish().code(), Some(0), "cpu_children exit status");
}

/// The value of the one series of `name` whose labels include `labels`.
fn first(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.matching(name, labels).next().map(|s| s.value)
}

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
