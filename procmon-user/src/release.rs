//! Exits waiting for their process's release, which brings the final CPU figures.
//!
//! The exit record is sent at the exit tracepoint, before the exit path finishes spending
//! CPU; the release record (procmon-ebpf/src/probes/release.rs) comes once the parent has
//! reaped the process, usually milliseconds later. An exit is held until its release, so its
//! event, the `procmon run` report and the counters get the CPU `wait4()` reports. A parent
//! that leaves its child a zombie must not hold the exit back indefinitely: past
//! [`RELEASE_WAIT`] the exit goes out with the CPU read at the exit tracepoint, and when the
//! release does come, what it adds is attributed to the counters then (they are cumulative).
//!
//! Everything is keyed by (pid, start time): the release of an old process may arrive after
//! its pid was reused.

use std::collections::{HashMap, VecDeque};

use procmon_common::{ExitRecord, ReleaseRecord};

use crate::attribution::TrackedProcess;

/// How long an exit waits for its release before it is reported with the CPU read at exit.
/// Releases follow the reap by an RCU grace period (a few ms); a parent busy for longer, or
/// one that keeps zombies, gets its children's exits at this bound.
pub const RELEASE_WAIT_NS: u64 = 1_000_000_000;
/// Exits held at most: past it the oldest go out without waiting (a mass exit whose parents
/// do not reap).
const MAX_HELD: usize = 65_536;
/// Exits reported without their release that are remembered for it, at most (oldest
/// forgotten first; their late CPU is then not attributed, and counted).
const MAX_LATE: usize = 65_536;

type Key = (u32, u64);

/// An exit waiting for its release, with what was learnt when it arrived (`T`: the
/// ingest path's classification of the death).
pub struct Held<T> {
    pub record: ExitRecord,
    pub class: T,
    /// The process as the tree knew it before the exit removed it.
    pub gone: Option<TrackedProcess>,
    pub deadline_ns: u64,
}

/// An exit reported before its release: what its release will still add.
struct Late {
    runtime_ns: u64,
    process: TrackedProcess,
}

/// What a release record completes.
pub enum Released<T> {
    /// A held exit, its CPU now final.
    Held(Held<T>),
    /// An exit already reported: the CPU the exit path spent after the exit tracepoint,
    /// for the counters only.
    Late {
        process: TrackedProcess,
        cpu_ns: u64,
    },
    /// No exit was seen for it.
    Unseen,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseStats {
    /// Exits reported without their release (the parent had not reaped in time).
    pub reported_early: u64,
    /// Releases of exits reported early, whose late CPU was attributed.
    pub late: u64,
    /// Exits reported early that were forgotten before their release came.
    pub late_forgotten: u64,
}

pub struct Awaiting<T> {
    held: HashMap<Key, Held<T>>,
    /// Arrival order of held exits, for expiry; entries already released are skipped.
    order: VecDeque<Key>,
    late: HashMap<Key, Late>,
    late_order: VecDeque<Key>,
    pub stats: ReleaseStats,
}

impl<T> Default for Awaiting<T> {
    fn default() -> Self {
        Self {
            held: HashMap::new(),
            order: VecDeque::new(),
            late: HashMap::new(),
            late_order: VecDeque::new(),
            stats: ReleaseStats::default(),
        }
    }
}

impl<T> Awaiting<T> {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Holds an exit (arrived at `now_ns`) until its release. Returns the exits that must go
    /// out now to keep within the bound.
    pub fn hold(
        &mut self,
        record: ExitRecord,
        class: T,
        gone: Option<TrackedProcess>,
        now_ns: u64,
    ) -> Vec<Held<T>> {
        let key = (record.pid, record.start_ns);
        self.order.push_back(key);
        self.held.insert(
            key,
            Held {
                record,
                class,
                gone,
                // Saturating: a garbage record's time must not overflow (found by fuzzing).
                deadline_ns: now_ns.saturating_add(RELEASE_WAIT_NS),
            },
        );
        let mut out = Vec::new();
        while self.held.len() > MAX_HELD {
            match self.pop_oldest() {
                Some(h) => out.push(h),
                None => break,
            }
        }
        out
    }

    /// Completes what the release record `r` ends.
    pub fn release(&mut self, r: &ReleaseRecord) -> Released<T> {
        let key = (r.pid, r.start_ns);
        if let Some(mut held) = self.held.remove(&key) {
            let exit = &mut held.record;
            // Final: the exit path's own CPU included. The counters only grow, so a release
            // read can never be below the exit's; max() guards a misread anyway.
            exit.utime_ns = exit.utime_ns.max(r.utime_ns);
            exit.stime_ns = exit.stime_ns.max(r.stime_ns);
            exit.runtime_ns = exit.runtime_ns.max(r.runtime_ns);
            exit.maxrss_kb = exit.maxrss_kb.max(r.maxrss_kb);
            return Released::Held(held);
        }
        if let Some(late) = self.late.remove(&key) {
            self.stats.late += 1;
            return Released::Late {
                process: late.process,
                cpu_ns: r.runtime_ns.saturating_sub(late.runtime_ns),
            };
        }
        Released::Unseen
    }

    /// Exits whose release was not submitted within [`RELEASE_WAIT_NS`] of their exit, once
    /// the ring has been read up to `now_ns`.
    pub fn expired(&mut self, now_ns: u64) -> Vec<Held<T>> {
        let mut out = Vec::new();
        while let Some(key) = self.order.front() {
            match self.held.get(key) {
                Some(h) if h.deadline_ns > now_ns => break,
                Some(_) => out.extend(self.pop_oldest()),
                None => {
                    self.order.pop_front();
                }
            }
        }
        out
    }

    /// Every held exit, at shutdown.
    pub fn drain(&mut self) -> Vec<Held<T>> {
        let mut out = Vec::new();
        while let Some(h) = self.pop_oldest() {
            out.push(h);
        }
        out
    }

    fn pop_oldest(&mut self) -> Option<Held<T>> {
        while let Some(key) = self.order.pop_front() {
            if let Some(held) = self.held.remove(&key) {
                self.stats.reported_early += 1;
                if let Some(process) = held.gone.clone() {
                    self.remember_late(key, held.record.runtime_ns, process);
                }
                return Some(held);
            }
        }
        None
    }

    fn remember_late(&mut self, key: Key, runtime_ns: u64, process: TrackedProcess) {
        while self.late.len() >= MAX_LATE {
            let Some(old) = self.late_order.pop_front() else {
                break;
            };
            if self.late.remove(&old).is_some() {
                self.stats.late_forgotten += 1;
            }
        }
        self.late_order.push_back(key);
        self.late.insert(
            key,
            Late {
                runtime_ns,
                process,
            },
        );
        if self.late_order.len() > 2 * self.late.len() + 1024 {
            let late = &self.late;
            self.late_order.retain(|k| late.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests as rec;

    fn exit(pid: u32, start_ns: u64, runtime_ns: u64) -> ExitRecord {
        let mut r = rec::exit(pid, 1, start_ns, 0);
        r.runtime_ns = runtime_ns;
        r
    }

    fn release(pid: u32, start_ns: u64, runtime_ns: u64) -> ReleaseRecord {
        let mut r = rec::release(&exit(pid, start_ns, 0), 0);
        r.runtime_ns = runtime_ns;
        r
    }

    #[test]
    fn a_release_completes_its_held_exit_with_the_final_cpu() {
        let mut a = Awaiting::<()>::default();
        assert!(a.hold(exit(10, 5, 100), (), None, 0).is_empty());
        let Released::Held(h) = a.release(&release(10, 5, 130)) else {
            panic!("held exit not found")
        };
        assert_eq!(h.record.runtime_ns, 130);
        assert_eq!(a.len(), 0);
        assert!(a.expired(u64::MAX).is_empty());
    }

    #[test]
    fn a_release_of_a_reused_pid_does_not_complete_the_other_process() {
        let mut a = Awaiting::<()>::default();
        a.hold(exit(10, 5, 100), (), None, 0);
        assert!(matches!(a.release(&release(10, 6, 1)), Released::Unseen));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn an_unreaped_exit_goes_out_at_the_bound_and_its_release_adds_the_rest() {
        let mut a = Awaiting::<()>::default();
        let process = crate::tree::Process {
            pid: 10,
            ppid: 1,
            start_ns: 5,
            comm: crate::tree::Comm::from_raw(*b"zombie\0\0\0\0\0\0\0\0\0\0"),
            exe: None,
            subreaper: false,
            ext: Default::default(),
        };
        a.hold(exit(10, 5, 100), (), Some(process), 0);
        assert!(a.expired(RELEASE_WAIT_NS - 1).is_empty());
        let out = a.expired(RELEASE_WAIT_NS);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].record.runtime_ns, 100);
        assert_eq!(a.stats.reported_early, 1);
        let Released::Late { cpu_ns, process } = a.release(&release(10, 5, 160)) else {
            panic!("late release not recognised")
        };
        assert_eq!((cpu_ns, process.pid), (60, 10));
        assert_eq!(a.stats.late, 1);
        assert!(matches!(a.release(&release(10, 5, 160)), Released::Unseen));
    }

    /// Found by the record_ingest fuzz target: an exit time near u64::MAX overflowed.
    #[test]
    fn an_exit_at_the_end_of_time_is_held_without_overflow() {
        let mut a = Awaiting::<()>::default();
        a.hold(exit(10, 5, 1), (), None, u64::MAX - 1);
        assert!(a.expired(u64::MAX - 1).is_empty());
        assert_eq!(a.expired(u64::MAX).len(), 1);
    }

    #[test]
    fn held_exits_are_bounded() {
        let mut a = Awaiting::<()>::default();
        let mut out = 0;
        for pid in 0..(MAX_HELD as u32 + 10) {
            out += a.hold(exit(pid, 1, 1), (), None, 0).len();
        }
        assert_eq!((a.len(), out), (MAX_HELD, 10));
    }
}
