//! Workload names: the `workload` label of per-workload metrics and the `workload` field of
//! crash and OOM events. A workload is what the memory cgroup names (a systemd unit, a
//! container scope); processes in the root cgroup are named by their comm instead.
//!
//! Label cardinality must stay bounded (DESIGN.md, external contract), so [`LabelCap`] admits
//! a fixed number of distinct names and folds the rest into [`OVERFLOW`].

use std::collections::HashSet;

/// The label of everything past the cap.
pub const OVERFLOW: &str = "_other";

/// Distinct workload label values per metric family before [`OVERFLOW`] takes over.
pub const DEFAULT_CAP: usize = 200;

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

/// Admits at most `max` distinct labels; later newcomers become [`OVERFLOW`].
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    admitted: HashSet<String>,
    overflowed: u64,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            admitted: HashSet::new(),
            overflowed: 0,
        }
    }

    /// The label to export for `label`: itself once admitted, [`OVERFLOW`] past the cap.
    pub fn admit(&mut self, label: String) -> String {
        if self.admitted.contains(&label) {
            return label;
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(label.clone());
            return label;
        }
        self.overflowed += 1;
        OVERFLOW.to_string()
    }

    /// How many times a label was folded into [`OVERFLOW`].
    pub fn overflowed(&self) -> u64 {
        self.overflowed
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
    fn caps_distinct_labels_and_counts_overflow() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.admit("a".into()), "a");
        assert_eq!(cap.admit("b".into()), "b");
        assert_eq!(cap.admit("c".into()), OVERFLOW);
        assert_eq!(cap.admit("a".into()), "a", "admitted labels stay");
        assert_eq!(cap.admit("d".into()), OVERFLOW);
        assert_eq!(cap.overflowed(), 2);
    }
}
