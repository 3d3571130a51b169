//! Workload for the OOM test: joins the memory cgroup given as its argument, forks one
//! child that raises its own oom_score_adj to 500 and then allocates and touches memory until
//! the cgroup's limit makes the kernel's OOM killer kill it.
//!
//! Prints one JSON line: {"parent":P,"child":C,"child_status":raw wait status}.

use std::io::Write;

const CHUNK: usize = 16 << 20;
/// Far beyond any limit the test sets; reaching it means the OOM killer never came.
const MAX_BYTES: usize = 2 << 30;

fn main() {
    let cgroup = std::env::args()
        .nth(1)
        .expect("usage: oom_tree <memory cgroup dir>");
    std::fs::write(format!("{cgroup}/cgroup.procs"), b"0")
        .unwrap_or_else(|e| panic!("joining {cgroup}: {e}"));
    // SAFETY: this workload is single-threaded, so the child inherits no lock held by another
    // thread and may allocate.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        std::fs::write("/proc/self/oom_score_adj", b"500").expect("raising oom_score_adj");
        let mut kept: Vec<Vec<u8>> = Vec::new();
        while kept.len() * CHUNK < MAX_BYTES {
            // Touch every page: untouched pages are not resident and not charged.
            kept.push(vec![0x5a; CHUNK]);
            std::hint::black_box(&kept);
        }
        let _ = writeln!(
            std::io::stderr(),
            "allocated {MAX_BYTES} bytes without being killed"
        );
        // SAFETY: `_exit` has no preconditions; it ends the child without returning into
        // the parent's code below.
        unsafe { libc::_exit(1) };
    }
    let mut status = 0;
    // SAFETY: waitpid writes one c_int through a pointer to a live local.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    println!(
        "{}",
        serde_json::json!({ "parent": std::process::id(), "child": pid, "child_status": status })
    );
}
