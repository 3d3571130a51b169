//! Prometheus metrics: one registry built at startup. Counters that follow events are
//! updated by the ingest path; everything derived from state (the tree, the kernel's per-CPU
//! counters, the agent's loss counters) is computed at scrape time by [`StateCollector`].

pub mod attribution;

use std::{collections::HashMap, sync::Arc};

use procmon_common::stat;
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    events::Outcome,
    record::{DecodeError, RECORD_KINDS},
    tree::TreeStats,
};

/// State read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct HealthSnapshot {
    pub live_processes: u64,
    pub tracked_processes: u64,
    pub tree: TreeStats,
    /// Sums over CPUs of the probes' `STATS` map, indexed by `procmon_common::stat`.
    pub kernel: [u64; stat::COUNT as usize],
    /// Ring-buffer records the decoder rejected, by [`DecodeError::REASONS`].
    pub decode_errors: [u64; DecodeError::REASONS.len()],
    /// Events the `--events` writer could not keep up with.
    pub sink_lagged: u64,
    /// Events lost to `--events` write errors.
    pub sink_errors: u64,
    /// Events the `--events` writer had not written when shutdown could wait no longer.
    pub sink_unflushed: u64,
    /// Runs of each lifecycle program the kernel skipped (kernel/prog_stats.rs).
    pub program_misses: Vec<(&'static str, u64)>,
    /// Processes reported `cpu_pegged` and not cleared.
    pub pegged_now: u64,
    /// Processes whose recent stacks are kept (profile/recent.rs), and those dropped to
    /// stay within the bound.
    pub profiled_processes: u64,
    pub profile_evictions: u64,
    /// The stack symbolizer's counters (zero when CPU sampling is off).
    pub symbolizer: crate::profile::symbolize::SymbolizeStats,
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
    pub sample_duration: Histogram,
    /// The attribution families, rendered once per sample pass.
    pub attribution: attribution::AttributionText,
    pub oom_kills: IntCounterVec,
    pub crashes: IntCounterVec,
    pub sse_dropped: IntCounter,
    pub sse_clients: IntGauge,
    pub sse_refused: IntCounter,
    pub duplicate_exits: IntCounter,
    pub recovered_exits: IntCounter,
    pub exits_before_release: IntCounter,
    pub releases_forgotten: IntCounter,
    pub releases_late: IntCounter,
    pub cpu_pegged: IntCounterVec,
    pub http_refused: IntCounter,
    pub http_auth_failures: IntCounterVec,
    pub http_tls_handshake_failures: IntCounter,
    kernel_features: IntGaugeVec,
}

impl Metrics {
    /// Drops the crash and OOM counters of released workloads (attribution releases a
    /// workload no process has been in for --retain-exited): otherwise every container that
    /// ever crashed on the node would keep its series, past --max-workloads.
    pub fn forget_workloads(&self, names: &[&str]) {
        if names.is_empty() {
            return;
        }
        for vec in [&self.crashes, &self.oom_kills, &self.cpu_pegged] {
            for family in vec.collect() {
                for metric in family.get_metric() {
                    let labels: HashMap<&str, &str> = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name(), l.value()))
                        .collect();
                    if labels.get("workload").is_some_and(|w| names.contains(w)) {
                        // Absent already is fine: nothing to forget.
                        let _ = vec.remove(&labels);
                    }
                }
            }
        }
    }

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
        let sample_duration = Histogram::with_opts(
            HistogramOpts::new(
                "procmon_sample_duration_seconds",
                "Time to sample every live process's CPU and RSS (task iterator pass).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
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
        let sse_refused = IntCounter::new(
            "procmon_sse_refused_total",
            "/events clients refused (503) because --max-sse-clients were connected.",
        )
        .unwrap();
        let duplicate_exits = IntCounter::new(
            "procmon_kernel_duplicate_exits_total",
            "Second exit records of one process, dropped: before Linux 6.16, without fentry on taskstats_exit, threads exiting at once can each look like the last one.",
        )
        .unwrap();
        let recovered_exits = IntCounter::new(
            "procmon_kernel_exits_recovered_total",
            "Process exits whose exit-tracepoint run the kernel skipped (see procmon_kernel_program_misses_total), recovered from the process's release: exact CPU, peak RSS from the kernel's maxrss, no memory breakdown.",
        )
        .unwrap();
        let exits_before_release = IntCounter::new(
            "procmon_exits_before_release_total",
            "Exits reported before their process was released (the parent had not reaped it within 1 s, or the agent stopped): the event's CPU is what the exit tracepoint read (cpu_final false); the rest is added to the CPU counters when the release comes.",
        )
        .unwrap();
        let releases_forgotten = IntCounter::new(
            "procmon_exits_release_forgotten_total",
            "Exits reported before their release that were forgotten (65,536 are remembered) before it came: the CPU their exit path spent after the exit tracepoint is not attributed.",
        )
        .unwrap();
        let releases_late = IntCounter::new(
            "procmon_exits_released_late_total",
            "Releases that came after their exit was reported (cpu_final false): the CPU their exit path spent after the exit tracepoint was then added to the CPU counters. Of procmon_exits_before_release_total, those that were released late, as opposed to not yet or never.",
        )
        .unwrap();
        let cpu_pegged = IntCounterVec::new(
            Opts::new(
                "procmon_cpu_pegged_total",
                "Processes reported pegged (CPU at or above --pegged-ratio of a core for --pegged-for), by workload.",
            ),
            &["workload"],
        )
        .unwrap();
        let http_refused = IntCounter::new(
            "procmon_http_connections_refused_total",
            "HTTP connections closed at once because the connection cap was reached (idle and slow connections are closed after 10 s).",
        )
        .unwrap();
        let http_auth_failures = IntCounterVec::new(
            Opts::new(
                "procmon_http_auth_failures_total",
                "HTTP requests refused with 401 by basic auth (--web-config basic_auth_users): no_credentials (none, or not Basic user:password) or wrong_credentials (unknown user or wrong password).",
            ),
            &["reason"],
        )
        .unwrap();
        // Both series from the start, so that rate() sees the first failure.
        for reason in ["no_credentials", "wrong_credentials"] {
            http_auth_failures.with_label_values(&[reason]);
        }
        let http_tls_handshake_failures = IntCounter::new(
            "procmon_http_tls_handshake_failures_total",
            "TLS connections closed before a request because the handshake failed (plain HTTP to the TLS port, no or an untrusted client certificate, no common version or suite) or did not finish within 10 s.",
        )
        .unwrap();
        let kernel_features = IntGaugeVec::new(
            Opts::new(
                "procmon_kernel_feature",
                "What this kernel lets procmon do: 1 on the feature's current state (ok or degraded), 0 on the other. Degraded features are logged at start with the reason.",
            ),
            &["feature", "state"],
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
            Box::new(sample_duration.clone()),
            Box::new(info),
            Box::new(oom_kills.clone()),
            Box::new(crashes.clone()),
            Box::new(sse_dropped.clone()),
            Box::new(sse_clients.clone()),
            Box::new(sse_refused.clone()),
            Box::new(kernel_features.clone()),
            Box::new(duplicate_exits.clone()),
            Box::new(recovered_exits.clone()),
            Box::new(exits_before_release.clone()),
            Box::new(releases_forgotten.clone()),
            Box::new(releases_late.clone()),
            Box::new(cpu_pegged.clone()),
            Box::new(http_refused.clone()),
            Box::new(http_auth_failures.clone()),
            Box::new(http_tls_handshake_failures.clone()),
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
            sample_duration,
            attribution: Default::default(),
            oom_kills,
            crashes,
            sse_dropped,
            sse_clients,
            sse_refused,
            duplicate_exits,
            recovered_exits,
            exits_before_release,
            releases_forgotten,
            releases_late,
            cpu_pegged,
            http_refused,
            http_auth_failures,
            http_tls_handshake_failures,
            kernel_features,
        }
    }

    /// Exports one kernel feature's state (kernel/features.rs), set once at load.
    pub fn set_kernel_feature(&self, feature: &str, ok: bool) {
        let [on, off] = if ok {
            ["ok", "degraded"]
        } else {
            ["degraded", "ok"]
        };
        self.kernel_features
            .with_label_values(&[feature, on])
            .set(1);
        self.kernel_features
            .with_label_values(&[feature, off])
            .set(0);
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> Vec<u8> {
        let attribution = self.attribution.get();
        let mut out = Vec::with_capacity(16 * 1024 + attribution.len());
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to a Vec cannot fail");
        out.extend_from_slice(&attribution);
        out
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
}

const fn family(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Family {
    Family {
        name,
        help,
        kind,
        labels,
    }
}

/// Everything [`StateCollector`] produces, in output order.
const FAMILIES: [Family; 16] = [
    family("procmon_processes_live", Kind::Gauge, &[], "Live processes known to the process tree."),
    family("procmon_tree_processes", Kind::Gauge, &[], "Entries tracked by the process tree."),
    family("procmon_tree_evictions_total", Kind::Counter, &[], "Tree entries evicted because the tree reached --max-processes."),
    family("procmon_tree_reconciled_total", Kind::Counter, &["action"], "Tree corrections made against /proc: added (missed fork), removed (missed exit), replaced (pid reuse after a missed exit)."),
    family("procmon_events_lost_total", Kind::Counter, &["kind", "reason"], "Events lost, by kind and reason (ringbuf_full: the kernel ring buffer was full; truncated, abi_mismatch, unknown_kind, size_mismatch: rejected by the decoder; sink_lagged: the --events writer fell behind; sink_error: writing --events failed; shutdown_unflushed: the --events output did not take them before shutdown)."),
    family("procmon_kernel_read_errors_total", Kind::Counter, &[], "Kernel memory reads that failed in the probes (the field was sent as zero)."),
    family("procmon_kernel_thread_exits_total", Kind::Counter, &[], "Thread (not process) exits seen by the exit probe."),
    family("procmon_kernel_program_misses_total", Kind::Counter, &["program"], "Runs of a probe the kernel skipped because the same program was already running, preempted, on that CPU: those events were never seen."),
    family("procmon_cpu_samples_total", Kind::Counter, &[], "CPU samples taken by the perf-event sampler (--profile-hz), idle CPUs excluded."),
    family("procmon_cpu_sample_stack_collisions_total", Kind::Counter, &[], "Stacks the kernel's stack map refused because another stack held their slot (-EEXIST): those samples count with the stack unknown."),
    family("procmon_cpu_samples_lost_total", Kind::Counter, &[], "CPU samples not counted: the in-kernel sample-count map was full for its window."),
    family("procmon_cpu_pegged_processes", Kind::Gauge, &[], "Processes reported cpu_pegged and not cleared yet."),
    family("procmon_profile_processes", Kind::Gauge, &[], "Processes whose recent stacks and CPU/RSS trajectory are kept for cpu_pegged, crash and oom_kill events."),
    family("procmon_profile_evictions_total", Kind::Counter, &[], "Processes whose recent stacks were dropped to stay within the bound."),
    family("procmon_symbolizer_frames", Kind::Gauge, &[], "Stack frames (address to name) cached by the symbolizer, all processes and the kernel, and by file offset."),
    family("procmon_symbolizer_events_total", Kind::Counter, &["event"], "Symbolizer work: cache_hit and resolved (addresses answered from the cache, or looked up), evicted (processes dropped from the cache at its cap), rebuild (symbolizer dropped to release the binaries it parsed: idle after a drain, or after exited processes), kallsyms_load (kernel symbol index read, at a kernel address not cached after it was released), panic (a lookup that failed inside the symbolizer; answered with raw addresses)."),
];

pub struct StateCollector {
    source: Arc<dyn HealthSource>,
    descs: Vec<Desc>,
}

impl StateCollector {
    fn new(source: Arc<dyn HealthSource>) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.to_string(),
                    f.help.to_string(),
                    f.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .unwrap()
            })
            .collect();
        Self { source, descs }
    }
}

type Rows = Vec<(Vec<String>, f64)>;

fn one(v: u64) -> Rows {
    vec![(vec![], v as f64)]
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.source.snapshot();
        let k = |i: u32| s.kernel[i as usize];
        let labels = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rows: [Rows; 16] = [
            one(s.live_processes),
            one(s.tracked_processes),
            one(s.tree.evictions),
            vec![
                (labels(&["added"]), s.tree.reconciled_added as f64),
                (labels(&["removed"]), s.tree.reconciled_removed as f64),
                (labels(&["replaced"]), s.tree.pid_reuse as f64),
            ],
            vec![
                (
                    labels(&["fork", "ringbuf_full"]),
                    k(stat::RINGBUF_FULL_FORK) as f64,
                ),
                (
                    labels(&["exec", "ringbuf_full"]),
                    k(stat::RINGBUF_FULL_EXEC) as f64,
                ),
                (
                    labels(&["exit", "ringbuf_full"]),
                    k(stat::RINGBUF_FULL_EXIT) as f64,
                ),
                (
                    labels(&["release", "ringbuf_full"]),
                    k(stat::RINGBUF_FULL_RELEASE) as f64,
                ),
                (
                    labels(&["oom_kill", "ringbuf_full"]),
                    k(stat::RINGBUF_FULL_OOM_KILL) as f64,
                ),
                (
                    labels(&["cgroup", "ringbuf_full"]),
                    k(stat::RINGBUF_FULL_CGROUP) as f64,
                ),
                (labels(&["unknown", "sink_lagged"]), s.sink_lagged as f64),
                (labels(&["unknown", "sink_error"]), s.sink_errors as f64),
                (
                    labels(&["unknown", "shutdown_unflushed"]),
                    s.sink_unflushed as f64,
                ),
            ]
            .into_iter()
            .chain(
                DecodeError::REASONS
                    .iter()
                    .zip(s.decode_errors)
                    .map(|(reason, n)| (labels(&["unknown", reason]), n as f64)),
            )
            .collect(),
            one(k(stat::READ_ERROR)),
            one(k(stat::THREAD_EXITS)),
            s.program_misses
                .iter()
                .map(|(program, misses)| (labels(&[program]), *misses as f64))
                .collect(),
            one(k(stat::CPU_SAMPLES)),
            one(k(stat::STACK_COLLISIONS)),
            one(k(stat::SAMPLES_FULL)),
            one(s.pegged_now),
            one(s.profiled_processes),
            one(s.profile_evictions),
            one(s.symbolizer.cached_frames + s.symbolizer.file_frames),
            [
                ("cache_hit", s.symbolizer.cache_hits),
                ("resolved", s.symbolizer.resolved),
                ("evicted", s.symbolizer.evicted),
                ("rebuild", s.symbolizer.rebuilds),
                ("kallsyms_load", s.symbolizer.kallsyms_loads),
                ("panic", s.symbolizer.panics),
            ]
            .into_iter()
            .map(|(event, n)| (labels(&[event]), n as f64))
            .collect(),
        ];
        FAMILIES
            .iter()
            .zip(rows)
            .map(|(f, rows)| build(f, rows))
            .collect()
    }
}

fn build(f: &Family, rows: Rows) -> MetricFamily {
    let opts = Opts::new(f.name, f.help);
    let mut family = match f.kind {
        Kind::Counter => {
            let c = CounterVec::new(opts, f.labels).unwrap();
            for (values, v) in &rows {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                c.with_label_values(&values).inc_by(v.max(0.0));
            }
            c.collect()
        }
        Kind::Gauge => {
            let g = GaugeVec::new(opts, f.labels).unwrap();
            for (values, v) in &rows {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                g.with_label_values(&values).set(*v);
            }
            g.collect()
        }
    };
    family.remove(0)
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
            ..Default::default()
        };
        s.decode_errors[1] = 2;
        s.kernel[stat::RINGBUF_FULL_EXIT as usize] = 7;
        s.tree.evictions = 3;
        let m = Metrics::new(Arc::new(Fixed(s)));
        m.exits.with_label_values(&["crashed"]).inc();
        m.crashes
            .with_label_values(&["nginx.service", "SIGSEGV"])
            .inc();
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            "procmon_processes_live 42",
            "procmon_tree_evictions_total 3",
            "procmon_events_lost_total{kind=\"exit\",reason=\"ringbuf_full\"} 7",
            "procmon_events_lost_total{kind=\"unknown\",reason=\"abi_mismatch\"} 2",
            "procmon_events_lost_total{kind=\"unknown\",reason=\"truncated\"} 0",
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

    #[test]
    fn forgets_the_counters_of_released_workloads() {
        let m = Metrics::new(Arc::new(Fixed(HealthSnapshot::default())));
        m.crashes
            .with_label_values(&["podman/aaaa", "SIGSEGV"])
            .inc();
        m.crashes
            .with_label_values(&["podman/aaaa", "SIGABRT"])
            .inc();
        m.crashes
            .with_label_values(&["app.service", "SIGSEGV"])
            .inc();
        m.oom_kills
            .with_label_values(&["podman/aaaa", "SIGKILL"])
            .inc();
        m.forget_workloads(&["podman/aaaa", "never-seen"]);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains("podman/aaaa"), "{text}");
        assert!(
            text.contains("procmon_crashes_total{signal=\"SIGSEGV\",workload=\"app.service\"} 1"),
            "{text}"
        );
    }
}
