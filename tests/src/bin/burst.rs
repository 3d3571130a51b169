//! Workload for the short-lived test: forks N children (argument, default 2000) that each
//! `_exit(0)` at once, so each lives well under a millisecond, keeping a few in flight.
//! Prints one JSON line: {"pid":P,"children":N}. Exits non-zero if any child did not exit 0.

/// Children alive at once: enough to overlap forks and exits across CPUs, few enough that
/// the burst never trips RLIMIT_NPROC.
const IN_FLIGHT: usize = 8;

fn reap_any() -> libc::c_int {
    let mut status = 0;
    // SAFETY: waitpid writes one c_int through a pointer to a live local.
    let r = unsafe { libc::waitpid(-1, &mut status, 0) };
    assert!(r > 0, "waitpid: {}", std::io::Error::last_os_error());
    status
}

fn main() {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .unwrap_or_else(|_| panic!("usage: burst [N]; got {a:?}")),
        None => 2000,
    };
    let (mut running, mut failed) = (0, 0);
    for _ in 0..n {
        if running == IN_FLIGHT {
            failed += (reap_any() != 0) as usize;
            running -= 1;
        }
        // SAFETY: this workload is single-threaded, so the child inherits no lock held by
        // another thread; it only calls `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: `_exit` has no preconditions; it ends the child without running the
            // parent's destructors or atexit hooks a second time.
            unsafe { libc::_exit(0) };
        }
        running += 1;
    }
    for _ in 0..running {
        failed += (reap_any() != 0) as usize;
    }
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "children": n })
    );
    assert_eq!(failed, 0, "{failed} children did not exit 0");
}
