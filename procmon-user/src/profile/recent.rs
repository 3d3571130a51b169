//! What each process did lately, kept only for processes the CPU sampler caught on a CPU:
//! its symbolized stacks over the last window and its CPU/RSS trajectory. `cpu_pegged`
//! events name the top stacks; `crash` and `oom_kill` events carry both (the flight
//! recorder).
//!
//! Bounded: stacks older than the window go at each sampling pass, a process keeps at most
//! [`MAX_STACKS_PER_PROCESS`] entries and [`Recent::trajectory_len`] points, and at most
//! `max_processes` processes are kept (the least recently sampled go first, counted).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use serde::Serialize;

use super::symbolize::Frame;

/// A stack, root first (user frames, then kernel frames).
pub type Stack = Arc<[Frame]>;

/// Bound per process: a process sampled at 19 Hz on one CPU for a minute has 1,140 samples;
/// beyond this, the oldest entries go.
pub const MAX_STACKS_PER_PROCESS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    #[serde(skip)]
    pub at_ns: u64,
    /// Seconds before the event the point was sampled (filled in when rendered).
    pub age_seconds: f64,
    pub cpu_usage_ratio: f64,
    pub rss_bytes: u64,
}

/// A stack's share of a process's samples over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopStack {
    /// Root first; kernel frames end in `_[k]`.
    pub frames: Stack,
    pub samples: u64,
    /// Of the process's samples in the window.
    pub share: f64,
}

#[derive(Debug, Default)]
struct ProcessRecent {
    start_ns: u64,
    /// (drain time, stack, samples), oldest first.
    stacks: VecDeque<(u64, Stack, u64)>,
    trajectory: VecDeque<Point>,
    last_sampled_ns: u64,
}

pub struct Recent {
    window_ns: u64,
    pub trajectory_len: usize,
    max_processes: usize,
    procs: HashMap<u32, ProcessRecent>,
    /// Processes dropped to stay within `max_processes`.
    pub evicted: u64,
}

impl Recent {
    pub fn new(window_ns: u64, trajectory_len: usize, max_processes: usize) -> Self {
        Self {
            window_ns,
            trajectory_len,
            max_processes: max_processes.max(1),
            procs: HashMap::new(),
            evicted: 0,
        }
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// `samples` of `stack` for process (`pid`, `start_ns`) in the window drained at `at_ns`.
    pub fn record(&mut self, pid: u32, start_ns: u64, at_ns: u64, stack: Stack, samples: u64) {
        if !self.procs.contains_key(&pid) && self.procs.len() >= self.max_processes {
            self.evict_one();
        }
        let p = self.procs.entry(pid).or_default();
        if p.start_ns != start_ns {
            // A reused pid: nothing of the previous process carries over.
            *p = ProcessRecent {
                start_ns,
                ..Default::default()
            };
        }
        p.last_sampled_ns = at_ns;
        if p.stacks.len() >= MAX_STACKS_PER_PROCESS {
            p.stacks.pop_front();
        }
        p.stacks.push_back((at_ns, stack, samples));
    }

    fn evict_one(&mut self) {
        if let Some(&pid) = self
            .procs
            .iter()
            .min_by_key(|(_, p)| p.last_sampled_ns)
            .map(|(pid, _)| pid)
        {
            self.procs.remove(&pid);
            self.evicted += 1;
        }
    }

    /// A sampling pass: appends each kept process's CPU/RSS point (`live` gives it, or
    /// `None` for a process no longer there, which is then dropped) and expires old stacks.
    pub fn on_sample_pass(
        &mut self,
        now_ns: u64,
        mut live: impl FnMut(u32, u64) -> Option<(f64, u64)>,
    ) {
        let horizon = now_ns.saturating_sub(self.window_ns);
        let len = self.trajectory_len;
        self.procs.retain(|&pid, p| {
            let Some((cpu_usage_ratio, rss_bytes)) = live(pid, p.start_ns) else {
                return false;
            };
            while p.stacks.front().is_some_and(|(at, ..)| *at < horizon) {
                p.stacks.pop_front();
            }
            // A pass that caught the process mid-exit sees its memory already released:
            // not a point of its trajectory (a kernel thread's is always 0, and kept).
            if rss_bytes == 0 && p.trajectory.back().is_some_and(|pt| pt.rss_bytes > 0) {
                return true;
            }
            if p.trajectory.len() >= len {
                p.trajectory.pop_front();
            }
            p.trajectory.push_back(Point {
                at_ns: now_ns,
                age_seconds: 0.0,
                cpu_usage_ratio,
                rss_bytes,
            });
            true
        });
    }

    /// The `n` stacks with the most samples since `since_ns`, with their shares.
    pub fn top_stacks(&self, pid: u32, start_ns: u64, since_ns: u64, n: usize) -> Vec<TopStack> {
        let Some(p) = self.get(pid, start_ns) else {
            return Vec::new();
        };
        let mut counts: HashMap<&Stack, u64> = HashMap::new();
        let mut total = 0;
        for (at, stack, samples) in &p.stacks {
            if *at >= since_ns {
                *counts.entry(stack).or_default() += samples;
                total += samples;
            }
        }
        let mut top: Vec<(&Stack, u64)> = counts.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        top.into_iter()
            .take(n)
            .map(|(stack, samples)| TopStack {
                frames: stack.clone(),
                samples,
                share: samples as f64 / total.max(1) as f64,
            })
            .collect()
    }

    /// The process's trajectory, oldest first, with ages relative to `now_ns`.
    pub fn trajectory(&self, pid: u32, start_ns: u64, now_ns: u64) -> Vec<Point> {
        self.get(pid, start_ns)
            .map(|p| {
                p.trajectory
                    .iter()
                    .map(|pt| Point {
                        age_seconds: now_ns.saturating_sub(pt.at_ns) as f64 / 1e9,
                        ..*pt
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The flight record of a process that is dying now, if it was ever sampled.
    pub fn flight_record(
        &self,
        pid: u32,
        start_ns: u64,
        now_ns: u64,
        top: usize,
    ) -> Option<FlightRecord> {
        self.get(pid, start_ns)?;
        Some(FlightRecord {
            window_seconds: self.window_ns as f64 / 1e9,
            top_stacks: self.top_stacks(pid, start_ns, 0, top),
            trajectory: self.trajectory(pid, start_ns, now_ns),
        })
    }

    fn get(&self, pid: u32, start_ns: u64) -> Option<&ProcessRecent> {
        self.procs
            .get(&pid)
            .filter(|p| crate::tree::same_start(p.start_ns, start_ns))
    }
}

/// A dying process's recent past, as `crash` and `oom_kill` events carry it (`recent`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlightRecord {
    /// How far back `top_stacks` reaches.
    pub window_seconds: f64,
    pub top_stacks: Vec<TopStack>,
    /// CPU and RSS at each sampling pass, oldest first.
    pub trajectory: Vec<Point>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str]) -> Stack {
        frames.iter().map(|f| Frame::from(*f)).collect()
    }

    #[test]
    fn top_stacks_rank_by_samples_within_the_window() {
        let mut r = Recent::new(10_000, 4, 10);
        let hot = stack(&["main", "hot"]);
        r.record(1, 5, 100, hot.clone(), 8);
        r.record(1, 5, 200, stack(&["main", "cold"]), 2);
        r.record(1, 5, 300, hot.clone(), 10);
        let top = r.top_stacks(1, 5, 0, 1);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].frames, hot);
        assert_eq!(top[0].samples, 18);
        assert!((top[0].share - 0.9).abs() < 1e-9);
        // Since 250: only the last hot drain.
        assert_eq!(r.top_stacks(1, 5, 250, 5)[0].samples, 10);
        assert!(
            r.top_stacks(1, 6_000_000_000, 0, 5).is_empty(),
            "another start: another process"
        );
    }

    #[test]
    fn expires_stacks_drops_gone_processes_and_bounds_trajectory() {
        let mut r = Recent::new(1_000, 2, 10);
        r.record(1, 5, 100, stack(&["a"]), 1);
        r.record(2, 7, 100, stack(&["b"]), 1);
        for now in [1_500, 1_600, 1_700] {
            r.on_sample_pass(now, |pid, _| (pid == 1).then_some((0.5, 4096)));
        }
        assert_eq!(r.len(), 1, "process 2 is gone");
        assert!(
            r.top_stacks(1, 5, 0, 5).is_empty(),
            "stack older than the window"
        );
        let t = r.trajectory(1, 5, 2_700);
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].rss_bytes, 4096);
        assert!((t[0].age_seconds - 1.1e-6).abs() < 1e-12);
        let record = r.flight_record(1, 5, 1_700, 3).unwrap();
        assert_eq!(record.trajectory.len(), 2);
        // Caught mid-exit, its memory already released: not a point.
        r.on_sample_pass(1_800, |_, _| Some((1.0, 0)));
        assert_eq!(r.trajectory(1, 5, 1_800).last().unwrap().rss_bytes, 4096);
        assert!(
            r.flight_record(3, 5, 1_700, 3).is_none(),
            "never sampled: nothing kept"
        );
    }

    #[test]
    fn bounds_processes_and_reused_pids_start_afresh() {
        let mut r = Recent::new(10_000, 2, 2);
        r.record(1, 5, 100, stack(&["a"]), 1);
        r.record(2, 5, 200, stack(&["b"]), 1);
        r.record(3, 5, 300, stack(&["c"]), 1);
        assert_eq!(r.len(), 2);
        assert_eq!(r.evicted, 1);
        assert!(
            r.top_stacks(1, 5, 0, 1).is_empty(),
            "least recently sampled went"
        );
        r.record(2, 9_000_000_000, 400, stack(&["new"]), 1);
        let top = r.top_stacks(2, 9_000_000_000, 0, 5);
        assert_eq!(top.len(), 1);
        assert_eq!(&*top[0].frames[0], "new");
    }
}
