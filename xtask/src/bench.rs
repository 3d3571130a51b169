//! `cargo xtask bench [fork|sample|profile|memory|all]`: what the agent costs.
//!
//! `fork`: what the agent costs the workloads it watches. Two kinds of figures. End to end: each
//! round runs every workload once without and once with the agent, back to back, alternating
//! which goes first (ABBA: a drift of the machine during the bench favours neither side), and
//! the verdict is the median of the per-round ratios; on a shared VM those still scatter by more
//! than a few percent, so their IQR is printed as the resolution. Deterministic: the kernel's
//! accounting of the probes' run time (bpf.rs), which does not depend on the neighbours.
//!
//! `sample`: sampling CPU and RSS of 10,000 live processes, procmon's task iterator against a
//! /proc poller and prometheus-process-exporter (sample.rs).
//!
//! `profile`: what always-on CPU sampling costs the agent and the load (profile.rs).
//!
//! `memory`: the agent's RSS idle, with 10,000 processes and with 10,000 child series, split
//! by mapping, and over a 60 s fast-forking watched parent (memory.rs).
//!
//! Missed targets are reported, not failed: this measures.
mod agent;
mod bpf;
mod exporter;
mod idle;
mod memory;
mod procpoll;
mod profile;
mod prom;
mod report;
mod sample;
mod stress;
mod table;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::ensure;
use report::{Round, Row};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    /// Fork-storm throughput with and without the agent.
    Fork,
    /// Sampling 10,000 idle processes: procmon vs /proc vs process-exporter.
    Sample,
    /// Always-on CPU sampling (--profile-hz off, 19, 99) under a CPU-bound load and an exec
    /// storm.
    Profile,
    /// Agent RSS idle, with 10,000 processes, with 10,000 child series, and RSS and CPU over
    /// a 60 s fast-forking watched parent.
    Memory,
    All,
}

#[derive(clap::Args)]
pub struct Options {
    /// Which benchmark to run.
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    /// Baseline/with-agent pairs per workload.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Length of each stress-ng run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Benchmark this agent binary (e.g. a previous release) instead of building
    /// target/release/procmon.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Idle processes for the sampling benchmark.
    #[arg(
        long,
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    processes: u32,
    /// How long the sampling benchmark lets the agent sample them before reading its figures.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    sample_seconds: u32,
}

/// A stress-ng load measured with and without the agent. Later benchmarks (exec storms,
/// short-lived trees, ...) are further entries here.
pub struct Workload {
    pub name: &'static str,
    pub stressor: &'static str,
    pub instances: u32,
    /// Highest acceptable throughput loss with the agent running (from the median of the
    /// per-round ratios), in percent.
    pub max_slowdown_percent: f64,
}

const WORKLOADS: &[Workload] = &[Workload {
    name: "fork storm",
    stressor: "fork",
    instances: 2,
    max_slowdown_percent: 3.0,
}];

pub fn run(root: &Path, options: &Options) -> Result<()> {
    ensure::ensure(&[
        ensure::Need::Toolchain,
        ensure::Need::Agent,
        ensure::Need::Bench,
    ])?;
    let agent_bin = match &options.agent {
        Some(path) => path.clone(),
        None => {
            crate::build_agent(root)?;
            crate::agent_path(root)
        }
    };
    let log_dir = root.join("target/bench");
    fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
    let mut summary: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    if matches!(options.which, Which::Fork | Which::All) {
        fork_storms(&agent_bin, &log_dir, options, &mut summary, &mut notes)?;
    }
    if matches!(options.which, Which::Sample | Which::All) {
        let (rows, sample_notes) = sample::run(
            &agent_bin,
            &log_dir,
            options.processes,
            options.sample_seconds,
        )?;
        summary.extend(rows);
        notes.extend(sample_notes);
    }
    if matches!(options.which, Which::Profile | Which::All) {
        let rounds = options.rounds.min(5);
        summary.extend(profile::run(&agent_bin, &log_dir, rounds, options.seconds)?);
        notes.push(format!(
            "CPU sampling: {rounds} rounds per rate, rates in rotating order"
        ));
    }
    if matches!(options.which, Which::Memory | Which::All) {
        summary.extend(memory::run(&agent_bin, &log_dir, options.processes)?);
    }
    println!("\nsummary");
    report::print_summary(&summary);
    for note in notes {
        println!("note: {note}");
    }
    Ok(())
}

fn fork_storms(
    agent_bin: &Path,
    log_dir: &Path,
    options: &Options,
    summary: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    // Restores the previous setting when dropped, on success and on error alike. Only for this
    // benchmark: the stats time every program run, the sampling pass's iterator included.
    let _bpf_stats = bpf::StatsEnabled::enable()?;

    let mut rounds: Vec<Vec<Round>> = WORKLOADS.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        let agent_first = round % 2 == 0;
        for (workload, results) in WORKLOADS.iter().zip(&mut rounds) {
            let order = if agent_first {
                "agent first"
            } else {
                "baseline first"
            };
            eprintln!(
                "\n==> round {round}/{}: {} ({order})",
                options.rounds, workload.name
            );
            let log = log_dir.join(format!("agent-{}-{round}.log", workload.stressor));
            let baseline_run = || -> Result<stress::Throughput> {
                let baseline = stress::run(workload, options.seconds)?;
                bpf::interrupted()?;
                eprintln!("baseline: {:.2} bogo ops/s", baseline.ops_per_second);
                Ok(baseline)
            };
            let agent_run = || with_agent(agent_bin, &log, workload, options.seconds);
            // A tuple's elements are evaluated left to right: the second branch runs the
            // baseline first.
            let (baseline, agent_run) = if agent_first {
                let agent_run = agent_run()?;
                (baseline_run()?, agent_run)
            } else {
                (baseline_run()?, agent_run()?)
            };
            results.push(Round {
                agent_first,
                baseline,
                with_agent: agent_run.throughput,
                lost_events: agent_run.lost_events,
                agent_cpu_seconds: agent_run.agent_cpu_seconds,
                probes: agent_run.probes,
            });
        }
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    for (workload, results) in WORKLOADS.iter().zip(&rounds) {
        println!(
            "\n{} (stress-ng --{} {}, {} s per run, {cores} cores)",
            workload.name, workload.stressor, workload.instances, options.seconds
        );
        report::print_rounds(results);
        println!("\nprobe cost from the kernel's BPF stats (mean per with-agent storm)");
        report::print_probes(results);
        summary.extend(report::summarize(workload, results, cores));
        notes.extend(report::noise_note(workload, results));
    }
    notes.push(format!(
        "fork storm: {} rounds; throughput is end to end (noisy), probe CPU deterministic",
        options.rounds
    ));
    Ok(())
}

/// One storm with the agent running: its throughput, and what the agent cost meanwhile.
struct AgentRun {
    throughput: stress::Throughput,
    lost_events: f64,
    agent_cpu_seconds: f64,
    probes: Vec<bpf::ProbeCost>,
}

fn with_agent(bin: &Path, log: &Path, workload: &Workload, seconds: u32) -> Result<AgentRun> {
    let agent = agent::Agent::start(bin, log, &[])?;
    // Snapshots right around the storm: the probe counters accumulate from load time.
    let probes_before = bpf::snapshot(agent.pid())?;
    let cpu_before = agent.cpu_seconds()?;
    let throughput = stress::run(workload, seconds)?;
    bpf::interrupted()?;
    let agent_cpu_seconds = agent.cpu_seconds()? - cpu_before;
    let probes = bpf::difference(&probes_before, &bpf::snapshot(agent.pid())?);
    let lost_events = agent.lost_events()?;
    agent.stop()?;
    let probe_seconds: f64 = probes.iter().map(|p| p.run_time_ns as f64 / 1e9).sum();
    eprintln!(
        "with agent: {:.2} bogo ops/s, {lost_events} events lost, agent CPU {agent_cpu_seconds:.2} s, probe CPU {probe_seconds:.4} s",
        throughput.ops_per_second
    );
    Ok(AgentRun {
        throughput,
        lost_events,
        agent_cpu_seconds,
        probes,
    })
}
