//! Real containers (podman + runc, cgroupfs manager): their processes' CPU and RSS series,
//! crash and OOM events carry the container's id and runtime; and the agent itself runs in
//! a container under exactly the security context the DaemonSet declares, which must be
//! enough to trace the host, and minimal (without any one declared capability, or with
//! the runtime's default seccomp profile, it fails and says why).

use std::{path::Path, process::Command, time::Duration};

use procmon_tests::{
    as_pid, container::Podman, daemonset, events_for, memcg::Memcg, require_tool, run_workload,
    wait_for, Agent, TempDir,
};
use serde_json::Value;

/// Bounds each wait for the agent to see something (never an assertion about speed).
const TIMEOUT: Duration = Duration::from_secs(60);

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Events of `kind` whose `container_id` is `id`.
fn container_events<'a>(events: &'a [Value], kind: &str, id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["container_id"] == id)
        .collect()
}

#[test]
fn container_processes_carry_container_id_and_runtime() {
    let test = "containers::container_processes_carry_container_id_and_runtime";
    if !procmon_tests::container::require_podman(test) {
        return;
    }
    let podman = Podman::new();
    let agent = Agent::start(&["--sample-interval", "200ms"]);

    // A busy process holding ~30 MB, as the container's pid 1.
    let busy = podman.start(
        &[],
        &[
            "/bin/sh",
            "-c",
            "x=$(head -c 30000000 /dev/zero | tr '\\000' a); while :; do :; done",
        ],
    );
    let workload = format!("podman/{}", &busy[..12]);
    let labels = [
        ("workload", workload.as_str()),
        ("runtime", "podman"),
        ("container_id", busy.as_str()),
    ];
    let (cpu, rss) = wait_for(TIMEOUT, || {
        let m = agent.metrics();
        let cpu = m.get("procmon_workload_cpu_seconds_total", &labels)?;
        let rss = m.get("procmon_workload_rss_bytes", &labels)?;
        (cpu > 0.5 && rss > 25e6).then_some((cpu, rss))
    })
    .unwrap_or_else(|| {
        let text = agent.scrape();
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("procmon_workload_"))
            .collect();
        panic!("no CPU > 0.5 s and RSS > 25 MB under {labels:?}; workload series:\n{ours:#?}")
    });
    eprintln!("container {workload}: cpu {cpu:.2} s, rss {rss:.0} B");

    // A crash in a container (not its pid 1: init ignores signals it has no handler for).
    let crasher = podman.start(&[], &["/bin/sh", "-c", "sh -c 'kill -SEGV $$'; true"]);
    assert_eq!(podman.wait(&crasher), 0, "{}", podman.logs(&crasher));
    let crash = wait_for(TIMEOUT, || {
        container_events(&agent.events(), "crash", &crasher)
            .first()
            .map(|e| (*e).clone())
    })
    .unwrap_or_else(|| panic!("no crash event with container_id {crasher}"));
    assert_eq!(crash["runtime"], "podman", "{crash}");
    assert_eq!(crash["signal"], libc::SIGSEGV, "{crash}");
    assert_eq!(
        crash["workload"],
        format!("podman/{}", &crasher[..12]),
        "{crash}"
    );
    assert!(crash.get("pod_uid").is_none(), "not a pod: {crash}");
    let exits = events_for(&agent.events(), "exit", as_pid(&crash["pid"]))
        .into_iter()
        .filter(|e| e["container_id"] == crasher.as_str())
        .count();
    assert_eq!(
        exits, 1,
        "the crash's exit event carries the container id too"
    );

    // An OOM kill under the container's memory limit.
    let hog = podman.start(
        &["--memory=32m", "--memory-swap=32m"],
        &[
            "/bin/sh",
            "-c",
            "sh -c 'x=$(head -c 200000000 /dev/zero | tr \"\\000\" a)'; echo status=$?",
        ],
    );
    podman.wait(&hog);
    assert!(
        podman.logs(&hog).contains("status=137"),
        "the hog was not SIGKILLed: {}",
        podman.logs(&hog)
    );
    let oom = wait_for(TIMEOUT, || {
        container_events(&agent.events(), "oom_kill", &hog)
            .first()
            .map(|e| (*e).clone())
    })
    .unwrap_or_else(|| {
        let ooms: Vec<Value> = agent
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "oom_kill")
            .collect();
        panic!("no oom_kill event with container_id {hog}; oom_kill events: {ooms:#?}")
    });
    assert_eq!(oom["runtime"], "podman", "{oom}");
    assert_eq!(oom["workload"], format!("podman/{}", &hog[..12]), "{oom}");
    assert_eq!(oom["constraint"], "memcg", "{oom}");
    let m = agent.metrics();
    let hog_workload = format!("podman/{}", &hog[..12]);
    assert!(
        m.get_or_zero(
            "procmon_oom_kills_total",
            &[("workload", hog_workload.as_str()), ("signal", "SIGKILL")]
        ) >= 1.0,
        "procmon_oom_kills_total for {hog_workload}"
    );
}

/// The agent in a container with the DaemonSet's security context, as rendered by kubectl.
struct DaemonSetAgent<'a> {
    podman: &'a Podman,
    id: String,
    out: TempDir,
}

impl<'a> DaemonSetAgent<'a> {
    /// Starts it; the only addition to the manifest is a writable directory for the events
    /// file the test reads.
    fn start(podman: &'a Podman, declared: &daemonset::Declared, caps: &[String]) -> Self {
        let out = TempDir::new("ds-events");
        let mut flags = declared.podman_flags(caps);
        flags.push(format!("--volume={}:/out", out.path().display()));
        let mut args = declared.args.clone();
        args.extend(["--events".into(), "/out/events.jsonl".into()]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The image `cargo xtask test` built (its entrypoint is the agent), else the
        // agent under test in the tests' rootfs.
        let id = match std::env::var("PROCMON_IMAGE") {
            Ok(image) => podman.start_image(&flags, &image, &args),
            Err(_) => {
                let mut command = vec!["/usr/bin/procmon"];
                command.extend(args);
                podman.start(&flags, &command)
            }
        };
        DaemonSetAgent { podman, id, out }
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.out.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the ready line, or for the container to exit (then its exit code).
    fn ready(&self) -> Result<(), (i32, String)> {
        let ready = wait_for(TIMEOUT, || {
            let logs = self.podman.logs(&self.id);
            if logs.contains("procmon: ready") {
                return Some(Ok(()));
            }
            let state = self
                .podman
                .run(&["inspect", "--format", "{{.State.Status}}", &self.id]);
            (state == "exited")
                .then(|| Err((self.podman.wait(&self.id), self.podman.logs(&self.id))))
        });
        ready.unwrap_or_else(|| {
            panic!(
                "agent container neither ready nor exited: {}",
                self.podman.logs(&self.id)
            )
        })
    }
}

#[test]
fn daemonset_security_context_is_enough_and_minimal() {
    let test = "containers::daemonset_security_context_is_enough_and_minimal";
    if !procmon_tests::container::require_podman(test)
        || !require_tool(test, "kubectl", "it renders deploy/kubernetes")
        || !require_tool(test, "python3", "it reads the rendered YAML (python3-yaml)")
    {
        return;
    }
    let declared = daemonset::render(workspace());
    assert!(
        !declared.privileged,
        "the DaemonSet is privileged: {declared:?}"
    );
    assert_eq!(
        declared.drop,
        ["ALL"],
        "capabilities are not dropped to none: {declared:?}"
    );
    assert!(declared.read_only_root && declared.host_pid, "{declared:?}");
    assert!(!declared.add.is_empty(), "{declared:?}");
    let podman = Podman::new();

    // Enough: it attaches and traces host processes, including an OOM kill.
    eprintln!(
        "podman flags from the manifest: {:?}; image: {}",
        declared.podman_flags(&declared.add),
        std::env::var("PROCMON_IMAGE").unwrap_or_else(|_| "none (the tests' rootfs)".into())
    );
    let agent = DaemonSetAgent::start(&podman, &declared, &declared.add);
    if let Err((code, logs)) = agent.ready() {
        panic!("the agent failed under the declared security context (exit {code}): {logs}");
    }
    let status = Command::new("/bin/sh")
        .args(["-c", "exit 3"])
        .status()
        .expect("running sh");
    assert_eq!(status.code(), Some(3));
    let exit = wait_for(TIMEOUT, || {
        agent
            .events()
            .into_iter()
            .find(|e| e["kind"] == "exit" && e["comm"] == "sh" && e["exit_code"] == 3)
    })
    .unwrap_or_else(|| {
        panic!(
            "no exit event of the host's `sh -c 'exit 3'`; {}",
            podman.logs(&agent.id)
        )
    });
    let pid = as_pid(&exit["pid"]);
    assert!(
        !events_for(&agent.events(), "fork", pid).is_empty(),
        "no fork event of host pid {pid}"
    );
    let name = format!("procmon-ds-oom-{}", std::process::id());
    let cg = Memcg::create(&name, 64 << 20).unwrap_or_else(|| {
        panic!("{test}: no cgroup memory controller for the OOM kill");
    });
    let report = run_workload(
        env!("CARGO_BIN_EXE_oom_tree"),
        &[cg.dir().to_str().expect("UTF-8 cgroup path")],
    );
    let victim = as_pid(&report["child"]);
    let oom = wait_for(TIMEOUT, || {
        agent
            .events()
            .into_iter()
            .find(|e| e["kind"] == "oom_kill" && e["pid"] == victim)
    })
    .unwrap_or_else(|| panic!("no oom_kill event of host pid {victim}"));
    assert_eq!(oom["cgroup"], cg.path, "{oom}");
    eprintln!("under the declared context: host exit of pid {pid}, OOM kill of pid {victim}");
    // From its private cgroup namespace, another container's crash is still named by
    // the container's id and runtime.
    let crasher = podman.start(&[], &["/bin/sh", "-c", "sh -c 'kill -SEGV $$'; true"]);
    podman.wait(&crasher);
    let crash = wait_for(TIMEOUT, || {
        container_events(&agent.events(), "crash", &crasher)
            .first()
            .map(|e| (*e).clone())
    })
    .unwrap_or_else(|| panic!("the agent in its container saw no crash in container {crasher}"));
    assert_eq!(crash["runtime"], "podman", "{crash}");
    eprintln!(
        "from a private cgroup namespace: crash in {}",
        crash["workload"]
    );
    podman.run(&["stop", "-t", "10", &agent.id]);
    assert_eq!(podman.wait(&agent.id), 0, "{}", podman.logs(&agent.id));

    // Minimal: without any one declared capability it fails, naming that capability.
    for missing in &declared.add {
        let fewer: Vec<String> = declared
            .add
            .iter()
            .filter(|c| *c != missing)
            .cloned()
            .collect();
        let agent = DaemonSetAgent::start(&podman, &declared, &fewer);
        match agent.ready() {
            Ok(()) => {
                panic!("the agent started without {missing}: the declared set is not minimal")
            }
            Err((code, logs)) => {
                assert_eq!(code, 1, "without {missing}: {logs}");
                assert!(
                    logs.contains(missing.as_str()),
                    "without {missing}, the message does not name it: {logs}"
                );
                eprintln!("without {missing}: exit 1, {}", logs.trim());
            }
        }
    }
    // And the seccomp exception is needed: under the runtime's default profile bpf(2) is
    // refused, and the agent says so.
    if declared.seccomp.as_deref() == Some("Unconfined") {
        let mut confined = declared.clone();
        confined.seccomp = None;
        let agent = DaemonSetAgent::start(&podman, &confined, &declared.add);
        match agent.ready() {
            Ok(()) => panic!(
                "the agent started under the default seccomp profile: Unconfined is not needed"
            ),
            Err((code, logs)) => {
                assert_eq!(code, 1, "{logs}");
                assert!(
                    logs.contains("seccomp"),
                    "the message does not name seccomp: {logs}"
                );
                eprintln!("under the default seccomp profile: exit 1, {}", logs.trim());
            }
        }
    }
}
