//! The run log: every process of one command's tree, exited ones included, fed by the
//! ingest path, and turned into the report's tree at the end.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use procmon_common::ExitRecord;

use super::report::{Node, Subtree};
use crate::{
    attribution::{ProcessTree, TrackedProcess},
    events::ExitStatus,
    record::{peak_rss_bytes, split_cpu},
    state::Observer,
    tree::{same_start, Comm},
};

#[derive(Debug, Clone)]
struct Exited {
    time_ns: u64,
    status: ExitStatus,
    user_ns: u64,
    system_ns: u64,
    peak_rss_bytes: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    pid: u32,
    ppid: u32,
    start_ns: u64,
    comm: Comm,
    exe: Option<Arc<str>>,
    exit: Option<Exited>,
}

/// Every process of one command's tree, exited ones included. Fed by the ingest path.
pub struct RunLog {
    root_pid: u32,
    entries: Vec<Entry>,
    /// pid → entry, for processes of the run that are still alive.
    live: HashMap<u32, usize>,
}

impl RunLog {
    /// Starts logging the tree rooted at `root_pid` (already forked, not yet exec'd).
    pub fn new(root_pid: u32, tree: &ProcessTree) -> Self {
        let mut log = Self {
            root_pid,
            entries: Vec::new(),
            live: HashMap::new(),
        };
        if let Some(p) = tree.get(root_pid) {
            log.add(p);
        }
        log
    }

    pub fn on_fork(&mut self, tree: &ProcessTree, pid: u32) {
        let Some(p) = tree.get(pid) else { return };
        if self.live.contains_key(&p.ppid) || (pid == self.root_pid && self.entries.is_empty()) {
            self.add(p);
        }
    }

    pub fn on_exec(&mut self, tree: &ProcessTree, pid: u32) {
        let (Some(&i), Some(p)) = (self.live.get(&pid), tree.get(pid)) else {
            return;
        };
        let entry = &mut self.entries[i];
        if same_start(entry.start_ns, p.start_ns) {
            entry.comm = p.comm;
            entry.exe = p.exe.clone();
        }
    }

    pub fn on_exit(&mut self, _gone: Option<&TrackedProcess>, r: &ExitRecord) {
        let status = ExitStatus::from_raw(r.exit_status);
        let Some(&i) = self.live.get(&r.pid) else {
            return;
        };
        if !same_start(self.entries[i].start_ns, r.start_ns) {
            return;
        }
        self.live.remove(&r.pid);
        let (user_ns, system_ns) = split_cpu(r.runtime_ns, r.utime_ns, r.stime_ns);
        let entry = &mut self.entries[i];
        entry.comm = Comm::from_raw(r.comm);
        entry.exit = Some(Exited {
            time_ns: r.time_ns,
            status,
            user_ns,
            system_ns,
            peak_rss_bytes: peak_rss_bytes(r),
        });
    }

    pub fn root_exited(&self) -> bool {
        self.entries.first().is_some_and(|e| e.exit.is_some())
    }

    fn add(&mut self, p: &TrackedProcess) {
        self.live.insert(p.pid, self.entries.len());
        self.entries.push(Entry {
            pid: p.pid,
            ppid: p.ppid,
            start_ns: p.start_ns,
            comm: p.comm,
            exe: p.exe.clone(),
            exit: None,
        });
    }

    /// The report: a tree of every process, with the live ones' latest samples.
    pub fn report(&self, tree: &ProcessTree, now_ns: u64) -> Option<Node> {
        let nodes: Vec<Node> = self
            .entries
            .iter()
            .map(|e| node_of(e, tree, now_ns))
            .collect();
        // Children by parent entry. Entries are logged at fork, so a child's parent is the
        // latest entry logged before it under that pid (a reused pid comes later).
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        let mut latest: HashMap<u32, usize> = HashMap::with_capacity(self.entries.len());
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                if let Some(&j) = latest.get(&e.ppid) {
                    children[j].push(i);
                }
            }
            latest.insert(e.pid, i);
        }
        let mut nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        // Entries are in start order, so children always come after their parent: build
        // subtrees from the back.
        for i in (0..nodes.len()).rev() {
            let mut kids: Vec<Node> = children[i]
                .iter()
                .filter_map(|&c| nodes[c].take())
                .collect();
            kids.sort_by(|a, b| b.subtree.cpu_seconds.total_cmp(&a.subtree.cpu_seconds));
            if let Some(node) = nodes[i].as_mut() {
                for k in &kids {
                    node.subtree.processes += k.subtree.processes;
                    node.subtree.cpu_seconds += k.subtree.cpu_seconds;
                    node.subtree.peak_rss_bytes =
                        node.subtree.peak_rss_bytes.max(k.subtree.peak_rss_bytes);
                }
                node.children = kids;
            }
        }
        nodes.into_iter().next().flatten()
    }
}

/// The run log as the state's observer, shared with `execute`, which reads it at the end.
#[derive(Clone)]
pub struct SharedRunLog(pub Arc<Mutex<RunLog>>);

impl SharedRunLog {
    pub fn lock(&self) -> MutexGuard<'_, RunLog> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Observer for SharedRunLog {
    fn on_fork(&mut self, tree: &ProcessTree, pid: u32) {
        self.lock().on_fork(tree, pid);
    }

    fn on_exec(&mut self, tree: &ProcessTree, pid: u32) {
        self.lock().on_exec(tree, pid);
    }

    fn on_exit(&mut self, gone: Option<&TrackedProcess>, r: &ExitRecord) {
        self.lock().on_exit(gone, r);
    }
}

/// One process of the report, with a live one's latest sample.
fn node_of(e: &Entry, tree: &ProcessTree, now_ns: u64) -> Node {
    let (end_ns, user, system, peak, status) = match &e.exit {
        Some(x) => (
            x.time_ns,
            x.user_ns,
            x.system_ns,
            x.peak_rss_bytes,
            Some(x.status),
        ),
        // Still running: its latest sample (CPU is not split for live processes).
        None => {
            let live = tree
                .get(e.pid)
                .filter(|p| same_start(p.start_ns, e.start_ns))
                .map(|p| p.ext.live)
                .unwrap_or_default();
            (now_ns, live.cpu_ns, 0, live.rss_bytes, None)
        }
    };
    let cpu_seconds = (user + system) as f64 / 1e9;
    Node {
        pid: e.pid,
        ppid: e.ppid,
        comm: e.comm.to_lossy(),
        exe: e.exe.as_deref().map(str::to_string),
        lifetime_seconds: end_ns.saturating_sub(e.start_ns) as f64 / 1e9,
        running: status.is_none(),
        outcome: status.map(|s| s.outcome()),
        exit_code: status.and_then(|s| s.code),
        signal: status.and_then(|s| s.signal),
        cpu_user_seconds: user as f64 / 1e9,
        cpu_system_seconds: system as f64 / 1e9,
        peak_rss_bytes: peak,
        subtree: Subtree {
            processes: 1,
            cpu_seconds,
            peak_rss_bytes: peak,
        },
        children: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{comm, exec, exit, fork};
    use crate::{
        events::Outcome,
        run::report::{render_text, RunReport},
    };

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn reports_the_whole_tree_with_totals_and_expensive_branches_first() {
        let mut tree = ProcessTree::new(100);
        tree.on_fork(&fork(10, 1, SEC));
        let mut log = RunLog::new(10, &tree);
        let ex = exec(10, 1, SEC, b"make", b"/usr/bin/make");
        tree.on_exec(&ex);
        log.on_exec(&tree, 10);
        for (pid, start) in [(11, 2), (12, 3)] {
            tree.on_fork(&fork(pid, 10, start * SEC));
            log.on_fork(&tree, pid);
        }
        tree.on_fork(&fork(13, 12, 4 * SEC));
        log.on_fork(&tree, 13);
        tree.on_fork(&fork(99, 1, 4 * SEC)); // not ours
        log.on_fork(&tree, 99);
        for (pid, start, status, runtime) in [
            (13, 4, 0, 5 * SEC),
            (12, 3, 11, SEC),
            (11, 2, 3 << 8, 2 * SEC),
            (10, 1, 0, 0),
        ] {
            let mut r = exit(pid, 0, start * SEC, status);
            r.runtime_ns = runtime;
            r.stime_ns = 0;
            r.comm = comm(if pid == 10 { b"make" } else { b"cc" });
            let gone = tree.on_exit(&r);
            log.on_exit(gone.as_ref(), &r);
        }
        assert!(log.root_exited());
        let root = log.report(&tree, 10 * SEC).unwrap();
        assert_eq!((root.comm.as_str(), root.subtree.processes), ("make", 4));
        assert!((root.subtree.cpu_seconds - 8.0).abs() < 1e-9);
        let pids: Vec<u32> = root.children.iter().map(|c| c.pid).collect();
        assert_eq!(pids, vec![12, 11], "12's subtree (6 s) before 11 (2 s)");
        assert_eq!(root.children[0].outcome, Some(Outcome::Crashed));
        assert_eq!(root.children[1].exit_code, Some(3));
        let text = render_text(&RunReport {
            command: vec!["make".into()],
            status: 0,
            exit_code: Some(0),
            signal: None,
            duration_seconds: 1.0,
            root: Some(root),
        });
        assert!(text.contains("4 processes"), "{text}");
        assert!(text.contains("└─ cc"), "{text}");
    }
}
