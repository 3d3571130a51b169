//! Attribution: CPU and memory rolled up per watched root, per direct child of a watched root
//! (its whole subtree, exited descendants included), and per workload.
//!
//! Every process carries its [`Accounting`]: the units it counts toward, inherited at fork,
//! so an event costs O(units of that process) and nothing walks the tree. Exited processes
//! add their exact final CPU to their units; live ones are summed from the latest sample.

mod selector;
mod snapshot;

use std::{collections::BTreeMap, sync::Arc};

pub use selector::Selector;

use crate::{
    tree::{same_start, Comm, Extension, Process, Tree},
    workload::{Identities, Identity, WorkloadId, Workloads},
};

pub type UnitId = u32;

/// The last sampled state of a live process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LiveSample {
    pub cpu_ns: u64,
    pub rss_bytes: u64,
    pub sampled_at_ns: u64,
    /// CPU used over the last sample interval; 1.0 = one full core.
    pub cpu_ratio: f64,
}

/// Per-process attribution state, carried by the tree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accounting {
    pub units: Vec<UnitId>,
    pub workload: WorkloadId,
    pub cgroup: Option<Arc<str>>,
    /// The cgroup was read for this process (not inherited at fork, not stale after exec).
    pub cgroup_known: bool,
    pub live: LiveSample,
}

/// The process tree as the agent keeps it: each process with where it counts.
pub type ProcessTree = Tree<Accounting>;
pub type TrackedProcess = Process<Accounting>;

impl Extension for Accounting {
    /// What a forked child starts with: its parent's units and cgroup (a guess until read).
    fn inherit(&self) -> Self {
        Self {
            units: self.units.clone(),
            workload: self.workload,
            cgroup: self.cgroup.clone(),
            cgroup_known: false,
            live: LiveSample::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// A watched process and its whole subtree; `watch` indexes the selectors.
    Root { watch: usize },
    /// A direct child of a watched root and its subtree.
    Child { root: UnitId },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    pub kind: UnitKind,
    pub pid: u32,
    pub start_ns: u64,
    pub comm: Comm,
    pub exited_at_ns: Option<u64>,
    pub descendants_started: u64,
    pub exited_cpu_ns: u64,
    pub live_cpu_ns: u64,
    pub live_rss_bytes: u64,
    pub cpu_ratio: f64,
    pub peak_rss_bytes: u64,
    /// Child units past the series cap are reported in an overflow series.
    pub labelled: bool,
}

impl Unit {
    pub fn cpu_ns(&self) -> u64 {
        self.exited_cpu_ns + self.live_cpu_ns
    }

    pub fn lifetime_ns(&self, now_ns: u64) -> u64 {
        self.exited_at_ns
            .unwrap_or(now_ns)
            .saturating_sub(self.start_ns)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadStats {
    /// Since when no process of the tree has been in it (at the sample passes).
    pub idle_since_ns: Option<u64>,
    pub processes: u64,
    pub starts: u64,
    pub live_cpu_ns: u64,
    pub live_rss_bytes: u64,
    pub exited_cpu_ns: u64,
}

pub struct AttributionConfig {
    pub selectors: Vec<Selector>,
    pub retain_exited_ns: u64,
    pub max_child_series: usize,
    pub max_workloads: usize,
}

pub struct Attribution {
    cfg: AttributionConfig,
    units: BTreeMap<UnitId, Unit>,
    next_unit: UnitId,
    labelled_children: usize,
    /// Child units that went to the overflow series because of the cap.
    pub child_overflowed: u64,
    workloads: Workloads,
    identities: Identities,
    workload_stats: Vec<WorkloadStats>,
    /// Workloads released since [`Attribution::take_released`] was last called.
    released: Vec<Arc<Identity>>,
}

impl Attribution {
    pub fn new(cfg: AttributionConfig) -> Self {
        let workloads = Workloads::new(cfg.max_workloads);
        Self {
            cfg,
            units: BTreeMap::new(),
            next_unit: 1,
            labelled_children: 0,
            child_overflowed: 0,
            workloads,
            identities: Identities::default(),
            workload_stats: vec![WorkloadStats::default()],
            released: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn units(&self) -> impl Iterator<Item = (&UnitId, &Unit)> {
        self.units.iter()
    }

    #[cfg(test)]
    pub fn unit(&self, id: UnitId) -> Option<&Unit> {
        self.units.get(&id)
    }

    /// The exported workload label of a process's workload id.
    pub fn workload_name(&self, id: WorkloadId) -> &str {
        &self.workloads.identity(id).workload
    }

    pub fn workloads(&self) -> impl Iterator<Item = (&Identity, &WorkloadStats)> {
        self.workload_stats
            .iter()
            .enumerate()
            .filter(|(i, _)| self.workloads.is_live(*i as WorkloadId))
            .map(|(i, s)| (self.workloads.identity(i as WorkloadId), s))
    }

    /// Workloads released since the last call: their labelled series elsewhere (crash and
    /// OOM counters) should go too.
    pub fn take_released(&mut self) -> Vec<Arc<Identity>> {
        std::mem::take(&mut self.released)
    }

    /// What a process in `cgroup` belongs to (cached per cgroup path).
    pub fn identify(
        &mut self,
        cgroup: Option<&str>,
        comm: &str,
        kernel_thread: bool,
    ) -> Arc<Identity> {
        self.identities.identify(cgroup, comm, kernel_thread)
    }

    /// Whether a tracked process was found to be a kernel thread (PF_KTHREAD).
    pub fn is_kernel_thread(&self, p: &TrackedProcess) -> bool {
        self.workloads.identity(p.ext.workload).kind == crate::workload::identity::Kind::Kernel
    }

    /// A workload within the cap shared by every `workload` label (crash and OOM counters
    /// included): past it, `_other`, counted.
    pub fn admit_workload(&mut self, identity: Arc<Identity>) -> Arc<Identity> {
        self.workloads.admit(identity)
    }

    /// Watches `pid` from now on (`procmon run` watches the command it starts). Its fork may
    /// not have been seen yet; then the fork makes it a root.
    pub fn watch_pid(&mut self, tree: &mut ProcessTree, pid: u32) {
        self.cfg.selectors.push(Selector::Pid(pid));
        if tree.get(pid).is_some() {
            self.make_root(tree, pid, self.cfg.selectors.len() - 1);
        }
    }

    /// The root unit headed by `pid`, if it is watched.
    pub fn root_of(&self, tree: &ProcessTree, pid: u32) -> Option<UnitId> {
        let p = tree.get(pid)?;
        p.ext.units.iter().copied().find(|u| {
            self.units.get(u).is_some_and(|unit| {
                matches!(unit.kind, UnitKind::Root { .. })
                    && unit.pid == pid
                    && same_start(unit.start_ns, p.start_ns)
            })
        })
    }

    /// After seeding: find the watched processes among those already running and attribute
    /// their existing subtrees.
    pub fn seed(&mut self, tree: &mut ProcessTree) {
        let roots: Vec<(u32, usize)> = tree
            .iter()
            .filter_map(|p| self.selector_for(p).map(|w| (p.pid, w)))
            .collect();
        for (pid, watch) in roots {
            if self.root_of(tree, pid).is_some() {
                continue;
            }
            let root = self.new_unit(tree, pid, UnitKind::Root { watch });
            let children: Vec<u32> = tree.children_of(pid).collect();
            for child in children {
                let unit = self.new_unit(tree, child, UnitKind::Child { root });
                let mut stack = vec![child];
                while let Some(pid) = stack.pop() {
                    stack.extend(tree.children_of(pid));
                    if let Some(p) = tree.get_mut(pid) {
                        p.ext.units.extend([root, unit]);
                    }
                }
            }
            if let Some(p) = tree.get_mut(pid) {
                p.ext.units.push(root);
            }
        }
    }

    pub fn on_fork(&mut self, tree: &mut ProcessTree, pid: u32) {
        let Some(child) = tree.get(pid) else { return };
        let (ppid, inherited, workload) = (child.ppid, child.ext.units.clone(), child.ext.workload);
        for id in &inherited {
            if let Some(unit) = self.units.get_mut(id) {
                unit.descendants_started += 1;
            }
        }
        self.stats(workload).starts += 1;
        if let Some(root) = self.root_of(tree, ppid) {
            let unit = self.new_unit(tree, pid, UnitKind::Child { root });
            if let Some(p) = tree.get_mut(pid) {
                p.ext.units.push(unit);
            }
        }
        if let Some(watch) = self
            .cfg
            .selectors
            .iter()
            .position(|s| *s == Selector::Pid(pid))
        {
            self.make_root(tree, pid, watch);
        }
    }

    pub fn on_exec(&mut self, tree: &mut ProcessTree, pid: u32) {
        let Some(p) = tree.get(pid) else { return };
        let (comm, start, units) = (p.comm, p.start_ns, p.ext.units.clone());
        for id in units {
            if let Some(unit) = self
                .units
                .get_mut(&id)
                .filter(|u| u.pid == pid && u.start_ns == start)
            {
                unit.comm = comm;
            }
        }
        if let Some(watch) = self.selector_for(p) {
            self.make_root(tree, pid, watch);
        }
        if let Some(p) = tree.get_mut(pid) {
            // Runtimes move a process into its cgroup between fork and exec.
            p.ext.cgroup_known = false;
        }
    }

    /// Books an exited process's final CPU and peak RSS to everything it counted toward.
    pub fn on_exit(&mut self, p: &TrackedProcess, cpu_ns: u64, peak_rss_bytes: u64, now_ns: u64) {
        let live = p.ext.live;
        for id in &p.ext.units {
            let Some(unit) = self.units.get_mut(id) else {
                continue;
            };
            unit.exited_cpu_ns += cpu_ns;
            unit.live_cpu_ns = unit.live_cpu_ns.saturating_sub(live.cpu_ns);
            unit.live_rss_bytes = unit.live_rss_bytes.saturating_sub(live.rss_bytes);
            unit.cpu_ratio = (unit.cpu_ratio - live.cpu_ratio).max(0.0);
            unit.peak_rss_bytes = unit.peak_rss_bytes.max(peak_rss_bytes);
            if unit.pid == p.pid && unit.start_ns == p.start_ns {
                unit.exited_at_ns = Some(now_ns);
            }
        }
        let stats = self.stats(p.ext.workload);
        stats.exited_cpu_ns += cpu_ns;
        stats.live_cpu_ns = stats.live_cpu_ns.saturating_sub(live.cpu_ns);
        stats.live_rss_bytes = stats.live_rss_bytes.saturating_sub(live.rss_bytes);
        stats.processes = stats.processes.saturating_sub(1);
    }

    /// CPU an exited process spent after its exit was attributed (its parent reaped it
    /// late, see release.rs): added where its exit was.
    pub fn on_late_cpu(&mut self, p: &TrackedProcess, cpu_ns: u64) {
        for id in &p.ext.units {
            if let Some(unit) = self.units.get_mut(id) {
                unit.exited_cpu_ns += cpu_ns;
            }
        }
        self.stats(p.ext.workload).exited_cpu_ns += cpu_ns;
    }

    /// Applies one round of live samples (pid → start, CPU ns, RSS bytes), recomputes the
    /// live sums and drops exited units past their retention.
    pub fn apply_samples(
        &mut self,
        tree: &mut ProcessTree,
        samples: &std::collections::HashMap<u32, ProcessSample>,
        now_ns: u64,
    ) {
        for p in tree.iter_mut() {
            let Some(s) = samples
                .get(&p.pid)
                .filter(|s| same_start(s.start_ns, p.start_ns))
            else {
                continue;
            };
            let prev = p.ext.live;
            let elapsed = now_ns.saturating_sub(prev.sampled_at_ns);
            let cpu_ratio = if prev.sampled_at_ns > 0 && elapsed > 0 {
                s.cpu_ns.saturating_sub(prev.cpu_ns) as f64 / elapsed as f64
            } else {
                0.0
            };
            p.ext.live = LiveSample {
                cpu_ns: s.cpu_ns,
                rss_bytes: s.rss_bytes,
                sampled_at_ns: now_ns,
                cpu_ratio,
            };
        }
        for unit in self.units.values_mut() {
            unit.live_cpu_ns = 0;
            unit.live_rss_bytes = 0;
            unit.cpu_ratio = 0.0;
        }
        for stats in &mut self.workload_stats {
            stats.live_cpu_ns = 0;
            stats.live_rss_bytes = 0;
            stats.processes = 0;
        }
        for p in tree.iter() {
            let live = p.ext.live;
            for id in &p.ext.units {
                if let Some(unit) = self.units.get_mut(id) {
                    unit.live_cpu_ns += live.cpu_ns;
                    unit.live_rss_bytes += live.rss_bytes;
                    unit.cpu_ratio += live.cpu_ratio;
                }
            }
            let stats = &mut self.workload_stats[p.ext.workload as usize];
            stats.live_cpu_ns += live.cpu_ns;
            stats.live_rss_bytes += live.rss_bytes;
            stats.processes += 1;
        }
        for unit in self.units.values_mut() {
            unit.peak_rss_bytes = unit.peak_rss_bytes.max(unit.live_rss_bytes);
        }
        self.expire(now_ns);
        self.release_idle_workloads(now_ns);
    }

    /// Releases workloads no process has been in for `retain_exited`, so that dead
    /// containers do not hold places under --max-workloads. Only after a full pass: then
    /// `processes` counts every process of the tree that refers to the workload.
    fn release_idle_workloads(&mut self, now_ns: u64) {
        let retain = self.cfg.retain_exited_ns;
        for (i, stats) in self.workload_stats.iter_mut().enumerate().skip(1) {
            if stats.processes > 0 {
                stats.idle_since_ns = None;
                continue;
            }
            let idle_since = *stats.idle_since_ns.get_or_insert(now_ns);
            if now_ns.saturating_sub(idle_since) <= retain {
                continue;
            }
            if let Some(identity) = self.workloads.release(i as WorkloadId) {
                self.released.push(identity);
            }
            *stats = WorkloadStats::default();
        }
    }

    /// Processes whose cgroup should be (re)read, at most `limit`.
    pub fn cgroups_to_read(&self, tree: &ProcessTree, limit: usize) -> Vec<(u32, u64)> {
        tree.iter()
            .filter(|p| !p.ext.cgroup_known)
            .take(limit)
            .map(|p| (p.pid, p.start_ns))
            .collect()
    }

    /// Marks a process's cgroup as read without changing its workload (it keeps its
    /// parent's), so a process that cannot be read is not retried every round.
    pub fn cgroup_unreadable(&mut self, tree: &mut ProcessTree, pid: u32, start_ns: u64) {
        if let Some(p) = tree
            .get_mut(pid)
            .filter(|p| same_start(p.start_ns, start_ns))
        {
            p.ext.cgroup_known = true;
        }
    }

    /// Records a process's cgroup: its workload, and `cgroup:` selectors (the topmost
    /// process of a matching cgroup becomes the watched root).
    pub fn set_cgroup(
        &mut self,
        tree: &mut ProcessTree,
        pid: u32,
        start_ns: u64,
        path: &str,
        kernel_thread: bool,
    ) {
        let Some(p) = tree.get(pid).filter(|p| same_start(p.start_ns, start_ns)) else {
            return;
        };
        let identity = self
            .identities
            .identify(Some(path), &p.comm.to_lossy(), kernel_thread);
        let workload = self.workloads.intern(&identity);
        if self.workload_stats.len() <= workload as usize {
            self.workload_stats
                .resize(workload as usize + 1, WorkloadStats::default());
        }
        let parent_cgroup = tree.get(p.ppid).and_then(|pp| pp.ext.cgroup.clone());
        if let Some(p) = tree.get_mut(pid) {
            p.ext.workload = workload;
            p.ext.cgroup = Some(path.into());
            p.ext.cgroup_known = true;
        }
        let watch = self.cfg.selectors.iter().position(|s| {
            s.matches_cgroup(path)
                && !parent_cgroup
                    .as_deref()
                    .is_some_and(|pc| s.matches_cgroup(pc))
        });
        if let Some(watch) = watch {
            self.make_root(tree, pid, watch);
        }
    }

    fn selector_for(&self, p: &TrackedProcess) -> Option<usize> {
        self.cfg
            .selectors
            .iter()
            .position(|s| s.matches_image(p) || *s == Selector::Pid(p.pid))
    }

    fn make_root(&mut self, tree: &mut ProcessTree, pid: u32, watch: usize) {
        if self.root_of(tree, pid).is_some() {
            return;
        }
        let root = self.new_unit(tree, pid, UnitKind::Root { watch });
        if let Some(p) = tree.get_mut(pid) {
            p.ext.units.push(root);
        }
    }

    fn new_unit(&mut self, tree: &ProcessTree, pid: u32, kind: UnitKind) -> UnitId {
        let id = self.next_unit;
        self.next_unit += 1;
        let p = tree.get(pid).expect("units are made for tracked processes");
        let labelled = match kind {
            UnitKind::Root { .. } => true,
            UnitKind::Child { .. } if self.labelled_children < self.cfg.max_child_series => {
                self.labelled_children += 1;
                true
            }
            UnitKind::Child { .. } => {
                self.child_overflowed += 1;
                false
            }
        };
        self.units.insert(
            id,
            Unit {
                kind,
                pid,
                start_ns: p.start_ns,
                comm: p.comm,
                exited_at_ns: None,
                descendants_started: 0,
                exited_cpu_ns: 0,
                live_cpu_ns: p.ext.live.cpu_ns,
                live_rss_bytes: p.ext.live.rss_bytes,
                cpu_ratio: 0.0,
                peak_rss_bytes: p.ext.live.rss_bytes,
                labelled,
            },
        );
        id
    }

    fn expire(&mut self, now_ns: u64) {
        let retain = self.cfg.retain_exited_ns;
        let expired: Vec<UnitId> = self
            .units
            .iter()
            .filter(|(_, u)| {
                u.exited_at_ns
                    .is_some_and(|t| now_ns.saturating_sub(t) > retain)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(unit) = self.units.remove(&id) {
                if matches!(unit.kind, UnitKind::Child { .. }) && unit.labelled {
                    self.labelled_children -= 1;
                }
            }
        }
    }

    fn stats(&mut self, workload: WorkloadId) -> &mut WorkloadStats {
        let i = workload as usize;
        if self.workload_stats.len() <= i {
            self.workload_stats.resize(i + 1, WorkloadStats::default());
        }
        &mut self.workload_stats[i]
    }
}

/// One process's totals from a sampling round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub start_ns: u64,
    pub cpu_ns: u64,
    pub rss_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{exec, exit, fork};
    use std::collections::HashMap;

    const SEC: u64 = 1_000_000_000;

    fn setup(selectors: &[&str]) -> (ProcessTree, Attribution) {
        let mut tree = ProcessTree::new(1000);
        tree.on_fork(&fork(1, 0, SEC));
        let attribution = Attribution::new(AttributionConfig {
            selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
            retain_exited_ns: 60 * SEC,
            max_child_series: 100,
            max_workloads: 10,
        });
        (tree, attribution)
    }

    fn fork_(tree: &mut ProcessTree, a: &mut Attribution, pid: u32, ppid: u32, start: u64) {
        let mut r = fork(pid, ppid, start);
        r.parent_start_ns = tree.get(ppid).map_or(0, |p| p.start_ns);
        tree.on_fork(&r);
        a.on_fork(tree, pid);
    }

    fn exit_(tree: &mut ProcessTree, a: &mut Attribution, pid: u32, start: u64, cpu_ns: u64) {
        let r = exit(pid, 0, start, 0);
        let p = tree.on_exit(&r).unwrap();
        a.on_exit(&p, cpu_ns, 4096, start + SEC);
    }

    fn child_units(a: &Attribution) -> Vec<&Unit> {
        a.units()
            .map(|(_, u)| u)
            .filter(|u| matches!(u.kind, UnitKind::Child { .. }))
            .collect()
    }

    #[test]
    fn parses_selectors() {
        assert_eq!("pid:42".parse(), Ok(Selector::Pid(42)));
        assert_eq!("cgroup:/a/b/".parse(), Ok(Selector::Cgroup("/a/b".into())));
        assert!("pid:x"
            .parse::<Selector>()
            .unwrap_err()
            .to_string()
            .contains("not a pid"));
        assert!("foo:x"
            .parse::<Selector>()
            .unwrap_err()
            .to_string()
            .contains("unknown kind"));
        assert!("make"
            .parse::<Selector>()
            .unwrap_err()
            .to_string()
            .contains("needs a kind"));
        assert_eq!(
            "comm:make".parse::<Selector>().unwrap().to_string(),
            "comm:make"
        );
    }

    #[test]
    fn rolls_exited_descendants_into_the_direct_child() {
        let (mut tree, mut a) = setup(&["comm:make"]);
        fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
        tree.on_exec(&exec(10, 1, 2 * SEC, b"make", b"/usr/bin/make"));
        a.on_exec(&mut tree, 10);
        fork_(&mut tree, &mut a, 11, 10, 3 * SEC); // child of the watched make
        fork_(&mut tree, &mut a, 12, 11, 4 * SEC); // grandchild
        fork_(&mut tree, &mut a, 13, 12, 5 * SEC); // great-grandchild
        exit_(&mut tree, &mut a, 13, 5 * SEC, 3_000_000);
        exit_(&mut tree, &mut a, 12, 4 * SEC, 2_000_000);
        exit_(&mut tree, &mut a, 11, 3 * SEC, 1_000_000);
        let children = child_units(&a);
        assert_eq!(children.len(), 1);
        let c = children[0];
        assert_eq!(
            (c.pid, c.cpu_ns(), c.descendants_started),
            (11, 6_000_000, 2)
        );
        assert!(c.exited_at_ns.is_some());
        let root = a.unit(a.root_of(&tree, 10).unwrap()).unwrap();
        assert_eq!((root.cpu_ns(), root.descendants_started), (6_000_000, 3));
    }

    #[test]
    fn a_forked_copy_of_a_watched_process_is_not_a_root() {
        let (mut tree, mut a) = setup(&["comm:parent"]);
        // record::tests::fork names every child "parent": only exec/seed make roots.
        fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
        assert!(a.root_of(&tree, 10).is_none());
    }

    #[test]
    fn live_samples_sum_per_unit_and_ratio_follows_cpu() {
        let (mut tree, mut a) = setup(&["pid:10"]);
        fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
        fork_(&mut tree, &mut a, 11, 10, 3 * SEC);
        fork_(&mut tree, &mut a, 12, 11, 4 * SEC);
        let sample = |cpu11: u64, cpu12: u64| {
            HashMap::from([
                (
                    11,
                    ProcessSample {
                        start_ns: 3 * SEC,
                        cpu_ns: cpu11,
                        rss_bytes: 100,
                    },
                ),
                (
                    12,
                    ProcessSample {
                        start_ns: 4 * SEC,
                        cpu_ns: cpu12,
                        rss_bytes: 50,
                    },
                ),
            ])
        };
        a.apply_samples(&mut tree, &sample(0, 0), 10 * SEC);
        a.apply_samples(&mut tree, &sample(SEC, SEC / 2), 11 * SEC);
        let c = child_units(&a)[0];
        assert_eq!((c.live_rss_bytes, c.live_cpu_ns), (150, 3 * SEC / 2));
        assert!((c.cpu_ratio - 1.5).abs() < 1e-9, "{}", c.cpu_ratio);
        // Exit books the exact CPU and drops the live share at once: no double count.
        exit_(&mut tree, &mut a, 12, 4 * SEC, SEC);
        let c = child_units(&a)[0];
        assert_eq!((c.cpu_ns(), c.live_rss_bytes), (2 * SEC, 100));
        assert!((c.cpu_ratio - 1.0).abs() < 1e-9);
    }

    #[test]
    fn seeding_attributes_existing_subtrees() {
        let (mut tree, mut a) = setup(&["pid:10"]);
        for (pid, ppid, start) in [(10, 1, 2), (11, 10, 3), (12, 11, 4), (13, 10, 5)] {
            tree.on_fork(&fork(pid, ppid, start * SEC));
        }
        a.seed(&mut tree);
        assert_eq!(child_units(&a).len(), 2);
        let root = a.root_of(&tree, 10).unwrap();
        assert!(tree.get(12).unwrap().ext.units.contains(&root));
    }

    #[test]
    fn child_series_are_capped_and_exited_ones_expire() {
        let (mut tree, mut a) = setup(&["pid:10"]);
        a.cfg.max_child_series = 2;
        fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
        for pid in 11..15 {
            fork_(&mut tree, &mut a, pid, 10, pid as u64 * SEC);
        }
        assert_eq!(child_units(&a).iter().filter(|u| u.labelled).count(), 2);
        assert_eq!(a.child_overflowed, 2);
        exit_(&mut tree, &mut a, 11, 11 * SEC, 1);
        a.apply_samples(&mut tree, &HashMap::new(), 11 * SEC + SEC + 61 * SEC);
        assert_eq!(
            child_units(&a).len(),
            3,
            "the exited child expired after retention"
        );
        assert_eq!(a.labelled_children, 1);
    }

    #[test]
    fn cgroup_selector_roots_the_topmost_process_of_the_cgroup() {
        let (mut tree, mut a) = setup(&["cgroup:/system.slice/app.service"]);
        fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
        fork_(&mut tree, &mut a, 11, 10, 3 * SEC);
        a.set_cgroup(&mut tree, 1, SEC, "/init.scope", false);
        a.set_cgroup(&mut tree, 10, 2 * SEC, "/system.slice/app.service", false);
        a.set_cgroup(&mut tree, 11, 3 * SEC, "/system.slice/app.service", false);
        assert!(a.root_of(&tree, 10).is_some());
        assert!(a.root_of(&tree, 11).is_none());
        let names: Vec<&str> = a.workloads().map(|(n, _)| n.workload.as_str()).collect();
        assert!(
            names.contains(&"app.service") && names.contains(&"init.scope"),
            "{names:?}"
        );
    }

    #[test]
    fn unreadable_cgroups_keep_the_inherited_workload() {
        let (mut tree, mut a) = setup(&[]);
        fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
        a.set_cgroup(&mut tree, 10, 2 * SEC, "/system.slice/app.service", false);
        fork_(&mut tree, &mut a, 11, 10, 3 * SEC);
        tree.get_mut(11).unwrap().comm = crate::tree::Comm::from_bytes(b"rustc");
        assert!(a.cgroups_to_read(&tree, 10).contains(&(11, 3 * SEC)));
        a.cgroup_unreadable(&mut tree, 11, 3 * SEC);
        assert!(
            !a.cgroups_to_read(&tree, 10).contains(&(11, 3 * SEC)),
            "not retried"
        );
        let names: Vec<&str> = a.workloads().map(|(n, _)| n.workload.as_str()).collect();
        assert_eq!(names, ["_other", "app.service"], "no workload named rustc");
    }

    #[test]
    fn idle_workloads_are_released_after_retention() {
        let (mut tree, mut a) = setup(&[]);
        a.cfg.max_workloads = 1;
        fork_(&mut tree, &mut a, 10, 1, 2 * SEC);
        a.set_cgroup(
            &mut tree,
            10,
            2 * SEC,
            "/machine.slice/libpod-aaaaaaaaaaaaaaaa.scope",
            false,
        );
        let names = |a: &Attribution| -> Vec<String> {
            a.workloads().map(|(n, _)| n.workload.clone()).collect()
        };
        exit_(&mut tree, &mut a, 10, 2 * SEC, 1);
        a.apply_samples(&mut tree, &HashMap::new(), 10 * SEC);
        assert_eq!(
            names(&a),
            ["_other", "podman/aaaaaaaaaaaa"],
            "within retention"
        );
        a.apply_samples(&mut tree, &HashMap::new(), 71 * SEC);
        assert_eq!(
            names(&a),
            ["_other"],
            "released after 60 s without processes"
        );
        let released: Vec<String> = a
            .take_released()
            .iter()
            .map(|i| i.workload.clone())
            .collect();
        assert_eq!(released, ["podman/aaaaaaaaaaaa"]);
        // Its place goes to the next container, although the cap is 1.
        fork_(&mut tree, &mut a, 11, 1, 72 * SEC);
        a.set_cgroup(
            &mut tree,
            11,
            72 * SEC,
            "/machine.slice/libpod-bbbbbbbbbbbbbbbb.scope",
            false,
        );
        a.apply_samples(&mut tree, &HashMap::new(), 200 * SEC);
        assert_eq!(
            names(&a),
            ["_other", "podman/bbbbbbbbbbbb"],
            "a live one stays"
        );
        assert_eq!(a.workloads().nth(1).unwrap().1.processes, 1);
    }

    #[test]
    fn kernel_threads_share_one_workload() {
        let (mut tree, mut a) = setup(&[]);
        for (pid, comm) in [
            (2u32, "kthreadd"),
            (30, "kworker/0:1-events"),
            (31, "ksoftirqd/0"),
        ] {
            fork_(
                &mut tree,
                &mut a,
                pid,
                if pid == 2 { 0 } else { 2 },
                pid as u64 * SEC,
            );
            tree.get_mut(pid).unwrap().comm = crate::tree::Comm::from_bytes(comm.as_bytes());
            a.set_cgroup(&mut tree, pid, pid as u64 * SEC, "/", true);
        }
        let names: Vec<&str> = a.workloads().map(|(n, _)| n.workload.as_str()).collect();
        assert_eq!(names, ["_other", "kernel"]);
        assert!(a.is_kernel_thread(tree.get(30).unwrap()));
    }
}
