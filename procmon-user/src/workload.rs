//! Workloads: the bounded label that groups processes that are not individually watched
//! (`procmon_workload_*`), and the `workload` of crash and OOM events and counters. A
//! workload is what the process's cgroup names (a systemd unit, a container scope);
//! processes in the root cgroup are named by their comm instead.
//!
//! Label cardinality must stay bounded (docs/metrics.md): [`Workloads`] admits a
//! fixed number of distinct names and folds the rest into [`OVERFLOW`], counting them.

use std::collections::HashMap;

/// The label of everything past the cap.
pub const OVERFLOW: &str = "_other";

/// The workload name of a process in `cgroup_path` (`/system.slice/nginx.service` →
/// `nginx.service`), or its `comm` when it is in the root cgroup or the path is unknown.
pub fn label(cgroup_path: Option<&str>, comm: &str) -> String {
    let leaf = cgroup_path
        .and_then(|p| p.trim_end_matches('/').rsplit('/').next())
        .filter(|leaf| !leaf.is_empty() && *leaf != "...");
    match leaf {
        Some(leaf) => leaf.to_string(),
        None if comm.is_empty() => "unknown".to_string(),
        None => comm.to_string(),
    }
}

pub type WorkloadId = u32;

/// Interned workload names with a cap.
#[derive(Debug)]
pub struct Workloads {
    names: Vec<String>,
    index: HashMap<String, WorkloadId>,
    cap: usize,
    /// Times a new name was folded into the overflow series.
    pub overflowed: u64,
}

impl Workloads {
    pub fn new(cap: usize) -> Self {
        let mut w = Self {
            names: Vec::new(),
            index: HashMap::new(),
            cap: cap.max(1),
            overflowed: 0,
        };
        w.intern_unbounded(OVERFLOW);
        w
    }

    pub fn overflow_id(&self) -> WorkloadId {
        0
    }

    pub fn intern(&mut self, name: &str) -> WorkloadId {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        // The overflow series itself does not count against the cap.
        if self.names.len() > self.cap {
            self.overflowed += 1;
            return self.overflow_id();
        }
        self.intern_unbounded(name)
    }

    /// The label to export for `name`: itself once admitted, [`OVERFLOW`] past the cap.
    pub fn admit(&mut self, name: String) -> String {
        let id = self.intern(&name);
        if id == self.overflow_id() {
            OVERFLOW.to_string()
        } else {
            name
        }
    }

    fn intern_unbounded(&mut self, name: &str) -> WorkloadId {
        let id = self.names.len() as WorkloadId;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), id);
        id
    }

    pub fn name(&self, id: WorkloadId) -> &str {
        self.names.get(id as usize).map_or(OVERFLOW, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_workloads_by_cgroup_leaf_or_comm() {
        let cases = [
            (
                Some("/system.slice/nginx.service"),
                "nginx",
                "nginx.service",
            ),
            (Some("/kubepods/burstable/pod1/abc/"), "x", "abc"),
            (Some("/"), "bash", "bash"),
            (None, "bash", "bash"),
            (Some("/"), "", "unknown"),
            (Some(".../deep/leaf.scope"), "x", "leaf.scope"),
        ];
        for (path, comm, want) in cases {
            assert_eq!(label(path, comm), want, "{path:?} {comm:?}");
        }
    }

    #[test]
    fn caps_distinct_names_and_counts_overflow() {
        let mut w = Workloads::new(2);
        let a = w.intern("a");
        assert_eq!(w.intern("a"), a);
        let b = w.intern("b");
        assert_ne!(a, b);
        assert_eq!(w.intern("c"), w.overflow_id());
        assert_eq!(w.admit("d".into()), OVERFLOW);
        assert_eq!(w.admit("a".into()), "a", "admitted names stay");
        assert_eq!(w.overflowed, 2);
        assert_eq!(w.name(b), "b");
    }
}
