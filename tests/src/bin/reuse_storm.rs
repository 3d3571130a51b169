//! Workload for the pid-reuse test: once released (a byte on stdin), ignores SIGCHLD (its
//! children are reaped by the kernel as they exit, so their pids are free at once) and forks
//! N children (argument) that exit at once, retrying a fork that fails for want of a free pid.
//! Prints {"pid":P,"children":N,"fork_retries":R} and stays alive until stdin closes.

use procmon_tests::workload::{wait_release, wait_stdin_eof};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: reuse_storm N");
    wait_release();
    // SAFETY: installing SIG_IGN for SIGCHLD takes no pointers and runs no handler code.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut retries = 0u64;
    let mut made = 0;
    while made < n {
        // SAFETY: the workload is single-threaded; the child only calls `_exit`.
        match unsafe { libc::fork() } {
            // SAFETY: `_exit` has no preconditions; the child ends without returning here.
            0 => unsafe { libc::_exit(0) },
            -1 => {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "fork: {e}");
                retries += 1;
                std::thread::yield_now();
            }
            _ => made += 1,
        }
    }
    println!(
        "{}",
        serde_json::json!({"pid": std::process::id(), "children": n, "fork_retries": retries})
    );
    wait_stdin_eof();
}
