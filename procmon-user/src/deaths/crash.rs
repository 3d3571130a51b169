//! The `crash` event: a process died of a crash signal or was OOM-killed. The ingest path
//! counts it per workload (within the label cap) and publishes it next to the `exit` event.

use crate::{
    attribution::TrackedProcess,
    deaths::Death,
    events::{self, Ancestor, EventKind, EventMsg, ExitFields},
    profile::recent::FlightRecord,
};

/// The `crash` event of a death: its exit event's fields, plus where it ran and who
/// started it.
pub fn crash_event(
    exit: &ExitFields,
    death: &Death,
    workload: &str,
    ancestry: &[Ancestor],
    process: Option<&TrackedProcess>,
    death_ns: u64,
    recent: Option<FlightRecord>,
) -> EventMsg {
    let mut event = exit.event();
    event.kind = EventKind::Crash;
    events::render(
        EventKind::Crash,
        &events::CrashEvent {
            exit: event,
            cgroup: death.cgroup.as_deref(),
            workload,
            ancestry,
            last_sample: super::last_sample(process, death_ns),
            recent,
        },
    )
}

#[cfg(test)]
mod tests {
    use crate::{
        events::EventKind,
        ingest::tests::{next_json, setup},
        record::{encode, tests as rec},
    };

    #[test]
    fn oom_victims_exit_is_oom_killed_with_events_and_counters() {
        let (metrics, ingest, shared, mut rx) = setup();
        let (parent_start, start) = (4_000_000_000, 5_000_000_000);
        {
            let mut batch = ingest.batch(&shared);
            let mut parent = rec::fork(9, 1, parent_start);
            parent.comm = rec::comm(b"launcher");
            batch.apply(&encode(&parent));
            let mut child = rec::fork(10, 9, start);
            child.parent_start_ns = parent_start;
            batch.apply(&encode(&child));
            batch.apply(&encode(&rec::exec(10, 9, start, b"hog", b"/usr/bin/hog")));
            batch.apply(&encode(&rec::oom_kill(10, 9, start)));
            batch.apply(&encode(&rec::cgroup(
                10,
                start,
                &["system.slice", "hog.service"],
            )));
            batch.apply(&encode(&rec::exit(10, 9, start, libc::SIGKILL as u32)));
        }
        let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let json = |k: EventKind| -> serde_json::Value {
            let m = kinds.iter().find(|m| m.kind == k).expect("event of kind");
            serde_json::from_slice(&m.json).unwrap()
        };
        let seqs: Vec<u64> = kinds.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=kinds.len() as u64).collect::<Vec<_>>(),
            "numbered in order"
        );
        let o = json(EventKind::OomKill);
        let page = crate::procfs::page_size();
        assert_eq!(o["pid"], 10);
        assert_eq!(o["comm"], "hog");
        assert_eq!(o["exe"], "/usr/bin/hog");
        assert_eq!(o["uid"], 1000);
        assert_eq!(o["cgroup"], "/system.slice/hog.service");
        assert_eq!(o["workload"], "hog.service");
        assert_eq!(
            (o["constraint"].as_str(), o["memcg"].as_str()),
            (Some("memcg"), Some("/system.slice"))
        );
        assert_eq!(o["rss_anon_bytes"], 16_000 * page);
        assert_eq!(o["total_vm_bytes"], 70_000 * page);
        assert_eq!(o["pgtables_bytes"], 200_704);
        assert_eq!(o["oom_score_adj"], 500);
        assert_eq!(
            o["ancestry"],
            serde_json::json!([{"pid": 9, "comm": "launcher"}, {"pid": 1, "comm": null}])
        );
        assert!(o["last_sample"].is_null() && o.get("last_sample").is_some());
        let x = json(EventKind::Exit);
        assert_eq!(
            (x["outcome"].as_str(), x["signal"].as_u64()),
            (Some("oom_killed"), Some(9))
        );
        let c = json(EventKind::Crash);
        assert_eq!(c["kind"], "crash");
        assert_eq!(c["outcome"], "oom_killed");
        assert_eq!(c["cgroup"], "/system.slice/hog.service");
        assert_eq!(c["ancestry"][0]["comm"], "launcher");
        assert_eq!(c["lifetime_seconds"], x["lifetime_seconds"]);
        assert!(c.get("last_sample").is_some());
        assert_eq!(metrics.exits.with_label_values(&["oom_killed"]).get(), 1);
        assert_eq!(metrics.exits.with_label_values(&["killed"]).get(), 0);
        assert_eq!(
            metrics
                .oom_kills
                .with_label_values(&["hog.service", "SIGKILL"])
                .get(),
            1
        );
        assert_eq!(
            metrics
                .crashes
                .with_label_values(&["hog.service", "SIGKILL"])
                .get(),
            1
        );
        assert_eq!(metrics.events.with_label_values(&["oom_kill"]).get(), 1);
    }

    #[test]
    fn plain_sigkill_is_killed_without_crash_event() {
        let (metrics, ingest, shared, mut rx) = setup();
        ingest
            .batch(&shared)
            .apply(&encode(&rec::exit(10, 1, 5, libc::SIGKILL as u32)));
        assert_eq!(next_json(&mut rx)["outcome"], "killed");
        assert!(rx.try_recv().is_err(), "no crash event for a plain kill");
        assert_eq!(metrics.exits.with_label_values(&["killed"]).get(), 1);
    }

    #[test]
    fn crash_workloads_are_capped() {
        let (metrics, ingest, shared, _rx) = setup();
        let mut batch = ingest.batch(&shared);
        // The test attribution admits 10 workloads.
        for i in 0..15u32 {
            let unit = format!("u{i}.service");
            batch.apply(&encode(&rec::cgroup(100 + i, 7, &[&unit])));
            batch.apply(&encode(&rec::exit(100 + i, 1, 7, libc::SIGABRT as u32)));
        }
        drop(batch);
        assert_eq!(
            shared.lock().attribution.snapshot(0).workloads_overflowed,
            5
        );
        assert_eq!(
            metrics
                .crashes
                .with_label_values(&["_other", "SIGABRT"])
                .get(),
            5
        );
        assert_eq!(
            metrics
                .crashes
                .with_label_values(&["u0.service", "SIGABRT"])
                .get(),
            1
        );
    }
}
