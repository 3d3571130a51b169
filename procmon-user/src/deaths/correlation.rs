//! What the agent remembers about a death between its records: the OOM killer's choice of
//! victim and the memory cgroup of a crashing process both arrive before the process's exit
//! record, which then classifies and attributes the death.
//!
//! Keyed by (pid, start time), never pid alone (docs/architecture.md, rule 4). Bounded: an exit that
//! never arrives (lost records) must not leak, so the oldest entries go first.

use std::collections::{HashMap, VecDeque};

use procmon_common::{oom_flags, CgroupRecord, ExitRecord, OomKillRecord};

use crate::record::cgroup_path;

/// Deaths in flight at once. OOM kills and crashes are rare; this only bounds a loss storm.
const CAPACITY: usize = 1024;
/// Exits remembered to recognise a second exit record of the same process: duplicates
/// arrive within a millisecond, so this covers more than a fork storm's exits in between.
const RECENT_EXITS: usize = 16 * 1024;

type Key = (u32, u64);

/// A map that forgets its oldest entries past its capacity.
#[derive(Debug)]
struct Bounded<V> {
    map: HashMap<Key, V>,
    order: VecDeque<Key>,
    capacity: usize,
}

impl<V> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Inserts `key`; false when it was already there.
    fn insert(&mut self, key: Key, value: V) -> bool {
        let new = self.map.insert(key, value).is_none();
        if new {
            self.order.push_back(key);
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // Keys taken out by `take` leave stale order entries; drop them once they dominate.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
        new
    }

    fn take(&mut self, key: &Key) -> Option<V> {
        self.map.remove(key)
    }
}

/// What is known about a death when its exit record arrives.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Death {
    /// The OOM killer chose this process.
    pub oom_victim: bool,
    /// Its memory cgroup path, when the probe sent one (crash signals and SIGKILL).
    pub cgroup: Option<String>,
}

#[derive(Debug)]
pub struct Deaths {
    oom_victims: Bounded<()>,
    cgroups: Bounded<Option<String>>,
    exited: Bounded<()>,
}

impl Default for Deaths {
    fn default() -> Self {
        Deaths {
            oom_victims: Bounded::new(CAPACITY),
            cgroups: Bounded::new(CAPACITY),
            exited: Bounded::new(RECENT_EXITS),
        }
    }
}

impl Deaths {
    /// False for a second exit record of a process: before Linux 6.16, where the kernel
    /// cannot say which thread ended a group (no fentry on `taskstats_exit`), two threads
    /// exiting at once may each send one (procmon-ebpf/src/probes/exit.rs).
    pub fn first_exit(&mut self, r: &ExitRecord) -> bool {
        self.exited.insert((r.pid, r.start_ns), ())
    }

    pub fn on_oom_kill(&mut self, r: &OomKillRecord) {
        // Before Linux 6.8 only the pid is known: the start time stays 0 and matches by pid.
        let start = if r.flags & oom_flags::TASK != 0 {
            r.start_ns
        } else {
            0
        };
        self.oom_victims.insert((r.pid, start), ());
    }

    pub fn on_cgroup(&mut self, r: &CgroupRecord) {
        self.cgroups
            .insert((r.pid, r.start_ns), cgroup_path(&r.path));
    }

    /// Takes what was remembered about the exiting process.
    pub fn on_exit(&mut self, r: &ExitRecord) -> Death {
        if self.oom_victims.map.is_empty() && self.cgroups.map.is_empty() {
            return Death::default();
        }
        let key = (r.pid, r.start_ns);
        let oom_victim =
            self.oom_victims.take(&key).is_some() || self.oom_victims.take(&(r.pid, 0)).is_some();
        Death {
            oom_victim,
            cgroup: self.cgroups.take(&key).flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{cgroup, exit, oom_kill};

    #[test]
    fn remembers_victims_and_cgroups_by_identity() {
        let mut d = Deaths::default();
        d.on_oom_kill(&oom_kill(10, 1, 5));
        d.on_cgroup(&cgroup(10, 5, &["sys", "a.service"]));
        // Same pid, other process (pid reuse): nothing.
        assert_eq!(d.on_exit(&exit(10, 1, 6, 9)), Death::default());
        let death = d.on_exit(&exit(10, 1, 5, 9));
        assert!(death.oom_victim);
        assert_eq!(death.cgroup.as_deref(), Some("/sys/a.service"));
        // Taken: a second exit record (impossible, but lossy streams happen) gets nothing.
        assert_eq!(d.on_exit(&exit(10, 1, 5, 9)), Death::default());
    }

    #[test]
    fn a_second_exit_of_the_same_process_is_recognised() {
        let mut d = Deaths::default();
        assert!(d.first_exit(&exit(10, 1, 5, 9)));
        assert!(!d.first_exit(&exit(10, 1, 5, 9)), "same pid and start time");
        assert!(
            d.first_exit(&exit(10, 1, 6, 0)),
            "pid reused by another process"
        );
        for pid in 100..100 + RECENT_EXITS as u32 {
            d.first_exit(&exit(pid, 1, 5, 0));
        }
        assert_eq!(d.exited.map.len(), RECENT_EXITS, "bounded");
    }

    #[test]
    fn pid_only_victims_match_by_pid() {
        let mut d = Deaths::default();
        let mut r = oom_kill(10, 1, 5);
        r.flags &= !oom_flags::TASK;
        d.on_oom_kill(&r);
        assert!(d.on_exit(&exit(10, 1, 77, 9)).oom_victim);
    }

    #[test]
    fn stays_bounded_when_exits_are_lost() {
        let mut d = Deaths::default();
        for pid in 0..10 * CAPACITY as u32 {
            d.on_oom_kill(&oom_kill(pid, 1, 5));
        }
        assert_eq!(d.oom_victims.map.len(), CAPACITY);
        assert!(d.oom_victims.order.len() <= 2 * CAPACITY + 64);
        // The newest are kept.
        let last = 10 * CAPACITY as u32 - 1;
        assert!(d.on_exit(&exit(last, 1, 5, 9)).oom_victim);
    }
}
