//! A throwaway memory cgroup with a limit, removed on drop (even when the test fails).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cgroup v1 memory hierarchy this development machine mounts; a v2 hierarchy is used
/// only when its memory controller is available.
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";
const V2_CANDIDATES: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

pub struct Memcg {
    dir: PathBuf,
    /// Its path as the kernel names it, relative to the hierarchy root (`/name`).
    pub path: String,
}

impl Memcg {
    /// Creates `name` under the root of a memory hierarchy with `limit_bytes` for memory
    /// (and memory+swap, where that exists). None when no memory hierarchy is available.
    pub fn create(name: &str, limit_bytes: u64) -> Option<Memcg> {
        let v1 = Path::new(V1_MEMORY).join("memory.limit_in_bytes").exists();
        let root = if v1 {
            PathBuf::from(V1_MEMORY)
        } else {
            let v2 = V2_CANDIDATES.iter().find(|r| {
                std::fs::read_to_string(Path::new(r).join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
            })?;
            let control = Path::new(v2).join("cgroup.subtree_control");
            let _ = std::fs::write(control, "+memory");
            PathBuf::from(v2)
        };
        let dir = root.join(name);
        // Names carry the pid, and pids repeat from one CI run to the next on a machine: one
        // already there is an earlier run's that could not be removed then.
        if dir.exists() && !remove(&dir) {
            panic!(
                "{} is left from an earlier run and cannot be removed",
                dir.display()
            );
        }
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let memcg = Memcg {
            dir,
            path: format!("/{name}"),
        };
        let limit = limit_bytes.to_string();
        if v1 {
            memcg.write("memory.limit_in_bytes", &limit);
            if memcg.dir.join("memory.memsw.limit_in_bytes").exists() {
                memcg.write("memory.memsw.limit_in_bytes", &limit);
            }
        } else {
            memcg.write("memory.max", &limit);
            if memcg.dir.join("memory.swap.max").exists() {
                memcg.write("memory.swap.max", "0");
            }
        }
        Some(memcg)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {}: {e}", path.display()));
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        if !remove(&self.dir) {
            eprintln!("could not remove cgroup {}", self.dir.display());
        }
    }
}

/// Removes a test cgroup: a cgroup with tasks cannot be removed, so this kills what is left
/// in it, then retries for up to 5 s.
fn remove(dir: &Path) -> bool {
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill takes no pointers; the pids are the members of a throwaway test
            // cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_left_by_an_earlier_run_is_replaced() {
        if !crate::require_root("memcg::a_cgroup_left_by_an_earlier_run_is_replaced") {
            return;
        }
        let name = format!("procmon-stale-{}", std::process::id());
        let Some(left) = Memcg::create(&name, 64 << 20) else {
            assert!(!crate::in_ci(), "no memory cgroup hierarchy and CI=true");
            eprintln!("SKIPPED: no memory cgroup hierarchy");
            return;
        };
        let dir = left.dir().to_path_buf();
        // An earlier run that could not remove it.
        std::mem::forget(left);
        let again = Memcg::create(&name, 64 << 20).expect("the hierarchy is still there");
        assert_eq!(again.dir(), dir);
        drop(again);
        assert!(!dir.exists());
    }
}
