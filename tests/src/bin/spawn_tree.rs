//! Workload for the lifecycle test: a process tree whose every member ends in a known way.
//!
//! parent ─┬─ child 0: 2 grandchildren, reaps them, then execs `/bin/sleep 0.1` (exit 0)
//!         ├─ child 1: 2 grandchildren, reaps them, exits 3
//!         └─ child 2: 2 grandchildren, reaps them, dies of SIGSEGV (no core dump)
//! grandchildren sleep 50 ms and `_exit(0)`. Children reap their grandchildren before ending
//! so every exit's parent is known exactly (no reparenting to init).
//!
//! Prints one JSON line: {"parent":P,"children":[c0,c1,c2],"grandchildren":[[g,g],[g,g],[g,g]],
//! "child_status":[raw wait statuses]}. libc is used directly (fork/exec/_exit) because the
//! point is to produce exactly these kernel events and nothing else (no posix_spawn, threads).

use std::ffi::CString;
use std::time::Duration;

fn fork() -> libc::pid_t {
    // SAFETY: this workload never starts threads, so the child inherits no lock held by
    // another thread.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

fn reap(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    // SAFETY: waitpid writes one c_int through a pointer to a live local.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        r,
        pid,
        "waitpid({pid}): {}",
        std::io::Error::last_os_error()
    );
    status
}

/// Runs in child `index`: forks two grandchildren, reports (index, own pid, grandchildren)
/// through the pipe in one write (16 bytes < PIPE_BUF, so atomic), then ends as specified.
fn child(index: i32, report_fd: libc::c_int) -> ! {
    let mut grandchildren = [0; 2];
    for g in &mut grandchildren {
        let pid = fork();
        if pid == 0 {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: `_exit` has no preconditions; it ends the grandchild without returning
            // into the child's code.
            unsafe { libc::_exit(0) };
        }
        *g = pid;
    }
    let record = [
        index,
        // SAFETY: getpid has no arguments or preconditions.
        unsafe { libc::getpid() },
        grandchildren[0],
        grandchildren[1],
    ];
    // SAFETY: write reads size_of_val(&record) bytes from the live local array `record`.
    let n = unsafe {
        libc::write(
            report_fd,
            record.as_ptr().cast(),
            std::mem::size_of_val(&record),
        )
    };
    assert_eq!(
        n as usize,
        std::mem::size_of_val(&record),
        "short write to report pipe"
    );
    // SAFETY: closes this child's write end once; it is not used afterwards.
    unsafe { libc::close(report_fd) };
    for g in grandchildren {
        reap(g);
    }
    match index {
        0 => {
            let path = CString::new("/bin/sleep").unwrap();
            let args = [path.as_ptr(), c"0.1".as_ptr(), std::ptr::null()];
            // SAFETY: `path` and "0.1" are NUL-terminated C strings that outlive the call,
            // and `args` is a null-terminated argv array.
            unsafe { libc::execv(path.as_ptr(), args.as_ptr()) };
            eprintln!("execv /bin/sleep: {}", std::io::Error::last_os_error());
            // SAFETY: `_exit` has no preconditions.
            unsafe { libc::_exit(127) }
        }
        // SAFETY: `_exit` has no preconditions.
        1 => unsafe { libc::_exit(3) },
        // SAFETY: signal installs SIG_DFL (no handler code) and raise takes no pointers;
        // `_exit` has no preconditions.
        _ => unsafe {
            // NB: Rust's runtime installs a SIGSEGV handler (stack-overflow detection) that
            // would swallow a raised signal; restore the default action so the kernel kills
            // us with signal 11.
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
            libc::_exit(126)
        },
    }
}

fn main() {
    // No core dump for child 2's crash (inherited by every descendant).
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        // SAFETY: setrlimit reads a valid rlimit from a live local.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) },
        0,
        "setrlimit(RLIMIT_CORE, 0)"
    );

    let mut fds = [0; 2];
    // SAFETY: pipe writes two c_ints into the two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (read_fd, write_fd) = (fds[0], fds[1]);

    let mut children = [0; 3];
    for (i, c) in children.iter_mut().enumerate() {
        let pid = fork();
        if pid == 0 {
            // SAFETY: the child closes its copy of the read end, which it never uses.
            unsafe { libc::close(read_fd) };
            child(i as i32, write_fd);
        }
        *c = pid;
    }
    // SAFETY: the parent closes its copy of the write end, which it never uses (so reads
    // see EOF if every child dies).
    unsafe { libc::close(write_fd) };

    let mut grandchildren = [[0; 2]; 3];
    for _ in 0..3 {
        let mut record = [0i32; 4];
        // SAFETY: read writes at most size_of_val(&record) bytes into the live local array.
        let n = unsafe {
            libc::read(
                read_fd,
                record.as_mut_ptr().cast(),
                std::mem::size_of_val(&record),
            )
        };
        assert_eq!(
            n as usize,
            std::mem::size_of_val(&record),
            "short read from report pipe"
        );
        let [index, pid, g0, g1] = record;
        assert_eq!(
            children[index as usize], pid,
            "child {index} reported pid {pid}"
        );
        grandchildren[index as usize] = [g0, g1];
    }
    let child_status = children.map(reap);

    let report = serde_json::json!({
        "parent": std::process::id(),
        "children": children,
        "grandchildren": grandchildren,
        "child_status": child_status,
    });
    println!("{report}");
}
