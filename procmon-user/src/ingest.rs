//! Applies ring-buffer records: decode, update the tree, count, and render events for the
//! consumers. Pure logic over bytes, so it is tested without a kernel.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use procmon_common::{
    exit_flags, kind, ExecRecord, ExitRecord, ForkRecord, OomKillRecord, RecordHeader,
    ReleaseRecord,
};
use prometheus::{IntCounter, IntCounterVec};

use crate::{
    attribution::TrackedProcess,
    clock::{boottime_ns, rfc3339, WallClock},
    comm::c_str,
    deaths::{ancestry, crash, oom, Death, Deaths},
    events::hub::Hub,
    events::{
        self, signal_label, Ancestor, EventKind, EventMsg, ExecEvent, ExitFields, ExitStatus,
        ForkEvent, Outcome,
    },
    metrics::Metrics,
    profile::recent::FlightRecord,
    record::{cgroup_path, decode, peak_rss_bytes, split_cpu, DecodeError, Record, RECORD_KINDS},
    release::{Awaiting, Held, Released},
    state::{Applied, Shared, State},
    tree::Comm,
    workload::Identity,
};

/// Records the decoder rejected, by [`DecodeError::REASONS`]; shared with scrapes.
pub type DecodeErrors = [AtomicU64; DecodeError::REASONS.len()];

/// Counter handles resolved once, so the per-event path does no label lookups.
pub(crate) struct Counters {
    events: [IntCounter; RECORD_KINDS.len()],
    exits: [IntCounter; 5],
    starts: IntCounter,
    execs: IntCounter,
    duplicate_exits: IntCounter,
    recovered_exits: IntCounter,
    exits_before_release: IntCounter,
    releases_forgotten: IntCounter,
    releases_late: IntCounter,
    // Labelled by workload: looked up per (rare) OOM kill or crash.
    pub(crate) oom_kills: IntCounterVec,
    pub(crate) crashes: IntCounterVec,
}

/// State of deaths in flight, used only by the reader (locked once per batch).
pub(crate) struct DeathState {
    pub(crate) deaths: Deaths,
    /// Exits waiting for their final CPU.
    pub(crate) awaiting: Awaiting<ExitClass>,
}

pub struct Ingest {
    pub(crate) counters: Counters,
    /// Where events go. The agent closes it after the reader's last drain, which ends every
    /// consumer's stream.
    hub: Arc<Hub>,
    decode_errors: Arc<DecodeErrors>,
    death_state: Mutex<DeathState>,
    /// Where OOM victims' executables are looked up when the tree does not know them.
    pub(crate) proc_root: PathBuf,
}

/// What an exit record says about the death, before the state applies it.
pub(crate) struct ExitClass {
    status: ExitStatus,
    death: Death,
    outcome: Outcome,
    /// For a crash or OOM kill, when events are rendered.
    crash: Option<CrashContext>,
}

/// What a `crash` event tells that only the state at the exit knows: the tree forgets the
/// process there, and the sampler with it, before its release may come.
pub(crate) struct CrashContext {
    ancestry: Vec<Ancestor>,
    /// Its recent stacks and trajectory, if the sampler ever caught it.
    flight: Option<FlightRecord>,
}

/// One batch: the tree lock and the clock, taken once for all its records.
pub struct Batch<'a> {
    pub(crate) ingest: &'a Ingest,
    pub(crate) state: MutexGuard<'a, State>,
    pub(crate) deaths: MutexGuard<'a, DeathState>,
    pub(crate) clock: WallClock,
    pub(crate) render: bool,
    pub records: usize,
    oldest_ns: Option<u64>,
}

impl Ingest {
    pub fn new(metrics: &Metrics, hub: Arc<Hub>, decode_errors: Arc<DecodeErrors>) -> Self {
        let kind = |k: &str| metrics.events.with_label_values(&[k]);
        let outcome = |o: Outcome| metrics.exits.with_label_values(&[o.as_str()]);
        Self {
            counters: Counters {
                events: RECORD_KINDS.map(kind),
                exits: Outcome::ALL.map(outcome),
                starts: metrics.starts.clone(),
                execs: metrics.execs.clone(),
                duplicate_exits: metrics.duplicate_exits.clone(),
                recovered_exits: metrics.recovered_exits.clone(),
                exits_before_release: metrics.exits_before_release.clone(),
                releases_forgotten: metrics.releases_forgotten.clone(),
                releases_late: metrics.releases_late.clone(),
                oom_kills: metrics.oom_kills.clone(),
                crashes: metrics.crashes.clone(),
            },
            hub,
            decode_errors,
            death_state: Mutex::new(DeathState {
                deaths: Deaths::default(),
                awaiting: Awaiting::default(),
            }),
            proc_root: PathBuf::from(crate::procfs::PROC),
        }
    }

    pub fn batch<'a>(&'a self, shared: &'a Shared) -> Batch<'a> {
        Batch {
            ingest: self,
            state: shared.lock(),
            deaths: self.death_state.lock().unwrap_or_else(|e| e.into_inner()),
            clock: WallClock::now(),
            // Events are rendered only when someone listens or history is kept.
            render: self.hub.wants_events(),
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
            Err(e) => {
                if self.ingest.decode_errors[e.index()].fetch_add(1, Ordering::Relaxed) == 0 {
                    // Once per reason: an ABI mismatch means the agent and its probes were
                    // built apart, and every record will be rejected.
                    log::warn!("rejected a ring-buffer record: {e}");
                }
                return;
            }
        };
        self.oldest_ns.get_or_insert(record.time_ns());
        let c = &self.ingest.counters;
        c.events[record.index()].inc();
        // What only the tree before the exit knows: the ancestry of a crashing process.
        let exit = match &record {
            Record::Exit(r) => {
                if !self.deaths.deaths.first_exit(r) {
                    c.duplicate_exits.inc();
                    return;
                }
                Some(self.classify_exit(r))
            }
            Record::Release(r) => {
                self.on_release(r);
                return;
            }
            _ => None,
        };
        let applied = self.state.apply(&record);
        match (record, applied) {
            (Record::Fork(r), Applied::Fork) => {
                c.starts.inc();
                if self.render {
                    self.emit_fork(&r);
                }
            }
            (Record::Exec(r), Applied::Exec { old_comm }) => {
                c.execs.inc();
                if self.render {
                    self.emit_exec(&r, old_comm);
                }
            }
            (Record::Exit(r), Applied::Exit { gone }) => {
                let class = exit.expect("every exit record is classified above");
                let now = r.time_ns;
                for held in self.deaths.awaiting.hold(r, class, gone, now) {
                    self.finish_exit(held, false);
                }
            }
            (Record::OomKill(r), Applied::Unchanged) => {
                self.deaths.deaths.on_oom_kill(&r);
                self.on_oom_kill(&r);
            }
            (Record::Cgroup(r), Applied::Unchanged) => self.deaths.deaths.on_cgroup(&r),
            (record, applied) => {
                unreachable!("State::apply answered {record:?} with {applied:?}")
            }
        }
    }

    /// A process was released: its held exit goes out with the final CPU.
    fn on_release(&mut self, r: &ReleaseRecord) {
        match self.deaths.awaiting.release(r) {
            Released::Held(held) => self.finish_exit(held, true),
            Released::Late { process, cpu_ns } => {
                self.ingest.counters.releases_late.inc();
                self.state.late_cpu(&process, cpu_ns);
            }
            Released::Unseen => {
                // The exit tracepoint's run was skipped (preemptible tracepoints, 7.x): the
                // release is the exit, CPU exact, memory figures but the peak lost.
                let Some(p) = self.state.tree.get_exact(r.pid, r.start_ns) else {
                    return;
                };
                let exit = ExitRecord {
                    header: RecordHeader::new(kind::EXIT, size_of::<ExitRecord>()),
                    time_ns: r.time_ns,
                    start_ns: r.start_ns,
                    parent_start_ns: self
                        .state
                        .tree
                        .get(p.ppid)
                        .map_or(0, |parent| parent.start_ns),
                    utime_ns: r.utime_ns,
                    stime_ns: r.stime_ns,
                    runtime_ns: r.runtime_ns,
                    maxrss_kb: r.maxrss_kb,
                    // The address space is long gone.
                    hiwater_pages: 0,
                    rss_file_pages: 0,
                    rss_anon_pages: 0,
                    rss_shmem_pages: 0,
                    pid: r.pid,
                    tid: r.pid,
                    ppid: p.ppid,
                    exit_status: r.exit_status,
                    flags: exit_flags::GROUP_DEAD | exit_flags::LEADER,
                    _pad: 0,
                    comm: p.comm.raw(),
                };
                if !self.deaths.deaths.first_exit(&exit) {
                    return;
                }
                self.ingest.counters.recovered_exits.inc();
                let class = self.classify_exit(&exit);
                let gone = self.state.tree.on_exit(&exit);
                self.finish_exit(
                    Held {
                        record: exit,
                        class,
                        gone,
                        deadline_ns: 0,
                    },
                    true,
                );
            }
        }
    }

    /// Exits whose release did not come in time go out with the CPU read at exit.
    /// `drained_ns`: every record the kernel submitted before it has been applied.
    pub fn expire_exits(&mut self, drained_ns: u64) {
        for held in self.deaths.awaiting.expired(drained_ns) {
            self.finish_exit(held, false);
        }
    }

    /// Every exit still waiting, at shutdown.
    pub fn flush_exits(&mut self) {
        for held in self.deaths.awaiting.drain() {
            self.finish_exit(held, false);
        }
    }

    /// Counts, attributes and reports an exit; `cpu_final` tells whether its release came.
    fn finish_exit(&mut self, held: Held<ExitClass>, cpu_final: bool) {
        let Held {
            record: r,
            class:
                ExitClass {
                    status,
                    death,
                    outcome,
                    crash,
                },
            gone,
            ..
        } = held;
        let c = &self.ingest.counters;
        c.exits[Outcome::ALL.iter().position(|&o| o == outcome).unwrap()].inc();
        if !cpu_final {
            c.exits_before_release.inc();
            let forgotten = self.deaths.awaiting.stats.late_forgotten;
            c.releases_forgotten
                .inc_by(forgotten.saturating_sub(c.releases_forgotten.get()));
        }
        self.state.finish_exit(gone.as_ref(), &r);
        let fields = self.render.then(|| {
            self.exit_event_fields(
                &r,
                status,
                outcome,
                death.cgroup.as_deref(),
                gone.as_ref(),
                cpu_final,
            )
        });
        if let Some(fields) = &fields {
            self.publish(events::render(EventKind::Exit, &fields.event()));
        }
        if matches!(outcome, Outcome::Crashed | Outcome::OomKilled) {
            self.on_crash(&r, status, death, fields.as_ref(), crash, gone.as_ref());
        }
    }

    /// How the process of an exit record died, and what of it is read before the tree (and
    /// so the sampler) forgets it.
    fn classify_exit(&mut self, r: &ExitRecord) -> ExitClass {
        let status = ExitStatus::from_raw(r.exit_status);
        let death = self.deaths.deaths.on_exit(r);
        let outcome = status.outcome_given_oom(death.oom_victim);
        let crash = matches!(outcome, Outcome::Crashed | Outcome::OomKilled) && self.render;
        ExitClass {
            status,
            death,
            outcome,
            crash: crash.then(|| CrashContext {
                ancestry: ancestry::ancestry(&self.state.tree, r.ppid),
                flight: self.state.profile.recent.flight_record(
                    r.pid,
                    r.start_ns,
                    r.time_ns,
                    crate::profile::TOP_STACKS,
                ),
            }),
        }
    }

    /// Age of the batch's oldest record, for the reader-lag histogram.
    pub fn lag_seconds(&self) -> Option<f64> {
        self.oldest_ns
            .map(|t| boottime_ns().saturating_sub(t) as f64 / 1e9)
    }

    pub(crate) fn publish(&self, msg: EventMsg) {
        self.ingest.hub.publish(msg);
    }

    fn emit_fork(&self, r: &ForkRecord) {
        let time = rfc3339(self.clock.at(r.time_ns));
        let comm = Comm::from_raw(r.comm).to_lossy();
        self.publish(events::render(
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
        self.publish(events::render(
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

    pub(crate) fn exit_event_fields(
        &mut self,
        r: &ExitRecord,
        status: ExitStatus,
        outcome: Outcome,
        death_cgroup: Option<&str>,
        process: Option<&TrackedProcess>,
        cpu_final: bool,
    ) -> ExitFields {
        let (user, system) = split_cpu(r.runtime_ns, r.utime_ns, r.stime_ns);
        let comm = Comm::from_raw(r.comm).to_lossy();
        // The cgroup the kernel read at death (crash signals and SIGKILL), else the one the
        // tree last read or inherited at fork: the same guess the workload series make for
        // a process too short-lived to be read. Only containers add fields to an exit event.
        let identity = death_cgroup
            .or_else(|| process.and_then(|p| p.ext.cgroup.as_deref()))
            .map(|cgroup| self.state.attribution.identify(Some(cgroup), &comm, false))
            .filter(|id| id.container_id.is_some() || id.pod_uid.is_some());
        ExitFields {
            time: rfc3339(self.clock.at(r.time_ns)),
            comm,
            pid: r.pid,
            ppid: r.ppid,
            status,
            outcome,
            cpu_user_seconds: user as f64 / 1e9,
            cpu_system_seconds: system as f64 / 1e9,
            cpu_final,
            peak_rss_bytes: peak_rss_bytes(r),
            lifetime_seconds: r.time_ns.saturating_sub(r.start_ns) as f64 / 1e9,
            identity,
        }
    }

    /// What a dying process belonged to, from the cgroup the kernel read as it died.
    /// Kernel threads are known from the tree (PF_KTHREAD when its cgroup was read), or
    /// by kthreadd being their parent.
    fn death_identity(
        &mut self,
        cgroup: Option<&str>,
        comm: &str,
        pid: u32,
        ppid: u32,
        process: Option<&TrackedProcess>,
    ) -> Arc<Identity> {
        let attribution = &mut self.state.attribution;
        let kernel_thread = process.is_some_and(|p| attribution.is_kernel_thread(p))
            || (cgroup.is_none_or(|c| c == "/") && (pid == KTHREADD || ppid == KTHREADD));
        attribution.identify(cgroup, comm, kernel_thread)
    }
}

/// The pid of kthreadd, which forks every kernel thread (init/main.c rest_init).
const KTHREADD: u32 = 2;

/// Deaths that matter: crashes and OOM kills are counted per workload (within the label
/// cap) and reported as `crash` and `oom_kill` events, on top of the ordinary `exit` event.
impl Batch<'_> {
    /// Counts a crash or OOM death by workload and emits its `crash` event.
    pub(crate) fn on_crash(
        &mut self,
        r: &ExitRecord,
        status: ExitStatus,
        death: Death,
        exit: Option<&ExitFields>,
        context: Option<CrashContext>,
        process: Option<&TrackedProcess>,
    ) {
        let comm = Comm::from_raw(r.comm).to_lossy();
        let identity = self.death_identity(death.cgroup.as_deref(), &comm, r.pid, r.ppid, process);
        let label = self.admit_workload(identity.clone());
        self.ingest
            .counters
            .crashes
            .with_label_values(&[label.workload.as_str(), signal_label(status.signal)])
            .inc();
        if let (Some(exit), Some(context)) = (exit, context) {
            self.publish(crash::crash_event(
                exit,
                &death,
                &identity,
                &context.ancestry,
                process,
                r.time_ns,
                context.flight,
            ));
        }
    }

    pub(crate) fn on_oom_kill(&mut self, r: &OomKillRecord) {
        let comm = Comm::from_raw(r.comm).to_lossy();
        let cgroup = cgroup_path(&r.cgroup);
        let victim = self.state.tree.get_exact(r.pid, r.start_ns).cloned();
        let identity =
            self.death_identity(cgroup.as_deref(), &comm, r.pid, r.ppid, victim.as_ref());
        let label = self.admit_workload(identity.clone());
        self.ingest
            .counters
            .oom_kills
            .with_label_values(&[label.workload.as_str(), "SIGKILL"])
            .inc();
        if self.render {
            let seen = oom::Seen {
                tree: &self.state.tree,
                recent: &self.state.profile.recent,
                proc_root: &self.ingest.proc_root,
                clock: &self.clock,
            };
            let msg = oom::render_oom_kill(&seen, r, &comm, cgroup.as_deref(), &identity);
            self.publish(msg);
        }
    }

    /// The workload label to export: the same capped names as the per-workload series
    /// (--max-workloads, overflow counted in procmon_workload_overflow_total).
    pub(crate) fn admit_workload(&mut self, identity: Arc<Identity>) -> Arc<Identity> {
        self.state.attribution.admit_workload(identity)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attribution::{Attribution, ProcessTree};
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
            max_exited_series: 10,
            max_workloads: 10,
        })
    }

    struct Nothing;
    impl HealthSource for Nothing {
        fn snapshot(&self) -> HealthSnapshot {
            HealthSnapshot::default()
        }
    }

    pub(crate) type Rx = crate::events::hub::Receiver;

    pub(crate) fn setup() -> (Metrics, Ingest, Shared, Rx) {
        let metrics = Metrics::new(Arc::new(Nothing));
        let hub = Arc::new(Hub::new(64, 0));
        let rx = hub.subscribe(None, None).unwrap().rx;
        let mut ingest = Ingest::new(&metrics, hub, Default::default());
        // Never look at the build machine's /proc.
        ingest.proc_root = PathBuf::from("/nonexistent");
        (
            metrics,
            ingest,
            Shared::new(ProcessTree::new(100), test_attribution()),
            rx,
        )
    }

    /// An exit and its release, as the kernel sends them for a process reaped at once.
    pub(crate) fn apply_exit(batch: &mut Batch, exit: &ExitRecord) {
        batch.apply(&encode(exit));
        batch.apply(&encode(&rec::release(exit, 0)));
    }

    pub(crate) fn next_json(rx: &mut Rx) -> serde_json::Value {
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
            // The exit path's last 1 ms of CPU comes with the release.
            batch.apply(&encode(&rec::release(&exit, 1_000_000)));
            batch.apply(&[1, 2, 3]);
            assert_eq!(batch.records, 5);
        }
        assert_eq!(next_json(&mut rx)["kind"], "fork");
        let e = next_json(&mut rx);
        assert_eq!(
            (e["filename"].as_str(), e["old_comm"].as_str()),
            (Some("/usr/bin/true"), Some("parent"))
        );
        let x = next_json(&mut rx);
        let crash = next_json(&mut rx);
        assert_eq!(crash["kind"], "crash");
        assert_eq!(
            crash["ancestry"],
            serde_json::json!([{"pid": 1, "comm": null}])
        );
        assert_eq!(
            crash["workload"], "bad\"name\n\u{fffd}",
            "no cgroup record: the comm"
        );
        assert_eq!(
            metrics
                .crashes
                .with_label_values(&["bad\"name\n\u{fffd}", "SIGSEGV"])
                .get(),
            1
        );
        assert_eq!(x["outcome"], "crashed");
        assert_eq!(x["signal"], 11);
        assert_eq!(x["exit_code"], serde_json::Value::Null);
        assert_eq!(x["core_dumped"], true);
        assert_eq!(x["comm"], "bad\"name\n\u{fffd}");
        assert_eq!(x["peak_rss_bytes"], 1024 * 1024);
        assert_eq!(x["lifetime_seconds"], 0.002);
        // Runtime 2 ms at exit + 1 ms at release, split 3:2 (utime 3 ms, stime 1 + 1 ms)
        // like cputime_adjust.
        assert_eq!(
            (
                x["cpu_user_seconds"].as_f64(),
                x["cpu_system_seconds"].as_f64(),
                x["cpu_final"].as_bool(),
            ),
            (Some(0.0018), Some(0.0012), Some(true))
        );
        assert!(x["time"].as_str().unwrap().ends_with('Z'));
        let rejected: u64 = ingest
            .decode_errors
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum();
        assert_eq!(rejected, 1);
        assert_eq!(metrics.exits.with_label_values(&["crashed"]).get(), 1);
        assert_eq!(metrics.starts.get(), 1);
        assert_eq!(shared.lock().tree.len(), 0);
    }

    #[test]
    fn an_unreaped_exit_goes_out_after_the_wait_with_the_cpu_read_at_exit() {
        let (metrics, ingest, shared, mut rx) = setup();
        let exit = rec::exit(10, 1, 5, 0);
        ingest.batch(&shared).apply(&encode(&exit));
        assert!(rx.try_recv().is_err(), "held for its release");
        ingest
            .batch(&shared)
            .expire_exits(exit.time_ns + crate::release::RELEASE_WAIT_NS - 1);
        assert!(rx.try_recv().is_err(), "still within the wait");
        ingest
            .batch(&shared)
            .expire_exits(exit.time_ns + crate::release::RELEASE_WAIT_NS);
        let x = next_json(&mut rx);
        assert_eq!(
            (x["kind"].as_str(), x["cpu_final"].as_bool()),
            (Some("exit"), Some(false))
        );
        assert_eq!(x["cpu_user_seconds"].as_f64(), Some(0.0015));
        assert_eq!(metrics.exits_before_release.get(), 1);
        // The release, 10 s later: nothing more to report, and no second exit.
        ingest
            .batch(&shared)
            .apply(&encode(&rec::release(&exit, 5_000_000)));
        assert!(rx.try_recv().is_err());
        assert_eq!(metrics.exits.with_label_values(&["clean"]).get(), 1);
    }

    #[test]
    fn a_release_after_the_early_report_is_counted_late() {
        let (metrics, ingest, shared, mut rx) = setup();
        let start = 5_000_000_000;
        let exit = rec::exit(10, 1, start, 0);
        let mut batch = ingest.batch(&shared);
        batch.apply(&encode(&rec::fork(10, 1, start)));
        batch.apply(&encode(&exit));
        batch.expire_exits(exit.time_ns + crate::release::RELEASE_WAIT_NS);
        drop(batch);
        let _fork = next_json(&mut rx);
        assert_eq!(next_json(&mut rx)["cpu_final"].as_bool(), Some(false));
        assert_eq!(metrics.releases_late.get(), 0, "not released yet");
        ingest
            .batch(&shared)
            .apply(&encode(&rec::release(&exit, 5_000_000)));
        assert!(rx.try_recv().is_err(), "no second exit");
        assert_eq!(
            (
                metrics.exits_before_release.get(),
                metrics.releases_late.get()
            ),
            (1, 1)
        );
    }

    #[test]
    fn a_release_without_its_exit_is_the_exit() {
        let (metrics, ingest, shared, mut rx) = setup();
        let start = 5_000_000_000;
        let mut batch = ingest.batch(&shared);
        batch.apply(&encode(&rec::fork(10, 1, start)));
        batch.apply(&encode(&rec::release(&rec::exit(10, 1, start, 3 << 8), 0)));
        drop(batch);
        let _fork = next_json(&mut rx);
        let x = next_json(&mut rx);
        assert_eq!(
            (
                x["kind"].as_str(),
                x["exit_code"].as_u64(),
                x["ppid"].as_u64()
            ),
            (Some("exit"), Some(3), Some(1))
        );
        assert_eq!(metrics.recovered_exits.get(), 1);
        assert_eq!(shared.lock().tree.len(), 0);
    }

    #[test]
    fn a_crash_keeps_its_flight_record_while_its_release_is_awaited() {
        let (_metrics, ingest, shared, mut rx) = setup();
        let start = 5_000_000_000;
        let exit = rec::exit(10, 1, start, 11);
        ingest
            .batch(&shared)
            .apply(&encode(&rec::fork(10, 1, start)));
        let hot: crate::profile::recent::Stack = ["main", "hot_inner"]
            .into_iter()
            .map(crate::profile::symbolize::Frame::from)
            .collect();
        let sampled = crate::profile::collect::Sampled {
            pid: 10,
            stack: hot,
            samples: 7,
            shallow: false,
        };
        shared
            .lock()
            .record_cpu_samples(&[sampled], start + 1_000_000);
        ingest.batch(&shared).apply(&encode(&exit));
        // A sampling pass between the exit and its release: the tree has forgotten the
        // process by then.
        {
            let s = &mut *shared.lock();
            s.profile.on_sample_pass(&s.tree, exit.time_ns + 1);
        }
        ingest
            .batch(&shared)
            .apply(&encode(&rec::release(&exit, 0)));
        let _fork = next_json(&mut rx);
        let _exit = next_json(&mut rx);
        let crash = next_json(&mut rx);
        assert_eq!(crash["kind"], "crash");
        assert_eq!(
            crash["recent"]["top_stacks"][0]["frames"],
            serde_json::json!(["main", "hot_inner"]),
            "{crash}"
        );
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
