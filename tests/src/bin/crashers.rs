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
    unsafe {
        // NB: Rust's runtime installs a SIGSEGV handler (stack-overflow detection); restore
        // the default action so the kernel kills the process with signal 11.
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        std::ptr::write_volatile(std::ptr::null_mut::<u64>(), 1);
        libc::_exit(100)
    }
}

fn divide_by_zero() -> ! {
    let zero: u64 = unsafe { std::ptr::read_volatile(&0u64) };
    #[cfg(target_arch = "x86_64")]
    unsafe {
        // Rust's `/` checks for zero and panics; the CPU's `div` traps (#DE → SIGFPE).
        std::arch::asm!("div {0}", in(reg) zero, inout("rax") 1u64 => _, inout("rdx") 0u64 => _);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unsafe {
        // arm64's udiv returns 0 on division by zero instead of trapping.
        let _ = zero;
        libc::raise(libc::SIGFPE);
    }
    unsafe { libc::_exit(101) }
}

fn die(way: &str) -> ! {
    match way {
        "segv" => segv(),
        "abort" => unsafe { libc::abort() },
        "fpe" => divide_by_zero(),
        "sigkill" => unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
            libc::_exit(102)
        },
        "exit3" => unsafe { libc::_exit(3) },
        "exit0" => unsafe { libc::_exit(0) },
        "thread_segv" => {
            let crasher = std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                segv()
            });
            let _ = crasher.join();
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
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    let mut children = serde_json::Map::new();
    for way in WAYS {
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            die(way);
        }
        let mut status = 0;
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
