//! `/proc/<pid>/stat` (procmon-user/src/procfs.rs `parse_stat`, `stat_flags`): its comm is
//! chosen by the process itself (prctl(PR_SET_NAME)), spaces and parentheses included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procmon_user::procfs::{parse_stat, stat_flags, tick_ns, ProcSnapshot};

/// A stat line as the kernel writes it (fs/proc/array.c), with `flags` and `starttime`.
fn line(pid: u32, comm: &[u8], ppid: u32, flags: u64, start_ticks: u64) -> Vec<u8> {
    let mut out = format!("{pid} (").into_bytes();
    out.extend_from_slice(comm);
    out.extend_from_slice(
        format!(
            ") S {ppid} {pid} {pid} 0 -1 {flags} 100 0 0 0 1 2 0 0 20 0 1 0 {start_ticks} \
             1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        )
        .as_bytes(),
    );
    out
}

fuzz_target!(|data: &[u8]| {
    if let Some(s) = parse_stat(data) {
        assert!(s.comm.as_bytes().len() < procmon_common::COMM_LEN, "{s:?}");
        assert_eq!(s.start_ns % tick_ns(), 0, "{s:?}");
        // What was read, written back as the kernel would, reads the same.
        let again = line(s.pid, s.comm.as_bytes(), s.ppid, 0, s.start_ns / tick_ns());
        let parsed: Option<ProcSnapshot> = parse_stat(&again);
        assert_eq!(
            parsed
                .as_ref()
                .map(|p| (p.pid, p.ppid, p.start_ns, p.comm.as_bytes())),
            Some((s.pid, s.ppid, s.start_ns, s.comm.as_bytes())),
            "{:?}",
            String::from_utf8_lossy(&again)
        );
    }
    if let Some(flags) = stat_flags(data) {
        let comm = &data[..data.len().min(15)];
        assert_eq!(stat_flags(&line(1, comm, 0, flags, 0)), Some(flags));
    }
});
