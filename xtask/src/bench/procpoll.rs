//! The sampler procmon rejected: one pass over /proc reading every process's `stat` (CPU) and
//! `statm` (RSS), the least any /proc poller reads for those two figures. Timed here, in the
//! same run and over the same processes as the agent's task iterator.
//!
//! xtask runs as a debug build, where idiomatic iterator and string code costs several times
//! what it costs optimized (measured: 175 ms of user time per 10k-process pass, against 23 ms
//! in release). So the pass goes through libc (readdir, snprintf, memrchr, strtoull), whose
//! code is optimized whatever our profile: the time measured is the kernel's, as in a real,
//! optimized poller.
use std::{
    ffi::{c_char, CStr},
    hint::black_box,
    time::Instant,
};

use anyhow::{bail, Result};

pub struct Poll {
    /// Wall-clock time of each pass, in seconds.
    pub pass_seconds: Vec<f64>,
    /// CPU time of each pass (this thread's, user + system), in seconds.
    pub cpu_seconds: Vec<f64>,
    /// Processes read in the last pass.
    pub processes: usize,
}

pub fn measure(passes: usize) -> Result<Poll> {
    let mut poll = Poll {
        pass_seconds: Vec::new(),
        cpu_seconds: Vec::new(),
        processes: 0,
    };
    for _ in 0..passes {
        let (started, cpu) = (Instant::now(), thread_cpu_seconds());
        poll.processes = pass()?;
        poll.pass_seconds.push(started.elapsed().as_secs_f64());
        poll.cpu_seconds.push(thread_cpu_seconds() - cpu);
    }
    Ok(poll)
}

/// Reads and parses both files of every pid, as a poller would; returns how many it read.
fn pass() -> Result<usize> {
    // SAFETY: opendir/readdir/closedir on one stream owned by this function; d_name is a NUL-
    // terminated name valid until the next readdir.
    // Here: opendir reads a NUL-terminated static path.
    let dir = unsafe { libc::opendir(c"/proc".as_ptr()) };
    if dir.is_null() {
        bail!("cannot list /proc: {}", std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    let mut processes = 0;
    loop {
        // SAFETY: `dir` is the non-null stream opened above and not yet closed.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: `entry` is non-null and points at the dirent readdir returned, valid until
        // the next readdir on `dir`, which happens only after this iteration.
        let pid = unsafe { (*entry).d_name.as_ptr() };
        // Pids start with 1-9; everything else in /proc (self, sys, ...) does not.
        // SAFETY: d_name is NUL-terminated, so its first byte exists (and is still valid).
        if !(b'1'..=b'9').contains(&(unsafe { *pid } as u8)) {
            continue;
        }
        // None: the process exited during the pass, a race every poller has.
        let Some(cpu) = read(pid, c"stat", &mut buf).and_then(stat_ticks) else {
            continue;
        };
        let Some(rss) = read(pid, c"statm", &mut buf).and_then(statm_resident) else {
            continue;
        };
        // The figures are unused here, and must not be optimized away.
        black_box((cpu, rss));
        processes += 1;
    }
    // SAFETY: closes the stream opened above, once; `entry`/`pid` are not used after it.
    unsafe { libc::closedir(dir) };
    Ok(processes)
}

/// /proc/<pid>/<file> into `buf`, NUL-terminated for strtoull.
fn read<'a>(pid: *const c_char, file: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let mut path = [0 as c_char; 64];
    // SAFETY: snprintf bounds its output by the length given; pid and file are C strings; open,
    // read and close act on an fd owned here, read within the buffer's length minus the NUL.
    unsafe {
        let format = c"/proc/%s/%s".as_ptr();
        libc::snprintf(path.as_mut_ptr(), path.len(), format, pid, file.as_ptr());
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len() - 1);
        libc::close(fd);
        let n = usize::try_from(n).ok().filter(|&n| n > 0)?;
        buf[n] = 0;
        Some(&buf[..=n])
    }
}

/// utime + stime in clock ticks: fields 14 and 15 of proc(5), counted after the last `)`
/// (the comm may hold spaces and parentheses). `stat` ends with a NUL.
fn stat_ticks(stat: &[u8]) -> Option<u64> {
    // SAFETY: every pointer stays within `stat`, whose last byte is NUL, which also stops
    // strtoull.
    unsafe {
        let start = stat.as_ptr();
        let mut p = libc::memrchr(start.cast(), b')' as i32, stat.len()).cast::<u8>();
        // The 12th space after it precedes field 14 (the first after it precedes field 3).
        for _ in 0..12 {
            if p.is_null() {
                return None;
            }
            let left = stat.len() - (p.offset_from(start) as usize) - 1;
            p = libc::memchr(p.add(1).cast(), b' ' as i32, left).cast::<u8>();
        }
        if p.is_null() {
            return None;
        }
        let mut end: *mut c_char = std::ptr::null_mut();
        let utime = libc::strtoull(p.cast(), &mut end, 10);
        let stime = libc::strtoull(end, &mut end, 10);
        (*end == b' ' as c_char || *end == b'\n' as c_char).then_some(utime + stime)
    }
}

/// statm's second field: resident pages. `statm` ends with a NUL.
fn statm_resident(statm: &[u8]) -> Option<u64> {
    let mut end: *mut c_char = std::ptr::null_mut();
    // SAFETY: strtoull stops at the NUL that ends `statm` at the latest.
    unsafe {
        libc::strtoull(statm.as_ptr().cast(), &mut end, 10);
        let start = end;
        let resident = libc::strtoull(start, &mut end, 10);
        (end != start).then_some(resident)
    }
}

/// This thread's CPU time in ns resolution (the ticks of /proc/self/stat are too coarse for a
/// pass of tens of milliseconds).
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_statm_fields() {
        let stat = b"1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0\n\0";
        assert_eq!(stat_ticks(stat), Some(300));
        assert_eq!(stat_ticks(b"1234 (a) S 1 2 3\n\0"), None);
        assert_eq!(stat_ticks(b"no paren\0"), None);
        assert_eq!(statm_resident(b"2913 812 597 236 0 280 0\n\0"), Some(812));
        assert_eq!(statm_resident(b"2913\0"), None);
    }

    #[test]
    fn a_pass_reads_this_process() {
        let own = std::fs::read(format!("/proc/{}/stat", std::process::id())).unwrap();
        assert!(stat_ticks(&[own, vec![0]].concat()).is_some());
        let poll = measure(2).unwrap();
        assert!(poll.processes >= 1);
        assert_eq!(poll.pass_seconds.len(), 2);
        assert!(poll.cpu_seconds.iter().all(|&s| s >= 0.0));
    }
}
