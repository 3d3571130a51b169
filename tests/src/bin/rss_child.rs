//! Workload for the peak-RSS test: once released (a byte on stdin), forks one child that
//! reads its own VmRSS (the baseline: this binary doing nothing), maps MIB MiB (argument,
//! default 200) of anonymous memory, writes every page, reads its VmHWM, sends both to the
//! parent and exits 0. The parent reaps it, prints
//! {"pid":P,"child":C,"status":RAW_WAIT_STATUS,"baseline_rss_bytes":B,"hwm_bytes":H,"mib":M}
//! and stays alive (the watched root) until stdin closes.

use procmon_tests::workload::{fork, reap, self_status_bytes, wait_release, wait_stdin_eof};

const PAGE: usize = 4096;

fn child(mib: usize, report_fd: libc::c_int) -> ! {
    let baseline = self_status_bytes("VmRSS");
    let len = mib << 20;
    // SAFETY: a fresh private anonymous mapping (null hint, fd -1) aliases nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        eprintln!("mmap {mib} MiB: {}", std::io::Error::last_os_error());
        // SAFETY: `_exit` has no preconditions.
        unsafe { libc::_exit(2) };
    }
    let base = p.cast::<u8>();
    for off in (0..len).step_by(PAGE) {
        // SAFETY: `off < len`, so the byte lies inside the `len`-byte read-write mapping
        // created above, which nothing else references.
        unsafe { base.add(off).write_volatile(1) };
    }
    let hwm = self_status_bytes("VmHWM");
    let record = [baseline, hwm];
    let size = std::mem::size_of_val(&record);
    // SAFETY: write reads `size` bytes from the live local array `record`, of that size.
    let n = unsafe { libc::write(report_fd, record.as_ptr().cast(), size) };
    // SAFETY: `_exit` has no preconditions; it ends the forked child without returning into
    // the parent's code.
    unsafe { libc::_exit(if n as usize == size { 0 } else { 3 }) }
}

fn main() {
    let mib: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .unwrap_or_else(|_| panic!("usage: rss_child [MIB]; got {a:?}")),
        None => 200,
    };
    wait_release();
    let mut fds = [0; 2];
    // SAFETY: pipe writes two c_ints into the two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let pid = fork();
    if pid == 0 {
        // SAFETY: the child closes its copy of the read end, which it never uses.
        unsafe { libc::close(fds[0]) };
        child(mib, fds[1]);
    }
    // SAFETY: the parent closes its copy of the write end, which it never uses (so the read
    // sees EOF if the child dies).
    unsafe { libc::close(fds[1]) };
    let mut record = [0u64; 2];
    let size = std::mem::size_of_val(&record);
    // SAFETY: read writes at most `size` bytes into the live local array `record`, of that
    // size.
    let n = unsafe { libc::read(fds[0], record.as_mut_ptr().cast(), size) };
    let (_, status) = reap(pid);
    assert_eq!(
        n as usize, size,
        "short report from the child (status {status})"
    );
    println!(
        "{}",
        serde_json::json!({
            "pid": std::process::id(),
            "child": pid,
            "status": status,
            "baseline_rss_bytes": record[0],
            "hwm_bytes": record[1],
            "mib": mib,
        })
    );
    wait_stdin_eof();
}
