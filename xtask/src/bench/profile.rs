//! "CPU sampling": what always-on sampling (`--profile-hz`) costs. The agent runs with
//! sampling off, at the default 19 Hz and at 99 Hz (what `procmon profile` uses) under the
//! same load, in a rotating order per round. Two loads: two CPU-bound processes (one binary,
//! few stacks: the cheap case) and a fork storm (new processes all the time: what is sampled
//! of each is symbolized afresh, the expensive case).
//!
//! Figures per run: the load's throughput, the agent's CPU and resident memory, and the
//! `cpu_sample` program's own run time from the kernel's BPF stats.
use std::{path::Path, thread, time::Duration};

use anyhow::Result;

use super::{
    agent::Agent,
    bpf,
    report::{median, Row},
    stress, Workload,
};

const RATES: [u64; 3] = [0, 19, 99];

const LOADS: [Workload; 2] = [
    Workload {
        name: "cpu-bound",
        stressor: "cpu",
        instances: 2,
        max_slowdown_percent: 1.0,
    },
    // stress-ng's exec stressor refuses to run as root; a fork storm also makes a new
    // process every few hundred microseconds, each sampled stack of which is new to the
    // symbolizer's per-process cache.
    Workload {
        name: "fork storm",
        stressor: "fork",
        instances: 2,
        max_slowdown_percent: 3.0,
    },
];

struct Run {
    hz: u64,
    ops_per_second: f64,
    agent_cpu_seconds: f64,
    seconds: f64,
    rss_bytes: u64,
    samples: u64,
    sample_ns: u64,
}

pub fn run(agent_bin: &Path, log_dir: &Path, rounds: u32, seconds: u32) -> Result<Vec<Row>> {
    let _bpf_stats = bpf::StatsEnabled::enable()?;
    let mut rows = Vec::new();
    for load in &LOADS {
        let mut runs: Vec<Run> = Vec::new();
        for round in 0..rounds {
            // Rotate the order, so a drift of the machine favours no rate.
            for i in 0..RATES.len() {
                let hz = RATES[(i + round as usize) % RATES.len()];
                eprintln!(
                    "\n==> CPU sampling, {}: round {}/{rounds}, --profile-hz {hz}",
                    load.name,
                    round + 1
                );
                let log = log_dir.join(format!("agent-profile-{}-{hz}.log", load.stressor));
                runs.push(one_run(agent_bin, &log, load, hz, seconds)?);
            }
        }
        rows.extend(summarize(load, &runs));
    }
    Ok(rows)
}

fn one_run(bin: &Path, log: &Path, load: &Workload, hz: u64, seconds: u32) -> Result<Run> {
    let agent = Agent::start(bin, log, &["--profile-hz".into(), hz.to_string()])?;
    // Let start-up (seeding, the first symbolizations of what already runs) settle.
    thread::sleep(Duration::from_secs(2));
    let sampler = || -> Result<Vec<bpf::Prog>> {
        if hz == 0 {
            return Ok(Vec::new());
        }
        bpf::snapshot_programs(&[agent.pid()], |name| name == "cpu_sample")
    };
    let before = sampler()?;
    let cpu_before = agent.cpu_seconds()?;
    let throughput = stress::run(load.stressor, load.instances, &[], seconds)?;
    bpf::interrupted()?;
    let agent_cpu_seconds = agent.cpu_seconds()? - cpu_before;
    let cost = bpf::difference(&before, &sampler()?);
    let rss_bytes = agent.rss_bytes()?;
    agent.stop()?;
    let (samples, sample_ns) = cost
        .iter()
        .fold((0, 0), |(n, t), c| (n + c.runs, t + c.run_time_ns));
    eprintln!(
        "{:.1} ops/s, agent CPU {agent_cpu_seconds:.3} s, RSS {:.1} MiB, {samples} samples",
        throughput.ops_per_second,
        rss_bytes as f64 / 1048576.0
    );
    Ok(Run {
        hz,
        ops_per_second: throughput.ops_per_second,
        agent_cpu_seconds,
        seconds: throughput.seconds,
        rss_bytes,
        samples,
        sample_ns,
    })
}

fn summarize(load: &Workload, runs: &[Run]) -> Vec<Row> {
    let bench = format!("CPU sampling, {}", load.name);
    let of = |hz: u64| runs.iter().filter(move |r| r.hz == hz);
    let med = |hz: u64, f: &dyn Fn(&Run) -> f64| median(&of(hz).map(f).collect::<Vec<_>>());
    let off_ops = med(0, &|r| r.ops_per_second);
    let off_cpu = med(0, &|r| r.agent_cpu_seconds / r.seconds);
    let off_rss = med(0, &|r| r.rss_bytes as f64);
    let mut rows = vec![Row {
        benchmark: bench.clone(),
        metric: "sampling off: agent CPU, RSS (medians)".into(),
        value: format!(
            "{:.2}% of a core, {:.1} MiB",
            off_cpu * 100.0,
            off_rss / 1048576.0
        ),
        target: None,
    }];
    for hz in [19, 99] {
        let ratio = med(hz, &|r| r.ops_per_second) / off_ops;
        let cpu = med(hz, &|r| r.agent_cpu_seconds / r.seconds);
        let rss = med(hz, &|r| r.rss_bytes as f64);
        let ns = med(hz, &|r| r.sample_ns as f64 / r.samples.max(1) as f64);
        let per_second = med(hz, &|r| r.samples as f64 / r.seconds);
        rows.push(Row {
            benchmark: bench.clone(),
            metric: format!("{hz} Hz: throughput vs off (median)"),
            value: format!("{ratio:.3}"),
            target: Some(super::report::Target {
                text: format!("≥ {:.2}", 1.0 - load.max_slowdown_percent / 100.0),
                met: ratio >= 1.0 - load.max_slowdown_percent / 100.0,
            }),
        });
        rows.push(Row {
            benchmark: bench.clone(),
            metric: format!("{hz} Hz: agent CPU, RSS (medians)"),
            value: format!(
                "{:.2}% of a core (+{:.2}), {:.1} MiB (+{:.1})",
                cpu * 100.0,
                (cpu - off_cpu) * 100.0,
                rss / 1048576.0,
                (rss - off_rss) / 1048576.0
            ),
            target: None,
        });
        rows.push(Row {
            benchmark: bench.clone(),
            metric: format!("{hz} Hz: cpu_sample program (median)"),
            value: format!("{ns:.0} ns per sample, {per_second:.0} samples/s"),
            target: None,
        });
    }
    rows
}
