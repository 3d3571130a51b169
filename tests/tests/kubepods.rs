//! Kubernetes cgroup layouts, made for real: the test creates the cgroups kubelet would
//! (systemd driver and cgroupfs driver), runs a process in each, and checks that the
//! agent names its pod UID, QoS class, container id and runtime, in the workload series
//! and in the crash event when the process dies of SIGSEGV.

use std::time::Duration;

use procmon_tests::{
    cgroup::{hierarchy, Cgroup},
    require_root, wait_for, Agent,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);
const CID: &str = "5e3c1a7b9d2f4e6a8c0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c";

struct Case {
    parts: Vec<String>,
    uid: &'static str,
    qos: &'static str,
    runtime: Option<&'static str>,
}

#[test]
fn kubepods_cgroups_name_pod_qos_container_and_runtime() {
    if !require_root("kubepods::kubepods_cgroups_name_pod_qos_container_and_runtime") {
        return;
    }
    let root = hierarchy();
    let systemd_uid = "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d";
    let cgroupfs_uid = "9f8e7d6c-5b4a-4f3e-9d2c-1b0a9f8e7d6c";
    let cases = [
        Case {
            parts: vec![
                "kubepods.slice".into(),
                "kubepods-burstable.slice".into(),
                format!(
                    "kubepods-burstable-pod{}.slice",
                    systemd_uid.replace('-', "_")
                ),
                format!("cri-containerd-{CID}.scope"),
            ],
            uid: systemd_uid,
            qos: "Burstable",
            runtime: Some("containerd"),
        },
        Case {
            parts: vec![
                "kubepods".into(),
                "besteffort".into(),
                format!("pod{cgroupfs_uid}"),
                CID.into(),
            ],
            uid: cgroupfs_uid,
            qos: "BestEffort",
            runtime: None,
        },
    ];
    let agent = Agent::start(&["--sample-interval", "200ms"]);
    for case in &cases {
        let parts: Vec<&str> = case.parts.iter().map(String::as_str).collect();
        let cg = Cgroup::create(&root, &parts);
        let mut sleeper = cg.spawn_sleeper();
        let workload = format!("pod_{}/{}", case.uid, &CID[..12]);
        let mut labels = vec![
            ("workload", workload.as_str()),
            ("container_id", CID),
            ("pod_uid", case.uid),
        ];
        if let Some(runtime) = case.runtime {
            labels.push(("runtime", runtime));
        }
        wait_for(TIMEOUT, || {
            let m = agent.metrics();
            (m.get("procmon_workload_processes", &labels)? >= 1.0).then_some(())
        })
        .unwrap_or_else(|| {
            let text = agent.scrape();
            let series: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("procmon_workload_processes"))
                .collect();
            panic!("no procmon_workload_processes{labels:?} for {parts:?}; series: {series:#?}")
        });

        // SAFETY: kill takes no pointers; the sleeper is our unreaped child.
        unsafe { libc::kill(sleeper.id() as libc::pid_t, libc::SIGSEGV) };
        let _ = sleeper.wait();
        let pid = sleeper.id();
        let crash: Value = wait_for(TIMEOUT, || {
            agent
                .events()
                .into_iter()
                .find(|e| e["kind"] == "crash" && e["pid"] == pid)
        })
        .unwrap_or_else(|| panic!("no crash event of {pid} in {parts:?}"));
        assert_eq!(crash["workload"], workload, "{crash}");
        assert_eq!(crash["pod_uid"], case.uid, "{crash}");
        assert_eq!(crash["qos_class"], case.qos, "{crash}");
        assert_eq!(crash["container_id"], CID, "{crash}");
        match case.runtime {
            Some(r) => assert_eq!(crash["runtime"], r, "{crash}"),
            None => assert!(crash.get("runtime").is_none(), "{crash}"),
        }
        eprintln!("{}: {workload}, qos {}", cg.dir().display(), case.qos);
    }
}
