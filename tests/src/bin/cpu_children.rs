//! Workload for the CPU-attribution test: once released (a byte on stdin), forks N children
//! (argument, default 1000), two at a time. Each child burns 2 ms of CPU; every 10th also
//! forks 2 grandchildren that burn 1 ms each, reaps them and only then exits, so that their
//! CPU reaches the parent through the child's rusage. After reaping every child it prints
//! {"pid":P,"children":N,"grandchildren":G,"failed":F,
//!  "children_cpu_seconds":RUSAGE_CHILDREN user+sys,"self_cpu_seconds":RUSAGE_SELF user+sys,
//!  "per_child":{"PID":wait4 rusage user+sys of that child (its grandchildren included),...}}
//! and stays alive (the watched root) until stdin closes.

use std::time::Duration;

use procmon_tests::workload::{
    burn, fork, reap, reap_rusage, rusage_cpu_seconds, wait_release, wait_stdin_eof,
};

const CHILD_CPU: Duration = Duration::from_millis(2);
const GRANDCHILD_CPU: Duration = Duration::from_millis(1);
/// Children alive at once: the machine has 2 cores.
const IN_FLIGHT: usize = 2;

fn child(index: usize) -> ! {
    burn(CHILD_CPU);
    if index.is_multiple_of(10) {
        let mut grandchildren = [0; 2];
        for g in &mut grandchildren {
            let pid = fork();
            if pid == 0 {
                burn(GRANDCHILD_CPU);
                // SAFETY: `_exit` has no preconditions; it ends the grandchild without
                // returning into the child's loop.
                unsafe { libc::_exit(0) };
            }
            *g = pid;
        }
        for g in grandchildren {
            if reap(g).1 != 0 {
                // SAFETY: `_exit` has no preconditions.
                unsafe { libc::_exit(2) };
            }
        }
    }
    // SAFETY: `_exit` has no preconditions; it ends the forked child without returning into
    // the parent's loop.
    unsafe { libc::_exit(0) }
}

fn main() {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .unwrap_or_else(|_| panic!("usage: cpu_children [N]; got {a:?}")),
        None => 1000,
    };
    wait_release();
    let (mut running, mut failed) = (0, 0);
    let mut per_child = serde_json::Map::new();
    let mut reap_one = || {
        let (pid, status, cpu) = reap_rusage(-1);
        per_child.insert(pid.to_string(), cpu.into());
        (status != 0) as usize
    };
    for i in 0..n {
        if running == IN_FLIGHT {
            failed += reap_one();
            running -= 1;
        }
        if fork() == 0 {
            child(i);
        }
        running += 1;
    }
    for _ in 0..running {
        failed += reap_one();
    }
    let report = serde_json::json!({
        "pid": std::process::id(),
        "children": n,
        "grandchildren": n.div_ceil(10) * 2,
        "failed": failed,
        "children_cpu_seconds": rusage_cpu_seconds(libc::RUSAGE_CHILDREN),
        "self_cpu_seconds": rusage_cpu_seconds(libc::RUSAGE_SELF),
        "per_child": per_child,
    });
    println!("{report}");
    wait_stdin_eof();
}
