//! Nested cgroups made for a test (e.g. kubelet's layouts), in the hierarchy the agent
//! reads processes' cgroups from, removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use crate::wait_for;

/// The hierarchy the agent reads a process's cgroup from on this host: v1 `memory` on a
/// hybrid host (everything sits in the v2 root there), else the v2 root.
pub fn hierarchy() -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("cgroup.procs").exists() && !v1.join("cgroup.controllers").exists() {
        return v1.to_path_buf();
    }
    PathBuf::from("/sys/fs/cgroup")
}

/// A nested cgroup, removed (innermost first) on drop.
pub struct Cgroup {
    root: PathBuf,
    parts: Vec<String>,
}

impl Cgroup {
    pub fn create(root: &Path, parts: &[&str]) -> Cgroup {
        let cg = Cgroup {
            root: root.to_path_buf(),
            parts: parts.iter().map(|s| s.to_string()).collect(),
        };
        std::fs::create_dir_all(cg.dir())
            .unwrap_or_else(|e| panic!("creating {}: {e}", cg.dir().display()));
        cg
    }

    pub fn dir(&self) -> PathBuf {
        self.parts.iter().fold(self.root.clone(), |p, c| p.join(c))
    }

    /// A `sleep` that moved itself into this cgroup before exec'ing (so the agent reads
    /// its cgroup after the move).
    pub fn spawn_sleeper(&self) -> Child {
        let procs = self.dir().join("cgroup.procs");
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec sleep 600", procs.display()))
            .spawn()
            .expect("spawning sh")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Whatever still runs in it is the test's (a sleeper left by a failed assertion).
        let procs = std::fs::read_to_string(self.dir().join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill takes no pointers; the pid was just listed in a cgroup only this
            // test puts processes in.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for depth in (1..=self.parts.len()).rev() {
            let dir = self.parts[..depth]
                .iter()
                .fold(self.root.clone(), |p, c| p.join(c));
            // Emptied cgroups may take a moment to become removable.
            let _ = wait_for(Duration::from_secs(5), || std::fs::remove_dir(&dir).ok());
        }
    }
}
