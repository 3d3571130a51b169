//! The ring-buffer reader: drains in bounded batches when the kernel wakes it (the probes
//! only wake it once enough is pending) and on a short timer, so neither fork storms nor
//! quiet periods cost a wakeup per event.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use prometheus::Histogram;
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::watch,
};

use crate::{ingest::Ingest, state::Shared};

/// Upper bound on records per batch: the tree lock is held for a batch, and scrapes wait
/// on it.
const BATCH: usize = 4096;
/// Latency bound for records submitted without a wakeup.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// How far the reader has read: every record the kernel submitted before this boottime (ns)
/// has been applied. The reconciler waits for it to pass the end of its /proc scan, so a
/// process that exited (or started) during the scan is not taken for a missed exit (or fork)
/// while its record still waits in the ring buffer.
#[derive(Default)]
pub struct Drained(AtomicU64);

impl Drained {
    pub fn through_ns(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

pub async fn run(
    ring: RingBuf<MapData>,
    ingest: Ingest,
    shared: Arc<Shared>,
    lag: Histogram,
    drained: Arc<Drained>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, while the AsyncFd
    // owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.changed() => true,
            ready = ring.readable_mut() => {
                ready?.clear_ready();
                false
            }
            _ = tick.tick() => false,
        };
        // Drain everything available (the last drain on stop included), yielding between
        // full batches so timers and scrapes stay responsive.
        loop {
            let started = crate::clock::boottime_ns();
            if drain_batch(ring.get_mut(), &ingest, &shared, &lag) < BATCH {
                // The ring was empty: what was submitted before `started` is applied.
                // NB: a record reserved before it but not yet submitted stops the drain too;
                // programs submit microseconds after reserving, far inside the margin the
                // reconciler gives.
                drained.0.fetch_max(started, Ordering::Release);
                // Judged by what was read, not by the clock: a reader running behind must
                // not report exits whose release is already waiting in the ring.
                ingest.batch(&shared).expire_exits(started);
                break;
            }
            tokio::task::yield_now().await;
        }
        if stopping {
            ingest.batch(&shared).flush_exits();
            return Ok(());
        }
    }
}

fn drain_batch(
    ring: &mut RingBuf<MapData>,
    ingest: &Ingest,
    shared: &Shared,
    lag: &Histogram,
) -> usize {
    let mut batch = ingest.batch(shared);
    while batch.records < BATCH {
        let Some(item) = ring.next() else { break };
        batch.apply(&item);
    }
    if let Some(seconds) = batch.lag_seconds() {
        lag.observe(seconds);
    }
    batch.records
}
