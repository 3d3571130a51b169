//! The guest's root filesystem: a gzip'd newc cpio archive with busybox, the binaries under
//! test at their host paths (test executables embed absolute paths to their helpers), the
//! shared libraries `ldd` names for them, and `/init`.
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Busybox applets the init script and the tests use (spawn_tree execs /bin/sleep).
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "ip", "uname", "poweroff", "cat", "echo", "sleep", "cut", "ls",
    "dmesg", "timeout", "tail", "head", "grep", "env", "true", "false", "rm", "sync",
];

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// The archive's contents by absolute guest path; parents are added on the way.
#[derive(Default)]
pub struct Initramfs {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Initramfs {
    /// Busybox as /bin/busybox with a symlink per applet.
    pub fn with_busybox(busybox: &Path) -> Result<Initramfs> {
        let mut image = Initramfs::default();
        image.file_from(Path::new("/bin/busybox"), busybox)?;
        for applet in APPLETS {
            image.symlink(Path::new("/bin").join(applet), "busybox");
        }
        for dir in ["/proc", "/sys", "/dev", "/tmp", "/root", "/etc"] {
            image.dir(Path::new(dir));
        }
        Ok(image)
    }

    /// `host` at the same path in the guest, with every library `ldd` lists for it.
    pub fn binary(&mut self, host: &Path) -> Result<()> {
        self.binary_at(host, host)
    }

    /// `host` at `guest`, with every library `ldd` lists for it at its host path.
    pub fn binary_at(&mut self, guest: &Path, host: &Path) -> Result<()> {
        self.file_from(guest, host)?;
        for lib in shared_libraries(host)? {
            if !self.entries.contains_key(&lib) {
                self.file_from(&lib, &lib)?;
            }
        }
        Ok(())
    }

    /// A file read from `host` (following symlinks: a library named through /lib64 becomes a
    /// regular file there), with the host file's permission bits.
    fn file_from(&mut self, guest: &Path, host: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o7777;
        self.insert(guest, Entry::File { data, mode });
        Ok(())
    }

    pub fn file(&mut self, guest: &Path, data: Vec<u8>, mode: u32) {
        self.insert(guest, Entry::File { data, mode });
    }

    fn symlink(&mut self, guest: PathBuf, target: &str) {
        self.insert(&guest, Entry::Symlink(target.to_string()));
    }

    fn dir(&mut self, guest: &Path) {
        self.insert(guest, Entry::Dir);
    }

    fn insert(&mut self, guest: &Path, entry: Entry) {
        assert!(
            guest.is_absolute(),
            "guest path {} is relative",
            guest.display()
        );
        for parent in guest.ancestors().skip(1) {
            if parent != Path::new("/") {
                self.entries
                    .entry(parent.to_path_buf())
                    .or_insert(Entry::Dir);
            }
        }
        self.entries.insert(guest.to_path_buf(), entry);
    }

    /// Writes the archive, gzip'd (the fast level: the guest decompresses it under TCG).
    pub fn write(&self, out: &Path) -> Result<u64> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut gz = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(file),
            flate2::Compression::fast(),
        );
        let mut total = 0;
        // BTreeMap order puts every directory before what it contains.
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let name = path
                .strip_prefix("/")
                .expect("absolute")
                .to_str()
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            let (mode, data): (u32, &[u8]) = match entry {
                Entry::Dir => (0o040_755, &[]),
                Entry::File { data, mode } => (0o100_000 | mode, data),
                Entry::Symlink(target) => (0o120_777, target.as_bytes()),
            };
            total += data.len() as u64;
            write_entry(&mut gz, ino as u32 + 1, mode, name, data)?;
        }
        write_entry(&mut gz, 0, 0, "TRAILER!!!", &[])?;
        gz.finish()?.flush()?;
        Ok(total)
    }
}

/// One newc ("070701") record: header, NUL-terminated name and data, each padded to 4 bytes.
fn write_entry(w: &mut impl Write, ino: u32, mode: u32, name: &str, data: &[u8]) -> Result<()> {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).context("a file over 4 GiB does not fit in newc")?,
        0, // dev major
        0, // dev minor
        0, // rdev major
        0, // rdev minor
        name.len() as u32 + 1,
        0, // check
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad4(header.len() + name.len() + 1)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad4(data.len())])?;
    Ok(())
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// The absolute paths `ldd` prints for `binary` (libraries and the dynamic loader); none
/// for a static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::output(Command::new("ldd").arg(binary))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits 1 for a static binary, saying so.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.contains("statically linked") {
                return None;
            }
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_include_the_loader_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn newc_records_are_padded_to_four_bytes() {
        let mut out = Vec::new();
        write_entry(&mut out, 1, 0o100_644, "a", b"hello").unwrap();
        // 110-byte header + "a\0" = 112 (aligned), then 5 bytes of data + 3 of padding.
        assert_eq!(out.len(), 112 + 8);
        assert!(out.starts_with(b"070701"));
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..117], b"hello");
    }
}
