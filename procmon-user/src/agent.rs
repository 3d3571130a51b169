//! `procmon agent`: wires probes → reader → tree → metrics/events, and shuts down cleanly.
//!
//! Startup order is chosen so that a failure leaves nothing half-started: privileges, then
//! the listen socket (port conflicts), then the events file, and only then the probes. The
//! tree is seeded from /proc *after* the probes are attached, so no process falls between.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use aya::maps::{MapData, PerCpuArray};
use tokio::{
    io::AsyncWrite,
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    clock::boottime_ns,
    events::EventKind,
    hub::Hub,
    ingest::{Ingest, Shared},
    kernel,
    metrics::{HealthSnapshot, HealthSource, Metrics},
    procfs, sink,
    tree::Tree,
};

pub struct AgentConfig {
    pub listen: SocketAddr,
    pub events: Option<PathBuf>,
    pub event_kinds: Vec<EventKind>,
    pub max_processes: usize,
    pub reconcile_interval: Duration,
    pub ringbuf_bytes: u32,
    pub history: usize,
}

/// Events buffered for each slow consumer (the events file, each /events client) before it
/// starts losing (and counting) them. Larger than a reader batch (4096), so a consumer that
/// keeps up is never outrun by one batch.
const EVENT_BUFFER: usize = 64 * 1024;
/// How long shutdown waits for /events clients that do not read their last bytes.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    kernel::check_privileges()?;
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; pass --listen ADDR:PORT with a free port",
            cfg.listen
        )
    })?;
    let events_out = match &cfg.events {
        Some(path) => Some(open_events(path).await?),
        None => None,
    };

    let kernel::Probes {
        ebpf,
        events,
        stats,
    } = kernel::load(&kernel::LoadConfig {
        ringbuf_bytes: cfg.ringbuf_bytes,
    })?;
    let shared = Arc::new(Shared::new(Tree::new(cfg.max_processes)));
    let snapshot = procfs::scan(procfs::PROC.as_ref())
        .context("cannot read /proc to seed the process tree")?;
    shared.tree.lock().unwrap().seed(snapshot);

    let source = Arc::new(AgentHealth {
        shared: shared.clone(),
        stats: std::sync::Mutex::new(stats),
    });
    let metrics = Arc::new(Metrics::new(source));
    let hub = Arc::new(Hub::new(EVENT_BUFFER, cfg.history));
    let sink = events_out.map(|out| {
        let rx = hub.subscribe(None).expect("the hub is open").rx;
        tokio::spawn(sink::write_json_lines(
            rx,
            out,
            cfg.event_kinds.clone(),
            shared.clone(),
        ))
    });
    let ingest = Ingest::new(&metrics, hub.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(kernel::reader::run(
        events,
        ingest,
        shared.clone(),
        metrics.reader_lag.clone(),
        stop_rx.clone(),
    ));
    let reconciler = tokio::spawn(reconcile_periodically(
        shared.clone(),
        cfg.reconcile_interval,
        stop_rx.clone(),
    ));
    let mut http_stop = stop_rx.clone();
    let sse = crate::sse::SseState {
        hub: hub.clone(),
        dropped: metrics.sse_dropped.clone(),
        clients: metrics.sse_clients.clone(),
    };
    let mut http = tokio::spawn(crate::http::serve(
        listener,
        metrics.clone(),
        sse,
        async move {
            let _ = http_stop.changed().await;
        },
    ));
    eprintln!("procmon: ready, listening on http://{}", cfg.listen);

    wait_for_shutdown_signal().await?;
    eprintln!("procmon: shutting down");
    let _ = stop_tx.send(true);
    reader.await?.context("ring-buffer reader failed")?;
    // After the last drain: every consumer's stream ends once it has read what is left.
    hub.close();
    if let Some(sink) = sink {
        sink.await?.context("writing events failed")?;
    }
    reconciler.await?;
    // /events streams have ended; a client that stopped reading could still hold its
    // connection open, so the wait is bounded.
    match tokio::time::timeout(HTTP_SHUTDOWN_GRACE, &mut http).await {
        Ok(served) => served?.context("HTTP server failed")?,
        Err(_) => http.abort(),
    }
    // Detach only after the last drain.
    drop(ebpf);
    Ok(())
}

async fn open_events(path: &PathBuf) -> anyhow::Result<Box<dyn AsyncWrite + Unpin + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(tokio::io::stdout()));
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| {
            format!(
                "cannot open events file {}; check the path and permissions",
                path.display()
            )
        })?;
    Ok(Box::new(file))
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Periodically corrects the tree against /proc (missed forks and exits).
async fn reconcile_periodically(
    shared: Arc<Shared>,
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
        let Ok(Ok(snapshot)) =
            tokio::task::spawn_blocking(|| procfs::scan(procfs::PROC.as_ref())).await
        else {
            eprintln!("procmon: warning: cannot read /proc; reconciliation skipped");
            continue;
        };
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut tree = shared.tree.lock().unwrap_or_else(|e| e.into_inner());
            tree.reconcile(&snapshot, scan_started, |pid| {
                procfs::read_process(procfs::PROC.as_ref(), pid)
            });
        })
        .await;
    }
}

struct AgentHealth {
    shared: Arc<Shared>,
    stats: std::sync::Mutex<PerCpuArray<MapData, u64>>,
}

impl HealthSource for AgentHealth {
    fn snapshot(&self) -> HealthSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let (live, tree) = {
            let tree = self.shared.tree.lock().unwrap_or_else(|e| e.into_inner());
            (tree.len() as u64, tree.stats())
        };
        HealthSnapshot {
            live_processes: live,
            tracked_processes: live,
            tree,
            kernel: kernel::read_stats(&self.stats.lock().unwrap_or_else(|e| e.into_inner())),
            malformed: self.shared.malformed.load(Relaxed),
            sink_lagged: self.shared.sink_lagged.load(Relaxed),
        }
    }
}
