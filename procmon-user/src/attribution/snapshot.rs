//! Attribution as metric rows, built under the state lock at scrape time.

use super::{Attribution, Unit, UnitKind};
use crate::{
    metrics::attribution::{AttributionSnapshot, UnitRow, WorkloadRow},
    workload,
};

impl Attribution {
    /// The metric rows: one per watched root, one per labelled child, one `_other` row per
    /// root with children past the cap, one per workload that has been seen.
    pub fn snapshot(&self, now_ns: u64) -> AttributionSnapshot {
        let mut snap = AttributionSnapshot {
            child_overflowed: self.child_overflowed,
            exited_evicted: self.exited_evicted,
            units_kept: self.units_kept() as u64,
            workloads_overflowed: self.workloads.overflowed,
            ..Default::default()
        };
        let row = |u: &Unit, watch: usize| UnitRow {
            watch: self
                .cfg
                .selectors
                .get(watch)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            root_pid: None,
            pid: u.pid.to_string(),
            comm: u.comm.to_lossy(),
            cpu_seconds: u.cpu_ns() as f64 / 1e9,
            rss_bytes: u.live_rss_bytes as f64,
            peak_rss_bytes: u.peak_rss_bytes as f64,
            descendants_started: u.descendants_started as f64,
            cpu_ratio: u.cpu_ratio,
            lifetime_seconds: u.lifetime_ns(now_ns) as f64 / 1e9,
            alive: u.exited_at_ns.is_none(),
        };
        for u in self.units.values() {
            let root = match u.kind {
                UnitKind::Root { watch } => {
                    snap.roots.push(row(u, watch));
                    continue;
                }
                UnitKind::Child { root } | UnitKind::Overflow { root } => root,
            };
            let Some((root_unit, UnitKind::Root { watch })) =
                self.units.get(&root).map(|r| (r, r.kind))
            else {
                continue;
            };
            let mut r = row(u, watch);
            r.root_pid = Some(root_unit.pid);
            if matches!(u.kind, UnitKind::Overflow { .. }) {
                r.pid = workload::OVERFLOW.into();
                r.comm = workload::OVERFLOW.into();
            }
            snap.children.push(r);
        }
        snap.workloads = self
            .workloads()
            .filter(|(_, w)| w.processes > 0 || w.exited_cpu_ns > 0)
            .map(|(id, w)| WorkloadRow {
                workload: id.workload.clone(),
                runtime: id.runtime.unwrap_or_default().to_string(),
                container_id: id.container_id.clone().unwrap_or_default(),
                pod_uid: id.pod_uid.clone().unwrap_or_default(),
                cpu_seconds: (w.exited_cpu_ns + w.live_cpu_ns) as f64 / 1e9,
                rss_bytes: w.live_rss_bytes as f64,
                processes: w.processes as f64,
                starts: w.starts as f64,
            })
            .collect();
        snap
    }
}
