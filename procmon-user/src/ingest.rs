//! Applies ring-buffer records: decode, update the tree, count, and render events for the
//! consumers. Pure logic over bytes, so it is tested without a kernel.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use procmon_common::{ExecRecord, ExitRecord, ForkRecord};
use prometheus::IntCounter;
use tokio::sync::broadcast;

use crate::{
    attribution::Attribution,
    clock::{boottime_ns, rfc3339, WallClock},
    events::{self, EventKind, EventMsg, ExecEvent, ExitEvent, ExitStatus, ForkEvent, Outcome},
    metrics::Metrics,
    record::{c_str, decode, Record},
    run::RunLog,
    tree::{Comm, Tree},
};

/// The tree and what is attributed over it: always changed together, under one lock.
pub struct State {
    pub tree: Tree,
    pub attribution: Attribution,
    /// `procmon run` keeps every process of the command's tree.
    pub run_log: Option<RunLog>,
}

/// What the ingest path shares with scrapes, the sampler and the reconciler.
pub struct Shared {
    pub state: Mutex<State>,
    pub malformed: AtomicU64,
    pub sink_lagged: AtomicU64,
}

impl Shared {
    pub fn new(tree: Tree, attribution: Attribution) -> Self {
        Self {
            state: Mutex::new(State {
                tree,
                attribution,
                run_log: None,
            }),
            malformed: AtomicU64::new(0),
            sink_lagged: AtomicU64::new(0),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not take the agent's metrics down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counter handles resolved once, so the per-event path does no label lookups.
struct Counters {
    events: [IntCounter; 3],
    exits: [IntCounter; 5],
    starts: IntCounter,
    execs: IntCounter,
}

pub struct Ingest {
    counters: Counters,
    /// The only sender: when the reader stops and drops it, consumers see the stream end.
    events: broadcast::Sender<EventMsg>,
}

/// One batch: the tree lock and the clock, taken once for all its records.
pub struct Batch<'a> {
    ingest: &'a Ingest,
    shared: &'a Shared,
    state: std::sync::MutexGuard<'a, State>,
    clock: WallClock,
    render: bool,
    pub records: usize,
    oldest_ns: Option<u64>,
}

impl Ingest {
    pub fn new(metrics: &Metrics, events: broadcast::Sender<EventMsg>) -> Self {
        let kind = |k: EventKind| metrics.events.with_label_values(&[k.as_str()]);
        let outcome = |o: Outcome| metrics.exits.with_label_values(&[o.as_str()]);
        Self {
            counters: Counters {
                events: EventKind::ALL.map(kind),
                exits: Outcome::ALL.map(outcome),
                starts: metrics.starts.clone(),
                execs: metrics.execs.clone(),
            },
            events,
        }
    }

    pub fn batch<'a>(&'a self, shared: &'a Shared) -> Batch<'a> {
        Batch {
            ingest: self,
            shared,
            state: shared.lock(),
            clock: WallClock::now(),
            // Events are rendered only when someone listens.
            render: self.events.receiver_count() > 0,
            records: 0,
            oldest_ns: None,
        }
    }
}

impl Batch<'_> {
    pub fn apply(&mut self, bytes: &[u8]) {
        self.records += 1;
        let record = match decode(bytes) {
            Ok(r) => r,
            Err(_) => {
                self.shared.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        self.oldest_ns.get_or_insert(record.time_ns());
        let c = &self.ingest.counters;
        match record {
            Record::Fork(r) => {
                c.events[0].inc();
                c.starts.inc();
                let State {
                    tree,
                    attribution,
                    run_log,
                } = &mut *self.state;
                tree.on_fork(&r);
                attribution.on_fork(tree, r.pid);
                if let Some(log) = run_log {
                    log.on_fork(tree, r.pid);
                }
                if self.render {
                    self.emit_fork(&r);
                }
            }
            Record::Exec(r) => {
                c.events[1].inc();
                c.execs.inc();
                let State {
                    tree,
                    attribution,
                    run_log,
                } = &mut *self.state;
                let old_comm = tree.on_exec(&r);
                attribution.on_exec(tree, r.pid);
                if let Some(log) = run_log {
                    log.on_exec(tree, r.pid);
                }
                if self.render {
                    self.emit_exec(&r, old_comm);
                }
            }
            Record::Exit(r) => {
                c.events[2].inc();
                let status = ExitStatus::from_raw(r.exit_status);
                let outcome = status.outcome();
                c.exits[Outcome::ALL.iter().position(|&o| o == outcome).unwrap()].inc();
                let State {
                    tree,
                    attribution,
                    run_log,
                } = &mut *self.state;
                let gone = tree.on_exit(&r);
                if let Some(p) = &gone {
                    attribution.on_exit(p, r.runtime_ns, peak_rss_bytes(&r), r.time_ns);
                }
                if let Some(log) = run_log {
                    log.on_exit(gone.as_ref(), &r, status);
                }
                if self.render {
                    self.emit_exit(&r, status);
                }
            }
        }
    }

    /// Age of the batch's oldest record, for the reader-lag histogram.
    pub fn lag_seconds(&self) -> Option<f64> {
        self.oldest_ns
            .map(|t| boottime_ns().saturating_sub(t) as f64 / 1e9)
    }

    fn send(&self, msg: EventMsg) {
        // Err only means nobody listens any more.
        let _ = self.ingest.events.send(msg);
    }

    fn emit_fork(&self, r: &ForkRecord) {
        let time = rfc3339(self.clock.at(r.time_ns));
        let comm = Comm::from_raw(r.comm).to_lossy();
        self.send(events::render(
            EventKind::Fork,
            &ForkEvent {
                kind: EventKind::Fork,
                time: &time,
                pid: r.pid,
                ppid: r.ppid,
                comm: &comm,
            },
        ));
    }

    fn emit_exec(&self, r: &ExecRecord, old_comm: Option<Comm>) {
        let time = rfc3339(self.clock.at(r.time_ns));
        let comm = Comm::from_raw(r.comm).to_lossy();
        let filename = String::from_utf8_lossy(c_str(&r.filename));
        let old_comm = old_comm.map(|c| c.to_lossy());
        self.send(events::render(
            EventKind::Exec,
            &ExecEvent {
                kind: EventKind::Exec,
                time: &time,
                pid: r.pid,
                ppid: r.ppid,
                comm: &comm,
                filename: &filename,
                old_comm: old_comm.as_deref(),
            },
        ));
    }

    fn emit_exit(&self, r: &ExitRecord, status: ExitStatus) {
        let time = rfc3339(self.clock.at(r.time_ns));
        let comm = Comm::from_raw(r.comm).to_lossy();
        let (user, system) = split_cpu(r.runtime_ns, r.utime_ns, r.stime_ns);
        self.send(events::render(
            EventKind::Exit,
            &ExitEvent {
                kind: EventKind::Exit,
                time: &time,
                pid: r.pid,
                ppid: r.ppid,
                comm: &comm,
                exit_code: status.code,
                signal: status.signal,
                core_dumped: status.core_dumped,
                outcome: status.outcome(),
                cpu_user_seconds: user as f64 / 1e9,
                cpu_system_seconds: system as f64 / 1e9,
                peak_rss_bytes: peak_rss_bytes(r),
                lifetime_seconds: r.time_ns.saturating_sub(r.start_ns) as f64 / 1e9,
            },
        ));
    }
}

/// What getrusage's ru_maxrss reports at reap: the larger of the high-water mark of images
/// replaced by exec and that of the final address space (its hiwater counter is only
/// updated lazily, so the current RSS counts too).
pub fn peak_rss_bytes(r: &ExitRecord) -> u64 {
    let current = r.rss_file_pages + r.rss_anon_pages + r.rss_shmem_pages;
    let pages = r.hiwater_pages.max(current);
    (r.maxrss_kb * 1024).max(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Splits the exact scheduler runtime into user and system time in the ratio of the
/// tick-sampled utime/stime, as the kernel's cputime_adjust() does for getrusage().
pub fn split_cpu(runtime_ns: u64, utime_ns: u64, stime_ns: u64) -> (u64, u64) {
    if stime_ns == 0 {
        return (runtime_ns, 0);
    }
    if utime_ns == 0 {
        return (0, runtime_ns);
    }
    let user =
        (runtime_ns as u128 * utime_ns as u128 / (utime_ns as u128 + stime_ns as u128)) as u64;
    (user, runtime_ns - user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::{HealthSnapshot, HealthSource},
        record::{encode, tests as rec},
    };
    use std::sync::Arc;

    fn test_attribution() -> Attribution {
        Attribution::new(crate::attribution::AttributionConfig {
            selectors: vec![],
            retain_exited_ns: 0,
            max_child_series: 10,
            max_workloads: 10,
        })
    }

    struct Nothing;
    impl HealthSource for Nothing {
        fn snapshot(&self) -> HealthSnapshot {
            HealthSnapshot::default()
        }
    }

    fn setup() -> (Metrics, Ingest, Shared, broadcast::Receiver<EventMsg>) {
        let metrics = Metrics::new(Arc::new(Nothing));
        let (tx, rx) = broadcast::channel(64);
        let ingest = Ingest::new(&metrics, tx);
        (
            metrics,
            ingest,
            Shared::new(Tree::new(100), test_attribution()),
            rx,
        )
    }

    fn next_json(rx: &mut broadcast::Receiver<EventMsg>) -> serde_json::Value {
        serde_json::from_slice(&rx.try_recv().unwrap().json).unwrap()
    }

    #[test]
    fn renders_a_lifecycle_and_counts_it() {
        let (metrics, ingest, shared, mut rx) = setup();
        let start = 5_000_000_000;
        let mut exit = rec::exit(10, 1, start, 11 | 0x80);
        exit.comm = rec::comm(b"bad\"name\n\xff");
        {
            let mut batch = ingest.batch(&shared);
            batch.apply(&encode(&rec::fork(10, 1, start)));
            batch.apply(&encode(&rec::exec(10, 1, start, b"true", b"/usr/bin/true")));
            batch.apply(&encode(&exit));
            batch.apply(&[1, 2, 3]);
            assert_eq!(batch.records, 4);
        }
        assert_eq!(next_json(&mut rx)["kind"], "fork");
        let e = next_json(&mut rx);
        assert_eq!(
            (e["filename"].as_str(), e["old_comm"].as_str()),
            (Some("/usr/bin/true"), Some("parent"))
        );
        let x = next_json(&mut rx);
        assert_eq!(x["outcome"], "crashed");
        assert_eq!(x["signal"], 11);
        assert_eq!(x["exit_code"], serde_json::Value::Null);
        assert_eq!(x["core_dumped"], true);
        assert_eq!(x["comm"], "bad\"name\n\u{fffd}");
        assert_eq!(x["peak_rss_bytes"], 1024 * 1024);
        assert_eq!(x["lifetime_seconds"], 0.002);
        // runtime 2 ms split 3:1 like cputime_adjust.
        assert_eq!(
            (
                x["cpu_user_seconds"].as_f64(),
                x["cpu_system_seconds"].as_f64()
            ),
            (Some(0.0015), Some(0.0005))
        );
        assert!(x["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(shared.malformed.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.exits.with_label_values(&["crashed"]).get(), 1);
        assert_eq!(metrics.starts.get(), 1);
        assert_eq!(shared.lock().tree.len(), 0);
    }

    #[test]
    fn no_rendering_without_listeners() {
        let (metrics, ingest, shared, rx) = setup();
        drop(rx);
        ingest.batch(&shared).apply(&encode(&rec::fork(10, 1, 1)));
        assert_eq!(metrics.starts.get(), 1);
    }

    #[test]
    fn cpu_split_follows_cputime_adjust() {
        assert_eq!(split_cpu(100, 0, 0), (100, 0));
        assert_eq!(split_cpu(100, 0, 5), (0, 100));
        assert_eq!(split_cpu(100, 1, 1), (50, 50));
    }
}
