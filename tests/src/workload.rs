//! Building blocks for the workload binaries in `src/bin/` (the processes the tests watch),
//! on libc directly: the point is to produce exactly the forks, exits and CPU the tests then
//! look for, nothing more (no threads, no posix_spawn). Everything called between `fork` and
//! `_exit` in a child is safe there because the workloads are single-threaded.
//!
//! Protocol shared with [`crate::Workload`]: block until a byte arrives on stdin
//! ([`wait_release`]), work, print one JSON line, then stay alive until stdin reaches EOF
//! ([`wait_stdin_eof`]).

use std::time::Duration;

/// Blocks until one byte arrives on stdin; exits 1 if stdin closes first (the test gave up).
pub fn wait_release() {
    let mut b = 0u8;
    // SAFETY: read writes at most 1 byte into the live local `b`.
    let n = unsafe { libc::read(0, (&mut b as *mut u8).cast(), 1) };
    if n != 1 {
        eprintln!("stdin closed before the release byte");
        std::process::exit(1);
    }
}

/// Blocks until stdin reaches EOF (the test closed it) or fails.
pub fn wait_stdin_eof() {
    let mut buf = [0u8; 64];
    // SAFETY: read writes at most `buf.len()` bytes into the live local `buf`.
    while unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// CPU time consumed by the calling thread (= the process: the workloads are single-threaded).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Spins until the calling thread has consumed `cpu` more CPU time (not wall time: the
/// amount burnt does not depend on how busy the machine is).
pub fn burn(cpu: Duration) {
    let start = thread_cpu_time();
    while thread_cpu_time() - start < cpu {
        std::hint::spin_loop();
    }
}

pub fn monotonic_now() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts
}

pub fn timespec_add(ts: libc::timespec, d: Duration) -> libc::timespec {
    let nsec = ts.tv_nsec as u64 + u64::from(d.subsec_nanos());
    libc::timespec {
        tv_sec: ts.tv_sec + d.as_secs() as libc::time_t + (nsec / 1_000_000_000) as libc::time_t,
        tv_nsec: (nsec % 1_000_000_000) as libc::c_long,
    }
}

/// Sleeps until the absolute CLOCK_MONOTONIC time `ts`.
pub fn sleep_until(ts: &libc::timespec) {
    loop {
        // SAFETY: `ts` is a valid timespec borrowed for the call; the remaining-time pointer
        // may be null (and is unused with TIMER_ABSTIME).
        let r = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                ts,
                std::ptr::null_mut(),
            )
        };
        if r != libc::EINTR {
            return;
        }
    }
}

pub fn fork() -> libc::pid_t {
    // SAFETY: only the single-threaded workload binaries call this (see the module doc), so
    // the child inherits no lock held by another thread.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// Waits for `pid` (or any child with -1); returns (pid, raw wait status).
pub fn reap(pid: libc::pid_t) -> (libc::pid_t, libc::c_int) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one c_int through a pointer to a live local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r > 0 {
            return (r, status);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            panic!("waitpid({pid}): {e}");
        }
    }
}

/// Like [`reap`], with the reaped child's own rusage (user + system seconds, its reaped
/// descendants included) from `wait4`.
pub fn reap_rusage(pid: libc::pid_t) -> (libc::pid_t, libc::c_int, f64) {
    let mut status = 0;
    // SAFETY: rusage is plain integers and timevals, for which all zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes one c_int and one rusage through pointers to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r > 0 {
            return (r, status, rusage_seconds(&ru));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            panic!("wait4({pid}): {e}");
        }
    }
}

fn rusage_seconds(ru: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Seconds of user + system time in `getrusage(who)`.
pub fn rusage_cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain integers and timevals, for which all zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage through a pointer to a live local.
    assert_eq!(unsafe { libc::getrusage(who, &mut ru) }, 0, "getrusage");
    rusage_seconds(&ru)
}

/// A `kB` field of /proc/self/status (VmRSS, VmHWM, ...), in bytes.
pub fn self_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no `{field}: N kB` line in /proc/self/status"))
}

/// In a child: die with the parent (a test that panics kills the workload, not its children).
pub fn die_with_parent(parent: libc::pid_t) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number, no pointers; getppid has no
    // preconditions; `_exit` ends the child without unwinding into the parent's code.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
}
