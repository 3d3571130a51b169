//! The running pipeline behind `procmon agent` and `procmon run`: probes → reader → tree and
//! attribution → metrics/events, plus the sampler and the /proc reconciler, with one
//! orderly shutdown.
//!
//! Startup order is chosen so that a failure leaves nothing half-started: callers check
//! privileges, bind the listen socket and open the events file first; only then are the
//! probes loaded. The tree is seeded from /proc *after* the probes are attached, so no
//! process falls between.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{MapData, PerCpuArray};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    attribution::ProcessTree,
    attribution::{Attribution, AttributionConfig},
    clock::{boottime_ns, WallClock},
    events::hub::Hub,
    events::sink,
    events::EventKind,
    ingest::{DecodeErrors, Ingest},
    kernel::{self, perf::CpuSampling, sampler::Sampler},
    metrics::{HealthSnapshot, HealthSource, Metrics},
    procfs::{self, PROC},
    profile::{
        self,
        symbolize::{SymbolizeOptions, SymbolizerHandle},
        PeggedReport, ProfileConfig, ProfileState,
    },
    state::{Shared, State},
};

pub struct PipelineConfig {
    pub max_processes: usize,
    pub reconcile_interval: Duration,
    pub sample_interval: Duration,
    pub ringbuf_bytes: u32,
    pub event_kinds: Vec<EventKind>,
    /// Recent events kept for /events clients that ask for them.
    pub history: usize,
    /// /events clients served at once at most.
    pub max_sse_clients: usize,
    pub attribution: AttributionConfig,
    pub profile: ProfileConfig,
}

/// Events buffered for each slow consumer (the events file, each /events client) before it
/// starts losing (and counting) them. Larger than a reader batch (4096), so a consumer that
/// keeps up is never outrun by one batch.
const EVENT_BUFFER: usize = 64 * 1024;
/// How long shutdown waits, after the last records are drained, for the events writer and
/// for /events clients to take their last bytes: a stalled reader never holds the agent.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);
/// Cgroup reads per sampling round (processes that exec'd or were forked since the last).
const CGROUP_READS_PER_ROUND: usize = 4096;

pub struct Pipeline {
    pub shared: Arc<Shared>,
    hub: Arc<Hub>,
    stop: watch::Sender<bool>,
    reader: JoinHandle<std::io::Result<()>>,
    sampler: JoinHandle<Sampler>,
    profiler: Option<JoinHandle<CpuSampling>>,
    reconciler: JoinHandle<()>,
    sink: Option<JoinHandle<Result<(), sink::SinkClosed>>>,
    sink_health: Arc<sink::SinkHealth>,
    reopen: watch::Sender<u64>,
    security: Arc<crate::http::Security>,
    http: Option<JoinHandle<std::io::Result<()>>>,
}

impl Pipeline {
    pub async fn start(
        cfg: PipelineConfig,
        listener: Option<TcpListener>,
        security: Arc<crate::http::Security>,
        events_out: Option<(sink::Target, sink::Output)>,
    ) -> anyhow::Result<Self> {
        let kernel::Probes {
            ebpf,
            events,
            stats,
            features,
            program_fds,
            cpu,
        } = kernel::load(&kernel::LoadConfig {
            ringbuf_bytes: cfg.ringbuf_bytes,
            profile: (cfg.profile.hz > 0).then_some(kernel::ProfileLoad {
                hz: cfg.profile.hz,
                drain: cfg.profile.drain,
            }),
        })?;
        let mut sampler = Sampler::new(ebpf);
        let mut tree = ProcessTree::new(cfg.max_processes);
        tree.seed(
            procfs::scan(PROC.as_ref()).context("cannot read /proc to seed the process tree")?,
        );
        let mut attribution = Attribution::new(cfg.attribution);
        attribution.seed(&mut tree);
        let shared = Arc::new(Shared::new(tree, attribution));
        shared.lock().profile = ProfileState::new(&cfg.profile);
        resolve_cgroups(&shared, usize::MAX).await;
        // A first sample, so live ratios have a baseline one interval from now.
        sample_once(&mut sampler, &shared, None).await;

        // ELF symbol tables only: blazesym's DWARF lookups cost more memory and, on gcc -O1
        // binaries, missed functions (main, hot_outer of the tests' C program) that the symbol
        // tables name.
        let symbolize = match cfg.profile.release_symbolizer {
            true => SymbolizeOptions::default(),
            false => SymbolizeOptions {
                release_after_idle: None,
                kernel_release_after_idle: None,
                ..SymbolizeOptions::default()
            },
        };
        let symbolizer = cpu.as_ref().map(|_| SymbolizerHandle::spawn(symbolize));
        let decode_errors = Arc::new(DecodeErrors::default());
        let sink_health = Arc::new(sink::SinkHealth::default());
        let source = Arc::new(AgentHealth {
            shared: shared.clone(),
            stats: Mutex::new(stats),
            program_fds,
            decode_errors: decode_errors.clone(),
            sink: sink_health.clone(),
            symbolizer: symbolizer.clone(),
        });
        let metrics = Arc::new(Metrics::new(source));
        for feature in kernel::Feature::ALL {
            metrics.set_kernel_feature(feature.name(), features.is_ok(feature));
        }
        for line in features.to_string().lines() {
            log::warn!("{line}");
        }
        let first = shared.lock().attribution.snapshot(boottime_ns());
        metrics.attribution.update(&first);
        let hub = Arc::new(Hub::new(EVENT_BUFFER, cfg.history));
        let (reopen, reopen_rx) = watch::channel(0u64);
        let sink = events_out.map(|(target, out)| {
            let rx = hub.subscribe(None, None).expect("the hub is open").rx;
            tokio::spawn(sink::write_json_lines(
                rx,
                target,
                out,
                cfg.event_kinds.clone(),
                sink_health.clone(),
                reopen_rx,
            ))
        });
        let ingest = Ingest::new(&metrics, hub.clone(), decode_errors);
        let (stop, stop_rx) = watch::channel(false);
        let drained = Arc::new(kernel::reader::Drained::default());
        let reader = tokio::spawn(kernel::reader::run(
            events,
            ingest,
            shared.clone(),
            metrics.reader_lag.clone(),
            drained.clone(),
            stop_rx.clone(),
        ));
        let sampler = tokio::spawn(sample_periodically(
            sampler,
            shared.clone(),
            metrics.clone(),
            hub.clone(),
            cfg.sample_interval,
            stop_rx.clone(),
        ));
        let profiler = cpu.zip(symbolizer).map(|(cpu, symbolizer)| {
            tokio::spawn(drain_periodically(
                cpu,
                symbolizer,
                shared.clone(),
                cfg.profile.drain,
                stop_rx.clone(),
            ))
        });
        let reconciler = tokio::spawn(reconcile_periodically(
            shared.clone(),
            drained,
            cfg.reconcile_interval,
            stop_rx.clone(),
        ));
        let http = listener.map(|listener| {
            let mut http_stop = stop_rx.clone();
            let sse = crate::events::sse::SseState {
                hub: hub.clone(),
                dropped: metrics.sse_dropped.clone(),
                clients: metrics.sse_clients.clone(),
                max_clients: cfg.max_sse_clients,
                refused: metrics.sse_refused.clone(),
            };
            tokio::spawn(crate::http::serve(
                listener,
                metrics.clone(),
                sse,
                sink_health.clone(),
                security.clone(),
                async move {
                    let _ = http_stop.changed().await;
                },
            ))
        });
        Ok(Self {
            shared,
            hub,
            stop,
            reader,
            sampler,
            profiler,
            reconciler,
            sink,
            sink_health,
            reopen,
            security,
            http,
        })
    }

    /// SIGHUP: the events file is reopened (log rotation) and the web config re-read
    /// (rotated certificates).
    pub fn reload(&self) {
        self.reopen.send_modify(|n| *n += 1);
        self.security.reload();
    }

    /// Resolves if the events writer stops for good before shutdown (stdout was closed):
    /// the agent must stop, since nobody can read its events any more.
    pub async fn sink_closed(&mut self) -> anyhow::Error {
        let Some(sink) = &mut self.sink else {
            return std::future::pending().await;
        };
        let result = sink.await;
        self.sink = None;
        match result {
            Ok(Err(closed)) => closed.into(),
            Ok(Ok(())) => anyhow::anyhow!("the events writer stopped"),
            Err(e) => anyhow::anyhow!("the events writer failed: {e}"),
        }
    }

    /// Stops everything: the reader drains what the kernel still holds, the events file is
    /// flushed, and only then are the probes detached.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let sampler = self.sampler.await?;
        let profiler = match self.profiler {
            Some(p) => Some(p.await?),
            None => None,
        };
        self.reader.await?.context("ring-buffer reader failed")?;
        // After the last drain: every consumer's stream ends once it has read what is left.
        self.hub.close();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        if let Some(mut sink) = self.sink {
            match tokio::time::timeout_at(deadline, &mut sink).await {
                // A closed stdout at the very end loses nothing worth stopping for.
                Ok(written) => {
                    let _ = written?;
                }
                Err(_) => {
                    sink.abort();
                    let lost = self.sink_health.pending.load(Relaxed);
                    self.sink_health.unflushed.fetch_add(lost, Relaxed);
                    log::warn!("the events output did not take the last {lost} events within {SHUTDOWN_GRACE:?} (does its reader still read?); stopping without them");
                }
            }
        }
        self.reconciler.await?;
        if let Some(mut http) = self.http {
            // /events streams have ended; a client that stopped reading could still hold its
            // connection open, so the wait is bounded.
            match tokio::time::timeout_at(deadline, &mut http).await {
                Ok(served) => served?.context("HTTP server failed")?,
                Err(_) => http.abort(),
            }
        }
        drop(profiler);
        drop(sampler.into_inner());
        Ok(())
    }
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; pass --listen ADDR:PORT with a free port")
    })
}

pub async fn open_events(path: &Path) -> anyhow::Result<(sink::Target, sink::Output)> {
    let target = sink::Target::from_arg(path);
    let out = sink::open(&target).await?;
    Ok((target, out))
}

/// One sampling round: the task iterator pass, then the live sums under the lock, then
/// pegged processes found or cleared.
async fn sample_once(
    sampler: &mut Sampler,
    shared: &Arc<Shared>,
    report: Option<(&Metrics, &Hub)>,
) {
    let metrics = report.map(|(m, _)| m);
    let started = Instant::now();
    // The pass is a few syscalls and a copy: cheaper inline than a blocking-pool hop.
    let samples = match sampler.sample() {
        Ok(samples) => samples,
        Err(e) => {
            log::warn!("sampling failed: {e}");
            return;
        }
    };
    if let Some(m) = metrics {
        m.sample_duration.observe(started.elapsed().as_secs_f64());
    }
    let now = boottime_ns();
    let (snapshot, pegged) = {
        let mut state = shared.lock();
        state.apply_samples(&samples, now);
        let released = state.attribution.take_released();
        // Under the state lock, which the reader holds while it counts crashes: a
        // workload admitted again right after its release keeps its new counts.
        if let Some(m) = metrics {
            let names: Vec<&str> = released.iter().map(|w| w.workload.as_str()).collect();
            m.forget_workloads(&names);
        }
        let State {
            tree,
            attribution,
            profile: profile_state,
            ..
        } = &mut *state;
        let transitions = profile_state.on_sample_pass(tree, now);
        let clock = WallClock::now();
        let pegged: Vec<PeggedReport> = transitions
            .iter()
            .map(|t| profile::render_transition(t, tree, attribution, profile_state, &clock, now))
            .collect();
        (attribution.snapshot(now), pegged)
    };
    if let Some((m, hub)) = report {
        for p in pegged {
            if p.pegged {
                // Already a bounded label: the process's admitted workload.
                m.cpu_pegged.with_label_values(&[p.workload.as_str()]).inc();
            }
            hub.publish(p.msg);
        }
    }
    // Rendered outside the lock: tens of thousands of series take milliseconds.
    if let Some(m) = metrics {
        m.attribution.update(&snapshot);
    }
}

async fn sample_periodically(
    mut sampler: Sampler,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Sampler {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return sampler,
            _ = tick.tick() => {}
        }
        sample_once(&mut sampler, &shared, Some((&metrics, &hub))).await;
        resolve_cgroups(&shared, CGROUP_READS_PER_ROUND).await;
    }
}

/// Drains the CPU sampler's counts and symbolizes them while the processes live. On stop,
/// one last drain, so a short `procmon profile` loses nothing of its final moments.
async fn drain_periodically(
    mut cpu: CpuSampling,
    symbolizer: SymbolizerHandle,
    shared: Arc<Shared>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> CpuSampling {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut kernel_frames = profile::collect::KernelFrames::default();
    loop {
        let stopping = tokio::select! {
            _ = stop.changed() => true,
            _ = tick.tick() => false,
        };
        let forgotten = shared.lock().profile.take_forgotten();
        for pid in forgotten {
            symbolizer.forget(pid);
        }
        let sampled = profile::collect::drain(&mut cpu, &symbolizer, &mut kernel_frames).await;
        shared.lock().record_cpu_samples(&sampled, boottime_ns());
        if stopping {
            return cpu;
        }
    }
}

/// Reads the cgroup of processes that are new or exec'd since the last round. Short-lived
/// processes never get here: they keep the workload they inherited from their parent.
async fn resolve_cgroups(shared: &Arc<Shared>, limit: usize) {
    let wanted = {
        let state = shared.lock();
        state.attribution.cgroups_to_read(&state.tree, limit)
    };
    if wanted.is_empty() {
        return;
    }
    let found: Vec<(u32, u64, Option<String>, bool)> = tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(pid, start)| {
                let cgroup = procfs::read_cgroup(PROC.as_ref(), pid);
                // Flags after the cgroup: a process that started exiting before the read
                // may have shown `/`; one that starts after it was read where it ran.
                let flags = procfs::read_flags(PROC.as_ref(), pid);
                let cgroup = cgroup.filter(|_| flags.is_some_and(|f| !f.exiting));
                let kernel_thread = flags.is_some_and(|f| f.kernel_thread);
                (pid, start, cgroup, kernel_thread)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    let mut state = shared.lock();
    for (pid, start, path, kernel_thread) in found {
        match path {
            Some(path) => state.set_cgroup(pid, start, &path, kernel_thread),
            // Gone or exiting before it could be read (a compiler run, a shell pipeline):
            // it keeps the workload inherited from its parent. Naming it after the root cgroup would
            // make its comm a workload, and every short-lived command a series.
            None => state.cgroup_unreadable(pid, start),
        }
    }
}

/// Periodically corrects the tree against /proc (missed forks and exits).
async fn reconcile_periodically(
    shared: Arc<Shared>,
    drained: Arc<kernel::reader::Drained>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate; the tree was just seeded
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let scan_started = boottime_ns();
        let Ok(Ok(snapshot)) = tokio::task::spawn_blocking(|| procfs::scan(PROC.as_ref())).await
        else {
            log::warn!("cannot read /proc; reconciliation skipped");
            continue;
        };
        // The scan is judged against the records of everything that happened before it ended.
        let scan_ended = boottime_ns() + RECONCILE_MARGIN.as_nanos() as u64;
        let caught_up = tokio::time::timeout(RECONCILE_CATCH_UP, async {
            while drained.through_ns() < scan_ended {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        tokio::select! {
            _ = stop.changed() => return,
            done = caught_up => if done.is_err() {
                log::debug!("the ring-buffer reader is behind; reconciliation skipped");
                continue;
            }
        }
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            shared
                .lock()
                .tree
                .reconcile(&snapshot, scan_started, |pid| {
                    procfs::read_process(PROC.as_ref(), pid)
                });
        })
        .await;
    }
}

/// Slack past the scan's end for records reserved before it and submitted just after.
const RECONCILE_MARGIN: Duration = Duration::from_millis(1);
/// How long a reconciliation waits for the reader to catch up before it is skipped (a
/// backlogged reader would make every missed record look like a loss).
const RECONCILE_CATCH_UP: Duration = Duration::from_secs(5);

struct AgentHealth {
    shared: Arc<Shared>,
    stats: Mutex<PerCpuArray<MapData, u64>>,
    program_fds: Vec<(&'static str, std::os::fd::OwnedFd)>,
    decode_errors: Arc<DecodeErrors>,
    sink: Arc<sink::SinkHealth>,
    symbolizer: Option<SymbolizerHandle>,
}

impl HealthSource for AgentHealth {
    fn snapshot(&self) -> HealthSnapshot {
        let (live, tree, profile) = {
            let state = self.shared.lock();
            let p = &state.profile;
            (
                state.tree.len() as u64,
                state.tree.stats(),
                (
                    p.pegged.pegged_now() as u64,
                    p.recent.len() as u64,
                    p.recent.evicted,
                ),
            )
        };
        HealthSnapshot {
            live_processes: live,
            tracked_processes: live,
            tree,
            kernel: kernel::read_stats(&self.stats.lock().unwrap_or_else(|e| e.into_inner())),
            decode_errors: self.decode_errors.each_ref().map(|n| n.load(Relaxed)),
            sink_lagged: self.sink.lagged.load(Relaxed),
            sink_errors: self.sink.errors.load(Relaxed),
            sink_unflushed: self.sink.unflushed.load(Relaxed),
            pegged_now: profile.0,
            profiled_processes: profile.1,
            profile_evictions: profile.2,
            symbolizer: self
                .symbolizer
                .as_ref()
                .map(SymbolizerHandle::stats)
                .unwrap_or_default(),
            program_misses: self
                .program_fds
                .iter()
                .filter_map(|(name, fd)| {
                    use std::os::fd::AsFd;
                    Some((*name, kernel::prog_stats::recursion_misses(fd.as_fd())?))
                })
                .collect(),
        }
    }
}
