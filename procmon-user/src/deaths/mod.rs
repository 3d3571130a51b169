//! Deaths worth more than an exit event: crashes and OOM kills. Their records arrive before
//! the process's exit record (correlation), which then classifies the death; crash and OOM
//! events carry the ancestry of the process.

pub mod ancestry;
pub mod correlation;
pub mod crash;
pub mod oom;

pub use correlation::{Death, Deaths};

use crate::{attribution::TrackedProcess, events::LastSample};

/// The dying process's last sampled CPU and RSS, if it lived through a sample.
pub fn last_sample(p: Option<&TrackedProcess>, death_ns: u64) -> Option<LastSample> {
    let live = p?.ext.live;
    (live.sampled_at_ns > 0).then(|| LastSample {
        rss_bytes: live.rss_bytes,
        cpu_seconds: live.cpu_ns as f64 / 1e9,
        cpu_usage_ratio: live.cpu_ratio,
        age_seconds: death_ns.saturating_sub(live.sampled_at_ns) as f64 / 1e9,
    })
}
