//! Attribution: CPU and memory rolled up per watched root, per direct child of a watched root
//! (its whole subtree, exited descendants included), and per workload.
//!
//! Every process carries its [`Accounting`]: the units it counts toward, inherited at fork,
//! so an event costs O(units of that process) and nothing walks the tree. Exited processes
//! add their exact final CPU to their units; live ones are summed from the latest sample.
//!
//! What is kept is bounded by the series caps, not by how fast watched processes fork:
//! children past `--max-child-series` share one `_other` unit per root and keep nothing of
//! their own, and exited units are kept for `--retain-exited` but at most
//! `--max-exited-series` of them (oldest dropped first, counted).

mod selector;
mod snapshot;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

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
    /// A direct child of a watched root that went to its root's `_other` unit: its exit
    /// ends one of the children that unit counts as running.
    pub overflow_head: bool,
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
            overflow_head: false,
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
    /// Every child of a watched root past the series cap, and their subtrees: one per root,
    /// kept as long as the root is, so its counters never go back.
    Overflow { root: UnitId },
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
    /// Overflow units: their children still running (they are alive while any is).
    pub live_heads: u64,
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
    /// Exited roots and children whose series are kept for `retain_exited_ns`.
    pub max_exited_series: usize,
    pub max_workloads: usize,
}

pub struct Attribution {
    cfg: AttributionConfig,
    units: BTreeMap<UnitId, Unit>,
    next_unit: UnitId,
    /// Places under --max-child-series in use: by live and exited child units, and by the
    /// evicted ones in `held_places` until their retention would have ended.
    labelled_children: usize,
    /// Exited roots and children, in the order they exited (entries of units gone since
    /// are skipped when met).
    exited: VecDeque<(u64, UnitId)>,
    exited_kept: usize,
    /// Each root's `_other` unit, once it has one.
    overflow_of: BTreeMap<UnitId, UnitId>,
    /// When the places of children evicted early return to the pool (their retention end):
    /// a place freed at once would go to the next child, so a fast-forking parent would
    /// create a new series per fork instead of per `retain_exited`.
    held_places: VecDeque<u64>,
    /// Child units that went to the overflow series because of the cap.
    pub child_overflowed: u64,
    /// Exited units dropped before their retention ended, past `max_exited_series`.
    pub exited_evicted: u64,
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
            exited: VecDeque::new(),
            exited_kept: 0,
            overflow_of: BTreeMap::new(),
            held_places: VecDeque::new(),
            child_overflowed: 0,
            exited_evicted: 0,
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

    /// Units kept in memory: roots, labelled children, one overflow unit per root with one.
    pub fn units_kept(&self) -> usize {
        self.units.len()
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
                let unit = self.child_unit(tree, root, child);
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
            let unit = self.child_unit(tree, root, pid);
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
            // Saturating: counters built from hostile records must not overflow.
            unit.exited_cpu_ns = unit.exited_cpu_ns.saturating_add(cpu_ns);
            unit.live_cpu_ns = unit.live_cpu_ns.saturating_sub(live.cpu_ns);
            unit.live_rss_bytes = unit.live_rss_bytes.saturating_sub(live.rss_bytes);
            unit.cpu_ratio = (unit.cpu_ratio - live.cpu_ratio).max(0.0);
            unit.peak_rss_bytes = unit.peak_rss_bytes.max(peak_rss_bytes);
            match unit.kind {
                UnitKind::Overflow { .. } if p.ext.overflow_head => {
                    unit.live_heads = unit.live_heads.saturating_sub(1);
                    if unit.live_heads == 0 {
                        unit.exited_at_ns = Some(now_ns);
                    }
                }
                UnitKind::Overflow { .. } => {}
                _ if unit.pid == p.pid && unit.start_ns == p.start_ns => {
                    unit.exited_at_ns = Some(now_ns);
                    self.exited.push_back((now_ns, *id));
                    self.exited_kept += 1;
                }
                _ => {}
            }
        }
        self.evict_past_cap(now_ns);
        let stats = self.stats(p.ext.workload);
        stats.exited_cpu_ns = stats.exited_cpu_ns.saturating_add(cpu_ns);
        stats.live_cpu_ns = stats.live_cpu_ns.saturating_sub(live.cpu_ns);
        stats.live_rss_bytes = stats.live_rss_bytes.saturating_sub(live.rss_bytes);
        stats.processes = stats.processes.saturating_sub(1);
    }

    /// CPU an exited process spent after its exit was attributed (its parent reaped it
    /// late, see release.rs): added where its exit was.
    pub fn on_late_cpu(&mut self, p: &TrackedProcess, cpu_ns: u64) {
        for id in &p.ext.units {
            if let Some(unit) = self.units.get_mut(id) {
                unit.exited_cpu_ns = unit.exited_cpu_ns.saturating_add(cpu_ns);
            }
        }
        let stats = self.stats(p.ext.workload);
        stats.exited_cpu_ns = stats.exited_cpu_ns.saturating_add(cpu_ns);
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

    /// The unit a new direct child of `root` counts toward: its own while there is a place
    /// under the cap, else the root's `_other` unit (made on first use), which it joins with
    /// nothing of its own.
    fn child_unit(&mut self, tree: &mut ProcessTree, root: UnitId, pid: u32) -> UnitId {
        if self.labelled_children < self.cfg.max_child_series {
            self.labelled_children += 1;
            return self.new_unit(tree, pid, UnitKind::Child { root });
        }
        self.child_overflowed += 1;
        let existing = self.overflow_of.get(&root).copied();
        let id = existing.unwrap_or_else(|| {
            let id = self.new_unit(tree, pid, UnitKind::Overflow { root });
            self.overflow_of.insert(root, id);
            id
        });
        let (start_ns, live) = match tree.get_mut(pid) {
            Some(p) => {
                p.ext.overflow_head = true;
                (p.start_ns, p.ext.live)
            }
            None => return id,
        };
        if let Some(unit) = self.units.get_mut(&id) {
            if existing.is_some() {
                unit.live_cpu_ns += live.cpu_ns;
                unit.live_rss_bytes += live.rss_bytes;
            }
            if unit.live_heads == 0 {
                // Its lifetime is that of the current run of children.
                unit.start_ns = start_ns;
                unit.exited_at_ns = None;
            }
            unit.live_heads += 1;
        }
        id
    }

    fn new_unit(&mut self, tree: &ProcessTree, pid: u32, kind: UnitKind) -> UnitId {
        let id = self.next_unit;
        self.next_unit += 1;
        let p = tree.get(pid).expect("units are made for tracked processes");
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
                live_heads: 0,
            },
        );
        id
    }

    /// Drops exited roots and children past their retention, oldest first (`exited` is in
    /// exit order), and gives back the places of children evicted early whose retention
    /// has ended.
    fn expire(&mut self, now_ns: u64) {
        let retain = self.cfg.retain_exited_ns;
        while let Some(&(at, id)) = self.exited.front() {
            if now_ns.saturating_sub(at) <= retain {
                break;
            }
            self.exited.pop_front();
            self.remove_exited(id, false);
        }
        while self
            .held_places
            .front()
            .is_some_and(|&until| until < now_ns)
        {
            self.held_places.pop_front();
            self.labelled_children -= 1;
        }
    }

    /// Past `max_exited_series` exited units, drops the oldest before their retention ends,
    /// counted. An evicted child's place stays taken until then (see `held_places`).
    fn evict_past_cap(&mut self, now_ns: u64) {
        while self.exited_kept > self.cfg.max_exited_series {
            let Some((at, id)) = self.exited.pop_front() else {
                break;
            };
            match self.remove_exited(id, true) {
                Some(UnitKind::Child { .. }) => {
                    // In order: `at` only grows, and so does `until`.
                    let until = at.saturating_add(self.cfg.retain_exited_ns).max(now_ns);
                    self.held_places.push_back(until);
                }
                Some(_) => {}
                None => continue,
            }
            self.exited_evicted += 1;
        }
    }

    /// Removes an exited unit (a root with its `_other` unit); its kind if it was still
    /// kept. An evicted child keeps its place under the cap (the caller holds it).
    fn remove_exited(&mut self, id: UnitId, evicted: bool) -> Option<UnitKind> {
        let unit = self.units.remove(&id)?;
        self.exited_kept -= 1;
        match unit.kind {
            UnitKind::Child { .. } if !evicted => self.labelled_children -= 1,
            UnitKind::Child { .. } | UnitKind::Overflow { .. } => {}
            UnitKind::Root { .. } => {
                if let Some(other) = self.overflow_of.remove(&id) {
                    self.units.remove(&other);
                }
            }
        }
        Some(unit.kind)
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
mod tests;
