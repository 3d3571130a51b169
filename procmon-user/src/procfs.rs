//! Snapshots of /proc: seeding the tree at start and reconciling it later, so processes that
//! predate the agent, or whose events were lost, are still known and missed exits do not leak.

use std::{fs, io, path::Path, sync::OnceLock};

use procmon_common::COMM_LEN;

use crate::comm::Comm;

pub const PROC: &str = "/proc";

/// What the tree needs to know about a process from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSnapshot {
    pub pid: u32,
    pub ppid: u32,
    /// Boottime ns, at clock-tick precision (what /proc/<pid>/stat offers).
    pub start_ns: u64,
    pub comm: Comm,
}

/// The kernel's page size: the unit of its RSS counters.
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64)
}

/// Nanoseconds per USER_HZ tick, the unit of /proc start times.
pub fn tick_ns() -> u64 {
    static TICK: OnceLock<u64> = OnceLock::new();
    *TICK.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        1_000_000_000 / if hz > 0 { hz as u64 } else { 100 }
    })
}

/// Every live (non-zombie) process under `proc_root`. Processes that vanish mid-scan are
/// skipped, not errors.
pub fn scan(proc_root: &Path) -> io::Result<Vec<ProcSnapshot>> {
    let mut out = Vec::with_capacity(1024);
    for entry in fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(snapshot) = read_process(proc_root, pid) {
            out.push(snapshot);
        }
    }
    Ok(out)
}

/// One process, or None if it is gone or a zombie (its exit has happened already).
pub fn read_process(proc_root: &Path, pid: u32) -> Option<ProcSnapshot> {
    let stat = fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&stat)
}

/// The executable of `pid` if it is still the process that started at `start_ns` (boottime
/// ns); None when it is gone, a zombie, a kernel thread, or the pid was reused.
pub fn read_exe(proc_root: &Path, pid: u32, start_ns: u64) -> Option<String> {
    let p = read_process(proc_root, pid)?;
    if p.start_ns / tick_ns() != start_ns / tick_ns() {
        return None;
    }
    let exe = fs::read_link(proc_root.join(pid.to_string()).join("exe")).ok()?;
    Some(exe.to_string_lossy().into_owned())
}

/// What the agent needs from a process's flags (`/proc/<pid>/stat`, 9th field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskFlags {
    /// PF_KTHREAD. Comm cannot tell (a kworker renames itself after its work; anyone may
    /// call itself `kworker/0`), nor can the parent alone (kthreadd also parents usermode
    /// helpers).
    pub kernel_thread: bool,
    /// PF_EXITING: its /proc/<pid>/cgroup reads `/` on v1 hierarchies from now on
    /// (proc_cgroup_show), which is not where it ran.
    pub exiting: bool,
}

/// `pid`'s flags, or None if it is gone.
pub fn read_flags(proc_root: &Path, pid: u32) -> Option<TaskFlags> {
    let flags = stat_flags(&fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?)?;
    Some(TaskFlags {
        kernel_thread: flags & PF_KTHREAD != 0,
        exiting: flags & PF_EXITING != 0,
    })
}

/// include/linux/sched.h; both stable since 2.6.
const PF_EXITING: u64 = 0x0000_0004;
const PF_KTHREAD: u64 = 0x0020_0000;

/// The `flags` field of `/proc/<pid>/stat` (the 9th).
pub fn stat_flags(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    // After comm: state(0) ppid(1) pgrp(2) session(3) tty_nr(4) tpgid(5) flags(6).
    rest.split_ascii_whitespace().nth(6)?.parse().ok()
}

/// Parses `/proc/<pid>/stat`. The comm field may hold spaces and parentheses, so it spans
/// from the first '(' to the last ')'.
pub fn parse_stat(stat: &[u8]) -> Option<ProcSnapshot> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let pid = std::str::from_utf8(&stat[..open])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    // Fields after comm, 0-based: state(0) ppid(1) ... starttime(19).
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let ppid = fields.get(1)?.parse().ok()?;
    let start_ticks: u64 = fields.get(19)?.parse().ok()?;
    let name = &stat[open + 1..close];
    Some(ProcSnapshot {
        pid,
        ppid,
        // A start time past u64 nanoseconds (584 years of uptime) is not a process.
        start_ns: start_ticks.checked_mul(tick_ns())?,
        comm: Comm::from_bytes(&name[..name.len().min(COMM_LEN - 1)]),
    })
}

/// The cgroup that best names what a process belongs to, from `/proc/<pid>/cgroup`.
pub fn read_cgroup(proc_root: &Path, pid: u32) -> Option<String> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    Some(parse_cgroup(&text))
}

/// Prefers the unified (v2) path; on hybrid hosts where everything sits in the v2 root, the
/// v1 `memory` path (what OOM kills are constrained by), then systemd's; else "/".
pub fn parse_cgroup(text: &str) -> String {
    let mut v2 = None;
    let mut memory = None;
    let mut systemd = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path == "/" {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            memory = Some(path);
        } else if controllers == "name=systemd" {
            systemd = Some(path);
        }
    }
    v2.or(memory).or(systemd).unwrap_or("/").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str, state: &str) -> Vec<u8> {
        format!("4242 ({comm}) {state} 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0").into_bytes()
    }

    #[test]
    fn parses_hostile_comm() {
        let s = parse_stat(&stat_line("a) (b c)", "S")).unwrap();
        assert_eq!((s.pid, s.ppid), (4242, 17));
        assert_eq!(s.comm.as_bytes(), b"a) (b c)");
        assert_eq!(s.start_ns, 123456 * tick_ns());
    }

    #[test]
    fn skips_zombies_and_garbage() {
        assert!(parse_stat(&stat_line("z", "Z")).is_none());
        assert!(parse_stat(b"12 (x").is_none());
        assert!(parse_stat(b"").is_none());
    }

    /// Found by the procfs_stat fuzz target: a huge start time overflowed the conversion
    /// to nanoseconds.
    #[test]
    fn rejects_start_times_past_u64_nanoseconds() {
        let line = String::from_utf8(stat_line("x", "S"))
            .unwrap()
            .replace(" 123456 ", " 18446744073709551615 ");
        assert!(parse_stat(line.as_bytes()).is_none());
    }

    #[test]
    fn picks_the_most_specific_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/c177\n0::/\n";
        assert_eq!(parse_cgroup(hybrid), "/process_api/c177");
        let unified = "0::/system.slice/nginx.service\n";
        assert_eq!(parse_cgroup(unified), "/system.slice/nginx.service");
        assert_eq!(parse_cgroup("0::/\n"), "/");
        assert_eq!(parse_cgroup("garbage"), "/");
    }

    #[test]
    fn tells_kernel_threads_and_exiting_tasks_by_flags() {
        assert_eq!(stat_flags(&stat_line("a) (b", "S")), Some(4194560));
        let proc = Path::new("/proc");
        assert!(read_flags(proc, 2).unwrap().kernel_thread, "kthreadd");
        let me = read_flags(proc, std::process::id()).unwrap();
        assert!(!me.kernel_thread && !me.exiting, "{me:?}");
        assert_eq!(read_flags(proc, u32::MAX), None, "no such pid");
        // A zombie: its cgroup reads `/` on v1 hierarchies, and PF_EXITING says why.
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(0) };
        }
        assert!(child > 0, "fork failed");
        let zombie = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            fs::read(proc.join(child.to_string()).join("stat"))
                .is_ok_and(|s| s.windows(3).any(|w| w == b") Z"))
        });
        let flags = read_flags(proc, child as u32);
        // SAFETY: reaps our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        assert!(zombie, "the child never became a zombie");
        assert!(flags.is_some_and(|f| f.exiting), "{flags:?}");
    }

    #[test]
    fn scans_this_machine() {
        let me = std::process::id();
        let all = scan(Path::new("/proc")).unwrap();
        assert!(all.iter().any(|p| p.pid == me), "own pid {me} in the scan");
    }
}
