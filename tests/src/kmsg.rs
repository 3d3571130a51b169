//! The kernel log (/dev/kmsg) as the OOM test's reference: what the kernel itself reported
//! about an OOM kill, read from a position taken before the test started.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// A reader positioned at the end of the kernel log when it was opened.
pub struct Kmsg(File);

impl Kmsg {
    pub fn open_at_end() -> Kmsg {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .unwrap_or_else(|e| panic!("opening /dev/kmsg: {e}"));
        f.seek(SeekFrom::End(0))
            .expect("seeking /dev/kmsg to its end");
        Kmsg(f)
    }

    /// The messages logged since the last call (each read(2) returns one record:
    /// `prio,seq,time,flags;message`).
    pub fn read_new(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let record = String::from_utf8_lossy(&buf[..n]);
                    let message = record.split_once(';').map_or(&*record, |(_, m)| m);
                    out.push(message.lines().next().unwrap_or("").to_string());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // The ring overwrote records we had not read yet: go on with what is left.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) => panic!("reading /dev/kmsg: {e}"),
            }
        }
        out
    }
}

/// The kernel's "Killed process" report of one OOM kill.
#[derive(Debug, Clone, PartialEq)]
pub struct KilledProcess {
    pub pid: u32,
    pub comm: String,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub uid: u32,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
}

/// Parses `Memory cgroup out of memory: Killed process 123 (comm) total-vm:1kB,
/// anon-rss:2kB, file-rss:3kB, shmem-rss:4kB, UID:0 pgtables:5kB oom_score_adj:500`.
pub fn parse_killed(line: &str) -> Option<KilledProcess> {
    let rest = &line[line.find("Killed process ")? + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(" (")?;
    let (comm, rest) = rest.rsplit_once(") ")?;
    let field = |name: &str| -> Option<&str> {
        let start = rest.find(name)? + name.len();
        let value = &rest[start..];
        let end = value
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(value.len());
        Some(&value[..end])
    };
    Some(KilledProcess {
        pid: pid.parse().ok()?,
        comm: comm.to_string(),
        total_vm_kb: field("total-vm:")?.parse().ok()?,
        anon_rss_kb: field("anon-rss:")?.parse().ok()?,
        file_rss_kb: field("file-rss:")?.parse().ok()?,
        shmem_rss_kb: field("shmem-rss:")?.parse().ok()?,
        uid: field("UID:")?.parse().ok()?,
        pgtables_kb: field("pgtables:")?.parse().ok()?,
        oom_score_adj: field("oom_score_adj:")?.parse().ok()?,
    })
}

/// The `key=value` fields of the kernel's `oom-kill:constraint=...,oom_memcg=...` line.
pub fn parse_oom_kill_summary(line: &str) -> Option<Vec<(String, String)>> {
    let rest = &line[line.find("oom-kill:")? + "oom-kill:".len()..];
    Some(
        rest.split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_oom_lines() {
        let k = parse_killed("Memory cgroup out of memory: Killed process 4242 (oom (x) tree) total-vm:70640kB, anon-rss:64512kB, file-rss:1280kB, shmem-rss:0kB, UID:0 pgtables:176kB oom_score_adj:500").unwrap();
        assert_eq!(
            (
                k.pid,
                k.comm.as_str(),
                k.anon_rss_kb,
                k.file_rss_kb,
                k.oom_score_adj
            ),
            (4242, "oom (x) tree", 64512, 1280, 500)
        );
        assert_eq!((k.total_vm_kb, k.pgtables_kb, k.uid), (70640, 176, 0));
        let s = parse_oom_kill_summary("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a/b,task=x,pid=1,uid=0").unwrap();
        assert!(s.contains(&("oom_memcg".into(), "/a".into())));
        assert!(s.contains(&("task_memcg".into(), "/a/b".into())));
    }
}
