//! Attribution to the children of a watched process (`--watch pid:N`), checked against what
//! the kernel itself reports: CPU of 1,000 short-lived children (and their grandchildren)
//! against `getrusage(RUSAGE_CHILDREN)`, live CPU usage ratios of a spinning and a
//! half-busy child (against the kernel's schedstat and the designed 1.0 and 0.5), and the
//! peak RSS of a child that touches 200 MiB.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use procmon_tests::{as_pid, events_for, require_root, wait_for, Agent, Metrics, Workload};

/// Bounds waits for the agent to catch up (waits, not speed assertions).
const CATCH_UP: Duration = Duration::from_secs(60);

fn watch_pid(pid: u32, sample_interval: &str) -> (Agent, String) {
    Agent::watching(pid, &["--sample-interval", sample_interval])
}
/// Bounds how long a workload may take to do its work and report.
const WORK_TIMEOUT: Duration = Duration::from_secs(120);

/// The labels every per-child series carries (contract).
const CHILD_LABELS: [&str; 4] = ["comm", "pid", "root_pid", "watch"];

/// Per-child series of `name` under root `pid`, keyed by the child's pid; panics on a label
/// set other than the contract's, or on two series for one child.
fn per_child(m: &Metrics, name: &str, watch: &str, root: u32) -> BTreeMap<u32, f64> {
    let root_s = root.to_string();
    let mut out = BTreeMap::new();
    for s in m.matching(name, &[("watch", watch), ("root_pid", &root_s)]) {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, CHILD_LABELS, "label names of {name} series {s:?}");
        let pid: u32 = s.labels["pid"]
            .parse()
            .unwrap_or_else(|_| panic!("pid label is not a pid in {name} series {s:?}"));
        assert!(
            out.insert(pid, s.value).is_none(),
            "two {name} series for child {pid} of root {root}"
        );
    }
    out
}

/// How long the live-ratio test traces the agent's ratios against the kernel's counters.
const TRACE: Duration = Duration::from_secs(4);
/// How far a child's attributed CPU may exceed its wait4 rusage: the exit path after the
/// parent reaped it (see the per-child check). NB: under QEMU's software emulation (the
/// kernel matrix, `PROCMON_VM`) that path has no useful bound: a guest task is charged for
/// the time its virtual CPU's host thread was descheduled or, with one TCG thread, busy
/// emulating the other CPU (2 ms and 8.8 ms were seen on 5.10). There only the lower bound
/// and the sum are checked; the host suite checks the upper bound.
fn post_reap_slack() -> f64 {
    if std::env::var_os("PROCMON_VM").is_some() {
        f64::INFINITY
    } else {
        500e-6
    }
}
/// How often it reads both: fine enough to place each 500 ms sample of the agent's.
const TRACE_STEP: Duration = Duration::from_millis(50);

/// The kernel's exact CPU time of a process: `/proc/PID/schedstat`'s first field, ns on CPU.
fn schedstat_ns(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/schedstat");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no runtime in {text:?}"))
}

/// One step of the trace: when, the kernel's CPU ns of each traced pid, the agent's ratios
/// (spin child, half child, watched root) and the scrape.
struct Step {
    at: Instant,
    ns: [u64; 2],
    agent: [f64; 3],
    metrics: Metrics,
}

fn within(actual: f64, expected: f64, rel: f64) -> bool {
    (actual - expected).abs() <= expected.abs() * rel
}

#[test]
fn child_cpu_matches_rusage_of_1000_children() {
    if !require_root("attribution::child_cpu_matches_rusage_of_1000_children") {
        return;
    }
    const CHILDREN: usize = 1000;
    const GRANDCHILDREN: usize = 200;
    let mut w = Workload::spawn(env!("CARGO_BIN_EXE_cpu_children"), &[&CHILDREN.to_string()]);
    let root = w.pid();
    let (agent, watch) = watch_pid(root, "200ms");
    w.release();
    let report = w.report(WORK_TIMEOUT);
    assert_eq!(
        report["failed"], 0,
        "cpu_children: children failed: {report}"
    );
    assert_eq!(as_pid(&report["pid"]), root, "cpu_children report {report}");
    let rusage_children = report["children_cpu_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no children_cpu_seconds in {report}"));
    let rusage_self = report["self_cpu_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no self_cpu_seconds in {report}"));

    // Every child has exited and been reaped; wait until the agent has them all as exited,
    // and then until their CPU is all in. A child counts as exited from its exit record, but
    // a process's CPU comes with its exit event, which waits for its release (at most
    // RELEASE_WAIT, 1 s): a grandchild's release can come after its parent's exit (RCU
    // callbacks of different CPUs are not ordered). So the CPU must hold still for longer
    // than that. The per-child comparison below is the test; this only waits for the data.
    let exited = |m: &Metrics| {
        let alive = per_child(m, "procmon_child_alive", &watch, root);
        alive.len() >= CHILDREN
            && alive.values().all(|&a| a == 0.0)
            && m.sum(
                "procmon_child_descendants_started_total",
                &[("watch", &watch), ("root_pid", &root.to_string())],
            ) >= GRANDCHILDREN as f64
    };
    let cpu_of = |m: &Metrics| -> f64 {
        per_child(m, "procmon_child_cpu_seconds_total", &watch, root)
            .values()
            .sum()
    };
    let mut settled: Option<(f64, Instant)> = None;
    let m = wait_for(CATCH_UP, || {
        let m = Some(agent.metrics()).filter(exited)?;
        let cpu = cpu_of(&m);
        match settled {
            Some((last, since)) if last == cpu => {
                (since.elapsed() > Duration::from_millis(1500)).then_some(m)
            }
            _ => {
                settled = Some((cpu, Instant::now()));
                None
            }
        }
    })
    .unwrap_or_else(|| agent.metrics());

    let cpu = per_child(&m, "procmon_child_cpu_seconds_total", &watch, root);
    let alive = per_child(&m, "procmon_child_alive", &watch, root);
    let started = per_child(&m, "procmon_child_descendants_started_total", &watch, root);
    let cpu_sum: f64 = cpu.values().sum();
    let started_sum: f64 = started.values().sum();
    let ratio = cpu_sum / rusage_children;
    println!(
        "cpu attribution: sum procmon_child_cpu_seconds_total = {cpu_sum:.6} s over {} children, \
         getrusage(RUSAGE_CHILDREN) = {rusage_children:.6} s, ratio {ratio:.4}; \
         descendants_started sum = {started_sum}; exits reported before their release {} \
         (released late {}, forgotten {})",
        cpu.len(),
        m.get_or_zero("procmon_exits_before_release_total", &[]),
        m.get_or_zero("procmon_exits_released_late_total", &[]),
        m.get_or_zero("procmon_exits_release_forgotten_total", &[]),
    );

    assert_eq!(
        cpu.len(),
        CHILDREN,
        "procmon_child_cpu_seconds_total series under root {root} (one per child, exited \
         children retained)"
    );
    assert_eq!(
        alive.len(),
        CHILDREN,
        "procmon_child_alive series under root {root}"
    );
    let still_alive: Vec<_> = alive.iter().filter(|(_, &a)| a != 0.0).collect();
    assert!(
        still_alive.is_empty(),
        "children reaped by the workload still procmon_child_alive != 0: {still_alive:?}"
    );
    let root_s = root.to_string();
    let comms: BTreeSet<&str> = m
        .matching(
            "procmon_child_cpu_seconds_total",
            &[("watch", watch.as_str()), ("root_pid", root_s.as_str())],
        )
        .map(|s| s.labels["comm"].as_str())
        .collect();
    assert_eq!(
        comms,
        BTreeSet::from(["cpu_children"]),
        "comm labels of the (forked, never exec'd) children"
    );
    // Child by child against the kernel: wait4's rusage of each child (its grandchildren
    // included, as they were reaped by it). NB: wait4 snapshots the child's runtime when the
    // parent reaps it, which can come before the child's last context switch; the agent reads
    // at the release (sched_process_free), after that switch, so it may be *above* wait4 by
    // the CPU the exit path used after the reap (106 µs seen once in ~5,000 children on a
    // loaded machine). Below wait4, the bound is
    // 1% + 50 µs; above it, 1% + post_reap_slack(), still far below the whole child counted
    // twice (≥ 2 ms), which is what this check caught once.
    let per_child = report["per_child"]
        .as_object()
        .unwrap_or_else(|| panic!("no per_child object in the cpu_children report"));
    assert_eq!(per_child.len(), CHILDREN, "per_child entries in the report");
    let mut off: Vec<(u32, f64, f64)> = per_child
        .iter()
        .map(|(pid, ru)| {
            let pid: u32 = pid.parse().expect("pid key");
            let ru = ru.as_f64().expect("per_child seconds");
            (pid, cpu.get(&pid).copied().unwrap_or(f64::NAN), ru)
        })
        .filter(|&(_, m, ru)| {
            m.is_nan() || ru - m > 0.01 * ru + 50e-6 || m - ru > 0.01 * ru + post_reap_slack()
        })
        .collect();
    off.sort_by(|a, b| (b.1 / b.2).total_cmp(&(a.1 / a.2)));
    println!(
        "cpu attribution: {} of {CHILDREN} children off their wait4 rusage (below by more \
         than 1% + 50 µs, or above by more than 1% + {} s); worst (pid, metric s, rusage s): {:?}",
        off.len(),
        post_reap_slack(),
        &off[..off.len().min(5)]
    );
    assert!(
        within(cpu_sum, rusage_children, 0.02),
        "sum of procmon_child_cpu_seconds_total {cpu_sum:.6} s vs getrusage(RUSAGE_CHILDREN) \
         {rusage_children:.6} s: ratio {ratio:.4}, outside 1 ± 0.02 ({} children off their \
         own wait4 rusage, worst (pid, metric s, rusage s): {:?})",
        off.len(),
        &off[..off.len().min(10)]
    );
    // Where the kernel skips tracing-program runs (7.x: tracepoint programs are preemptible,
    // see docs/kernels.md), a skipped run that is not recovered can leave one child's subtree
    // short (seen once: 1 of 1,000 children 4.9 ms low on 7.3 under emulation). The agent
    // counts those runs; only then, and for at most 0.5% of the children, is that tolerated
    // and printed. Everywhere else every child must match.
    let misses = m.sum("procmon_kernel_program_misses_total", &[]);
    let mut tolerated = if misses > 0.0 { CHILDREN / 200 } else { 0 };
    // An exit whose release never came is reported with the CPU read at the exit tracepoint,
    // short of its exit path (tens of µs for these children), and counted. On the 6.18
    // development VM the kernel ran sched_process_free without running its program for about
    // 0.5% of the frees in a burst (the tracepoint fired, per ftrace; the program's run_cnt
    // did not move, and no recursion miss was counted). A child short by at most 1 ms is
    // tolerated once per counted early exit, and printed.
    let early = m.get_or_zero("procmon_exits_before_release_total", &[]) as usize;
    let short = off
        .iter()
        .filter(|&&(_, m, ru)| m < ru && ru - m <= 1e-3)
        .count()
        .min(early);
    if short > 0 {
        println!(
            "cpu attribution: {short} children short of wait4 by at most 1 ms tolerated: \
             {early} exits were reported before their release"
        );
        tolerated += short;
    }
    if !off.is_empty() && off.len() <= tolerated {
        println!(
            "cpu attribution: {} children off tolerated (kernel skipped {misses} probe runs, \
             {early} exits reported before their release)",
            off.len()
        );
    }
    assert!(
        off.len() <= tolerated,
        "{} of {CHILDREN} children have procmon_child_cpu_seconds_total off their own wait4 \
         rusage (below by more than 1% + 50 µs, or above by more than 1% + {} s) \
         (the sum is within 2%: ratio {ratio:.4}); worst (pid, \
         metric s, rusage s): {:?}",
        off.len(),
        post_reap_slack(),
        &off[..off.len().min(10)]
    );
    assert_eq!(
        started_sum, GRANDCHILDREN as f64,
        "sum of procmon_child_descendants_started_total (every 10th child forks 2)"
    );
    let with_grandchildren = started.values().filter(|&&v| v == 2.0).count();
    assert_eq!(
        with_grandchildren,
        CHILDREN / 10,
        "children with procmon_child_descendants_started_total == 2"
    );

    // The root's own series: its whole subtree, itself included.
    let root_labels = [("watch", watch.as_str()), ("pid", root_s.as_str())];
    let watched_cpu = m.sum("procmon_watched_cpu_seconds_total", &root_labels);
    let watched_started = m.sum("procmon_watched_descendants_started_total", &root_labels);
    println!(
        "watched root: procmon_watched_cpu_seconds_total = {watched_cpu:.6} s, rusage self + \
         children = {:.6} s; procmon_watched_descendants_started_total = {watched_started}",
        rusage_self + rusage_children
    );
    assert!(
        within(watched_cpu, rusage_self + rusage_children, 0.02),
        "procmon_watched_cpu_seconds_total {watched_cpu:.6} s vs getrusage SELF + CHILDREN \
         {:.6} s: outside ± 2%",
        rusage_self + rusage_children
    );
    assert_eq!(
        watched_started,
        (CHILDREN + GRANDCHILDREN) as f64,
        "procmon_watched_descendants_started_total: every process started below the root"
    );
    assert_eq!(w.finish().code(), Some(0), "cpu_children exit status");
}

#[test]
fn live_cpu_usage_ratio_of_spinning_and_half_busy_children() {
    if !require_root("attribution::live_cpu_usage_ratio_of_spinning_and_half_busy_children") {
        return;
    }
    let mut w = Workload::spawn(env!("CARGO_BIN_EXE_busy"), &["100", "50"]);
    let root = w.pid();
    let (agent, watch) = watch_pid(root, "500ms");
    let released = Instant::now();
    w.release();
    let report = w.report(WORK_TIMEOUT);
    let spin = as_pid(&report["children"][0]);
    let half = as_pid(&report["children"][1]);

    // A few sample intervals' worth of samples first.
    std::thread::sleep(Duration::from_secs(2));
    let root_s = root.to_string();
    let read_ratios = |m: &Metrics| {
        let ratio = per_child(m, "procmon_child_cpu_usage_ratio", &watch, root);
        let get = |pid| {
            *ratio.get(&pid).unwrap_or_else(|| {
                panic!("no procmon_child_cpu_usage_ratio series for child {pid} of root {root}; got {ratio:?}")
            })
        };
        let watched = m.sum(
            "procmon_watched_cpu_usage_ratio",
            &[("watch", &watch), ("pid", &root_s)],
        );
        [get(spin), get(half), watched]
    };

    // Trace the agent's ratios next to the kernel's counters. Each new agent sample shows up
    // as a change of the ratios; consecutive samples cover consecutive intervals, so their
    // mean is the CPU used between the first and the last change, which the kernel's counters
    // give exactly (to within a trace step at either end).
    let mut trace: Vec<Step> = Vec::new();
    let end = Instant::now() + TRACE;
    while Instant::now() < end {
        let ns = [schedstat_ns(spin), schedstat_ns(half)];
        let metrics = agent.metrics();
        trace.push(Step {
            at: Instant::now(),
            ns,
            agent: read_ratios(&metrics),
            metrics,
        });
        std::thread::sleep(TRACE_STEP);
    }
    let changes: Vec<usize> = (1..trace.len())
        .filter(|&j| trace[j].agent[..2] != trace[j - 1].agent[..2])
        .collect();
    assert!(
        changes.len() >= 4,
        "procmon_child_cpu_usage_ratio changed only {} times in {TRACE:?} with \
         --sample-interval 500ms",
        changes.len()
    );
    let (first, last) = (&trace[changes[0]], &trace[*changes.last().unwrap()]);
    let wall = (last.at - first.at).as_secs_f64();
    let kernel: Vec<f64> = (0..2)
        .map(|c| (last.ns[c] - first.ns[c]) as f64 / 1e9 / wall)
        .collect();
    let kernel = [kernel[0], kernel[1], kernel[0] + kernel[1]];
    let samples: Vec<[f64; 3]> = changes[1..].iter().map(|&j| trace[j].agent).collect();
    let mean = |k: usize| samples.iter().map(|s| s[k]).sum::<f64>() / samples.len() as f64;
    let agent_mean = [mean(0), mean(1), mean(2)];
    println!(
        "live ratio: {} agent samples over {wall:.2} s; agent (spin, half, watched) per sample \
         {samples:.4?}; mean {agent_mean:.4?}; kernel schedstat over the same span {kernel:.4?}",
        samples.len()
    );
    for (k, what) in [
        (0, "the spinning child"),
        (1, "the 50%-duty child"),
        (2, "the watched root (its 2 children; it sleeps)"),
    ] {
        assert!(
            (agent_mean[k] - kernel[k]).abs() <= 0.05,
            "mean cpu usage ratio of {what} over {} samples = {:.4}, but the kernel measured \
             {:.4} over those {wall:.2} s; per sample: {samples:.4?}",
            samples.len(),
            agent_mean[k],
            kernel[k]
        );
    }
    // When the machine let the workload run as designed (otherwise idle, as in CI): the
    // contract's numbers, sample by sample. On a busy machine another CPU hog starves the
    // spinner and only the comparison with the kernel above applies.
    if kernel[0] >= 0.95 && (0.45..=0.55).contains(&kernel[1]) {
        for (i, [r_spin, r_half, watched]) in samples.iter().copied().enumerate() {
            assert!(
                (0.9..=1.1).contains(&r_spin),
                "sample {i}: procmon_child_cpu_usage_ratio of the spinning child {spin} = \
                 {r_spin}, expected 1.0 ± 0.1 (kernel over the trace: {:.4})",
                kernel[0]
            );
            assert!(
                (0.4..=0.6).contains(&r_half),
                "sample {i}: procmon_child_cpu_usage_ratio of the 50%-duty child {half} = \
                 {r_half}, expected 0.5 ± 0.1 (kernel over the trace: {:.4})",
                kernel[1]
            );
            assert!(
                (1.3..=1.7).contains(&watched),
                "sample {i}: procmon_watched_cpu_usage_ratio of root {root} = {watched}, \
                 expected about 1.5 (its two children; it sleeps)"
            );
        }
    } else {
        println!(
            "live ratio: machine busy (the kernel gave the spinner {:.2} of a core): checked \
             against the kernel only",
            kernel[0]
        );
    }

    let m = &trace.last().unwrap().metrics;
    let elapsed = released.elapsed();
    let alive = per_child(m, "procmon_child_alive", &watch, root);
    let lifetime = per_child(m, "procmon_child_lifetime_seconds", &watch, root);
    let rss = per_child(m, "procmon_child_rss_bytes", &watch, root);
    for (pid, role) in [(spin, "spin"), (half, "half")] {
        let get = |map: &BTreeMap<u32, f64>, what: &str| {
            *map.get(&pid).unwrap_or_else(|| {
                panic!("no {what} series for {role} child {pid} of root {root}; got {map:?}")
            })
        };
        assert_eq!(
            get(&alive, "procmon_child_alive"),
            1.0,
            "{role} child {pid} is running"
        );
        assert!(
            get(&rss, "procmon_child_rss_bytes") > 0.0,
            "procmon_child_rss_bytes of the running {role} child {pid}"
        );
        // Forked after the release, alive for the 2 s + trace since; allow one sample
        // interval of staleness below and some slack above.
        let life = get(&lifetime, "procmon_child_lifetime_seconds");
        let min = 2.0 + TRACE.as_secs_f64() - 0.6;
        assert!(
            (min..=elapsed.as_secs_f64() + 0.5).contains(&life),
            "procmon_child_lifetime_seconds of {role} child {pid} = {life}, expected between \
             {min:.1} and {:.2} s (time since its release)",
            elapsed.as_secs_f64()
        );
    }
    assert_eq!(w.finish().code(), Some(0), "busy exit status");
}

#[test]
fn peak_rss_of_a_child_that_touches_200_mib() {
    if !require_root("attribution::peak_rss_of_a_child_that_touches_200_mib") {
        return;
    }
    const MIB: u64 = 200;
    let mut w = Workload::spawn(env!("CARGO_BIN_EXE_rss_child"), &[&MIB.to_string()]);
    let root = w.pid();
    let (agent, watch) = watch_pid(root, "200ms");
    w.release();
    let report = w.report(WORK_TIMEOUT);
    assert_eq!(report["status"], 0, "rss_child's child failed: {report}");
    let child = as_pid(&report["child"]);
    let baseline = report["baseline_rss_bytes"]
        .as_f64()
        .expect("baseline_rss_bytes");
    let hwm = report["hwm_bytes"].as_f64().expect("hwm_bytes");
    let expected = (MIB << 20) as f64 + baseline;
    assert!(
        within(hwm, expected, 0.05),
        "workload sanity: the child's own VmHWM {hwm} is not within 5% of {MIB} MiB + \
         baseline {baseline} = {expected}"
    );

    let exit = wait_for(CATCH_UP, || {
        events_for(&agent.events(), "exit", child)
            .first()
            .map(|e| (*e).clone())
    })
    .unwrap_or_else(|| panic!("no exit event for child {child} within {CATCH_UP:?}"));
    let m = wait_for(CATCH_UP, || {
        let m = agent.metrics();
        (per_child(&m, "procmon_child_alive", &watch, root).get(&child) == Some(&0.0)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "procmon_child_alive for exited child {child} of root {root} not 0 within \
             {CATCH_UP:?}; /metrics:\n{}",
            agent.scrape()
        )
    });
    let peak = *per_child(&m, "procmon_child_peak_rss_bytes", &watch, root)
        .get(&child)
        .unwrap_or_else(|| panic!("no procmon_child_peak_rss_bytes for child {child}"));
    let event_peak = exit["peak_rss_bytes"]
        .as_f64()
        .unwrap_or_else(|| panic!("no peak_rss_bytes in {exit}"));
    println!(
        "peak rss: expected {MIB} MiB + baseline {baseline} = {expected}; child's VmHWM {hwm}; \
         procmon_child_peak_rss_bytes {peak} ({:.4}); exit event peak_rss_bytes {event_peak} \
         ({:.4})",
        peak / expected,
        event_peak / expected
    );
    assert!(
        within(peak, expected, 0.05),
        "procmon_child_peak_rss_bytes {peak} not within 5% of {expected} ({MIB} MiB + baseline \
         {baseline}; the child's own VmHWM was {hwm})"
    );
    assert!(
        within(event_peak, expected, 0.05),
        "exit event peak_rss_bytes {event_peak} not within 5% of {expected} ({MIB} MiB + \
         baseline {baseline}; the child's own VmHWM was {hwm}): {exit}"
    );
    assert_eq!(
        exit["outcome"], "clean",
        "exit event of child {child}: {exit}"
    );
    assert_eq!(w.finish().code(), Some(0), "rss_child exit status");
}
