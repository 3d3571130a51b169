//! Thousands of idle processes under one parent: the population the sampling benchmark measures.
//!
//! xtask forks a parent, which forks the children; each child blocks in read() on a pipe whose
//! only write end xtask holds (close-on-exec, so no agent or exporter inherits it). Closing it,
//! or xtask dying in any way, is EOF: every child exits, and the parent reaps them all, then
//! exits. If that stalls, a SIGKILL of their process group ends them.
use std::{
    fs::{self, File},
    io::{self, Read},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The children's comm, which process-exporter groups them by.
const CHILD_COMM: &[u8] = b"bench-idle\0";
const PARENT_COMM: &[u8] = b"bench-parent\0";
/// Pids kept free for everything else (agent threads, exporter, cargo, the system).
const HEADROOM: u64 = 1000;
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct IdleTree {
    parent: libc::pid_t,
    release: Option<OwnedFd>,
}

impl IdleTree {
    pub fn spawn(children: u32) -> Result<IdleTree> {
        check_limits(u64::from(children))?;
        let (release_r, release_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        // SAFETY: the child runs only async-signal-safe syscalls and never returns into Rust,
        // so it is sound even if xtask had other threads.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!(
                "cannot fork the idle parent: {}",
                io::Error::last_os_error()
            );
        }
        if pid == 0 {
            let fds = [&release_r, &release_w, &ready_r, &ready_w].map(AsRawFd::as_raw_fd);
            // SAFETY: see above; the fds are open in this process.
            unsafe { parent_main(children, fds) }
        }
        // Also set here, so that a kill of the group cannot race the parent's own setpgid.
        // SAFETY: plain syscall on our own child.
        unsafe { libc::setpgid(pid, pid) };
        // From here on, Drop releases whatever got started.
        let tree = IdleTree {
            parent: pid,
            release: Some(release_w),
        };
        drop((release_r, ready_w));
        let mut report = [0u8; 8];
        File::from(ready_r)
            .read_exact(&mut report)
            .context("the idle parent died before it had forked its children")?;
        let forked = u32::from_ne_bytes(report[..4].try_into().unwrap());
        let errno = i32::from_ne_bytes(report[4..].try_into().unwrap());
        if forked < children {
            bail!(
                "forked only {forked} of {children} idle processes: {}",
                io::Error::from_raw_os_error(errno)
            );
        }
        Ok(tree)
    }

    pub fn parent(&self) -> u32 {
        self.parent as u32
    }

    /// Lets the children exit and waits until the parent has reaped them all.
    pub fn stop(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        let Some(release) = self.release.take() else {
            return Ok(());
        };
        drop(release);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            // SAFETY: waitpid on our own child.
            let reaped = unsafe { libc::waitpid(self.parent, std::ptr::null_mut(), libc::WNOHANG) };
            if reaped == self.parent
                || (reaped < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                // SAFETY: signals only the group the parent leads, then reaps the parent.
                unsafe {
                    libc::kill(-self.parent, libc::SIGKILL);
                    libc::waitpid(self.parent, std::ptr::null_mut(), 0);
                }
                bail!(
                    "the idle processes did not exit within {EXIT_TIMEOUT:?} of EOF; \
                     killed their process group"
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for IdleTree {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The forked parent: forks the children, reports how many, then waits for the release.
///
/// # Safety
///
/// Call only in a freshly forked child of xtask, never in xtask itself: it closes the given
/// fds, forks, and ends the process with `_exit`. `[release_r, release_w, ready_r, ready_w]`
/// must be the two pipes' open fds. Only async-signal-safe libc calls run here (no
/// allocation, no locks), which is what a child forked from a possibly multi-threaded
/// process may do.
unsafe fn parent_main(children: u32, [release_r, release_w, ready_r, ready_w]: [RawFd; 4]) -> ! {
    // SAFETY: setpgid/close/prctl take no pointers except PR_SET_NAME's, which is a static
    // NUL-terminated string; the fds are ours (caller's contract) and unused after closing.
    unsafe {
        libc::setpgid(0, 0);
        libc::close(release_w);
        libc::close(ready_r);
        libc::prctl(libc::PR_SET_NAME, PARENT_COMM.as_ptr());
    }
    let (mut forked, mut errno) = (0u32, 0i32);
    while forked < children {
        // SAFETY: this process is the single-threaded forked parent (caller's contract), and
        // the child below runs only async-signal-safe calls before `_exit`.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: `ready_w` is open here and closed once; PR_SET_NAME reads a static
                // NUL-terminated string; `release_r` is open (the wait_for_eof contract);
                // `_exit` ends the child without running Rust destructors or atexit hooks.
                unsafe {
                    libc::close(ready_w);
                    libc::prctl(libc::PR_SET_NAME, CHILD_COMM.as_ptr());
                    wait_for_eof(release_r);
                    libc::_exit(0);
                }
            }
            -1 => {
                errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                break;
            }
            _ => forked += 1,
        }
    }
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&forked.to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write reads `report.len()` bytes from a live local array; `ready_w` is open and
    // closed once; `release_r` is open (the wait_for_eof contract).
    unsafe {
        libc::write(ready_w, report.as_ptr().cast(), report.len());
        libc::close(ready_w);
        wait_for_eof(release_r);
    }
    // The children see the same EOF; reaping them leaves no zombies for init.
    // SAFETY: waitpid accepts a null status pointer (status not wanted).
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0
        || io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    // SAFETY: ends the forked process without unwinding into the Rust code it was forked from.
    unsafe { libc::_exit(0) }
}

/// Blocks in read() until `fd` reports EOF or an error other than EINTR.
///
/// # Safety
///
/// `fd` must be an open file descriptor that nothing else closes meanwhile.
unsafe fn wait_for_eof(fd: RawFd) {
    let mut byte = 0u8;
    loop {
        // SAFETY: read writes at most 1 byte into the live local `byte`; `fd` is open (the
        // caller's contract).
        let n = unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
        if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            return;
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Every task takes a pid and counts against threads-max; the bench does not raise kernel-wide
/// settings behind the operator's back, it names the one to raise. RLIMIT_NPROC is ours to
/// raise, up to its hard limit.
fn check_limits(children: u64) -> Result<()> {
    let loadavg = fs::read_to_string("/proc/loadavg")?;
    let tasks =
        total_tasks(&loadavg).with_context(|| format!("unexpected /proc/loadavg: {loadavg:?}"))?;
    let need = tasks + children + HEADROOM;
    for (sysctl, path) in [
        ("kernel.pid_max", "/proc/sys/kernel/pid_max"),
        ("kernel.threads-max", "/proc/sys/kernel/threads-max"),
    ] {
        let limit: u64 = fs::read_to_string(path)?.trim().parse()?;
        if limit < need {
            bail!(
                "{children} idle processes with {tasks} tasks running need {sysctl} >= {need} \
                 (it is {limit}): sysctl -w {sysctl}={need}"
            );
        }
    }
    let mut nproc = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NPROC, &mut nproc);
        if nproc.rlim_cur < need && nproc.rlim_cur < nproc.rlim_max {
            nproc.rlim_cur = nproc.rlim_max;
            libc::setrlimit(libc::RLIMIT_NPROC, &nproc);
        }
    }
    // Root with CAP_SYS_ADMIN or CAP_SYS_RESOURCE is exempt from the limit; fork reports it if not.
    if nproc.rlim_cur < need {
        eprintln!(
            "warning: ulimit -u is {} (< {need}); forks may fail",
            nproc.rlim_cur
        );
    }
    Ok(())
}

/// The 4th field of /proc/loadavg is `runnable/total` scheduling entities (tasks).
fn total_tasks(loadavg: &str) -> Option<u64> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_from_loadavg() {
        assert_eq!(total_tasks("0.08 0.03 0.01 2/187 4242\n"), Some(187));
        assert_eq!(total_tasks("0.08 0.03 0.01"), None);
        assert!(total_tasks(&fs::read_to_string("/proc/loadavg").unwrap()).is_some());
    }

    #[test]
    fn spawns_and_reaps() {
        let tree = IdleTree::spawn(3).unwrap();
        let children =
            fs::read_to_string(format!("/proc/{0}/task/{0}/children", tree.parent())).unwrap();
        assert_eq!(children.split_whitespace().count(), 3);
        let parent = tree.parent();
        tree.stop().unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{parent}")).exists());
    }
}
