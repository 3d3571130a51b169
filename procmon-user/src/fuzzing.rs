//! The agent's pipeline for the fuzz targets in fuzz/ that need more than its public parsers:
//! records that decode can still carry any value, and what the tree, attribution, events and
//! metrics compute from them must not panic. Built only by cargo-fuzz (`--cfg fuzzing`).

use std::{path::PathBuf, sync::Arc};

use crate::{
    attribution::{Attribution, AttributionConfig, ProcessTree},
    clock::boottime_ns,
    events::hub::Hub,
    ingest::Ingest,
    metrics::{HealthSnapshot, HealthSource, Metrics},
    state::Shared,
};

struct NoHealth;

impl HealthSource for NoHealth {
    fn snapshot(&self) -> HealthSnapshot {
        HealthSnapshot::default()
    }
}

/// Applies `records` to a fresh pipeline in one batch, as the ring-buffer reader does, then
/// checks that every event rendered is one JSON object, and renders `/metrics`. The tree is
/// small so that eviction happens; pid 1's children are watched so that attribution runs.
/// Returns the number of events rendered.
pub fn ingest<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> usize {
    let metrics = Metrics::new(Arc::new(NoHealth));
    let hub = Arc::new(Hub::new(4096, 16));
    let mut rx = hub.subscribe(None, None).expect("a new hub is open").rx;
    let mut ingest = Ingest::new(&metrics, hub, Default::default());
    // Never the fuzzing machine's /proc: runs must not depend on it.
    ingest.proc_root = PathBuf::from("/nonexistent");
    let shared = Shared::new(
        ProcessTree::new(64),
        Attribution::new(AttributionConfig {
            selectors: vec!["pid:1".parse().expect("a valid selector")],
            retain_exited_ns: 1_000_000_000,
            max_child_series: 8,
            max_exited_series: 4,
            max_workloads: 8,
        }),
    );
    {
        let mut batch = ingest.batch(&shared);
        for record in records {
            batch.apply(record);
        }
        // Exits still waiting for their release go out, as at shutdown.
        batch.flush_exits();
    }
    let mut events = 0;
    while let Ok(msg) = rx.try_recv() {
        let value: serde_json::Value = serde_json::from_slice(&msg.json)
            .unwrap_or_else(|e| panic!("event is not JSON ({e}): {:?}", msg.json));
        assert!(value.is_object(), "{value}");
        events += 1;
    }
    let snapshot = shared.lock().attribution.snapshot(boottime_ns());
    metrics.attribution.update(&snapshot);
    metrics.render();
    events
}
