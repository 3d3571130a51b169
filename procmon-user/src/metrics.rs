//! Prometheus metrics: one registry built at startup. Counters that follow events are
//! updated by the ingest path; everything derived from state (the tree, the kernel's per-CPU
//! counters, the agent's loss counters) is computed at scrape time by [`StateCollector`].

use std::{collections::HashMap, sync::Arc};

use procmon_common::stat;
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::{events::Outcome, record::RECORD_KINDS, tree::TreeStats};

/// State read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct HealthSnapshot {
    pub live_processes: u64,
    pub tracked_processes: u64,
    pub tree: TreeStats,
    /// Sums over CPUs of the probes' `STATS` map, indexed by `procmon_common::stat`.
    pub kernel: [u64; stat::COUNT as usize],
    /// Ring-buffer records the decoder rejected.
    pub malformed: u64,
    /// Events the `--events` writer could not keep up with.
    pub sink_lagged: u64,
}

pub trait HealthSource: Send + Sync {
    fn snapshot(&self) -> HealthSnapshot;
}

pub struct Metrics {
    pub registry: Registry,
    pub starts: IntCounter,
    pub execs: IntCounter,
    pub exits: IntCounterVec,
    pub events: IntCounterVec,
    pub reader_lag: Histogram,
    pub oom_kills: IntCounterVec,
    pub crashes: IntCounterVec,
    pub workload_overflow: IntCounter,
    pub sse_dropped: IntCounter,
    pub sse_clients: IntGauge,
}

impl Metrics {
    pub fn new(source: Arc<dyn HealthSource>) -> Self {
        let registry = Registry::new();
        let starts = IntCounter::new(
            "procmon_process_starts_total",
            "Processes started (fork of a new thread group).",
        )
        .unwrap();
        let execs =
            IntCounter::new("procmon_process_execs_total", "Successful execve calls.").unwrap();
        let exits = IntCounterVec::new(
            Opts::new(
                "procmon_process_exits_total",
                "Processes exited, by outcome (clean, error, crashed, oom_killed, killed).",
            ),
            &["outcome"],
        )
        .unwrap();
        let events = IntCounterVec::new(
            Opts::new(
                "procmon_events_total",
                "Records received from the kernel probes, by kind.",
            ),
            &["kind"],
        )
        .unwrap();
        let reader_lag = Histogram::with_opts(
            HistogramOpts::new(
                "procmon_ringbuf_reader_lag_seconds",
                "Age of the oldest record of each ring-buffer batch when the agent read it.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .unwrap();
        let info = IntGauge::with_opts(
            Opts::new(
                "procmon_build_info",
                "procmon build information; the value is always 1.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .unwrap();
        info.set(1);
        let oom_kills = IntCounterVec::new(
            Opts::new(
                "procmon_oom_kills_total",
                "Processes the OOM killer chose, by workload (memory cgroup, or comm in the root cgroup) and signal.",
            ),
            &["workload", "signal"],
        )
        .unwrap();
        let crashes = IntCounterVec::new(
            Opts::new(
                "procmon_crashes_total",
                "Processes that crashed (died of a core-dumping signal) or were OOM-killed (signal SIGKILL), by workload and signal.",
            ),
            &["workload", "signal"],
        )
        .unwrap();
        let workload_overflow = IntCounter::new(
            "procmon_workload_label_overflow_total",
            "Counts given workload=\"_other\" because the workload label reached its cap of distinct values.",
        )
        .unwrap();
        let sse_dropped = IntCounter::new(
            "procmon_sse_dropped_events_total",
            "Events /events clients lost because they fell too far behind (each was sent an `event: dropped`).",
        )
        .unwrap();
        let sse_clients = IntGauge::new(
            "procmon_sse_clients",
            "Clients connected to the /events stream.",
        )
        .unwrap();
        // Series exist from the first scrape, so rate() works from the start.
        for outcome in Outcome::ALL {
            exits.with_label_values(&[outcome.as_str()]);
        }
        for kind in RECORD_KINDS {
            events.with_label_values(&[kind]);
        }
        for c in [
            Box::new(starts.clone()) as Box<dyn Collector>,
            Box::new(execs.clone()),
            Box::new(exits.clone()),
            Box::new(events.clone()),
            Box::new(reader_lag.clone()),
            Box::new(info),
            Box::new(oom_kills.clone()),
            Box::new(crashes.clone()),
            Box::new(workload_overflow.clone()),
            Box::new(sse_dropped.clone()),
            Box::new(sse_clients.clone()),
            Box::new(StateCollector::new(source)),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            starts,
            execs,
            exits,
            events,
            reader_lag,
            oom_kills,
            crashes,
            workload_overflow,
            sse_dropped,
            sse_clients,
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to a Vec cannot fail");
        String::from_utf8(out).expect("text exposition is UTF-8")
    }
}

/// The families [`StateCollector`] produces: name, help, label names.
const STATE_FAMILIES: [(&str, &str, &[&str]); 7] = [
    ("procmon_processes_live", "Live processes known to the process tree.", &[]),
    ("procmon_tree_processes", "Entries tracked by the process tree.", &[]),
    ("procmon_tree_evictions_total", "Tree entries evicted because the tree reached --max-processes.", &[]),
    ("procmon_tree_reconciled_total", "Tree corrections made against /proc: added (missed fork), removed (missed exit), replaced (pid reuse after a missed exit).", &["action"]),
    ("procmon_events_lost_total", "Events lost, by kind and reason (ringbuf_full: the kernel ring buffer was full; malformed: rejected by the decoder; sink_lagged: the --events writer fell behind).", &["kind", "reason"]),
    ("procmon_kernel_read_errors_total", "Kernel memory reads that failed in the probes (the field was sent as zero).", &[]),
    ("procmon_kernel_thread_exits_total", "Thread (not process) exits seen by the exit probe.", &[]),
];

pub struct StateCollector {
    source: Arc<dyn HealthSource>,
    descs: Vec<Desc>,
}

impl StateCollector {
    fn new(source: Arc<dyn HealthSource>) -> Self {
        let descs = STATE_FAMILIES
            .iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .unwrap()
            })
            .collect();
        Self { source, descs }
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.source.snapshot();
        let k = |i: u32| s.kernel[i as usize];
        let [live, tracked, evictions, reconciled, lost, read_errors, thread_exits] =
            STATE_FAMILIES;
        vec![
            gauge(live, s.live_processes),
            gauge(tracked, s.tracked_processes),
            counter(evictions, &[(&[], s.tree.evictions)]),
            counter(
                reconciled,
                &[
                    (&["added"], s.tree.reconciled_added),
                    (&["removed"], s.tree.reconciled_removed),
                    (&["replaced"], s.tree.pid_reuse),
                ],
            ),
            counter(
                lost,
                &[
                    (&["fork", "ringbuf_full"], k(stat::RINGBUF_FULL_FORK)),
                    (&["exec", "ringbuf_full"], k(stat::RINGBUF_FULL_EXEC)),
                    (&["exit", "ringbuf_full"], k(stat::RINGBUF_FULL_EXIT)),
                    (
                        &["oom_kill", "ringbuf_full"],
                        k(stat::RINGBUF_FULL_OOM_KILL),
                    ),
                    (&["cgroup", "ringbuf_full"], k(stat::RINGBUF_FULL_CGROUP)),
                    (&["unknown", "malformed"], s.malformed),
                    (&["unknown", "sink_lagged"], s.sink_lagged),
                ],
            ),
            counter(read_errors, &[(&[], k(stat::READ_ERROR))]),
            counter(thread_exits, &[(&[], k(stat::THREAD_EXITS))]),
        ]
    }
}

type Family = (&'static str, &'static str, &'static [&'static str]);

fn gauge((name, help, _): Family, value: u64) -> MetricFamily {
    let g = IntGauge::new(name, help).unwrap();
    g.set(value as i64);
    g.collect().remove(0)
}

fn counter((name, help, labels): Family, rows: &[(&[&str], u64)]) -> MetricFamily {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap();
    for (values, v) in rows {
        c.with_label_values(values).inc_by(*v);
    }
    c.collect().remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(HealthSnapshot);
    impl HealthSource for Fixed {
        fn snapshot(&self) -> HealthSnapshot {
            self.0.clone()
        }
    }

    #[test]
    fn renders_state_and_event_counters() {
        let mut s = HealthSnapshot {
            live_processes: 42,
            tracked_processes: 42,
            malformed: 2,
            ..Default::default()
        };
        s.kernel[stat::RINGBUF_FULL_EXIT as usize] = 7;
        s.tree.evictions = 3;
        let m = Metrics::new(Arc::new(Fixed(s)));
        m.exits.with_label_values(&["crashed"]).inc();
        m.crashes
            .with_label_values(&["nginx.service", "SIGSEGV"])
            .inc();
        let text = m.render();
        for line in [
            "procmon_processes_live 42",
            "procmon_tree_evictions_total 3",
            "procmon_events_lost_total{kind=\"exit\",reason=\"ringbuf_full\"} 7",
            "procmon_events_lost_total{kind=\"unknown\",reason=\"malformed\"} 2",
            "procmon_process_exits_total{outcome=\"crashed\"} 1",
            "procmon_process_exits_total{outcome=\"clean\"} 0",
            "# TYPE procmon_ringbuf_reader_lag_seconds histogram",
            "procmon_crashes_total{signal=\"SIGSEGV\",workload=\"nginx.service\"} 1",
            "procmon_sse_dropped_events_total 0",
            "procmon_events_total{kind=\"oom_kill\"} 0",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }
}
