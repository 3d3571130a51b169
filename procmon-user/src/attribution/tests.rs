//! Attribution without root: rollups, live sums, caps, retention, cgroups.

use super::*;
use crate::record::tests::{exec, exit, fork};
use std::collections::HashMap;

const SEC: u64 = 1_000_000_000;

fn setup(selectors: &[&str]) -> (ProcessTree, Attribution) {
    let mut tree = ProcessTree::new(1000);
    tree.on_fork(&fork(1, 0, SEC));
    let attribution = Attribution::new(AttributionConfig {
        selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
        retain_exited_ns: 60 * SEC,
        max_child_series: 100,
        max_exited_series: 100,
        max_workloads: 10,
    });
    (tree, attribution)
}

fn fork_(tree: &mut ProcessTree, a: &mut Attribution, pid: u32, ppid: u32, start: u64) {
    let mut r = fork(pid, ppid, start);
    r.parent_start_ns = tree.get(ppid).map_or(0, |p| p.start_ns);
    tree.on_fork(&r);
    a.on_fork(tree, pid);
}

fn exit_(tree: &mut ProcessTree, a: &mut Attribution, pid: u32, start: u64, cpu_ns: u64) {
    let r = exit(pid, 0, start, 0);
    let p = tree.on_exit(&r).unwrap();
    a.on_exit(&p, cpu_ns, 4096, start + SEC);
}

fn child_units(a: &Attribution) -> Vec<&Unit> {
    a.units()
        .map(|(_, u)| u)
        .filter(|u| matches!(u.kind, UnitKind::Child { .. }))
        .collect()
}

#[test]
fn parses_selectors() {
    assert_eq!("pid:42".parse(), Ok(Selector::Pid(42)));
    assert_eq!("cgroup:/a/b/".parse(), Ok(Selector::Cgroup("/a/b".into())));
    assert!("pid:x"
        .parse::<Selector>()
        .unwrap_err()
        .to_string()
        .contains("not a pid"));
    assert!("foo:x"
        .parse::<Selector>()
        .unwrap_err()
        .to_string()
        .contains("unknown kind"));
    assert!("make"
        .parse::<Selector>()
        .unwrap_err()
        .to_string()
        .contains("needs a kind"));
    assert_eq!(
        "comm:make".parse::<Selector>().unwrap().to_string(),
        "comm:make"
    );
}

#[test]
fn rolls_exited_descendants_into_the_direct_child() {
    let (mut tree, mut a) = setup(&["comm:make"]);
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    tree.on_exec(&exec(10, 1, 2 * SEC, b"make", b"/usr/bin/make"));
    a.on_exec(&mut tree, 10);
    fork_(&mut tree, &mut a, 11, 10, 3 * SEC); // child of the watched make
    fork_(&mut tree, &mut a, 12, 11, 4 * SEC); // grandchild
    fork_(&mut tree, &mut a, 13, 12, 5 * SEC); // great-grandchild
    exit_(&mut tree, &mut a, 13, 5 * SEC, 3_000_000);
    exit_(&mut tree, &mut a, 12, 4 * SEC, 2_000_000);
    exit_(&mut tree, &mut a, 11, 3 * SEC, 1_000_000);
    let children = child_units(&a);
    assert_eq!(children.len(), 1);
    let c = children[0];
    assert_eq!(
        (c.pid, c.cpu_ns(), c.descendants_started),
        (11, 6_000_000, 2)
    );
    assert!(c.exited_at_ns.is_some());
    let root = a.unit(a.root_of(&tree, 10).unwrap()).unwrap();
    assert_eq!((root.cpu_ns(), root.descendants_started), (6_000_000, 3));
}

#[test]
fn a_forked_copy_of_a_watched_process_is_not_a_root() {
    let (mut tree, mut a) = setup(&["comm:parent"]);
    // record::tests::fork names every child "parent": only exec/seed make roots.
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    assert!(a.root_of(&tree, 10).is_none());
}

#[test]
fn live_samples_sum_per_unit_and_ratio_follows_cpu() {
    let (mut tree, mut a) = setup(&["pid:10"]);
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    fork_(&mut tree, &mut a, 11, 10, 3 * SEC);
    fork_(&mut tree, &mut a, 12, 11, 4 * SEC);
    let sample = |cpu11: u64, cpu12: u64| {
        HashMap::from([
            (
                11,
                ProcessSample {
                    start_ns: 3 * SEC,
                    cpu_ns: cpu11,
                    rss_bytes: 100,
                },
            ),
            (
                12,
                ProcessSample {
                    start_ns: 4 * SEC,
                    cpu_ns: cpu12,
                    rss_bytes: 50,
                },
            ),
        ])
    };
    a.apply_samples(&mut tree, &sample(0, 0), 10 * SEC);
    a.apply_samples(&mut tree, &sample(SEC, SEC / 2), 11 * SEC);
    let c = child_units(&a)[0];
    assert_eq!((c.live_rss_bytes, c.live_cpu_ns), (150, 3 * SEC / 2));
    assert!((c.cpu_ratio - 1.5).abs() < 1e-9, "{}", c.cpu_ratio);
    // Exit books the exact CPU and drops the live share at once: no double count.
    exit_(&mut tree, &mut a, 12, 4 * SEC, SEC);
    let c = child_units(&a)[0];
    assert_eq!((c.cpu_ns(), c.live_rss_bytes), (2 * SEC, 100));
    assert!((c.cpu_ratio - 1.0).abs() < 1e-9);
}

#[test]
fn seeding_attributes_existing_subtrees() {
    let (mut tree, mut a) = setup(&["pid:10"]);
    for (pid, ppid, start) in [(10, 1, 2), (11, 10, 3), (12, 11, 4), (13, 10, 5)] {
        tree.on_fork(&fork(pid, ppid, start * SEC));
    }
    a.seed(&mut tree);
    assert_eq!(child_units(&a).len(), 2);
    let root = a.root_of(&tree, 10).unwrap();
    assert!(tree.get(12).unwrap().ext.units.contains(&root));
}

fn overflow_unit(a: &Attribution) -> &Unit {
    a.units()
        .map(|(_, u)| u)
        .find(|u| matches!(u.kind, UnitKind::Overflow { .. }))
        .expect("an _other unit")
}

#[test]
fn child_series_are_capped_and_exited_ones_expire() {
    let (mut tree, mut a) = setup(&["pid:10"]);
    a.cfg.max_child_series = 2;
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    for pid in 11..15 {
        fork_(&mut tree, &mut a, pid, 10, pid as u64 * SEC);
    }
    assert_eq!(child_units(&a).len(), 2);
    assert_eq!(a.child_overflowed, 2);
    assert_eq!(overflow_unit(&a).live_heads, 2, "two children in _other");
    exit_(&mut tree, &mut a, 11, 11 * SEC, 1);
    a.apply_samples(&mut tree, &HashMap::new(), 11 * SEC + SEC + 61 * SEC);
    assert_eq!(
        child_units(&a).len(),
        1,
        "the exited child expired after retention"
    );
    assert_eq!(a.labelled_children, 1);
    fork_(&mut tree, &mut a, 15, 10, 80 * SEC);
    assert_eq!(child_units(&a).len(), 2, "its place went to the next child");
}

#[test]
fn children_in_other_keep_no_state_and_their_totals_stay_exact() {
    let (mut tree, mut a) = setup(&["pid:10"]);
    a.cfg.max_child_series = 1;
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    fork_(&mut tree, &mut a, 11, 10, 3 * SEC); // labelled
    let mut expected = 0;
    for i in 0..1000u32 {
        let (pid, start) = (100 + i, 10 * SEC + u64::from(i) * 1_000_000);
        fork_(&mut tree, &mut a, pid, 10, start);
        if i % 100 == 0 {
            // A grandchild that outlives its parent still counts toward _other.
            fork_(&mut tree, &mut a, 5000 + i, pid, start + 1);
            exit_(&mut tree, &mut a, pid, start, 7);
            exit_(&mut tree, &mut a, 5000 + i, start + 1, 5);
            expected += 12;
        } else {
            exit_(&mut tree, &mut a, pid, start, 3);
            expected += 3;
        }
    }
    assert_eq!(
        a.units_kept(),
        3,
        "root, one labelled child and one _other unit, whatever the fork count"
    );
    let other = overflow_unit(&a);
    assert_eq!(other.cpu_ns(), expected);
    assert_eq!((other.live_heads, other.descendants_started), (0, 10));
    assert!(other.exited_at_ns.is_some(), "no child of _other runs");
    assert_eq!(a.child_overflowed, 1000);
    // _other lives as long as its root: past retention, its counter is still there.
    a.apply_samples(&mut tree, &HashMap::new(), 1000 * SEC);
    assert_eq!(overflow_unit(&a).cpu_ns(), expected);
    let snap = a.snapshot(1000 * SEC);
    let row = snap.children.iter().find(|r| r.pid == "_other").unwrap();
    assert_eq!(row.cpu_seconds, expected as f64 / 1e9);
    assert!(!row.alive);
}

#[test]
fn exited_series_past_the_cap_go_oldest_first_and_hold_their_places() {
    let (mut tree, mut a) = setup(&["pid:10"]);
    a.cfg.max_child_series = 4;
    a.cfg.max_exited_series = 2;
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    for pid in 11..15 {
        fork_(&mut tree, &mut a, pid, 10, pid as u64 * SEC);
    }
    for pid in 11..15 {
        exit_(&mut tree, &mut a, pid, pid as u64 * SEC, 1);
    }
    let kept: Vec<u32> = child_units(&a).iter().map(|u| u.pid).collect();
    assert_eq!(kept, [13, 14], "the two newest exits are kept");
    assert_eq!(a.exited_evicted, 2);
    // The evicted children's places stay taken until their retention would have ended,
    // so a fast-forking parent cannot churn a new series per fork.
    fork_(&mut tree, &mut a, 20, 10, 20 * SEC);
    assert_eq!(a.child_overflowed, 1, "no place free within retention");
    a.apply_samples(&mut tree, &HashMap::new(), 13 * SEC + SEC + 61 * SEC);
    assert_eq!(
        a.labelled_children, 1,
        "11's and 12's places came back, 13 expired"
    );
    assert_eq!(child_units(&a).len(), 1);
}

#[test]
fn exited_roots_are_capped_with_their_other_unit() {
    let (mut tree, mut a) = setup(&["comm:w"]);
    a.cfg.max_child_series = 1;
    a.cfg.max_exited_series = 1;
    for (i, pid) in [10u32, 20, 30].into_iter().enumerate() {
        let start = (i as u64 + 2) * SEC;
        fork_(&mut tree, &mut a, pid, 1, start);
        tree.on_exec(&exec(pid, 1, start, b"w", b"/usr/bin/w"));
        a.on_exec(&mut tree, pid);
        fork_(&mut tree, &mut a, pid + 1, pid, start + 1);
        fork_(&mut tree, &mut a, pid + 2, pid, start + 2);
        exit_(&mut tree, &mut a, pid + 2, start + 2, 1);
        exit_(&mut tree, &mut a, pid + 1, start + 1, 1);
        exit_(&mut tree, &mut a, pid, start, 1);
    }
    let roots: Vec<u32> = a
        .units()
        .map(|(_, u)| u)
        .filter(|u| matches!(u.kind, UnitKind::Root { .. }))
        .map(|u| u.pid)
        .collect();
    assert_eq!(roots, [30], "one exited root kept, the newest");
    assert_eq!(
        a.units()
            .filter(|(_, u)| matches!(u.kind, UnitKind::Overflow { .. }))
            .count(),
        1,
        "evicted roots take their _other units with them"
    );
}

#[test]
fn cgroup_selector_roots_the_topmost_process_of_the_cgroup() {
    let (mut tree, mut a) = setup(&["cgroup:/system.slice/app.service"]);
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    fork_(&mut tree, &mut a, 11, 10, 3 * SEC);
    a.set_cgroup(&mut tree, 1, SEC, "/init.scope", false);
    a.set_cgroup(&mut tree, 10, 2 * SEC, "/system.slice/app.service", false);
    a.set_cgroup(&mut tree, 11, 3 * SEC, "/system.slice/app.service", false);
    assert!(a.root_of(&tree, 10).is_some());
    assert!(a.root_of(&tree, 11).is_none());
    let names: Vec<&str> = a.workloads().map(|(n, _)| n.workload.as_str()).collect();
    assert!(
        names.contains(&"app.service") && names.contains(&"init.scope"),
        "{names:?}"
    );
}

#[test]
fn unreadable_cgroups_keep_the_inherited_workload() {
    let (mut tree, mut a) = setup(&[]);
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    a.set_cgroup(&mut tree, 10, 2 * SEC, "/system.slice/app.service", false);
    fork_(&mut tree, &mut a, 11, 10, 3 * SEC);
    tree.get_mut(11).unwrap().comm = crate::tree::Comm::from_bytes(b"rustc");
    assert!(a.cgroups_to_read(&tree, 10).contains(&(11, 3 * SEC)));
    a.cgroup_unreadable(&mut tree, 11, 3 * SEC);
    assert!(
        !a.cgroups_to_read(&tree, 10).contains(&(11, 3 * SEC)),
        "not retried"
    );
    let names: Vec<&str> = a.workloads().map(|(n, _)| n.workload.as_str()).collect();
    assert_eq!(names, ["_other", "app.service"], "no workload named rustc");
}

#[test]
fn idle_workloads_are_released_after_retention() {
    let (mut tree, mut a) = setup(&[]);
    a.cfg.max_workloads = 1;
    fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
    a.set_cgroup(
        &mut tree,
        10,
        2 * SEC,
        "/machine.slice/libpod-aaaaaaaaaaaaaaaa.scope",
        false,
    );
    let names = |a: &Attribution| -> Vec<String> {
        a.workloads().map(|(n, _)| n.workload.clone()).collect()
    };
    exit_(&mut tree, &mut a, 10, 2 * SEC, 1);
    a.apply_samples(&mut tree, &HashMap::new(), 10 * SEC);
    assert_eq!(
        names(&a),
        ["_other", "podman/aaaaaaaaaaaa"],
        "within retention"
    );
    a.apply_samples(&mut tree, &HashMap::new(), 71 * SEC);
    assert_eq!(
        names(&a),
        ["_other"],
        "released after 60 s without processes"
    );
    let released: Vec<String> = a
        .take_released()
        .iter()
        .map(|i| i.workload.clone())
        .collect();
    assert_eq!(released, ["podman/aaaaaaaaaaaa"]);
    // Its place goes to the next container, although the cap is 1.
    fork_(&mut tree, &mut a, 11, 1, 72 * SEC);
    a.set_cgroup(
        &mut tree,
        11,
        72 * SEC,
        "/machine.slice/libpod-bbbbbbbbbbbbbbbb.scope",
        false,
    );
    a.apply_samples(&mut tree, &HashMap::new(), 200 * SEC);
    assert_eq!(
        names(&a),
        ["_other", "podman/bbbbbbbbbbbb"],
        "a live one stays"
    );
    assert_eq!(a.workloads().nth(1).unwrap().1.processes, 1);
}

#[test]
fn kernel_threads_share_one_workload() {
    let (mut tree, mut a) = setup(&[]);
    for (pid, comm) in [
        (2u32, "kthreadd"),
        (30, "kworker/0:1-events"),
        (31, "ksoftirqd/0"),
    ] {
        fork_(
            &mut tree,
            &mut a,
            pid,
            if pid == 2 { 0 } else { 2 },
            pid as u64 * SEC,
        );
        tree.get_mut(pid).unwrap().comm = crate::tree::Comm::from_bytes(comm.as_bytes());
        a.set_cgroup(&mut tree, pid, pid as u64 * SEC, "/", true);
    }
    let names: Vec<&str> = a.workloads().map(|(n, _)| n.workload.as_str()).collect();
    assert_eq!(names, ["_other", "kernel"]);
    assert!(a.is_kernel_thread(tree.get(30).unwrap()));
}
