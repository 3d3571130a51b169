//! `cpu_pegged`: a process whose CPU use stays at or above a ratio of a core for a while.
//! Judged at each sampling pass from the exact per-process CPU the task iterator reads;
//! reported once when it has held for `hold`, and once more when it ends.

use std::{collections::HashMap, time::Duration};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeggedConfig {
    /// 1.0 = one full core.
    pub ratio: f64,
    pub hold: Duration,
}

/// What a sampling pass found.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Pegged since `since_ns`, at `ratio` on average over that time.
    Pegged {
        pid: u32,
        start_ns: u64,
        since_ns: u64,
        ratio: f64,
    },
    /// A reported process is no longer pegged (`exited`: it is gone).
    Cleared {
        pid: u32,
        start_ns: u64,
        since_ns: u64,
        ratio: f64,
        exited: bool,
    },
}

#[derive(Debug)]
struct Track {
    start_ns: u64,
    since_ns: u64,
    cpu_ns_since: u64,
    reported: bool,
}

/// One process's figures at a sampling pass.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    pub pid: u32,
    pub start_ns: u64,
    pub ratio: f64,
    pub cpu_ns: u64,
}

pub struct Pegged {
    cfg: PeggedConfig,
    tracks: HashMap<u32, Track>,
    last_pass_ns: Option<u64>,
    last_cpu_ns: HashMap<u32, u64>,
}

impl Pegged {
    pub fn new(cfg: PeggedConfig) -> Self {
        Self {
            cfg,
            tracks: HashMap::new(),
            last_pass_ns: None,
            last_cpu_ns: HashMap::new(),
        }
    }

    /// Processes reported pegged and not yet cleared.
    pub fn pegged_now(&self) -> usize {
        self.tracks.values().filter(|t| t.reported).count()
    }

    /// One sampling pass at `now_ns` over every live process.
    pub fn on_sample_pass(
        &mut self,
        now_ns: u64,
        procs: impl IntoIterator<Item = Observed>,
    ) -> Vec<Transition> {
        let hold_ns = self.cfg.hold.as_nanos() as u64;
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(self.tracks.len());
        let mut cpu_now = HashMap::with_capacity(self.last_cpu_ns.len());
        for o in procs {
            // The ratio covers the interval since the last pass: that is when it began.
            let interval_start = self.last_pass_ns.unwrap_or(now_ns);
            let cpu_before = self.last_cpu_ns.get(&o.pid).copied().unwrap_or(o.cpu_ns);
            if o.ratio >= self.cfg.ratio {
                cpu_now.insert(o.pid, o.cpu_ns);
                seen.insert(o.pid, ());
                let t = self.tracks.entry(o.pid).or_insert(Track {
                    start_ns: o.start_ns,
                    since_ns: interval_start,
                    cpu_ns_since: cpu_before,
                    reported: false,
                });
                if t.start_ns != o.start_ns {
                    // A reused pid: the old process is gone, this one starts afresh.
                    if t.reported {
                        out.push(cleared(o.pid, t, now_ns, o.cpu_ns, true));
                    }
                    *t = Track {
                        start_ns: o.start_ns,
                        since_ns: interval_start,
                        cpu_ns_since: cpu_before,
                        reported: false,
                    };
                }
                if !t.reported && now_ns.saturating_sub(t.since_ns) >= hold_ns {
                    t.reported = true;
                    out.push(Transition::Pegged {
                        pid: o.pid,
                        start_ns: t.start_ns,
                        since_ns: t.since_ns,
                        ratio: average(t, now_ns, o.cpu_ns),
                    });
                }
            } else if let Some(t) = self.tracks.remove(&o.pid) {
                if t.reported {
                    out.push(cleared(
                        o.pid,
                        &t,
                        now_ns,
                        o.cpu_ns,
                        t.start_ns != o.start_ns,
                    ));
                }
            }
            if o.ratio >= self.cfg.ratio * 0.5 {
                // Only processes that might peg next need their CPU remembered.
                cpu_now.insert(o.pid, o.cpu_ns);
            }
        }
        // Tracked processes no longer alive.
        let gone: Vec<u32> = self
            .tracks
            .keys()
            .filter(|pid| !seen.contains_key(*pid))
            .copied()
            .collect();
        for pid in gone {
            if let Some(t) = self.tracks.remove(&pid) {
                if t.reported {
                    out.push(cleared(pid, &t, now_ns, t.cpu_ns_since, true));
                }
            }
        }
        self.last_pass_ns = Some(now_ns);
        self.last_cpu_ns = cpu_now;
        out
    }
}

fn average(t: &Track, now_ns: u64, cpu_ns: u64) -> f64 {
    cpu_ns.saturating_sub(t.cpu_ns_since) as f64 / now_ns.saturating_sub(t.since_ns).max(1) as f64
}

fn cleared(pid: u32, t: &Track, now_ns: u64, cpu_ns: u64, exited: bool) -> Transition {
    Transition::Cleared {
        pid,
        start_ns: t.start_ns,
        since_ns: t.since_ns,
        ratio: if exited {
            0.0
        } else {
            average(t, now_ns, cpu_ns)
        },
        exited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn busy(pid: u32, at: u64, ratio: f64) -> Observed {
        Observed {
            pid,
            start_ns: 7,
            ratio,
            cpu_ns: (at as f64 * ratio) as u64,
        }
    }

    #[test]
    fn reports_once_after_the_hold_then_clears() {
        let mut p = Pegged::new(PeggedConfig {
            ratio: 0.95,
            hold: Duration::from_secs(3),
        });
        let mut events = Vec::new();
        for sec in 1..=6 {
            events
                .extend(p.on_sample_pass(sec * S, [busy(1, sec * S, 1.0), busy(2, sec * S, 0.2)]));
        }
        // Pegged since the first pass's interval began (1 s): reported at 4 s, once.
        assert_eq!(events.len(), 1, "{events:?}");
        let Transition::Pegged {
            pid,
            since_ns,
            ratio,
            ..
        } = events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!((pid, since_ns), (1, S));
        assert!((ratio - 1.0).abs() < 1e-6);
        assert_eq!(p.pegged_now(), 1);
        let calm = p.on_sample_pass(7 * S, [busy(1, 7 * S, 0.1)]);
        assert!(
            matches!(
                calm[..],
                [Transition::Cleared {
                    pid: 1,
                    exited: false,
                    ..
                }]
            ),
            "{calm:?}"
        );
        assert_eq!(p.pegged_now(), 0);
        assert!(p.on_sample_pass(8 * S, [busy(1, 8 * S, 0.1)]).is_empty());
    }

    #[test]
    fn a_dip_restarts_the_hold_and_an_exit_clears() {
        let mut p = Pegged::new(PeggedConfig {
            ratio: 0.95,
            hold: Duration::from_secs(2),
        });
        assert!(p.on_sample_pass(S, [busy(1, S, 1.0)]).is_empty());
        assert!(p.on_sample_pass(2 * S, [busy(1, 2 * S, 0.5)]).is_empty());
        assert!(p.on_sample_pass(3 * S, [busy(1, 3 * S, 1.0)]).is_empty());
        // Pegged again since the dip's pass (2 s): held for 2 s at 4 s.
        let got = p.on_sample_pass(4 * S, [busy(1, 4 * S, 1.0)]);
        assert!(
            matches!(got[..], [Transition::Pegged { since_ns, .. }] if since_ns == 2 * S),
            "{got:?}"
        );
        let gone = p.on_sample_pass(6 * S, []);
        assert!(
            matches!(gone[..], [Transition::Cleared { exited: true, .. }]),
            "{gone:?}"
        );
    }
}
