//! Workload for the zombie test: once released (a byte on stdin), forks a child that touches
//! 512 MiB (so that its exit path, which unmaps it, costs tens of ms of CPU), burns 100 ms
//! and exits, and leaves it a zombie. Once the child is a zombie it prints
//! {"pid":P,"child":C}; on a second byte on stdin it reaps the child with wait4 and prints
//! {"child":C,"status":S,"child_cpu_seconds":wait4 rusage user+sys}; then it stays alive (the
//! watched root) until stdin closes.

use std::time::Duration;

use procmon_tests::workload::{burn, fork, reap_rusage, wait_release, wait_stdin_eof};

const CHILD_CPU: Duration = Duration::from_millis(100);
const CHILD_MEMORY: usize = 512 << 20;

/// The state letter of `/proc/PID/stat` (after the parenthesised comm).
fn state(pid: libc::pid_t) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn main() {
    wait_release();
    let child = fork();
    if child == 0 {
        let mut memory = vec![0u8; CHILD_MEMORY];
        for page in memory.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&memory);
        burn(CHILD_CPU);
        // SAFETY: `_exit` has no preconditions; it ends the child without returning into
        // the parent's code.
        unsafe { libc::_exit(7) };
    }
    while state(child) != Some('Z') {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "{}",
        serde_json::json!({"pid": std::process::id(), "child": child})
    );
    wait_release();
    let (_, status, cpu) = reap_rusage(child);
    println!(
        "{}",
        serde_json::json!({"child": child, "status": status, "child_cpu_seconds": cpu})
    );
    wait_stdin_eof();
}
