//! Workloads: the bounded label that groups processes that are not individually watched
//! (`procmon_workload_*`), and the `workload` of crash and OOM events and counters. A
//! workload is what the process's cgroup names ([`identity`]: a pod's container, a plain
//! container, a systemd unit), `kernel` for kernel threads, and the comm of processes in
//! the root cgroup.
//!
//! Label cardinality must stay bounded (docs/metrics.md): [`Workloads`] admits a
//! fixed number of distinct names and folds the rest into [`OVERFLOW`], counting them.

pub mod identity;

use std::{collections::HashMap, sync::Arc};

pub use identity::Identity;

/// The label of everything past the cap.
pub const OVERFLOW: &str = "_other";

/// Cached identities, by cgroup path. Parsing is cheap but runs per process and per crash;
/// the cache is what keeps it once per cgroup. Cleared when full rather than evicted in
/// order: a host with more live cgroups than this re-parses, it does not grow.
#[derive(Debug, Default)]
pub struct Identities {
    by_path: HashMap<Arc<str>, Arc<Identity>>,
}

impl Identities {
    const CAP: usize = 8192;

    /// The identity of a process in `cgroup_path` named `comm`; see [`identity::identify`].
    pub fn identify(
        &mut self,
        cgroup_path: Option<&str>,
        comm: &str,
        kernel_thread: bool,
    ) -> Arc<Identity> {
        if kernel_thread {
            return Arc::new(Identity::kernel());
        }
        let Some(path) = cgroup_path else {
            return Arc::new(Identity::comm(comm));
        };
        if let Some(id) = self.by_path.get(path) {
            return id.clone();
        }
        let id = Arc::new(identity::identify(Some(path), comm, false));
        if id.named_by_path() {
            if self.by_path.len() >= Self::CAP {
                self.by_path.clear();
            }
            self.by_path.insert(path.into(), id.clone());
        }
        id
    }
}

pub type WorkloadId = u32;

/// Interned workloads with a cap, each with the identity it was first admitted with (every
/// identity of one label has the same container, pod and runtime: they are part of it).
/// A workload that is gone (its last process exited long enough ago) is released, so its
/// place under the cap goes to the next one: containers come and go on a node, and a cap
/// filled by dead ones would fold every new container into [`OVERFLOW`].
#[derive(Debug)]
pub struct Workloads {
    /// By id; None for a released id, waiting in `free` to be reused.
    identities: Vec<Option<Arc<Identity>>>,
    index: HashMap<String, WorkloadId>,
    free: Vec<WorkloadId>,
    cap: usize,
    /// Times a new name was folded into the overflow series.
    pub overflowed: u64,
}

impl Workloads {
    pub fn new(cap: usize) -> Self {
        let mut w = Self {
            identities: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
            cap: cap.max(1),
            overflowed: 0,
        };
        w.insert(Arc::new(Identity {
            kind: identity::Kind::Cgroup,
            workload: OVERFLOW.to_string(),
            runtime: None,
            container_id: None,
            pod_uid: None,
            qos: None,
        }));
        w
    }

    pub fn overflow_id(&self) -> WorkloadId {
        0
    }

    pub fn intern(&mut self, identity: &Arc<Identity>) -> WorkloadId {
        if let Some(&id) = self.index.get(&identity.workload) {
            return id;
        }
        // The overflow series itself does not count against the cap.
        if self.identities.len() - self.free.len() > self.cap {
            self.overflowed += 1;
            return self.overflow_id();
        }
        self.insert(identity.clone())
    }

    /// The identity to export for `identity`: itself once admitted, the [`OVERFLOW`] one
    /// past the cap.
    pub fn admit(&mut self, identity: Arc<Identity>) -> Arc<Identity> {
        let id = self.intern(&identity);
        if id == self.overflow_id() {
            self.overflow().clone()
        } else {
            identity
        }
    }

    /// Forgets workload `id` (never the overflow one): nothing may refer to it any more.
    /// Returns what it was.
    pub fn release(&mut self, id: WorkloadId) -> Option<Arc<Identity>> {
        if id == self.overflow_id() {
            return None;
        }
        let identity = self.identities.get_mut(id as usize)?.take()?;
        self.index.remove(&identity.workload);
        self.free.push(id);
        Some(identity)
    }

    /// Whether `id` names a workload (it was not released).
    pub fn is_live(&self, id: WorkloadId) -> bool {
        self.identities
            .get(id as usize)
            .is_some_and(Option::is_some)
    }

    fn insert(&mut self, identity: Arc<Identity>) -> WorkloadId {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.identities.push(None);
                (self.identities.len() - 1) as WorkloadId
            }
        };
        self.index.insert(identity.workload.clone(), id);
        self.identities[id as usize] = Some(identity);
        id
    }

    fn overflow(&self) -> &Arc<Identity> {
        self.identities[0]
            .as_ref()
            .expect("the overflow workload is never released")
    }

    pub fn identity(&self, id: WorkloadId) -> &Identity {
        self.identities
            .get(id as usize)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| self.overflow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Arc<Identity> {
        Arc::new(Identity::comm(name))
    }

    #[test]
    fn caps_distinct_names_and_counts_overflow() {
        let mut w = Workloads::new(2);
        let a = w.intern(&named("a"));
        assert_eq!(w.intern(&named("a")), a);
        let b = w.intern(&named("b"));
        assert_ne!(a, b);
        assert_eq!(w.intern(&named("c")), w.overflow_id());
        assert_eq!(w.admit(named("d")).workload, OVERFLOW);
        assert_eq!(w.admit(named("a")).workload, "a", "admitted names stay");
        assert_eq!(w.overflowed, 2);
        assert_eq!(w.identity(b).workload, "b");
    }

    #[test]
    fn released_workloads_free_their_place_under_the_cap() {
        let mut w = Workloads::new(2);
        let a = w.intern(&named("a"));
        let b = w.intern(&named("b"));
        assert_eq!(w.intern(&named("c")), w.overflow_id(), "full");
        assert_eq!(w.release(a).unwrap().workload, "a");
        assert!(!w.is_live(a) && w.is_live(b));
        assert_eq!(w.release(a), None, "released once");
        assert_eq!(w.release(w.overflow_id()), None, "the overflow stays");
        let c = w.intern(&named("c"));
        assert_eq!(c, a, "the freed id is reused");
        assert_eq!(w.identity(c).workload, "c");
        assert_eq!(w.intern(&named("a")), w.overflow_id(), "full again");
        assert_eq!(w.intern(&named("b")), b);
    }

    #[test]
    fn caches_identities_by_path_but_not_comm_fallbacks() {
        let mut ids = Identities::default();
        let a = ids.identify(Some("/system.slice/a.service"), "x", false);
        let again = ids.identify(Some("/system.slice/a.service"), "y", false);
        assert!(Arc::ptr_eq(&a, &again), "one parse per cgroup");
        assert_eq!(ids.identify(Some("/"), "bash", false).workload, "bash");
        assert_eq!(ids.identify(Some("/"), "zsh", false).workload, "zsh");
        assert_eq!(ids.by_path.len(), 1, "the root cgroup names no workload");
        assert_eq!(
            ids.identify(Some("/system.slice/a.service"), "kworker/0:1", true)
                .workload,
            identity::KERNEL
        );
    }

    #[test]
    fn cache_stays_bounded() {
        let mut ids = Identities::default();
        for i in 0..Identities::CAP + 10 {
            ids.identify(Some(&format!("/system.slice/u{i}.service")), "x", false);
        }
        assert!(ids.by_path.len() <= Identities::CAP);
    }
}
