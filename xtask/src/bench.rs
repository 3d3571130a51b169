//! `cargo xtask bench [overhead|floor|sample|profile|memory|soak|all]`: what the agent costs.
//!
//! `overhead` (alias `fork`): what tracing costs the workloads traced: a fork storm, a
//! context-switch storm and an exec loop, each with no tracer, with procmon and with
//! libbpf-tools' exitsnoop+execsnoop, in rotating order; throughput ratios end to end, and
//! the BPF programs' run time from the kernel's accounting (overhead.rs).
//!
//! `floor`: how much of procmon's BPF time per fork+exit its three hooks and ring-buffer
//! reservations take on their own, before any data is read or written (floor.rs).
//!
//! `sample`: sampling CPU and RSS of 10,000 live processes, procmon's task iterator against a
//! /proc poller and prometheus-process-exporter (sample.rs).
//!
//! `profile`: what always-on CPU sampling costs the agent and the load (profile.rs).
//!
//! `memory`: the agent's RSS idle, with 10,000 processes and with 10,000 child series, split
//! by mapping, and over a 60 s fast-forking watched parent (memory.rs).
//!
//! `soak`: the agent for `--minutes` under everything at once; stays up, RSS flat, every lost
//! event counted (soak.rs). Not part of `all`: it takes ten minutes.
//!
//! Missed targets are reported, not failed: this measures.
mod agent;
mod bpf;
mod exec_loop;
mod exporter;
mod floor;
mod idle;
mod kstat;
mod memory;
mod no_idle;
mod overhead;
mod peers;
mod procpoll;
mod profile;
mod prom;
mod report;
mod sample;
mod soak;
mod stress;
mod table;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::ensure;
use report::Row;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    /// Fork storm, context-switch storm and exec loop: no tracer vs procmon vs
    /// exitsnoop+execsnoop.
    #[value(alias = "fork")]
    Overhead,
    /// The fork storm with the lifecycle probes cut short (hooks only; hooks and ring-buffer
    /// reservations) against procmon in full: the floor under BPF time per fork+exit.
    Floor,
    /// Sampling 10,000 idle processes: procmon vs /proc vs process-exporter.
    Sample,
    /// Always-on CPU sampling (--profile-hz off, 19, 99) under a CPU-bound load and an exec
    /// storm.
    Profile,
    /// Agent RSS idle, with 10,000 processes, with 10,000 child series, and RSS and CPU over
    /// a 60 s fast-forking watched parent.
    Memory,
    /// The agent under a fork storm, crashes, OOM kills, 50 SSE clients and scrapes for
    /// --minutes.
    Soak,
    /// overhead, floor, sample, profile and memory (not soak).
    All,
}

#[derive(clap::Args)]
pub struct Options {
    /// Which benchmark to run.
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    /// Rounds per storm (each runs every arm once).
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
    /// Length of the soak.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    minutes: u32,
}

/// A stress-ng load (profile.rs runs it under several sampling rates).
pub struct Workload {
    pub name: &'static str,
    pub stressor: &'static str,
    pub instances: u32,
    /// Highest acceptable throughput loss, from the median of the per-round ratios, in
    /// percent.
    pub max_slowdown_percent: f64,
}

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
    if matches!(options.which, Which::Overhead | Which::All) {
        let (rows, overhead_notes) =
            overhead::run(&agent_bin, &log_dir, options.rounds, options.seconds)?;
        summary.extend(rows);
        notes.extend(overhead_notes);
    }
    if matches!(options.which, Which::Floor | Which::All) {
        let (rows, floor_notes) =
            floor::run(&agent_bin, &log_dir, options.rounds, options.seconds)?;
        summary.extend(rows);
        notes.extend(floor_notes);
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
    if options.which == Which::Soak {
        let (rows, soak_notes) = soak::run(&agent_bin, &log_dir, options.minutes)?;
        summary.extend(rows);
        notes.extend(soak_notes);
    }
    println!("\nsummary");
    report::print_summary(&summary);
    for note in notes {
        println!("note: {note}");
    }
    Ok(())
}
