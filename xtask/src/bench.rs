//! `cargo xtask bench`: what the agent costs the workloads it watches.
//!
//! Each round runs every workload once without and once with the agent, back to back, so slow
//! drifts of the machine (thermal, noisy neighbours) hit both sides alike; medians over rounds
//! then discard the odd outlier. Missed targets are reported, not failed: this measures.
mod agent;
mod report;
mod stress;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::ensure;
use report::{Round, Row};

#[derive(clap::Args)]
pub struct Options {
    /// Baseline/with-agent pairs per workload.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Length of each stress-ng run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Benchmark this agent binary (e.g. a previous release) instead of building
    /// target/release/procmon.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
}

/// A stress-ng load measured with and without the agent. Later benchmarks (exec storms,
/// short-lived trees, ...) are further entries here.
pub struct Workload {
    pub name: &'static str,
    pub stressor: &'static str,
    pub instances: u32,
    /// Highest acceptable median throughput loss with the agent running, in percent.
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

    let mut rounds: Vec<Vec<Round>> = WORKLOADS.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        for (workload, results) in WORKLOADS.iter().zip(&mut rounds) {
            eprintln!("\n==> round {round}/{}: {}", options.rounds, workload.name);
            let baseline = stress::run(workload, options.seconds)?;
            eprintln!("baseline: {baseline:.2} bogo ops/s");

            let log = log_dir.join(format!("agent-{}-{round}.log", workload.stressor));
            let agent = agent::Agent::start(&agent_bin, &log)?;
            let cpu_before = agent.cpu_seconds()?;
            let with_agent = stress::run(workload, options.seconds)?;
            let lost_events = agent.lost_events()?;
            let agent_cpu_seconds = agent.cpu_seconds()? - cpu_before;
            agent.stop()?;
            eprintln!("with agent: {with_agent:.2} bogo ops/s, {lost_events} events lost, agent CPU {agent_cpu_seconds:.2} s");

            results.push(Round {
                baseline,
                with_agent,
                lost_events,
                agent_cpu_seconds,
            });
        }
    }

    let mut summary: Vec<Row> = Vec::new();
    for (workload, results) in WORKLOADS.iter().zip(&rounds) {
        println!(
            "\n{} (stress-ng --{} {}, {} s per run)",
            workload.name, workload.stressor, workload.instances, options.seconds
        );
        report::print_rounds(results);
        summary.extend(report::summarize(workload, results));
    }
    println!(
        "\nsummary (medians over {} rounds; agent CPU is measured while stress-ng runs)",
        options.rounds
    );
    report::print_summary(&summary);
    Ok(())
}
