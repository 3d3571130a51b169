//! Workload for the crash test: one child per way of dying, each reaped by this process.
//!
//! segv (SIGSEGV), abort (SIGABRT), fpe (a real integer division by zero: SIGFPE), sigkill
//! (SIGKILL, not a crash), exit3, exit0, and thread_segv: a process whose second thread
//! crashes while the main thread waits (one process death, not two).
//!
//! Prints one JSON line: {"parent":P,"children":{"segv":{"pid":N,"status":raw},...}}.
//! RLIMIT_CORE is set to 0 so no core files are written.

use std::time::Duration;

const WAYS: [&str; 7] = [
    "segv",
    "abort",
    "fpe",
    "sigkill",
    "exit3",
    "exit0",
    "thread_segv",
];

fn segv() -> ! {
    // SAFETY: signal installs SIG_DFL (no handler code); the null write is the point: it
    // faults before any memory is touched and the kernel kills the process, so nothing
    // observes the undefined behaviour; `_exit` has no preconditions.
    unsafe {
        // NB: Rust's runtime installs a SIGSEGV handler (stack-overflow detection); restore
        // the default action so the kernel kills the process with signal 11.
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        std::ptr::write_volatile(std::ptr::null_mut::<u64>(), 1);
        libc::_exit(100)
    }
}

fn divide_by_zero() -> ! {
    // SAFETY: reads a valid, aligned, initialised u64 (volatile only to hide the zero from
    // the optimiser).
    let zero: u64 = unsafe { std::ptr::read_volatile(&0u64) };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `div` only reads and writes the registers named as operands; with a zero
    // divisor it traps and the kernel delivers SIGFPE, whose default action kills us.
    unsafe {
        // Rust's `/` checks for zero and panics; the CPU's `div` traps (#DE → SIGFPE).
        std::arch::asm!("div {0}", in(reg) zero, inout("rax") 1u64 => _, inout("rdx") 0u64 => _);
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: raise takes no pointers; SIGFPE's default action kills the process.
    unsafe {
        // arm64's udiv returns 0 on division by zero instead of trapping.
        let _ = zero;
        libc::raise(libc::SIGFPE);
    }
    // SAFETY: `_exit` has no preconditions.
    unsafe { libc::_exit(101) }
}

fn die(way: &str) -> ! {
    match way {
        "segv" => segv(),
        // SAFETY: abort has no preconditions.
        "abort" => unsafe { libc::abort() },
        "fpe" => divide_by_zero(),
        // SAFETY: kill and getpid take no pointers (we signal ourselves); `_exit` has no
        // preconditions.
        "sigkill" => unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
            libc::_exit(102)
        },
        // SAFETY: `_exit` has no preconditions.
        "exit3" => unsafe { libc::_exit(3) },
        // SAFETY: `_exit` has no preconditions.
        "exit0" => unsafe { libc::_exit(0) },
        "thread_segv" => {
            let crasher = std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                segv()
            });
            let _ = crasher.join();
            // SAFETY: `_exit` has no preconditions (reached only if the thread did not
            // crash the process).
            unsafe { libc::_exit(103) }
        }
        other => panic!("unknown way {other}"),
    }
}

fn main() {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit from a live local.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    let mut children = serde_json::Map::new();
    for way in WAYS {
        // SAFETY: the parent is single-threaded here (threads are started only in the
        // children), so the child inherits no lock held by another thread.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            die(way);
        }
        let mut status = 0;
        // SAFETY: waitpid writes one c_int through a pointer to a live local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
        children.insert(
            way.to_string(),
            serde_json::json!({ "pid": pid, "status": status }),
        );
    }
    println!(
        "{}",
        serde_json::json!({ "parent": std::process::id(), "children": children })
    );
}
