//! The process tree: every live process, keyed by pid and checked by start time (pids are
//! reused), with parent links kept in an index so reparenting and subtree walks are cheap.
//!
//! It tolerates what a lossy event stream does: exec or exit before any fork was seen, exits
//! of unknown processes, pid reuse after a missed exit. It is bounded: past `capacity` the
//! oldest entries are evicted and counted.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use procmon_common::{fork_flags, ExecRecord, ExitRecord, ForkRecord};

pub use crate::comm::Comm;
use crate::{
    comm::c_str,
    procfs::{tick_ns, ProcSnapshot},
};

/// What a layer above the tree keeps per process (attribution keeps where its CPU and
/// memory count), so the tree carries it without knowing what it is.
pub trait Extension: Clone + Default + std::fmt::Debug + PartialEq {
    /// What a forked child starts with, given its parent's.
    fn inherit(&self) -> Self;
}

impl Extension for () {
    fn inherit(&self) -> Self {}
}

#[derive(Debug, Clone, PartialEq)]
pub struct Process<X = ()> {
    pub pid: u32,
    pub ppid: u32,
    /// Boottime ns of the process start; tick-precise for processes seeded from /proc.
    pub start_ns: u64,
    pub comm: Comm,
    /// The image it last exec'd, when seen (inherited across fork).
    pub exe: Option<Arc<str>>,
    /// PR_SET_CHILD_SUBREAPER was seen set on it: orphans below it are reparented to it.
    pub subreaper: bool,
    /// The extension's state for this process; inherited at fork.
    pub ext: X,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub evictions: u64,
    pub reconciled_added: u64,
    pub reconciled_removed: u64,
    /// A pid reappeared with a new start time while the old entry was still tracked.
    pub pid_reuse: u64,
}

pub struct Tree<X = ()> {
    procs: HashMap<u32, Process<X>>,
    /// (ppid, pid) for every tracked process: children of P are the range (P, _).
    children: BTreeSet<(u32, u32)>,
    /// Insertion order, for evicting the oldest; stale entries are skipped lazily.
    order: VecDeque<(u32, u64)>,
    capacity: usize,
    stats: TreeStats,
}

/// Whether two start times name the same process (of one pid).
///
/// The probes and the task iterator report start times in exact ns; /proc reports clock
/// ticks, which the snapshots turn into whole multiples of [`tick_ns`]. Exact times are
/// compared exactly: a pid can be reused within one tick (a fork storm with few free pids and
/// auto-reaped children does it), and two such processes must stay apart. A tick-precise
/// time can only be compared by its tick. NB: an exact time that happens to be a whole tick
/// (one in 10^7) is compared by its tick too, which only matters if its pid is reused within
/// that tick.
pub fn same_start(a: u64, b: u64) -> bool {
    let tick = tick_ns();
    if a.is_multiple_of(tick) || b.is_multiple_of(tick) {
        a / tick == b / tick
    } else {
        a == b
    }
}

impl<X: Extension> Tree<X> {
    pub fn new(capacity: usize) -> Self {
        Self {
            procs: HashMap::new(),
            children: BTreeSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            stats: TreeStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn stats(&self) -> TreeStats {
        self.stats
    }

    pub fn get(&self, pid: u32) -> Option<&Process<X>> {
        self.procs.get(&pid)
    }

    /// The tracked process `pid` if it is the one that started at `start_ns`.
    pub fn get_exact(&self, pid: u32, start_ns: u64) -> Option<&Process<X>> {
        self.procs
            .get(&pid)
            .filter(|p| same_start(p.start_ns, start_ns))
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Process<X>> {
        self.procs.get_mut(&pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Process<X>> {
        self.procs.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Process<X>> {
        self.procs.values_mut()
    }

    /// The ancestors of a process whose parent is `ppid`, nearest first, up to the root.
    /// A pid the tree does not know ends the walk, with no comm.
    pub fn ancestry(&self, ppid: u32) -> Vec<(u32, Option<Comm>)> {
        let mut out = Vec::new();
        let mut pid = ppid;
        // Bounded: a corrupted (cyclic) parent chain must not hang the agent.
        while pid != 0 && out.len() < 256 {
            match self.procs.get(&pid) {
                Some(p) => {
                    out.push((pid, Some(p.comm)));
                    if p.ppid == pid {
                        break;
                    }
                    pid = p.ppid;
                }
                None => {
                    out.push((pid, None));
                    break;
                }
            }
        }
        out
    }

    pub fn children_of(&self, pid: u32) -> impl Iterator<Item = u32> + '_ {
        self.children
            .range((pid, 0)..=(pid, u32::MAX))
            .map(|&(_, c)| c)
    }

    /// Loads a /proc snapshot, oldest first (so eviction order follows start time).
    pub fn seed(&mut self, mut snapshot: Vec<ProcSnapshot>) {
        snapshot.sort_by_key(|s| s.start_ns);
        for s in snapshot {
            self.upsert(Process::from(s));
        }
    }

    pub fn on_fork(&mut self, r: &ForkRecord) {
        let parent = self
            .procs
            .get_mut(&r.ppid)
            .filter(|p| same_start(p.start_ns, r.parent_start_ns));
        let mut exe = None;
        let mut ext = X::default();
        if let Some(parent) = parent {
            parent.subreaper |= r.flags & fork_flags::PARENT_IS_SUBREAPER != 0;
            exe = parent.exe.clone();
            ext = parent.ext.inherit();
        }
        self.upsert(Process {
            pid: r.pid,
            ppid: r.ppid,
            start_ns: r.start_ns,
            comm: Comm::from_raw(r.comm),
            exe,
            subreaper: false,
            ext,
        });
    }

    /// Returns the comm the process had before the exec, when it was known.
    pub fn on_exec(&mut self, r: &ExecRecord) -> Option<Comm> {
        let old_comm = self.get_exact(r.pid, r.start_ns).map(|p| p.comm);
        let exe: Arc<str> = String::from_utf8_lossy(c_str(&r.filename)).into();
        // Exec before any fork was seen: inherit from the parent as a fork would have.
        let ext = self
            .procs
            .get(&r.ppid)
            .map(|p| p.ext.inherit())
            .unwrap_or_default();
        self.upsert(Process {
            pid: r.pid,
            ppid: r.ppid,
            start_ns: r.start_ns,
            comm: Comm::from_raw(r.comm),
            exe: Some(exe),
            subreaper: false,
            ext,
        });
        old_comm
    }

    /// Removes the exiting process, reparents its children, and returns it if it was tracked.
    pub fn on_exit(&mut self, r: &ExitRecord) -> Option<Process<X>> {
        self.get_exact(r.pid, r.start_ns)?;
        let gone = self.remove(r.pid)?;
        let orphans: Vec<u32> = self.children_of(gone.pid).collect();
        if !orphans.is_empty() {
            let reaper = self.find_reaper(gone.ppid);
            for child in orphans {
                self.set_parent(child, reaper);
            }
        }
        Some(gone)
    }

    /// Fixes the tree against a /proc snapshot taken from `scan_started_ns` (boottime) on.
    /// `recheck` re-reads one process now: it is called with the tree locked, so a process it
    /// finds alive cannot have had its exit applied already.
    pub fn reconcile(
        &mut self,
        snapshot: &[ProcSnapshot],
        scan_started_ns: u64,
        recheck: impl Fn(u32) -> Option<ProcSnapshot>,
    ) {
        let live: HashMap<u32, &ProcSnapshot> = snapshot.iter().map(|s| (s.pid, s)).collect();
        // Missed exits: tracked, older than the scan, absent from it. (Younger ones may have
        // been forked after the scan read their /proc slot.)
        let gone: Vec<u32> = self
            .procs
            .values()
            .filter(|p| p.start_ns < scan_started_ns)
            .filter(|p| {
                !live
                    .get(&p.pid)
                    .is_some_and(|s| same_start(s.start_ns, p.start_ns))
            })
            .map(|p| p.pid)
            .collect();
        for pid in gone {
            self.remove(pid);
            self.stats.reconciled_removed += 1;
        }
        for s in snapshot {
            match self.procs.get(&s.pid) {
                Some(p) if same_start(p.start_ns, s.start_ns) => {
                    // Reparenting we could not infer (the old parent was never tracked).
                    if p.ppid != s.ppid && !self.procs.contains_key(&p.ppid) {
                        self.set_parent(s.pid, s.ppid);
                    }
                }
                _ => {
                    if let Some(now) = recheck(s.pid).filter(|n| same_start(n.start_ns, s.start_ns))
                    {
                        self.upsert(Process::from(now));
                        self.stats.reconciled_added += 1;
                    }
                }
            }
        }
        self.compact_order();
    }

    /// Where the kernel sends orphans: the nearest subreaper ancestor, else init.
    fn find_reaper(&self, mut ancestor: u32) -> u32 {
        // Bounded: a corrupted (cyclic) parent chain must not hang the agent.
        for _ in 0..1024 {
            match self.procs.get(&ancestor) {
                Some(a) if a.subreaper => return ancestor,
                Some(a) if a.ppid != 0 && a.ppid != ancestor => ancestor = a.ppid,
                _ => break,
            }
        }
        1
    }

    fn upsert(&mut self, new: Process<X>) {
        match self.procs.get_mut(&new.pid) {
            Some(p) if same_start(p.start_ns, new.start_ns) => {
                let ppid = new.ppid;
                // A process seeded from /proc learns its exact start from its first record.
                if !new.start_ns.is_multiple_of(tick_ns()) {
                    p.start_ns = new.start_ns;
                }
                p.comm = new.comm;
                if new.exe.is_some() {
                    p.exe = new.exe;
                }
                if p.ppid != ppid {
                    self.set_parent(new.pid, ppid);
                }
            }
            Some(_) => {
                self.remove(new.pid);
                self.stats.pid_reuse += 1;
                self.insert(new);
            }
            None => self.insert(new),
        }
    }

    fn insert(&mut self, p: Process<X>) {
        while self.procs.len() >= self.capacity {
            if !self.evict_oldest() {
                break;
            }
        }
        self.children.insert((p.ppid, p.pid));
        self.order.push_back((p.pid, p.start_ns));
        self.procs.insert(p.pid, p);
        self.compact_order();
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((pid, start)) = self.order.pop_front() {
            if self
                .procs
                .get(&pid)
                .is_some_and(|p| same_start(p.start_ns, start))
            {
                self.remove(pid);
                self.stats.evictions += 1;
                return true;
            }
        }
        false
    }

    /// Drops order entries of processes that are gone once they outnumber the live ones.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.procs.len() + 1024 {
            let procs = &self.procs;
            self.order.retain(|(pid, start)| {
                procs
                    .get(pid)
                    .is_some_and(|p| same_start(p.start_ns, *start))
            });
        }
    }

    fn remove(&mut self, pid: u32) -> Option<Process<X>> {
        let p = self.procs.remove(&pid)?;
        self.children.remove(&(p.ppid, pid));
        Some(p)
    }

    fn set_parent(&mut self, pid: u32, ppid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            self.children.remove(&(p.ppid, pid));
            p.ppid = ppid;
            self.children.insert((ppid, pid));
        }
    }
}

impl<X: Default> From<ProcSnapshot> for Process<X> {
    fn from(s: ProcSnapshot) -> Self {
        Process {
            pid: s.pid,
            ppid: s.ppid,
            start_ns: s.start_ns,
            comm: s.comm,
            exe: None,
            subreaper: false,
            ext: X::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{exec, exit, fork};

    const SEC: u64 = 1_000_000_000;

    fn snap(pid: u32, ppid: u32, start_ns: u64) -> ProcSnapshot {
        ProcSnapshot {
            pid,
            ppid,
            start_ns,
            comm: Comm::from_bytes(b"seeded"),
        }
    }

    fn tree_with_init() -> Tree {
        let mut t = Tree::<()>::new(100);
        t.seed(vec![snap(1, 0, SEC)]);
        t
    }

    #[test]
    fn fork_exec_exit_lifecycle() {
        let mut t = tree_with_init();
        t.on_fork(&fork(10, 1, 2 * SEC));
        assert_eq!(t.children_of(1).collect::<Vec<_>>(), vec![10]);
        let old = t.on_exec(&exec(10, 1, 2 * SEC, b"true", b"/usr/bin/true"));
        assert_eq!(old.unwrap().as_bytes(), b"parent");
        assert_eq!(t.get(10).unwrap().exe.as_deref(), Some("/usr/bin/true"));
        assert_eq!(
            t.on_exit(&exit(10, 1, 2 * SEC, 0)).unwrap().comm.as_bytes(),
            b"true"
        );
        assert!(t.get(10).is_none());
        assert_eq!(t.children_of(1).count(), 0);
    }

    #[test]
    fn exec_before_fork_creates_the_process() {
        let mut t = tree_with_init();
        assert!(t
            .on_exec(&exec(20, 1, 3 * SEC, b"sh", b"/bin/sh"))
            .is_none());
        assert_eq!(t.get(20).unwrap().ppid, 1);
        // The late fork record refreshes, it does not duplicate or count as reuse.
        t.on_fork(&fork(20, 1, 3 * SEC));
        assert_eq!(t.len(), 2);
        assert_eq!(t.stats().pid_reuse, 0);
    }

    #[test]
    fn exit_of_unknown_or_other_process_is_ignored() {
        let mut t = tree_with_init();
        assert!(t.on_exit(&exit(99, 1, 5 * SEC, 0)).is_none());
        t.on_fork(&fork(30, 1, 5 * SEC));
        // Same pid, different start: a different (older) process; ours stays.
        assert!(t.on_exit(&exit(30, 1, 4 * SEC, 0)).is_none());
        assert!(t.get(30).is_some());
    }

    #[test]
    fn a_pid_reused_within_one_tick_is_another_process() {
        let mut t = tree_with_init();
        // Exact (probe) start times 1 ms apart: one /proc tick, two processes.
        let (old, new) = (5 * SEC + 1_000_001, 5 * SEC + 2_000_003);
        t.on_fork(&fork(40, 1, old));
        assert!(t.on_exit(&exit(40, 1, old, 0)).is_some());
        t.on_fork(&fork(40, 1, new));
        // A second exit record of the old process (or one arriving late) is not the new one's.
        assert!(t.on_exit(&exit(40, 1, old, 0)).is_none());
        assert_eq!(t.get(40).unwrap().start_ns, new);
        assert_eq!(t.stats().pid_reuse, 0);
        // A /proc snapshot (tick precision) still names the exact one.
        assert!(same_start(5 * SEC, new));
    }

    #[test]
    fn a_seeded_process_learns_its_exact_start() {
        let mut t = tree_with_init();
        t.seed(vec![snap(50, 1, 5 * SEC)]);
        t.on_exec(&exec(50, 1, 5 * SEC + 3_000_007, b"x", b"/x"));
        assert_eq!(t.get(50).unwrap().start_ns, 5 * SEC + 3_000_007);
        assert!(t.on_exit(&exit(50, 1, 5 * SEC + 3_000_007, 0)).is_some());
    }

    #[test]
    fn pid_reuse_replaces_the_stale_entry() {
        let mut t = tree_with_init();
        t.on_fork(&fork(40, 1, 5 * SEC));
        t.on_fork(&fork(41, 40, 6 * SEC));
        t.on_fork(&fork(40, 1, 7 * SEC)); // old 40's exit was lost
        assert_eq!(t.get(40).unwrap().start_ns, 7 * SEC);
        assert_eq!(t.stats().pid_reuse, 1);
        assert_eq!(t.children_of(1).filter(|&c| c == 40).count(), 1);
    }

    #[test]
    fn orphans_go_to_the_nearest_subreaper() {
        let mut t = tree_with_init();
        t.on_fork(&fork(50, 1, 2 * SEC)); // the supervisor
        let mut f = fork(51, 50, 3 * SEC); // its child; the record says 50 is a subreaper
        f.parent_start_ns = 2 * SEC;
        f.flags = fork_flags::PARENT_IS_SUBREAPER;
        t.on_fork(&f);
        t.on_fork(&fork(52, 51, 4 * SEC)); // grandchild
        t.on_exit(&exit(51, 50, 3 * SEC, 0));
        assert_eq!(t.get(52).unwrap().ppid, 50);
        assert_eq!(t.children_of(50).collect::<Vec<_>>(), vec![52]);
    }

    #[test]
    fn orphans_without_subreaper_go_to_init() {
        let mut t = tree_with_init();
        t.on_fork(&fork(60, 1, 2 * SEC));
        t.on_fork(&fork(61, 60, 3 * SEC));
        t.on_exit(&exit(60, 1, 2 * SEC, 0));
        assert_eq!(t.get(61).unwrap().ppid, 1);
    }

    #[test]
    fn eviction_at_the_bound_removes_oldest_and_counts() {
        let mut t = Tree::<()>::new(3);
        for (i, pid) in [100, 101, 102, 103, 104].into_iter().enumerate() {
            t.on_fork(&fork(pid, 1, (i as u64 + 1) * SEC));
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.stats().evictions, 2);
        assert!(t.get(100).is_none() && t.get(101).is_none() && t.get(104).is_some());
    }

    #[test]
    fn eviction_order_stays_bounded_under_churn() {
        let mut t = Tree::<()>::new(10);
        for i in 0..100_000u32 {
            let start = (i as u64 + 1) * SEC;
            t.on_fork(&fork(1000 + i, 1, start));
            t.on_exit(&exit(1000 + i, 1, start, 0));
        }
        assert_eq!(t.len(), 0);
        assert!(
            t.order.len() <= 1024 + 1,
            "order index leaked: {}",
            t.order.len()
        );
    }

    #[test]
    fn reconcile_removes_missed_exits_and_adds_missed_forks() {
        let mut t = tree_with_init();
        t.on_fork(&fork(70, 1, 2 * SEC)); // its exit will be "lost"
        t.on_fork(&fork(71, 1, 20 * SEC)); // forked after the scan started: must stay
        let snapshot = vec![snap(1, 0, SEC), snap(72, 1, 3 * SEC), snap(73, 1, 4 * SEC)];
        // 73 exited (and its exit was applied) between the scan and now: recheck says gone.
        t.reconcile(&snapshot, 10 * SEC, |pid| {
            (pid == 72).then(|| snap(72, 1, 3 * SEC))
        });
        assert!(t.get(70).is_none());
        assert!(t.get(71).is_some());
        assert!(t.get(72).is_some());
        assert!(t.get(73).is_none());
        let s = t.stats();
        assert_eq!((s.reconciled_removed, s.reconciled_added), (1, 1));
    }

    #[test]
    fn ancestry_walks_to_the_root() {
        let mut t = tree_with_init();
        t.on_fork(&fork(80, 1, 2 * SEC));
        t.on_fork(&fork(81, 80, 3 * SEC));
        let a = t.ancestry(81);
        let pids: Vec<u32> = a.iter().map(|(p, _)| *p).collect();
        assert_eq!(pids, [81, 80, 1]);
        assert_eq!(a[2].1.unwrap().as_bytes(), b"seeded");
        assert_eq!(t.ancestry(999), [(999, None)]);
        assert!(t.ancestry(0).is_empty());
    }

    #[test]
    fn hostile_comm_bytes_survive() {
        let c = Comm::from_bytes(b"a\"b\\c\nd\xff\xfe");
        assert_eq!(c.as_bytes(), b"a\"b\\c\nd\xff\xfe");
        assert_eq!(c.to_lossy(), "a\"b\\c\nd\u{fffd}\u{fffd}");
        assert_eq!(
            Comm::from_bytes(&[b'x'; 40]).as_bytes().len(),
            procmon_common::COMM_LEN - 1
        );
    }
}
