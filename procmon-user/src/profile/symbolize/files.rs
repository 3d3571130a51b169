//! Which file, and where in it, a process's address falls: the key of the file-offset frame
//! cache, so that what one process's lookups parsed serves every other process that maps the
//! same file (a watched parent's forked children, every process's libc) without keeping
//! blazesym's parsed copy of the file.
//!
//! A file is named by its device, inode and change time. The inode alone is not enough: a
//! binary rebuilt or upgraded (written elsewhere, renamed over) can get the inode number of
//! the file it replaced once that one is gone, but never the same ctime, which only the
//! kernel sets (to the time of creation, rename or change).

use std::{fs, os::unix::fs::MetadataExt};

/// One file's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
    ctime_sec: i64,
    ctime_nsec: i64,
}

/// A file-backed mapping of `/proc/PID/maps`.
#[derive(Debug, PartialEq)]
struct Mapping<'a> {
    start: u64,
    end: u64,
    pgoff: u64,
    ino: u64,
    path: &'a str,
}

/// Parses one line of `/proc/PID/maps`; only mappings of a file by absolute path (not
/// anonymous memory, `[vdso]`, `[heap]`, ...).
fn parse_line(line: &str) -> Option<Mapping<'_>> {
    let mut rest = line;
    let mut field = || {
        let s = rest.trim_start_matches(' ');
        let end = s.find(' ').unwrap_or(s.len());
        let (f, r) = s.split_at(end);
        rest = r;
        f
    };
    let (start, end) = field().split_once('-')?;
    let _perms = field();
    let pgoff = u64::from_str_radix(field(), 16).ok()?;
    let _dev = field();
    let ino: u64 = field().parse().ok()?;
    let path = rest.trim_start_matches(' ');
    if ino == 0 || !path.starts_with('/') {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        pgoff,
        ino,
        path,
    })
}

/// For each address, the file it falls in and its offset there, or `None` (not in a file
/// mapping, the process is gone, or the file cannot be identified: deleted, or replaced at
/// its path since it was mapped). One read of the maps; one `stat` per file hit.
pub(super) fn locate(pid: u32, addrs: &[u64], map_files: bool) -> Vec<Option<(FileId, u64)>> {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return vec![None; addrs.len()];
    };
    let mappings: Vec<Mapping<'_>> = maps.lines().filter_map(parse_line).collect();
    // Identities of the mappings used, by index, looked up once each.
    let mut ids: Vec<Option<Option<FileId>>> = vec![None; mappings.len()];
    addrs
        .iter()
        .map(|&addr| {
            // Mappings are listed in address order and do not overlap.
            let i = mappings
                .partition_point(|m| m.start <= addr)
                .checked_sub(1)?;
            let m = &mappings[i];
            if addr >= m.end {
                return None;
            }
            let id = *ids[i].get_or_insert_with(|| identify(pid, m, map_files));
            Some((id?, addr - m.start + m.pgoff))
        })
        .collect()
}

fn identify(pid: u32, m: &Mapping<'_>, map_files: bool) -> Option<FileId> {
    // map_files/ reaches the mapped file itself (also when deleted or in another mount
    // namespace); the path through the process's root may name a newer file.
    let meta = if map_files {
        fs::metadata(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))
    } else {
        fs::metadata(format!("/proc/{pid}/root{}", m.path))
    }
    .ok()?;
    (meta.ino() == m.ino).then(|| FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        ctime_sec: meta.ctime(),
        ctime_nsec: meta.ctime_nsec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_mappings_only() {
        let m = parse_line(
            "7f1c2a400000-7f1c2a428000 r-xp 00028000 fe:01 1837040                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .expect("a file mapping");
        assert_eq!(
            m,
            Mapping {
                start: 0x7f1c2a400000,
                end: 0x7f1c2a428000,
                pgoff: 0x28000,
                ino: 1837040,
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6",
            }
        );
        let spaced = parse_line("1000-2000 r-xp 00000000 00:2a 7 /tmp/a b (deleted)").unwrap();
        assert_eq!(spaced.path, "/tmp/a b (deleted)");
        assert_eq!(
            parse_line("7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]"),
            None
        );
        assert_eq!(parse_line("55d0-55f0 rw-p 00000000 00:00 0"), None);
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn locates_own_code_in_own_binary() {
        let addr = locates_own_code_in_own_binary as *const () as u64;
        let here = locate(std::process::id(), &[addr, 0x1000], false);
        let (id, off) = here[0].expect("our code is in our binary");
        assert!(off < addr, "a file offset, not the address");
        assert_eq!(here[1], None, "page 1 is never mapped");
        let exe = fs::metadata("/proc/self/exe").unwrap();
        assert_eq!((id.dev, id.ino), (exe.dev(), exe.ino()));
        // Another address of the same binary: the same file.
        let other = locate(std::process::id(), &[parse_line as *const () as u64], false);
        assert_eq!(other[0].map(|(id, _)| id), Some(id));
    }
}
