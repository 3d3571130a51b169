//! "Floor": how much of procmon's BPF time per fork+exit the hooks themselves take, before
//! a probe reads or writes anything. Issue 11 set ≤ 1 µs per fork+exit; procmon makes a
//! record at three hooks per process (the fork, the exit, the release with the final CPU),
//! and this measures what those hooks and records cost on their own, on the same machine
//! and in the same fork storm as the overhead benchmark.
//!
//! The same agent runs three ways, set by PROCMON_BENCH_COST_FLOOR
//! (procmon_common::cost_floor):
//! - `hooks`: each lifecycle program stops once it knows whether its run concerns a process
//!   (the identity reads that takes), and sends nothing;
//! - `ring`: as `hooks`, and it also reserves its record in the ring buffer and discards it;
//! - `full`: normal operation.
//!
//! Rounds run the three in rotating order, each with a SCHED_IDLE spinner per CPU (as the
//! overhead benchmark does, no_idle.rs). The verdicts use medians of the per-round figures.
use std::path::Path;

use anyhow::Result;

use super::{
    agent::Agent,
    bpf, kstat,
    overhead::{rotated, Rig},
    report::{median, Row},
    stress,
    table::{cells, print_table},
};

/// The ways the agent runs, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Hooks,
    Ring,
    Full,
}

const MODES: [Mode; 3] = [Mode::Hooks, Mode::Ring, Mode::Full];

/// The programs that make a process's records, in lifecycle order.
const PROGRAMS: [&str; 3] = [
    "sched_wakeup_new",
    "sched_process_exit",
    "sched_process_free",
];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Hooks => "hooks",
            Mode::Ring => "ring",
            Mode::Full => "full",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Hooks => "the three hooks alone (identity checks, nothing sent)",
            Mode::Ring => "the hooks + a ring-buffer reservation each (discarded)",
            Mode::Full => "procmon as shipped (three records)",
        }
    }

    fn env(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Mode::Full => Vec::new(),
            mode => vec![("PROCMON_BENCH_COST_FLOOR", mode.label())],
        }
    }
}

/// One run of the storm under one mode.
struct Run {
    forks_per_second: f64,
    /// BPF ns per task created, of every lifecycle program (bpf::per_lifecycle).
    ns_per_fork: f64,
    /// Mean ns per run of each of [`PROGRAMS`].
    ns_per_run: [f64; 3],
}

pub fn run(
    agent_bin: &Path,
    log_dir: &Path,
    rounds: u32,
    seconds: u32,
) -> Result<(Vec<Row>, Vec<String>)> {
    let rig = Rig::start()?;
    let cores = rig.cores;
    // runs[round][mode as usize]
    let mut runs: Vec<[Option<Run>; 3]> = Vec::new();
    for round in 0..rounds as usize {
        let order = rotated(MODES, round);
        eprintln!(
            "\n==> floor round {}/{rounds} ({})",
            round + 1,
            order.map(Mode::label).join(", ")
        );
        let mut this_round: [Option<Run>; 3] = [None, None, None];
        for mode in order {
            this_round[mode as usize] = Some(run_mode(agent_bin, log_dir, mode, seconds)?);
        }
        runs.push(this_round);
    }
    drop(rig);
    let runs: Vec<[Run; 3]> = runs
        .into_iter()
        .map(|r| r.map(|run| run.expect("every mode ran")))
        .collect();

    println!(
        "\nfloor (stress-ng --fork 2, {seconds} s per run, {cores} cores, {rounds} rounds): BPF ns \
         per fork+exit"
    );
    let mut table = vec![cells(["round", "hooks", "ring", "full", "full forks/s"])];
    for (i, round) in runs.iter().enumerate() {
        let mut row = vec![(i + 1).to_string()];
        row.extend(round.iter().map(|r| format!("{:.0}", r.ns_per_fork)));
        row.push(format!(
            "{:.0}",
            round[Mode::Full as usize].forks_per_second
        ));
        table.push(row);
    }
    print_table(&table);

    println!("\nper program, ns per run (median of rounds)");
    let mut table = vec![cells(["mode", PROGRAMS[0], PROGRAMS[1], PROGRAMS[2]])];
    for mode in MODES {
        let mut row = vec![mode.label().to_string()];
        for program in 0..PROGRAMS.len() {
            let values: Vec<f64> = runs
                .iter()
                .map(|r| r[mode as usize].ns_per_run[program])
                .collect();
            row.push(format!("{:.0}", median(&values)));
        }
        table.push(row);
    }
    print_table(&table);

    let per_fork = |mode: Mode| -> f64 {
        median(
            &runs
                .iter()
                .map(|r| r[mode as usize].ns_per_fork)
                .collect::<Vec<_>>(),
        )
    };
    // Per round, what share of the full cost the floor is: the runs of a round share the
    // machine's state, which a ratio of medians would not.
    let share = |mode: Mode| -> f64 {
        median(
            &runs
                .iter()
                .map(|r| r[mode as usize].ns_per_fork / r[Mode::Full as usize].ns_per_fork)
                .collect::<Vec<_>>(),
        )
    };
    let rows = MODES
        .iter()
        .map(|&mode| Row {
            benchmark: "floor".into(),
            metric: format!("BPF ns per fork+exit: {}", mode.describe()),
            value: if mode == Mode::Full {
                format!("{:.0} ns", per_fork(mode))
            } else {
                format!("{:.0} ns ({:.2} of full)", per_fork(mode), share(mode))
            },
            target: None,
        })
        .collect();
    let notes = vec![format!(
        "floor: {rounds} rounds of {seconds} s per mode, modes in rotating order; `hooks` and \
         `ring` are what any design with a record at the fork, the exit and the release pays \
         before reading or writing data (issue 11's target: 1,000 ns per fork+exit in full)"
    )];
    Ok((rows, notes))
}

fn run_mode(agent_bin: &Path, log_dir: &Path, mode: Mode, seconds: u32) -> Result<Run> {
    let log = log_dir.join(format!("agent-floor-{}.log", mode.label()));
    eprintln!("mode {}: {}", mode.label(), mode.describe());
    let agent = Agent::start_with_env(agent_bin, &log, &[], &mode.env())?;
    let before = (bpf::snapshot(agent.pid())?, kstat::read()?);
    let throughput = stress::run("fork", 2, &[], seconds)?;
    bpf::interrupted()?;
    let forks = (kstat::read()? - before.1).forks.max(1);
    let probes = bpf::difference(&before.0, &bpf::snapshot(agent.pid())?);
    agent.stop()?;
    let lifecycle_ns: u64 = probes
        .iter()
        .filter(|p| bpf::per_lifecycle(&p.name))
        .map(|p| p.run_time_ns)
        .sum();
    let ns_per_run = PROGRAMS.map(|name| {
        probes
            .iter()
            .find(|p| p.name == name)
            .map_or(f64::NAN, |p| p.run_time_ns as f64 / p.runs.max(1) as f64)
    });
    let run = Run {
        forks_per_second: throughput.ops_per_second,
        ns_per_fork: lifecycle_ns as f64 / forks as f64,
        ns_per_run,
    };
    eprintln!(
        "{}: {:.0} forks/s, {:.0} BPF ns per fork+exit ({})",
        mode.label(),
        run.forks_per_second,
        run.ns_per_fork,
        PROGRAMS
            .iter()
            .zip(run.ns_per_run)
            .map(|(name, ns)| format!("{name} {ns:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(run)
}
