//! The ring-buffer record decoder (procmon-user/src/record.rs) and what the agent derives
//! from every record, on arbitrary bytes. The probes are ours, but an agent and probes of
//! different builds, or a bug in either, must give a counted rejection, never a panic or a
//! misread record.
#![no_main]

use std::mem::size_of;

use libfuzzer_sys::fuzz_target;
use procmon_common::{cgroup_flags, kind, CgroupPath, RecordHeader, ABI_VERSION};
use procmon_user::{
    comm::Comm,
    record::{cgroup_path, decode, peak_rss_bytes, split_cpu, DecodeError, Record},
};

/// The bytes of a record, as the probes wrote them.
fn bytes_of<T: Copy>(record: &T) -> &[u8] {
    // SAFETY: T is a procmon-common record: repr(C), explicit padding (size-asserted), so
    // every byte is initialized; the slice borrows `record`.
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
}

fn check_path(p: &CgroupPath) {
    let Some(text) = cgroup_path(p) else {
        assert_eq!(p.flags & cgroup_flags::KNOWN, 0);
        return;
    };
    assert!(p.flags & cgroup_flags::KNOWN != 0);
    assert_eq!(
        text.starts_with("..."),
        p.flags & cgroup_flags::TRUNCATED != 0,
        "{text:?}"
    );
    procmon_fuzz::check_identity(&text);
}

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(record) => {
            // A decoded record is exactly the bytes it came from, not a reinterpretation.
            let bytes = match &record {
                Record::Fork(r) => bytes_of(r),
                Record::Exec(r) => bytes_of(r),
                Record::Exit(r) => bytes_of(r),
                Record::Release(r) => bytes_of(r),
                Record::OomKill(r) => bytes_of(r.as_ref()),
                Record::Cgroup(r) => bytes_of(r.as_ref()),
            };
            assert_eq!(bytes, &data[..bytes.len()]);
            let header = header_of(data);
            assert_eq!(header.size as usize, bytes.len());
            assert_eq!(header.version, ABI_VERSION);
            match &record {
                Record::Fork(r) => _ = Comm::from_raw(r.comm).to_lossy(),
                Record::Exec(r) => _ = Comm::from_raw(r.comm).to_lossy(),
                Record::Exit(r) => {
                    peak_rss_bytes(r);
                    let (user, system) = split_cpu(r.runtime_ns, r.utime_ns, r.stime_ns);
                    assert_eq!(user.checked_add(system), Some(r.runtime_ns));
                }
                Record::Release(r) => {
                    let (user, system) = split_cpu(r.runtime_ns, r.utime_ns, r.stime_ns);
                    assert_eq!(user.checked_add(system), Some(r.runtime_ns));
                }
                Record::OomKill(r) => {
                    check_path(&r.cgroup);
                    check_path(&r.memcg);
                }
                Record::Cgroup(r) => check_path(&r.path),
            }
        }
        Err(DecodeError::Truncated(n)) => {
            assert_eq!(n, data.len());
            assert!(n < size_of::<RecordHeader>());
        }
        Err(DecodeError::Version(v)) => {
            assert_ne!(v, ABI_VERSION);
            assert_eq!(header_of(data).version, v);
        }
        Err(DecodeError::UnknownKind(k)) => {
            assert!(![
                kind::FORK,
                kind::EXEC,
                kind::EXIT,
                kind::RELEASE,
                kind::OOM_KILL,
                kind::CGROUP
            ]
            .contains(&k));
        }
        Err(DecodeError::Size {
            claimed,
            actual,
            expected,
            ..
        }) => {
            assert_eq!(actual, data.len());
            assert!(claimed as usize != expected || actual < expected);
        }
    }
});

/// The header at the start of `data`, which must be long enough to hold one.
fn header_of(data: &[u8]) -> RecordHeader {
    assert!(data.len() >= size_of::<RecordHeader>());
    // SAFETY: length checked above; RecordHeader is plain integers.
    unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) }
}
