//! Decoding of ring-buffer records (procmon-common layouts) with length and version checks.
//!
//! The kernel writes records at 8-byte-aligned ring-buffer offsets, but nothing here assumes
//! alignment: every struct is copied out with `read_unaligned` after the size check.

use std::mem::size_of;

use crate::{comm::c_str, procfs};
use procmon_common::{
    cgroup_flags, kind, CgroupPath, CgroupRecord, ExecRecord, ExitRecord, ForkRecord,
    OomKillRecord, RecordHeader, ReleaseRecord, ABI_VERSION,
};

/// The `kind` label of `procmon_events_total`, indexed like [`Record::index`].
pub const RECORD_KINDS: [&str; 6] = ["fork", "exec", "exit", "oom_kill", "cgroup", "release"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Fork(ForkRecord),
    Exec(ExecRecord),
    Exit(ExitRecord),
    /// A process's leader was freed: its final CPU (release.rs).
    Release(ReleaseRecord),
    // Boxed: they carry 1-2 KiB of cgroup names and are rare; the hot kinds stay small.
    OomKill(Box<OomKillRecord>),
    Cgroup(Box<CgroupRecord>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Truncated(usize),
    #[error(
        "record has ABI version {0}, expected {ABI_VERSION}: the agent and its probes disagree"
    )]
    Version(u16),
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("record kind {kind} claims {claimed} bytes and has {actual}, expected {expected}")]
    Size {
        kind: u16,
        claimed: u32,
        actual: usize,
        expected: usize,
    },
}

impl DecodeError {
    /// The `reason` label of `procmon_events_lost_total` for a rejected record, indexed like
    /// [`DecodeError::index`].
    pub const REASONS: [&'static str; 4] =
        ["truncated", "abi_mismatch", "unknown_kind", "size_mismatch"];

    /// Position of the error's reason in [`DecodeError::REASONS`].
    pub fn index(&self) -> usize {
        match self {
            DecodeError::Truncated(_) => 0,
            DecodeError::Version(_) => 1,
            DecodeError::UnknownKind(_) => 2,
            DecodeError::Size { .. } => 3,
        }
    }
}

impl Record {
    /// Position of the record's kind in [`RECORD_KINDS`].
    pub fn index(&self) -> usize {
        match self {
            Record::Fork(_) => 0,
            Record::Exec(_) => 1,
            Record::Exit(_) => 2,
            Record::OomKill(_) => 3,
            Record::Cgroup(_) => 4,
            Record::Release(_) => 5,
        }
    }

    /// Boottime of the event, ns.
    pub fn time_ns(&self) -> u64 {
        match self {
            Record::Fork(r) => r.time_ns,
            Record::Exec(r) => r.time_ns,
            Record::Exit(r) => r.time_ns,
            Record::Release(r) => r.time_ns,
            Record::OomKill(r) => r.time_ns,
            Record::Cgroup(r) => r.time_ns,
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() < size_of::<RecordHeader>() {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    // SAFETY: length checked above; RecordHeader is plain integers.
    let header: RecordHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if header.version != ABI_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    match header.kind {
        kind::FORK => read(header, bytes).map(Record::Fork),
        kind::EXEC => read(header, bytes).map(Record::Exec),
        kind::EXIT => read(header, bytes).map(Record::Exit),
        kind::OOM_KILL => read(header, bytes).map(|r| Record::OomKill(Box::new(r))),
        kind::CGROUP => read(header, bytes).map(|r| Record::Cgroup(Box::new(r))),
        kind::RELEASE => read(header, bytes).map(Record::Release),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Copies a `T` out of `bytes` once the header's size and the buffer's length both match it.
fn read<T: Copy>(header: RecordHeader, bytes: &[u8]) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if header.size as usize != expected || bytes.len() < expected {
        return Err(DecodeError::Size {
            kind: header.kind,
            claimed: header.size,
            actual: bytes.len(),
            expected,
        });
    }
    // SAFETY: T is one of the procmon-common records (integers and byte arrays, every bit
    // pattern valid) and `bytes` holds at least size_of::<T>() bytes.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// A kernel-read cgroup path as text: `/a/b` (`/` for the root cgroup), `.../b` when only
/// the innermost components were kept, `None` when it was not read. Names are not
/// necessarily UTF-8: invalid bytes become U+FFFD.
pub fn cgroup_path(p: &CgroupPath) -> Option<String> {
    if p.flags & cgroup_flags::KNOWN == 0 {
        return None;
    }
    let depth = (p.depth as usize).min(p.names.len());
    let mut out = String::new();
    if p.flags & cgroup_flags::TRUNCATED != 0 {
        out.push_str("...");
    }
    for name in p.names[..depth].iter().rev() {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(c_str(name)));
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// What getrusage's ru_maxrss reports at reap: the larger of the high-water mark of images
/// replaced by exec and that of the final address space (its hiwater counter is only
/// updated lazily, so the current RSS counts too). Saturating: counters read from a task
/// being torn down can be garbage, and must not panic or wrap to a small figure.
pub fn peak_rss_bytes(r: &ExitRecord) -> u64 {
    let current = r
        .rss_file_pages
        .saturating_add(r.rss_anon_pages)
        .saturating_add(r.rss_shmem_pages);
    let pages = r.hiwater_pages.max(current);
    r.maxrss_kb
        .saturating_mul(1024)
        .max(pages.saturating_mul(procfs::page_size()))
}

/// Splits the exact scheduler runtime into user and system time in the ratio of the
/// tick-sampled utime/stime, as the kernel's cputime_adjust() does for getrusage().
pub fn split_cpu(runtime_ns: u64, utime_ns: u64, stime_ns: u64) -> (u64, u64) {
    if stime_ns == 0 {
        return (runtime_ns, 0);
    }
    if utime_ns == 0 {
        return (0, runtime_ns);
    }
    let user =
        (runtime_ns as u128 * utime_ns as u128 / (utime_ns as u128 + stime_ns as u128)) as u64;
    (user, runtime_ns - user)
}

/// Test support: the exact bytes the probes write for a record.
#[cfg(test)]
pub fn encode<T: Copy>(record: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) record without implicit padding (size-asserted in
    // procmon-common), so all its bytes are initialized.
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use procmon_common::{exit_flags, COMM_LEN, FILENAME_LEN};

    pub fn comm(s: &[u8]) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s);
        c
    }

    pub fn fork(pid: u32, ppid: u32, start_ns: u64) -> ForkRecord {
        ForkRecord {
            header: RecordHeader::new(kind::FORK, size_of::<ForkRecord>()),
            time_ns: start_ns,
            start_ns,
            parent_start_ns: 1,
            pid,
            ppid,
            flags: 0,
            _pad: 0,
            comm: comm(b"parent"),
        }
    }

    pub fn exec(pid: u32, ppid: u32, start_ns: u64, name: &[u8], path: &[u8]) -> ExecRecord {
        let mut filename = [0u8; FILENAME_LEN];
        filename[..path.len()].copy_from_slice(path);
        ExecRecord {
            header: RecordHeader::new(kind::EXEC, size_of::<ExecRecord>()),
            time_ns: start_ns + 1_000,
            start_ns,
            parent_start_ns: 1,
            pid,
            ppid,
            old_tid: pid,
            _pad: 0,
            comm: comm(name),
            filename,
        }
    }

    pub fn exit(pid: u32, ppid: u32, start_ns: u64, status: u32) -> ExitRecord {
        ExitRecord {
            header: RecordHeader::new(kind::EXIT, size_of::<ExitRecord>()),
            time_ns: start_ns + 2_000_000,
            start_ns,
            parent_start_ns: 1,
            utime_ns: 3_000_000,
            stime_ns: 1_000_000,
            runtime_ns: 2_000_000,
            maxrss_kb: 1024,
            hiwater_pages: 0,
            rss_file_pages: 0,
            rss_anon_pages: 0,
            rss_shmem_pages: 0,
            pid,
            tid: pid,
            ppid,
            exit_status: status,
            flags: exit_flags::GROUP_DEAD | exit_flags::LEADER,
            _pad: 0,
            comm: comm(b"child"),
        }
    }

    /// The release record of `exit`'s process, `extra_ns` of CPU later.
    pub fn release(exit: &ExitRecord, extra_ns: u64) -> ReleaseRecord {
        ReleaseRecord {
            header: RecordHeader::new(kind::RELEASE, size_of::<ReleaseRecord>()),
            pid: exit.pid,
            exit_status: exit.exit_status,
            time_ns: exit.time_ns + 1_000_000,
            start_ns: exit.start_ns,
            utime_ns: exit.utime_ns,
            stime_ns: exit.stime_ns + extra_ns,
            runtime_ns: exit.runtime_ns + extra_ns,
            maxrss_kb: exit.maxrss_kb,
        }
    }

    pub fn path(components: &[&str]) -> CgroupPath {
        let mut p = CgroupPath {
            depth: components.len() as u32,
            flags: cgroup_flags::KNOWN,
            names: [[0; procmon_common::CGROUP_NAME_LEN]; procmon_common::CGROUP_DEPTH],
        };
        // Stored innermost first, as the probe walks up.
        for (slot, name) in p.names.iter_mut().zip(components.iter().rev()) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        p
    }

    pub fn oom_kill(pid: u32, ppid: u32, start_ns: u64) -> OomKillRecord {
        OomKillRecord {
            header: RecordHeader::new(kind::OOM_KILL, size_of::<OomKillRecord>()),
            time_ns: start_ns + 1_000_000,
            start_ns,
            parent_start_ns: 1,
            total_vm_pages: 70_000,
            rss_anon_pages: 16_000,
            rss_file_pages: 300,
            rss_shmem_pages: 2,
            pgtables_bytes: 200_704,
            pid,
            tid: pid,
            ppid,
            uid: 1000,
            oom_score_adj: 500,
            constraint: 3,
            flags: procmon_common::oom_flags::CONTEXT
                | procmon_common::oom_flags::MEMCG
                | procmon_common::oom_flags::TASK,
            _pad: 0,
            comm: comm(b"hog"),
            cgroup: path(&["system.slice", "hog.service"]),
            memcg: path(&["system.slice"]),
        }
    }

    pub fn cgroup(pid: u32, start_ns: u64, components: &[&str]) -> CgroupRecord {
        CgroupRecord {
            header: RecordHeader::new(kind::CGROUP, size_of::<CgroupRecord>()),
            time_ns: start_ns + 1_000_000,
            start_ns,
            pid,
            _pad: 0,
            path: path(components),
        }
    }

    #[test]
    fn round_trips_oom_and_cgroup_records() {
        let o = oom_kill(10, 1, 5);
        let c = cgroup(10, 5, &["a", "b"]);
        assert_eq!(decode(&encode(&o)), Ok(Record::OomKill(Box::new(o))));
        assert_eq!(decode(&encode(&c)), Ok(Record::Cgroup(Box::new(c))));
        let bytes = encode(&o);
        for cut in [4, 100, bytes.len() - 1] {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "accepted an OOM record cut to {cut} bytes"
            );
        }
        // A cgroup-sized buffer claiming to be an OOM record is rejected, not misread.
        let mut c = cgroup(10, 5, &["a"]);
        c.header.kind = kind::OOM_KILL;
        assert!(matches!(decode(&encode(&c)), Err(DecodeError::Size { .. })));
    }

    #[test]
    fn renders_cgroup_paths() {
        assert_eq!(
            cgroup_path(&path(&["system.slice", "nginx.service"])).as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(cgroup_path(&path(&[])).as_deref(), Some("/"));
        let mut p = path(&["b", "c"]);
        p.flags |= cgroup_flags::TRUNCATED;
        assert_eq!(cgroup_path(&p).as_deref(), Some(".../b/c"));
        p.flags = 0;
        assert_eq!(cgroup_path(&p), None);
        // A lying depth is clamped, never out of bounds.
        let mut p = path(&["x"]);
        p.depth = 1000;
        assert!(cgroup_path(&p).unwrap().ends_with("/x"));
    }

    #[test]
    fn round_trips_every_kind() {
        let f = fork(10, 1, 5);
        let e = exec(10, 1, 5, b"true", b"/usr/bin/true");
        let x = exit(10, 1, 5, 3 << 8);
        assert_eq!(decode(&encode(&f)), Ok(Record::Fork(f)));
        assert_eq!(decode(&encode(&e)), Ok(Record::Exec(e)));
        assert_eq!(decode(&encode(&x)), Ok(Record::Exit(x)));
    }

    #[test]
    fn decodes_from_unaligned_buffers() {
        let x = exit(10, 1, 5, 0);
        let mut buf = vec![0u8];
        buf.extend(encode(&x));
        assert_eq!(decode(&buf[1..]), Ok(Record::Exit(x)));
    }

    #[test]
    fn rejects_truncated_records() {
        let bytes = encode(&exit(10, 1, 5, 0));
        assert_eq!(decode(&bytes[..4]), Err(DecodeError::Truncated(4)));
        assert!(matches!(
            decode(&bytes[..50]),
            Err(DecodeError::Size { actual: 50, .. })
        ));
    }

    #[test]
    fn rejects_unknown_kinds_versions_and_lying_sizes() {
        let mut f = fork(10, 1, 5);
        f.header.kind = 99;
        assert_eq!(decode(&encode(&f)), Err(DecodeError::UnknownKind(99)));
        let mut f = fork(10, 1, 5);
        f.header.version = ABI_VERSION + 1;
        assert_eq!(
            decode(&encode(&f)),
            Err(DecodeError::Version(ABI_VERSION + 1))
        );
        let mut f = fork(10, 1, 5);
        f.header.size = 8;
        assert!(matches!(
            decode(&encode(&f)),
            Err(DecodeError::Size { claimed: 8, .. })
        ));
        // A fork header on exit-sized bytes must not be read as an exit.
        let mut x = exit(10, 1, 5, 0);
        x.header.kind = kind::FORK;
        assert!(matches!(decode(&encode(&x)), Err(DecodeError::Size { .. })));
    }

    /// The record_decoder fuzz target starts from these records (fuzz/seeds/record_decoder),
    /// one of each kind as the probes write them: a seed the decoder rejects would leave the
    /// fuzzer guessing the layout. record_ingest starts from all of them in one sequence,
    /// each after its length (u16, little-endian). After an ABI change, `PROCMON_UPDATE_SEEDS=1 cargo test -p
    /// procmon-user fuzz_seeds` rewrites them.
    #[test]
    fn fuzz_seeds_are_current_records() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/record_decoder");
        let seeds = [
            ("fork", encode(&fork(4242, 1, 5_000_000_000))),
            (
                "exec",
                encode(&exec(4242, 1, 5_000_000_000, b"make", b"/usr/bin/make")),
            ),
            ("exit", encode(&exit(4242, 1, 5_000_000_000, 2 << 8))),
            ("crash", encode(&exit(4243, 4242, 6_000_000_000, 11 | 0x80))),
            (
                "release",
                encode(&release(&exit(4242, 1, 5_000_000_000, 2 << 8), 40_000)),
            ),
            ("oom_kill", encode(&oom_kill(4244, 4242, 7_000_000_000))),
            (
                "cgroup",
                encode(&cgroup(
                    4245,
                    8_000_000_000,
                    &[
                        "kubepods.slice",
                        "kubepods-burstable.slice",
                        "kubepods-burstable-pod0b2c6a3e_8f1d_4e5a_9c7b_1d2e3f4a5b6c.slice",
                        "cri-containerd-4f7a1c0e9b2d3a5f6e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f.scope",
                    ],
                )),
            ),
        ];
        let update = std::env::var_os("PROCMON_UPDATE_SEEDS").is_some();
        let mut sequence = Vec::new();
        for (_, bytes) in &seeds {
            sequence.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            sequence.extend_from_slice(bytes);
        }
        let seeds = seeds
            .into_iter()
            .map(|(name, bytes)| (dir.join(name), bytes))
            .chain([(dir.join("../record_ingest/lifecycle"), sequence)]);
        for (path, bytes) in seeds {
            let name = path.display();
            assert!(
                path.ends_with("lifecycle") || decode(&bytes).is_ok(),
                "{name}"
            );
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
                continue;
            }
            let kept = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{name}: {e}; run with PROCMON_UPDATE_SEEDS=1"));
            assert!(
                kept == bytes,
                "{name} is not the current record: run with PROCMON_UPDATE_SEEDS=1"
            );
        }
    }

    /// Found by the record_decoder fuzz target: counters near u64::MAX overflowed.
    #[test]
    fn peak_rss_saturates_on_garbage_counters() {
        let mut x = exit(10, 1, 5, 0);
        x.maxrss_kb = u64::MAX / 2;
        assert_eq!(peak_rss_bytes(&x), u64::MAX);
        let mut x = exit(10, 1, 5, 0);
        (x.rss_file_pages, x.rss_anon_pages) = (u64::MAX, 1);
        assert_eq!(peak_rss_bytes(&x), u64::MAX);
    }

    #[test]
    fn c_str_stops_at_nul() {
        assert_eq!(c_str(b"ab\0cd"), b"ab");
        assert_eq!(c_str(b"abcd"), b"abcd");
    }
}
