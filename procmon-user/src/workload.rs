//! Workloads: the bounded label that groups every process that is not individually watched.
//! A workload is named after the process's cgroup (its last path component: a systemd unit,
//! a container scope), falling back to the process name in the root cgroup. Past a cap,
//! new names share one overflow series, and what overflowed is counted.

use std::collections::HashMap;

/// The series every workload past the cap shares.
pub const OVERFLOW: &str = "_other";

/// The label for a process in `cgroup_path` named `comm`.
pub fn label(cgroup_path: Option<&str>, comm: &str) -> String {
    match cgroup_path.map(|p| p.trim_end_matches('/')) {
        Some(path) if !path.is_empty() => path.rsplit('/').next().unwrap_or(path).to_string(),
        _ => comm.to_string(),
    }
}

pub type WorkloadId = u32;

/// Interned workload names with a cap.
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

    fn intern_unbounded(&mut self, name: &str) -> WorkloadId {
        let id = self.names.len() as WorkloadId;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), id);
        id
    }

    pub fn name(&self, id: WorkloadId) -> &str {
        self.names.get(id as usize).map_or(OVERFLOW, String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_cgroups_or_comm() {
        assert_eq!(
            label(Some("/system.slice/nginx.service"), "nginx"),
            "nginx.service"
        );
        assert_eq!(label(Some("/"), "bash"), "bash");
        assert_eq!(label(None, "bash"), "bash");
        assert_eq!(label(Some("/a/b/"), "x"), "b");
    }

    #[test]
    fn caps_distinct_names_and_counts_overflow() {
        let mut w = Workloads::new(2);
        let a = w.intern("a");
        assert_eq!(w.intern("a"), a);
        let b = w.intern("b");
        assert_ne!(a, b);
        assert_eq!(w.intern("c"), w.overflow_id());
        assert_eq!(w.intern("d"), w.overflow_id());
        assert_eq!(w.overflowed, 2);
        let c = w.intern("c");
        assert_eq!(w.name(c), OVERFLOW);
        assert_eq!(w.name(b), "b");
    }
}
