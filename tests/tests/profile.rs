//! `procmon profile` and always-on CPU sampling against real processes: a C program with
//! known functions built with frame pointers, a multi-threaded one, an idle one, one that
//! exits early, a whole subtree, a real JIT (Node.js with --perf-basic-prof), `cpu_pegged`
//! events and the crash flight recorder.

use std::{process::Command, time::Duration};

use procmon_tests::{
    events_for,
    hot::{self, leaf_share, parse_folded, Hot},
    procmon, require_root, require_tool, run_with_timeout, wait_for, Agent, TempDir,
};
use serde_json::Value;

const PROFILE_TIMEOUT: Duration = Duration::from_secs(60);

fn profile(args: &[&str]) -> std::process::Output {
    let mut full = vec!["profile"];
    full.extend_from_slice(args);
    run_with_timeout(&mut procmon(&full), PROFILE_TIMEOUT)
}

const MAX_SAMPLE_RATE: &str = "/proc/sys/kernel/perf_event_max_sample_rate";

/// Lowers `kernel.perf_event_max_sample_rate` until dropped.
struct SampleRateLimit(String);

impl SampleRateLimit {
    fn set(hz: u32) -> Self {
        let old = std::fs::read_to_string(MAX_SAMPLE_RATE).expect("reading the sample rate limit");
        std::fs::write(MAX_SAMPLE_RATE, hz.to_string()).expect("lowering the sample rate limit");
        SampleRateLimit(old)
    }
}

impl Drop for SampleRateLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_SAMPLE_RATE, self.0.trim());
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn profile_puts_the_hot_function_at_the_leaf_in_every_format() {
    if !require_root("profile::profile_puts_the_hot_function_at_the_leaf_in_every_format") {
        return;
    }
    let dir = TempDir::new("profile-hot");
    let bin = hot::build(dir.path());
    let burner = Hot::start(&bin, &["burn", "60"]);
    let pid = burner.pid().to_string();

    let folded_path = dir.path().join("hot.folded");
    let out = profile(&[
        "--pid",
        &pid,
        "--seconds",
        "3",
        "--out",
        folded_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "profile failed: {}", stderr(&out));
    let stacks = parse_folded(&std::fs::read_to_string(&folded_path).unwrap());
    let (hits, total) = leaf_share(&stacks, "hot_inner", "hot_outer");
    assert!(
        total > 50,
        "only {total} samples in 3 s at 99 Hz of a busy process: {}",
        stderr(&out)
    );
    assert!(
        hits * 10 > total * 8,
        "hot_inner (under hot_outer) is the leaf of {hits} of {total} samples: {stacks:?}"
    );
    assert!(
        stacks.iter().all(|(f, _)| f[0] == "hot"),
        "root frame is the comm: {stacks:?}"
    );

    let svg_path = dir.path().join("hot.svg");
    let out = profile(&[
        "--pid",
        &pid,
        "--seconds",
        "2",
        "--format",
        "svg",
        "--out",
        svg_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "profile --format svg failed: {}",
        stderr(&out)
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    // inferno writes an SVG DOCTYPE.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&svg, options)
        .unwrap_or_else(|e| panic!("SVG is not XML: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(svg.contains("hot_inner"), "SVG does not name hot_inner");

    let out = profile(&[
        "--pid",
        &pid,
        "--seconds",
        "2",
        "--format",
        "json",
        "--hz",
        "49",
    ]);
    assert!(
        out.status.success(),
        "profile --format json failed: {}",
        stderr(&out)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("profile JSON parses");
    assert_eq!(doc["hz"], 49);
    let top = &doc["stacks"][0];
    let frames = top["frames"].as_array().unwrap();
    assert_eq!(frames.last().unwrap(), "hot_inner", "{doc}");
    assert!(top["share"].as_f64().unwrap() > 0.8, "{doc}");
    assert!(
        doc["note"].is_null(),
        "frame-pointer stacks are deep: {doc}"
    );
}

#[test]
fn profile_sees_every_thread_of_a_multithreaded_process() {
    if !require_root("profile::profile_sees_every_thread_of_a_multithreaded_process") {
        return;
    }
    let dir = TempDir::new("profile-threads");
    let bin = hot::build(dir.path());
    // The main thread (tid == pid) only waits; all CPU is in its two workers.
    let burner = Hot::start(&bin, &["threads", "2", "60"]);
    let out = profile(&["--pid", &burner.pid().to_string(), "--seconds", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stacks = parse_folded(&String::from_utf8_lossy(&out.stdout));
    let (hits, total) = leaf_share(&stacks, "hot_inner", "hot_outer");
    assert!(
        total > 50 && hits * 10 > total * 8,
        "{hits} of {total}: {stacks:?}"
    );
}

#[test]
fn profile_of_an_idle_process_says_there_is_nothing_to_show() {
    if !require_root("profile::profile_of_an_idle_process_says_there_is_nothing_to_show") {
        return;
    }
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleeper.id().to_string();
    // Also: a rate above the kernel's limit is clamped and said, not refused with EINVAL.
    // (Other tests that run meanwhile sample at most at this limit; none needs more.)
    let out = {
        let _limit = SampleRateLimit::set(50);
        profile(&["--pid", &pid, "--seconds", "2", "--hz", "99"])
    };
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sampling at 50 Hz instead of 99 Hz"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!(
            "{pid} was on CPU for 0.00 s of 2 s; nothing to show"
        )),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn profile_refuses_a_missing_pid_and_keeps_what_it_got_from_one_that_exits() {
    if !require_root(
        "profile::profile_refuses_a_missing_pid_and_keeps_what_it_got_from_one_that_exits",
    ) {
        return;
    }
    let out = profile(&["--pid", "4194000", "--seconds", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no process with pid 4194000"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line: {}",
        stderr(&out)
    );

    let out = profile(&["--pid", "1", "--seconds", "1", "--hz", "0"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad flags exit 2: {}",
        stderr(&out)
    );

    let dir = TempDir::new("profile-exit");
    let bin = hot::build(dir.path());
    let burner = Hot::start(&bin, &["burn", "2"]);
    let path = dir.path().join("p.folded");
    let out = profile(&[
        "--pid",
        &burner.pid().to_string(),
        "--seconds",
        "10",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("exited after"), "{}", stderr(&out));
    let stacks =
        parse_folded(&std::fs::read_to_string(&path).expect("what was collected is written"));
    let (hits, _) = leaf_share(&stacks, "hot_inner", "hot_outer");
    assert!(hits > 0, "{stacks:?}");
}

#[test]
fn profile_children_follows_processes_started_during_the_profile() {
    if !require_root("profile::profile_children_follows_processes_started_during_the_profile") {
        return;
    }
    let dir = TempDir::new("profile-children");
    let bin = hot::build(dir.path());
    let script = format!("read _; sleep 1; {} burn 2; sleep 60", bin.display());
    let mut shell = Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = shell.id().to_string();
    let mut stdin = shell.stdin.take().unwrap();
    let profiler =
        std::thread::spawn(move || profile(&["--pid", &pid, "--children", "--seconds", "5"]));
    std::thread::sleep(Duration::from_millis(1500));
    use std::io::Write;
    let _ = stdin.write_all(b"go\n");
    let out = profiler.join().unwrap();
    let _ = shell.kill();
    let _ = shell.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let stacks = parse_folded(&String::from_utf8_lossy(&out.stdout));
    let hot: u64 = stacks
        .iter()
        .filter(|(f, _)| f[0] == "hot" && f.last().unwrap() == "hot_inner")
        .map(|(_, n)| n)
        .sum();
    assert!(
        hot > 50,
        "a grandchild started during the profile is in it: {stacks:?}"
    );
}

#[test]
fn profile_names_javascript_functions_of_a_jit() {
    if !require_root("profile::profile_names_javascript_functions_of_a_jit")
        || !require_tool(
            "profile::profile_names_javascript_functions_of_a_jit",
            "node",
            "Debian nodejs: a JIT runtime",
        )
    {
        return;
    }
    // One long call: the function's frame is on every sampled stack, however V8 compiles it.
    let script = "function hotLoopProcmon(end) { let s = 0; while (Date.now() < end) { for (let i = 0; i < 100000; i++) { s += Math.sqrt(i) * i; } } return s; }\n\
                  console.log('ready'); hotLoopProcmon(Date.now() + 60000);";
    // node writes its isolate logs into its working directory.
    let dir = TempDir::new("profile-node");
    let mut node = Command::new("node")
        .current_dir(dir.path())
        .args(["--perf-basic-prof", "-e", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(node.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    // Let the JIT compile the hot function and write its perf map entry.
    std::thread::sleep(Duration::from_secs(2));
    let out = profile(&["--pid", &node.id().to_string(), "--seconds", "3"]);
    let _ = node.kill();
    let _ = node.wait();
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", node.id()));
    assert!(out.status.success(), "{}", stderr(&out));
    let stacks = parse_folded(&String::from_utf8_lossy(&out.stdout));
    let named: u64 = stacks
        .iter()
        .filter(|(f, _)| f.iter().any(|frame| frame.contains("hotLoopProcmon")))
        .map(|(_, n)| n)
        .sum();
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    assert!(
        named * 2 > total,
        "the JS function names {named} of {total} samples: {stacks:?}"
    );
}

#[test]
fn a_pegged_process_is_reported_once_with_its_hot_stack_and_cleared_once() {
    if !require_root(
        "profile::a_pegged_process_is_reported_once_with_its_hot_stack_and_cleared_once",
    ) {
        return;
    }
    let dir = TempDir::new("pegged");
    let bin = hot::build(dir.path());
    // On a loaded 2-core machine a busy process may get well under a core: the threshold is
    // lowered so the test is about the events, not about how busy the machine is.
    let agent = Agent::start(&[
        "--pegged-for",
        "3s",
        "--pegged-ratio",
        "0.3",
        "--sample-interval",
        "500ms",
        "--profile-hz",
        "49",
    ]);
    let mut idle = Command::new("sleep").arg("30").spawn().unwrap();
    let burner = Hot::start(&bin, &["burn-then-idle", "8", "30"]);
    let pid = burner.pid();
    let pegged = wait_for(Duration::from_secs(20), || {
        let ev = agent.events();
        let p = events_for(&ev, "cpu_pegged", pid);
        (!p.is_empty()).then(|| p[0].clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "no cpu_pegged event for {pid}; events: {:?}",
            agent.events()
        )
    });
    let pegged_seconds = pegged["pegged_seconds"].as_f64().unwrap();
    assert!(
        (3.0..=3.0 + 2.0 * 0.5 + 0.5).contains(&pegged_seconds),
        "reported within --pegged-for + 2 sample intervals: {pegged}"
    );
    assert_eq!(pegged["comm"], "hot");
    let top = pegged["top_stacks"][0]["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("{pegged}"));
    assert_eq!(top.last().unwrap(), "hot_inner", "{pegged}");
    assert!(
        pegged["ancestry"].as_array().is_some_and(|a| !a.is_empty()),
        "{pegged}"
    );
    let cleared = wait_for(Duration::from_secs(20), || {
        let ev = agent.events();
        let c = events_for(&ev, "cpu_pegged_cleared", pid);
        (!c.is_empty()).then(|| c[0].clone())
    })
    .unwrap_or_else(|| panic!("no cpu_pegged_cleared for {pid}"));
    assert_eq!(cleared["reason"], "calmed", "{cleared}");
    // A few more passes: still exactly one of each, and nothing for the idle process.
    std::thread::sleep(Duration::from_secs(2));
    let ev = agent.events();
    assert_eq!(events_for(&ev, "cpu_pegged", pid).len(), 1);
    assert_eq!(events_for(&ev, "cpu_pegged_cleared", pid).len(), 1);
    assert!(events_for(&ev, "cpu_pegged", idle.id()).is_empty());
    let m = agent.metrics();
    assert!(m.sum("procmon_cpu_pegged_total", &[]) >= 1.0);
    assert!(m.sum("procmon_cpu_samples_total", &[]) > 0.0);
    let _ = idle.kill();
    let _ = idle.wait();
}

#[test]
fn a_crash_event_carries_the_victims_recent_stacks_and_trajectory() {
    if !require_root("profile::a_crash_event_carries_the_victims_recent_stacks_and_trajectory") {
        return;
    }
    let dir = TempDir::new("flight");
    let bin = hot::build(dir.path());
    let agent = Agent::start(&["--sample-interval", "500ms", "--profile-hz", "49"]);
    // 4 s at 500 ms passes: the trajectory starts at the first drain that caught it on a CPU,
    // so 4-5 points on a loaded machine, for the 3 asserted below.
    let mut burner = Hot::start(&bin, &["crash", "4"]);
    let pid = burner.pid();
    let _ = burner.0.wait();
    let crash = wait_for(Duration::from_secs(20), || {
        let ev = agent.events();
        let c = events_for(&ev, "crash", pid);
        (!c.is_empty()).then(|| c[0].clone())
    })
    .unwrap_or_else(|| panic!("no crash event for {pid}"));
    let recent = &crash["recent"];
    let top = recent["top_stacks"][0]["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("{crash}"));
    assert_eq!(top.last().unwrap(), "hot_inner", "{crash}");
    let trajectory = recent["trajectory"].as_array().unwrap();
    assert!(trajectory.len() >= 3, "{crash}");
    assert!(
        trajectory
            .iter()
            .all(|p| p["rss_bytes"].as_u64().unwrap() > 0),
        "{crash}"
    );
}

/// Before 5.15 each perf event stays an open fd of the agent (later kernels hold it in a BPF
/// link and close it), so this can only fail there: it runs in the kernel matrix, and on
/// 5.10 it fails without `FD_CLOEXEC` on those fds.
#[test]
fn perf_event_descriptors_do_not_leak_into_commands() {
    if !require_root("profile::perf_event_descriptors_do_not_leak_into_commands") {
        return;
    }
    let out = run_with_timeout(
        &mut procmon(&[
            "run",
            "--",
            "sh",
            "-c",
            "for f in /proc/$$/fd/*; do readlink $f; done; true",
        ]),
        PROFILE_TIMEOUT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let fds = String::from_utf8_lossy(&out.stdout);
    assert!(
        !fds.contains("perf_event"),
        "the command inherited perf fds:\n{fds}"
    );
    assert!(
        !fds.contains("bpf"),
        "the command inherited bpf fds:\n{fds}"
    );
}
