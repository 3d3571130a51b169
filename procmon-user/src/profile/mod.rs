//! Where processes spend their CPU, read from outside: perf-event sampling (kernel/perf.rs)
//! drained and symbolized while the processes live (collect.rs, symbolize.rs), kept per
//! process for a bounded window (recent.rs), reported as `cpu_pegged` events (pegged.rs) and
//! in crash and OOM events, and on demand by `procmon profile` (command.rs, folded.rs).

pub(crate) mod collect;
pub mod command;
pub(crate) mod folded;
pub(crate) mod pegged;
pub(crate) mod recent;
pub(crate) mod symbolize;

use std::time::Duration;

use crate::{
    attribution::ProcessTree,
    clock::{rfc3339, WallClock},
    events::{self, CpuPeggedClearedEvent, CpuPeggedEvent, EventKind, EventMsg},
};
use pegged::{Observed, Pegged, PeggedConfig, Transition};
use recent::Recent;

/// Stacks named in events.
pub const TOP_STACKS: usize = 5;
/// Sampling passes of CPU/RSS kept per process for the flight recorder.
pub const TRAJECTORY_POINTS: usize = 30;
/// Processes whose recent past is kept at most (least recently sampled go first).
pub const MAX_PROFILED_PROCESSES: usize = 4096;
/// What a process's user stack looks like without frame pointers, and what to do about it.
pub const SHALLOW_NOTE: &str = "user stacks are one frame deep: rebuild with frame pointers (Rust: -C force-frame-pointers=yes; C/C++: -fno-omit-frame-pointer)";

/// CPU sampling as the agent runs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileConfig {
    /// Samples per second per CPU; 0 turns sampling off (pegged detection stays on).
    pub hz: u64,
    /// How often the in-kernel counts are drained and symbolized.
    pub drain: Duration,
    /// How far back stacks are kept per process.
    pub window: Duration,
    pub pegged: PeggedConfig,
    /// Let the symbolizer drop what it parsed once idle (the agent, which runs for weeks);
    /// `procmon profile` keeps it for its few seconds instead of parsing again each drain.
    pub release_symbolizer: bool,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            hz: 19,
            drain: Duration::from_secs(1),
            window: Duration::from_secs(60),
            pegged: PeggedConfig {
                ratio: 0.95,
                hold: Duration::from_secs(30),
            },
            release_symbolizer: true,
        }
    }
}

/// The profile side of the agent's state, changed under the state lock.
pub struct ProfileState {
    pub recent: Recent,
    pub pegged: Pegged,
    /// Processes that exec'd since the last drain: their cached symbols are stale.
    stale: Vec<u32>,
    /// Processes whose recent past was dropped: their cached symbols can go.
    gone: Vec<u32>,
    /// Who each process reported pegged was, for its cleared event after it exits.
    reported: std::collections::HashMap<u32, Identity>,
}

#[derive(Debug, Clone, Default)]
struct Identity {
    comm: String,
    ppid: u32,
    workload: String,
}

impl Default for ProfileState {
    fn default() -> Self {
        Self::new(&ProfileConfig::default())
    }
}

impl ProfileState {
    pub fn new(cfg: &ProfileConfig) -> Self {
        // Pegged events name the stacks of the whole pegged time: keep at least that long.
        let window = cfg.window.max(cfg.pegged.hold + cfg.drain * 2);
        Self {
            recent: Recent::new(
                window.as_nanos() as u64,
                TRAJECTORY_POINTS,
                MAX_PROFILED_PROCESSES,
            ),
            pegged: Pegged::new(cfg.pegged),
            stale: Vec::new(),
            gone: Vec::new(),
            reported: Default::default(),
        }
    }

    pub fn on_exec(&mut self, pid: u32) {
        // Only sampled processes have symbols cached.
        if self.recent.contains(pid) {
            self.stale.push(pid);
        }
    }

    /// Pids whose symbol caches are stale (exec) or unneeded (gone), since the last call.
    pub fn take_forgotten(&mut self) -> Vec<u32> {
        let mut out = std::mem::take(&mut self.stale);
        out.append(&mut self.gone);
        out
    }

    /// A drain's samples, for processes the tree knows.
    pub fn record(&mut self, tree: &ProcessTree, sampled: &[collect::Sampled], now_ns: u64) {
        for s in sampled {
            if let Some(p) = tree.get(s.pid) {
                self.recent
                    .record(s.pid, p.start_ns, now_ns, s.stack.clone(), s.samples);
            }
        }
    }

    /// A sampling pass (after the tree's live figures were updated): trajectories, and
    /// pegged processes found or cleared, returned as transitions to report.
    pub fn on_sample_pass(&mut self, tree: &ProcessTree, now_ns: u64) -> Vec<Transition> {
        let gone = &mut self.gone;
        self.recent.on_sample_pass(now_ns, |pid, start_ns| {
            let live = tree
                .get_exact(pid, start_ns)
                .map(|p| (p.ext.live.cpu_ratio, p.ext.live.rss_bytes));
            if live.is_none() {
                gone.push(pid);
            }
            live
        });
        self.pegged.on_sample_pass(
            now_ns,
            tree.iter()
                .filter(|p| p.ext.live.sampled_at_ns == now_ns)
                .map(|p| Observed {
                    pid: p.pid,
                    start_ns: p.start_ns,
                    ratio: p.ext.live.cpu_ratio,
                    cpu_ns: p.ext.live.cpu_ns,
                }),
        )
    }
}

/// A rendered pegged transition, with the workload label to count it under.
pub struct PeggedReport {
    pub msg: EventMsg,
    pub workload: String,
    pub pegged: bool,
}

/// Renders a transition as a `cpu_pegged` or `cpu_pegged_cleared` event.
pub fn render_transition(
    t: &Transition,
    tree: &ProcessTree,
    attribution: &crate::attribution::Attribution,
    profile: &mut ProfileState,
    clock: &WallClock,
    now_ns: u64,
) -> PeggedReport {
    let (pid, start_ns) = match *t {
        Transition::Pegged { pid, start_ns, .. } | Transition::Cleared { pid, start_ns, .. } => {
            (pid, start_ns)
        }
    };
    let p = tree.get_exact(pid, start_ns);
    let known = p.map(|p| Identity {
        comm: p.comm.to_lossy(),
        ppid: p.ppid,
        workload: attribution.workload_name(p.ext.workload).to_string(),
    });
    let Identity {
        comm,
        ppid,
        workload,
    } = match t {
        Transition::Pegged { .. } => {
            let id = known.unwrap_or_default();
            profile.reported.insert(pid, id.clone());
            id
        }
        // An exited process is gone from the tree: named as it was when reported.
        Transition::Cleared { .. } => {
            let reported = profile.reported.remove(&pid);
            known.or(reported).unwrap_or_default()
        }
    };
    let time = rfc3339(clock.at(now_ns));
    let msg = match *t {
        Transition::Pegged {
            since_ns, ratio, ..
        } => {
            let top = profile
                .recent
                .top_stacks(pid, start_ns, since_ns, TOP_STACKS);
            let shallow = top.first().is_some_and(|s| {
                s.frames
                    .iter()
                    .filter(|f| !f.ends_with(collect::KERNEL_SUFFIX))
                    .count()
                    == 1
            });
            let ancestry = crate::deaths::ancestry::ancestry(tree, ppid);
            events::render(
                EventKind::CpuPegged,
                &CpuPeggedEvent {
                    kind: EventKind::CpuPegged,
                    time: &time,
                    pid,
                    ppid,
                    comm: &comm,
                    exe: p.and_then(|p| p.exe.as_deref()),
                    workload: &workload,
                    ancestry: &ancestry,
                    cpu_usage_ratio: ratio,
                    pegged_seconds: now_ns.saturating_sub(since_ns) as f64 / 1e9,
                    top_stacks: &top,
                    note: shallow.then_some(SHALLOW_NOTE),
                },
            )
        }
        Transition::Cleared {
            since_ns,
            ratio,
            exited,
            ..
        } => events::render(
            EventKind::CpuPeggedCleared,
            &CpuPeggedClearedEvent {
                kind: EventKind::CpuPeggedCleared,
                time: &time,
                pid,
                ppid,
                comm: &comm,
                workload: &workload,
                reason: if exited { "exited" } else { "calmed" },
                pegged_seconds: now_ns.saturating_sub(since_ns) as f64 / 1e9,
                cpu_usage_ratio: ratio,
            },
        ),
    };
    PeggedReport {
        msg,
        workload,
        pegged: matches!(t, Transition::Pegged { .. }),
    }
}
