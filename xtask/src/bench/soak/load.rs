//! What the soak inflicts, counted exactly where it is made: a fork storm (a process forking
//! children that exit at once, counting them), crashing children (SIGSEGV) and OOM kills (a
//! child that fills a memory cgroup until the kernel kills it).
//!
//! The children are forked from xtask, which has threads (the SSE clients): between fork and
//! exit they make only async-signal-safe calls (raw syscalls, no allocation, no locks).
use std::{
    ffi::CString,
    fs::File,
    io::{self, Read},
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Comms of the children, so SSE clients can tell them from the rest of the machine.
pub const SEGV_COMM: &str = "soak-segv";
pub const OOM_COMM: &str = "soak-oom";
const STORM_COMM: &str = "soak-storm";
/// Far beyond the memory cgroup's limit: the kernel kills the child long before.
const OOM_MAP_BYTES: usize = 1 << 30;
const PAGE: usize = 4096;

/// A process forking children that `_exit(0)` at once, one at a time, from [`begin`] until
/// told to stop. It exists before it begins so that its pid can be known to the clients
/// first: every child it forks is then one they can be asked to have seen.
///
/// [`begin`]: ForkStorm::begin
pub struct ForkStorm {
    pid: libc::pid_t,
    go: Option<OwnedFd>,
    stop: Option<OwnedFd>,
    report: OwnedFd,
}

impl ForkStorm {
    pub fn start() -> Result<ForkStorm> {
        let (go_r, go_w) = crate::cmd::pipe()?;
        let (stop_r, stop_w) = crate::cmd::pipe()?;
        let (report_r, report_w) = crate::cmd::pipe()?;
        let name = CString::new(STORM_COMM).unwrap();
        // SAFETY: the child makes only async-signal-safe syscalls and never returns into
        // Rust (it ends in `_exit`), so forking a threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("cannot fork the storm: {}", io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above; the fds are open in this process.
            unsafe {
                storm_main(
                    &name,
                    [&go_r, &go_w, &stop_r, &stop_w, &report_w].map(|fd| fd.as_raw_fd()),
                )
            }
        }
        Ok(ForkStorm {
            pid,
            go: Some(go_w),
            stop: Some(stop_w),
            report: report_r,
        })
    }

    /// Lets the storm fork.
    pub fn begin(&mut self) -> Result<()> {
        let go = self.go.take().context("the storm has begun already")?;
        // SAFETY: writes one byte from a live buffer to an fd we own.
        if unsafe { libc::write(go.as_raw_fd(), b"g".as_ptr().cast(), 1) } != 1 {
            bail!(
                "cannot start the fork storm: {}",
                io::Error::last_os_error()
            );
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Stops the storm and returns how many children it forked (and reaped).
    pub fn stop(mut self) -> Result<u64> {
        drop(self.stop.take());
        let mut count = [0u8; 8];
        let mut report = File::from(self.report.try_clone()?);
        report
            .read_exact(&mut count)
            .context("the fork storm died without reporting its count")?;
        let mut status = 0;
        // SAFETY: waitpid writes one c_int through a pointer to a live local.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        self.pid = 0;
        Ok(u64::from_ne_bytes(count))
    }
}

impl Drop for ForkStorm {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: our own child, not reaped yet.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// The storm process: waits for a byte on `go_r`, forks until `stop_r` reads EOF (xtask
/// closed it or died), then writes the count to `report_w`.
///
/// # Safety
/// Only in the child of a fork; the fds must be open.
unsafe fn storm_main(name: &CString, [go_r, go_w, stop_r, stop_w, report_w]: [i32; 5]) -> ! {
    // SAFETY: plain syscalls on this process and its own children, reads into a live buffer.
    unsafe {
        libc::close(stop_w);
        libc::close(go_w);
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let mut go = [0u8; 1];
        if libc::read(go_r, go.as_mut_ptr().cast(), 1) != 1 {
            libc::_exit(1);
        }
        let mut count: u64 = 0;
        loop {
            for _ in 0..64 {
                let child = libc::fork();
                if child == 0 {
                    libc::_exit(0);
                }
                if child > 0 {
                    libc::waitpid(child, std::ptr::null_mut(), 0);
                    count += 1;
                }
            }
            let mut poll = libc::pollfd {
                fd: stop_r,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut poll, 1, 0) != 0 {
                break;
            }
        }
        let bytes = count.to_ne_bytes();
        libc::write(report_w, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(0)
    }
}

/// What the crash and OOM loop made.
#[derive(Default)]
pub struct Made {
    pub crashes: Vec<u32>,
    pub oom_victims: Vec<u32>,
    /// Children that did not die the way they should have (not SIGSEGV, not SIGKILL).
    pub misfires: Vec<String>,
}

/// Until `stop`: a crashing child every `crash_every`, an OOM-killed child in `memcg_dir`
/// every `oom_every`.
pub fn crashes_and_ooms(
    stop: &AtomicBool,
    memcg_dir: &Path,
    crash_every: Duration,
    oom_every: Duration,
) -> Result<Made> {
    let procs = CString::new(memcg_dir.join("cgroup.procs").to_string_lossy().as_bytes())?;
    let (segv_name, oom_name) = (CString::new(SEGV_COMM)?, CString::new(OOM_COMM)?);
    let mut made = Made::default();
    let started = Instant::now();
    let (mut next_crash, mut next_oom) = (crash_every, oom_every / 2);
    while !stop.load(Ordering::Relaxed) {
        let now = started.elapsed();
        if now >= next_crash {
            next_crash += crash_every;
            // SAFETY: the child only calls async-signal-safe functions and dies by signal.
            let (pid, status) = unsafe { fork_and_wait(|| segv_child(&segv_name)) }?;
            if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV {
                made.crashes.push(pid);
            } else {
                made.misfires
                    .push(format!("crash child {pid}: wait status {status:#x}"));
            }
        }
        if now >= next_oom {
            next_oom += oom_every;
            // SAFETY: as above.
            let (pid, status) = unsafe { fork_and_wait(|| oom_child(&oom_name, &procs)) }?;
            if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
                made.oom_victims.push(pid);
            } else {
                made.misfires
                    .push(format!("OOM child {pid}: wait status {status:#x}"));
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(made)
}

/// Forks, runs `child` in the child, and waits for it.
///
/// # Safety
/// `child` must only make async-signal-safe calls; it should not return (if it does, the child
/// exits with status 104).
unsafe fn fork_and_wait(child: impl FnOnce()) -> Result<(u32, i32)> {
    // SAFETY: the caller promises `child` is fit for a forked child of a threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", io::Error::last_os_error());
    }
    if pid == 0 {
        child();
        // SAFETY: `_exit` has no preconditions.
        unsafe { libc::_exit(104) };
    }
    let mut status = 0;
    // SAFETY: waitpid writes one c_int through a pointer to a live local.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        bail!("waitpid({pid}): {}", io::Error::last_os_error());
    }
    Ok((pid as u32, status))
}

fn segv_child(name: &CString) -> ! {
    // SAFETY: syscalls on this process only. No core file (RLIMIT_CORE 0); the default
    // action for SIGSEGV (Rust's runtime installs a handler for stack overflows), then a
    // SIGSEGV: the kernel kills the process as it would for a bad pointer.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
        libc::_exit(100)
    }
}

fn oom_child(name: &CString, procs: &CString) -> ! {
    // SAFETY: syscalls on this process only; the mapping is this process's own and every
    // write lands inside it.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
        if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(101);
        }
        libc::close(fd);
        let memory = libc::mmap(
            std::ptr::null_mut(),
            OOM_MAP_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if memory == libc::MAP_FAILED {
            libc::_exit(102);
        }
        // Touch every page: untouched pages are neither resident nor charged.
        let bytes = memory.cast::<u8>();
        let mut offset = 0;
        while offset < OOM_MAP_BYTES {
            std::ptr::write_volatile(bytes.add(offset), 1);
            offset += PAGE;
        }
        libc::_exit(103)
    }
}

/// The kernel's count of OOM kills in a memory cgroup: `oom_kill` in memory.oom_control
/// (v1) or memory.events (v2).
pub fn memcg_oom_kills(memcg_dir: &Path) -> Option<u64> {
    ["memory.oom_control", "memory.events"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(memcg_dir.join(f)).ok())
        .find_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
}
