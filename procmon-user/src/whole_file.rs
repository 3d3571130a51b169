//! A report written whole or not at all (`procmon run --json`, `procmon profile --out`).
//!
//! A regular file is written through a temporary file next to it, renamed over it once
//! complete, so a failure never leaves half a report. Anything else (a FIFO, a device such
//! as /dev/full) cannot be renamed over and is written in place, every error checked.
//! [`WholeFile::create`] runs before the work, so a path that cannot be written fails fast.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

pub struct WholeFile {
    path: PathBuf,
    target: Target,
}

enum Target {
    /// The temporary file renamed over `path` once written.
    Renamed(PathBuf),
    InPlace(File),
}

impl WholeFile {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        let target = if special {
            Target::InPlace(std::fs::OpenOptions::new().write(true).open(path)?)
        } else {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(format!(".procmon-{}.tmp", std::process::id()));
            let tmp = PathBuf::from(tmp);
            File::create(&tmp)?;
            Target::Renamed(tmp)
        };
        Ok(Self {
            path: path.to_path_buf(),
            target,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(mut self, body: &[u8]) -> std::io::Result<()> {
        match &mut self.target {
            Target::InPlace(file) => file.write_all(body).and_then(|()| file.flush()),
            Target::Renamed(tmp) => {
                std::fs::write(&*tmp, body).and_then(|()| std::fs::rename(&*tmp, &self.path))
            }
        }
    }
}

impl Drop for WholeFile {
    /// After a successful rename the temporary name is gone already; otherwise it goes here.
    fn drop(&mut self) {
        if let Target::Renamed(tmp) = &self.target {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_replaced_whole_and_devices_fail_loudly() {
        let dir = std::env::temp_dir().join(format!("procmon-whole-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.json");
        std::fs::write(&path, "old").unwrap();
        let out = WholeFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "old",
            "untouched until written"
        );
        out.write(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        drop(WholeFile::create(&path).unwrap());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "an unused one is removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let full = WholeFile::create(Path::new("/dev/full")).unwrap();
        let e = full.write(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
}
