//! The `crash` event: a process died of a crash signal or was OOM-killed. The ingest path
//! counts it per workload (within the label cap) and publishes it next to the `exit` event.

use crate::{
    attribution::TrackedProcess,
    deaths::Death,
    events::{self, Ancestor, ContainerFields, EventKind, EventMsg, ExitFields},
    profile::recent::FlightRecord,
    workload::Identity,
};

/// The `crash` event of a death: its exit event's fields, plus where it ran and who
/// started it.
pub fn crash_event(
    exit: &ExitFields,
    death: &Death,
    identity: &Identity,
    ancestry: &[Ancestor],
    process: Option<&TrackedProcess>,
    death_ns: u64,
    recent: Option<FlightRecord>,
) -> EventMsg {
    let mut event = exit.event();
    event.kind = EventKind::Crash;
    // The cgroup read in the kernel at death outranks what the tree last read.
    event.container = ContainerFields::of(Some(identity));
    events::render(
        EventKind::Crash,
        &events::CrashEvent {
            exit: event,
            cgroup: death.cgroup.as_deref(),
            workload: &identity.workload,
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
        ingest::tests::{apply_exit, next_json, setup},
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
            apply_exit(&mut batch, &rec::exit(10, 9, start, libc::SIGKILL as u32));
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
        apply_exit(
            &mut ingest.batch(&shared),
            &rec::exit(10, 1, 5, libc::SIGKILL as u32),
        );
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
            apply_exit(&mut batch, &rec::exit(100 + i, 1, 7, libc::SIGABRT as u32));
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

    const CID: &str = "4f7a1c0e9b2d3a5f6e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f";

    #[test]
    fn container_deaths_carry_container_id_runtime_and_pod() {
        let (metrics, ingest, shared, mut rx) = setup();
        let start = 5_000_000_000;
        let scope = format!("libpod-{CID}.scope");
        {
            let mut batch = ingest.batch(&shared);
            batch.apply(&encode(&rec::fork(10, 1, start)));
            batch.apply(&encode(&rec::fork(11, 1, start)));
            batch.apply(&encode(&rec::fork(12, 1, start)));
        }
        // Only the kernel's record names pid 10's cgroup: as for a process that died before
        // the agent read it. Pid 12's was read from /proc.
        shared
            .lock()
            .set_cgroup(12, start, &format!("/libpod_parent/libpod-{CID}"), false);
        {
            let mut batch = ingest.batch(&shared);
            batch.apply(&encode(&rec::cgroup(10, start, &["machine.slice", &scope])));
            apply_exit(&mut batch, &rec::exit(10, 1, start, libc::SIGSEGV as u32));
            apply_exit(&mut batch, &rec::exit(11, 1, start, 0));
            apply_exit(&mut batch, &rec::exit(12, 1, start, 3 << 8));
        }
        let events: Vec<serde_json::Value> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| serde_json::from_slice(&m.json).unwrap())
            .collect();
        let by = |kind: &str, pid: u32| {
            events
                .iter()
                .find(|e| e["kind"] == kind && e["pid"] == pid)
                .unwrap_or_else(|| panic!("no {kind} of {pid} in {events:?}"))
        };
        for e in [by("exit", 10), by("crash", 10), by("exit", 12)] {
            assert_eq!(e["container_id"], CID, "{e}");
            assert_eq!(e["runtime"], "podman", "{e}");
            assert!(e.get("pod_uid").is_none(), "not a pod: {e}");
        }
        assert_eq!(by("crash", 10)["workload"], "podman/4f7a1c0e9b2d");
        let host = by("exit", 11);
        assert!(
            host.get("container_id").is_none() && host.get("runtime").is_none(),
            "a host process has no container fields: {host}"
        );
        assert_eq!(
            metrics
                .crashes
                .with_label_values(&["podman/4f7a1c0e9b2d", "SIGSEGV"])
                .get(),
            1
        );
    }

    #[test]
    fn pod_oom_kills_name_the_pod() {
        let (metrics, ingest, shared, mut rx) = setup();
        let uid_ = "0b2c6a3e_8f1d_4e5a_9c7b_1d2e3f4a5b6c";
        let mut oom = rec::oom_kill(10, 1, 5);
        oom.cgroup = rec::path(&[
            "kubepods.slice",
            "kubepods-burstable.slice",
            &format!("kubepods-burstable-pod{uid_}.slice"),
            &format!("cri-containerd-{CID}.scope"),
        ]);
        ingest.batch(&shared).apply(&encode(&oom));
        let o = next_json(&mut rx);
        let workload = "pod_0b2c6a3e-8f1d-4e5a-9c7b-1d2e3f4a5b6c/4f7a1c0e9b2d";
        assert_eq!(o["workload"], workload);
        assert_eq!(o["pod_uid"], "0b2c6a3e-8f1d-4e5a-9c7b-1d2e3f4a5b6c");
        assert_eq!(o["qos_class"], "Burstable");
        assert_eq!(o["runtime"], "containerd");
        assert_eq!(o["container_id"], CID);
        assert_eq!(
            metrics
                .oom_kills
                .with_label_values(&[workload, "SIGKILL"])
                .get(),
            1
        );
    }

    #[test]
    fn kernel_thread_deaths_are_the_kernel_workload() {
        let (metrics, ingest, shared, _rx) = setup();
        let mut batch = ingest.batch(&shared);
        for (pid, name) in [(40u32, "kworker/0:1-ev"), (41, "kworker/1:0-mm")] {
            let mut exit = rec::exit(pid, 2, 7, libc::SIGSEGV as u32);
            exit.comm = rec::comm(name.as_bytes());
            batch.apply(&encode(&rec::cgroup(pid, 7, &[])));
            apply_exit(&mut batch, &exit);
        }
        drop(batch);
        assert_eq!(
            metrics
                .crashes
                .with_label_values(&["kernel", "SIGSEGV"])
                .get(),
            2,
            "kworker names never become workloads"
        );
    }
}
