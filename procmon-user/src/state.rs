//! The agent's state: the process tree and what is attributed over it, changed together,
//! one record at a time, by [`State::apply`], under one lock ([`Shared`]).
//!
//! Commands that follow the tree (`procmon run`'s log) register an [`Observer`]; the state
//! calls it after each change and never knows what it is.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use procmon_common::{ExecRecord, ExitRecord, ForkRecord};

use crate::{
    attribution::{Attribution, ProcessSample, ProcessTree, TrackedProcess},
    profile::{collect::Sampled, ProfileState},
    record::{peak_rss_bytes, Record},
    tree::Comm,
};

/// Follows the tree's changes: told after each record is applied.
pub trait Observer: Send {
    fn on_fork(&mut self, tree: &ProcessTree, pid: u32);
    fn on_exec(&mut self, tree: &ProcessTree, pid: u32);
    /// `gone` is the process as the tree knew it, if it did.
    fn on_exit(&mut self, gone: Option<&TrackedProcess>, r: &ExitRecord);
    /// A drain of CPU samples (`procmon profile` collects them).
    fn on_cpu_samples(&mut self, _tree: &ProcessTree, _sampled: &[Sampled]) {}
}

/// What applying a record changed, for the ingest path to count and render.
#[derive(Debug)]
pub enum Applied {
    Fork,
    /// The name the process had before the exec, when it was known.
    Exec {
        old_comm: Option<Comm>,
    },
    /// The process the exit removed, if the tree knew it. What it is attributed waits for
    /// its final CPU ([`State::finish_exit`]).
    Exit {
        gone: Option<TrackedProcess>,
    },
    /// A record that does not change the tree (OOM kills, cgroups of dying processes,
    /// releases).
    Unchanged,
}

pub struct State {
    pub tree: ProcessTree,
    pub attribution: Attribution,
    /// Recent stacks and pegged processes (profile/).
    pub profile: ProfileState,
    observer: Option<Box<dyn Observer>>,
}

impl State {
    pub fn new(tree: ProcessTree, attribution: Attribution) -> Self {
        State {
            tree,
            attribution,
            profile: ProfileState::default(),
            observer: None,
        }
    }

    /// Registers the observer (one at a time: `procmon run` is the only one).
    pub fn observe(&mut self, observer: Box<dyn Observer>) {
        self.observer = Some(observer);
    }

    pub fn apply(&mut self, record: &Record) -> Applied {
        match record {
            Record::Fork(r) => {
                self.apply_fork(r);
                Applied::Fork
            }
            Record::Exec(r) => Applied::Exec {
                old_comm: self.apply_exec(r),
            },
            Record::Exit(r) => Applied::Exit {
                gone: self.tree.on_exit(r),
            },
            Record::OomKill(_) | Record::Cgroup(_) | Record::Release(_) => Applied::Unchanged,
        }
    }

    fn apply_fork(&mut self, r: &ForkRecord) {
        self.tree.on_fork(r);
        self.attribution.on_fork(&mut self.tree, r.pid);
        if let Some(o) = &mut self.observer {
            o.on_fork(&self.tree, r.pid);
        }
    }

    fn apply_exec(&mut self, r: &ExecRecord) -> Option<Comm> {
        let old_comm = self.tree.on_exec(r);
        self.attribution.on_exec(&mut self.tree, r.pid);
        self.profile.on_exec(r.pid);
        if let Some(o) = &mut self.observer {
            o.on_exec(&self.tree, r.pid);
        }
        old_comm
    }

    /// Attributes an exit the tree has applied, `r` carrying its final CPU (release.rs).
    pub fn finish_exit(&mut self, gone: Option<&TrackedProcess>, r: &ExitRecord) {
        if let Some(p) = gone {
            self.attribution
                .on_exit(p, r.runtime_ns, peak_rss_bytes(r), r.time_ns);
        }
        if let Some(o) = &mut self.observer {
            o.on_exit(gone, r);
        }
    }

    /// CPU an exited process spent after its exit was reported (release.rs).
    pub fn late_cpu(&mut self, p: &TrackedProcess, cpu_ns: u64) {
        self.attribution.on_late_cpu(p, cpu_ns);
    }

    /// Watches `pid` (already forked): its children are attributed individually.
    pub fn watch_pid(&mut self, pid: u32) {
        self.attribution.watch_pid(&mut self.tree, pid);
    }

    /// A sampling pass's figures for the live processes.
    pub fn apply_samples(&mut self, samples: &HashMap<u32, ProcessSample>, now_ns: u64) {
        self.attribution
            .apply_samples(&mut self.tree, samples, now_ns);
    }

    /// A drain of CPU samples, symbolized.
    pub fn record_cpu_samples(&mut self, sampled: &[Sampled], now_ns: u64) {
        self.profile.record(&self.tree, sampled, now_ns);
        if let Some(o) = &mut self.observer {
            o.on_cpu_samples(&self.tree, sampled);
        }
    }

    /// A process whose cgroup could not be read (it exited first): not asked for again.
    pub fn cgroup_unreadable(&mut self, pid: u32, start_ns: u64) {
        self.attribution
            .cgroup_unreadable(&mut self.tree, pid, start_ns);
    }

    /// The memory cgroup read from /proc for a process, and whether it is a kernel thread.
    pub fn set_cgroup(&mut self, pid: u32, start_ns: u64, path: &str, kernel_thread: bool) {
        self.attribution
            .set_cgroup(&mut self.tree, pid, start_ns, path, kernel_thread);
    }
}

/// The state as the reader, the sampler, the reconciler and scrapes share it.
pub struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub fn new(tree: ProcessTree, attribution: Attribution) -> Self {
        Shared {
            state: Mutex::new(State::new(tree, attribution)),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the agent's metrics down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
