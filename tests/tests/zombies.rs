//! A parent that keeps its child a zombie (issue 11, item 1): exits are completed with their
//! final CPU when the process is released, which for a process waits on its parent's reap.
//! The exit must not wait on a parent that does not reap: it is reported after a bounded
//! wait, marked `cpu_final: false`, and the CPU spent after the exit tracepoint reaches the
//! counters once the parent does reap.

use std::time::Duration;

use procmon_tests::{as_pid, events_for, require_root, wait_for, Agent, Workload};

/// Bounds waits (not speed assertions).
const TIMEOUT: Duration = Duration::from_secs(30);

/// The state letter of `/proc/PID/stat`.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Linux 6.16 moved `sched_process_exit` before the address space is released.
fn exit_tracepoint_precedes_unmapping() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 16)
}

#[test]
fn an_exit_is_reported_while_its_parent_keeps_it_a_zombie() {
    if !require_root("zombies::an_exit_is_reported_while_its_parent_keeps_it_a_zombie") {
        return;
    }
    let mut w = Workload::spawn(env!("CARGO_BIN_EXE_zombie_parent"), &[]);
    let root = w.pid();
    let (agent, watch) = Agent::watching(root, &["--sample-interval", "200ms"]);
    w.release();
    let child = as_pid(&w.report_line(0, TIMEOUT)["child"]);

    let exit = wait_for(TIMEOUT, || {
        events_for(&agent.events(), "exit", child)
            .first()
            .map(|e| (*e).clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "no exit event for zombie child {child} within {TIMEOUT:?}; agent stderr:\n{}",
            agent.stderr()
        )
    });
    // Causal, not timed: the parent has not been told to reap yet.
    assert_eq!(
        state(child),
        Some('Z'),
        "child {child} is still a zombie when its exit event is read"
    );
    assert_eq!(exit["exit_code"], 7, "{exit}");
    assert_eq!(
        exit["cpu_final"], false,
        "reported before its release: {exit}"
    );
    let at_exit =
        exit["cpu_user_seconds"].as_f64().unwrap() + exit["cpu_system_seconds"].as_f64().unwrap();
    assert!(
        at_exit >= 0.1,
        "the 100 ms the child burnt are in its exit event: {exit}"
    );

    w.release();
    let reaped = w.report_line(1, TIMEOUT);
    let rusage = reaped["child_cpu_seconds"].as_f64().unwrap();
    let labels = [
        ("watch", watch.as_str()),
        ("root_pid", &root.to_string()),
        ("pid", &child.to_string()),
    ];
    // After the reap, the release adds what the exit path spent after the tracepoint: the
    // child's series ends at what wait4 reported.
    let m = wait_for(TIMEOUT, || {
        let m = agent.metrics();
        (m.sum("procmon_child_cpu_seconds_total", &labels) >= rusage * 0.99).then_some(m)
    })
    .unwrap_or_else(|| agent.metrics());
    let attributed = m.sum("procmon_child_cpu_seconds_total", &labels);
    println!(
        "zombie child {child}: {at_exit:.6} s in its exit event, {attributed:.6} s attributed \
         after the reap, wait4 says {rusage:.6} s"
    );
    // Under QEMU's emulation (the kernel matrix) touching 512 MiB costs seconds of CPU and
    // unmapping it well under 1% of that, so only the host can show the gap.
    if exit_tracepoint_precedes_unmapping() && std::env::var_os("PROCMON_VM").is_none() {
        // What makes the release needed: unmapping 512 MiB after the exit tracepoint.
        assert!(
            at_exit < rusage * 0.99,
            "the exit path after the tracepoint is missing from the exit event ({at_exit:.6} \
             s vs wait4 {rusage:.6} s): without it this test proves nothing"
        );
    }
    assert!(
        (attributed - rusage).abs() <= rusage * 0.01,
        "procmon_child_cpu_seconds_total {attributed:.6} s vs wait4 {rusage:.6} s (1%)"
    );
    assert!(
        m.get_or_zero("procmon_exits_before_release_total", &[]) >= 1.0,
        "the early report is counted"
    );
    // Waited for: where the exit figure is already within 1% (kernels before 6.16 trace the
    // exit after unmapping), the snapshot above can come before the release.
    assert!(
        wait_for(TIMEOUT, || {
            (agent
                .metrics()
                .get_or_zero("procmon_exits_released_late_total", &[])
                >= 1.0)
                .then_some(())
        })
        .is_some(),
        "the late release is counted"
    );
    assert_eq!(
        events_for(&agent.events(), "exit", child).len(),
        1,
        "the release does not report the exit twice"
    );
    w.finish();
}

#[test]
fn a_reaped_exit_carries_its_final_cpu() {
    if !require_root("zombies::a_reaped_exit_carries_its_final_cpu") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut child = std::process::Command::new("sh")
        .args(["-c", "exit 4"])
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let exit = wait_for(TIMEOUT, || {
        events_for(&agent.events(), "exit", pid)
            .first()
            .map(|e| (*e).clone())
    })
    .unwrap_or_else(|| panic!("no exit event for {pid}; agent stderr:\n{}", agent.stderr()));
    assert_eq!(
        (exit["exit_code"].as_u64(), exit["cpu_final"].as_bool()),
        (Some(4), Some(true)),
        "{exit}"
    );
}
