//! A container root filesystem of a few binaries and the shared libraries `ldd` says they
//! load: what `cargo xtask image` turns into procmon's image and what the container tests
//! run from, so neither needs a registry or a base image.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

/// Copies each `(binary, path inside the rootfs)` into `rootfs`, with the libraries it
/// links (at the paths the loader looks for them), plus the empty directories a runtime
/// mounts over (`/proc`, `/sys`, `/dev`, `/tmp`, `/etc`).
pub fn assemble(rootfs: &Path, binaries: &[(&Path, &str)]) -> io::Result<()> {
    for dir in ["proc", "sys", "dev", "tmp", "etc", "run"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    for (binary, dest) in binaries {
        copy_to(binary, &rootfs.join(dest.trim_start_matches('/')))?;
        for lib in libraries(binary)? {
            copy_to(&lib, &rootfs.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
        }
    }
    Ok(())
}

/// Absolute paths of what `ldd` says `binary` loads (none for a static binary).
pub fn libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    // ldd exits 1 for "not a dynamic executable": a static binary needs nothing.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies the file `from` resolves to (libraries are usually symlinks) to `to`.
fn copy_to(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("copying {} to {}: {e}", from.display(), to.display()),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_loader_and_libc_of_a_dynamic_binary() {
        let libs = libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }
}
