//! "Overhead": what tracing costs the traced. Three storms (forks, context switches, execs),
//! each run with no tracer, with procmon, and with the peers (libbpf-tools' exitsnoop +
//! execsnoop, peers.rs). Every round runs each storm once per arm, back to back, in an order
//! that rotates from round to round (none-procmon-peers, procmon-peers-none, ...), so a drift
//! of the machine during the bench favours no arm. The verdicts use the median of the
//! per-round ratios to the no-tracer run of the same round; on a shared VM those scatter by
//! several percent, so their IQR is printed as the resolution.
//!
//! Deterministic besides: the kernel's accounting of every BPF program's run time (bpf.rs),
//! per program, and per fork+exit for the storms that make processes.
//!
//! Every arm runs with a SCHED_IDLE spinner per CPU (no_idle.rs): on this VM an idle CPU
//! halts, and without them "no tracer" was the slowest arm.
mod summary;

use std::path::Path;

use anyhow::Result;

use super::{
    agent::Agent, bpf, exec_loop, kstat, no_idle::NoIdle, peers::Peers, report::Row, stress,
};

/// What a storm generates.
pub enum Load {
    Stress {
        stressor: &'static str,
        instances: u32,
        /// Further stress-ng arguments.
        args: &'static [&'static str],
    },
    ExecLoop {
        workers: u32,
    },
}

pub struct Storm {
    pub name: &'static str,
    pub load: Load,
    /// What one op of the load is, for the tables ("forks/s").
    pub unit: &'static str,
    /// Lowest acceptable procmon/none throughput ratio, if issue 11 (or an earlier one) set
    /// a target for this storm.
    pub min_ratio: Option<f64>,
    /// What a process lifecycle is in this storm ("fork+exit"), when every op creates a
    /// process: BPF time is then also reported per lifecycle; otherwise per context switch.
    pub lifecycle: Option<&'static str>,
    /// Highest acceptable BPF time of procmon per lifecycle (or switch), in ns, if set.
    pub max_bpf_ns_per_process: Option<f64>,
}

pub const STORMS: [Storm; 3] = [
    Storm {
        name: "fork storm",
        load: Load::Stress {
            stressor: "fork",
            instances: 2,
            args: &[],
        },
        unit: "forks/s",
        min_ratio: Some(0.97),
        lifecycle: Some("fork+exit"),
        max_bpf_ns_per_process: Some(1000.0),
    },
    // Two pairs of processes ping-ponging over pipes: nothing forks or execs, so whatever
    // a tracer costs here it costs every context switch of the machine. Pinned to one CPU:
    // unpinned, the rate depends on whether the scheduler puts a pair on one CPU or two
    // (108,000 to 304,000 msgs/s in consecutive runs here), which drowns any tracer.
    Storm {
        name: "context-switch storm",
        load: Load::Stress {
            stressor: "switch",
            instances: 2,
            args: &["--taskset", "0"],
        },
        unit: "switch msgs/s",
        min_ratio: Some(0.99),
        lifecycle: None,
        max_bpf_ns_per_process: None,
    },
    Storm {
        name: "exec loop",
        load: Load::ExecLoop { workers: 2 },
        unit: "execs/s",
        min_ratio: None,
        lifecycle: Some("fork+exec+exit"),
        max_bpf_ns_per_process: None,
    },
];

/// The three ways each storm runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    None,
    Procmon,
    Peers,
}

pub const ARMS: [Arm; 3] = [Arm::None, Arm::Procmon, Arm::Peers];

impl Arm {
    pub fn label(self) -> &'static str {
        match self {
            Arm::None => "none",
            Arm::Procmon => "procmon",
            Arm::Peers => "peers",
        }
    }
}

/// One run of a storm under one arm.
pub struct ArmRun {
    pub throughput: stress::Throughput,
    /// Tasks created and context switches during the run, machine-wide (kstat.rs).
    pub kernel: kstat::Counts,
    /// The tracer's programs during the run (empty without a tracer).
    pub probes: Vec<bpf::ProbeCost>,
    /// procmon's `procmon_events_lost_total` at the end of the run (0 for the others).
    pub lost_events: f64,
    /// The tracer's userspace CPU during the run.
    pub tracer_cpu_seconds: f64,
}

/// One round of a storm: a run per arm, indexed like [`ARMS`], and the order they ran in.
pub struct Round {
    pub order: [Arm; 3],
    pub runs: [ArmRun; 3],
}

/// The conditions every storm of this benchmark (and of floor.rs) runs in: BPF run-time
/// statistics on, and a SCHED_IDLE spinner per CPU. Dropping it ends both, on success and on
/// error alike.
pub struct Rig {
    pub cores: u32,
    // Fields drop in order: the spinners stop before the stats go off.
    _no_idle: NoIdle,
    _bpf_stats: bpf::StatsEnabled,
}

impl Rig {
    pub fn start() -> Result<Rig> {
        // Only while benchmarking: the stats time every program run, the sampling pass's
        // iterator included.
        let bpf_stats = bpf::StatsEnabled::enable()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Ok(Rig {
            cores,
            _no_idle: NoIdle::start(cores)?,
            _bpf_stats: bpf_stats,
        })
    }
}

/// `items` rotated left by `round`: round 0 runs them in order, round 1 from the second, ...,
/// so that a drift of the machine during the bench favours none of them.
pub fn rotated<T: Copy, const N: usize>(items: [T; N], round: usize) -> [T; N] {
    std::array::from_fn(|i| items[(i + round) % N])
}

pub fn run(
    agent_bin: &Path,
    log_dir: &Path,
    rounds: u32,
    seconds: u32,
) -> Result<(Vec<Row>, Vec<String>)> {
    let rig = Rig::start()?;
    let cores = rig.cores;
    let mut results: Vec<Vec<Round>> = STORMS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds as usize {
        let order = rotated(ARMS, round);
        for (storm, results) in STORMS.iter().zip(&mut results) {
            eprintln!(
                "\n==> round {}/{rounds}: {} ({})",
                round + 1,
                storm.name,
                order.map(Arm::label).join(", ")
            );
            let mut runs: [Option<ArmRun>; 3] = [None, None, None];
            for arm in order {
                let run = run_arm(agent_bin, log_dir, storm, arm, seconds)?;
                runs[arm as usize] = Some(run);
            }
            results.push(Round {
                order,
                runs: runs.map(|r| r.expect("every arm ran")),
            });
        }
    }
    drop(rig);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (storm, results) in STORMS.iter().zip(&results) {
        let load = match storm.load {
            Load::Stress {
                stressor,
                instances,
                args,
            } => format!("stress-ng --{stressor} {instances} {}", args.join(" ")),
            Load::ExecLoop { workers } => format!("{workers} workers fork+exec /bin/true"),
        };
        println!(
            "\n{} ({load}, {seconds} s per run, {cores} cores, {rounds} rounds)",
            storm.name
        );
        summary::print_rounds(storm, results);
        println!("\nBPF programs (kernel stats, mean per run)");
        summary::print_programs(storm, results);
        rows.extend(summary::rows(storm, results, cores));
        notes.extend(summary::noise_note(storm, results));
    }
    notes.push(format!(
        "overhead: {rounds} rounds of {seconds} s per storm and arm, arms in rotating order; \
         throughput is end to end (noisy on this shared machine), BPF time is the kernel's"
    ));
    Ok((rows, notes))
}

fn load(storm: &Storm, seconds: u32) -> Result<stress::Throughput> {
    let throughput = match storm.load {
        Load::Stress {
            stressor,
            instances,
            args,
        } => stress::run(stressor, instances, args, seconds)?,
        Load::ExecLoop { workers } => exec_loop::run(workers, seconds)?,
    };
    bpf::interrupted()?;
    Ok(throughput)
}

/// Runs the storm once under `arm`; the tracer, if any, is attached before the load starts
/// and snapshots bracket the load only (its counters accumulate from load time).
fn run_arm(
    agent_bin: &Path,
    log_dir: &Path,
    storm: &Storm,
    arm: Arm,
    seconds: u32,
) -> Result<ArmRun> {
    let measured = |snapshot: &dyn Fn() -> Result<Vec<bpf::Prog>>,
                    cpu: &dyn Fn() -> Result<f64>|
     -> Result<ArmRun> {
        let (probes_before, cpu_before, kernel_before) = (snapshot()?, cpu()?, kstat::read()?);
        let throughput = load(storm, seconds)?;
        let kernel = kstat::read()? - kernel_before;
        let tracer_cpu_seconds = cpu()? - cpu_before;
        let probes = bpf::difference(&probes_before, &snapshot()?);
        Ok(ArmRun {
            throughput,
            kernel,
            probes,
            lost_events: 0.0,
            tracer_cpu_seconds,
        })
    };
    let run = match arm {
        Arm::None => measured(&|| Ok(Vec::new()), &|| Ok(0.0))?,
        Arm::Procmon => {
            let log = log_dir.join(format!("agent-overhead-{}.log", storm.slug()));
            let agent = Agent::start(agent_bin, &log, &[])?;
            let mut run = measured(&|| bpf::snapshot(agent.pid()), &|| agent.cpu_seconds())?;
            run.lost_events = agent.lost_events()?;
            agent.stop()?;
            run
        }
        Arm::Peers => {
            let peers = Peers::start(log_dir)?;
            let run = measured(&|| peers.snapshot(), &|| peers.cpu_seconds())?;
            peers.stop()?;
            run
        }
    };
    let bpf_seconds = run
        .probes
        .iter()
        .fold(0.0, |s, p| s + p.run_time_ns as f64 / 1e9);
    eprintln!(
        "{}: {:.1} {}, BPF {bpf_seconds:.4} s, tracer CPU {:.2} s, {} forks, {} switches, {} lost",
        arm.label(),
        run.throughput.ops_per_second,
        storm.unit,
        run.tracer_cpu_seconds,
        run.kernel.forks,
        run.kernel.switches,
        run.lost_events
    );
    Ok(run)
}

impl Storm {
    fn slug(&self) -> String {
        self.name.replace(' ', "-")
    }
}

#[cfg(test)]
mod tests {
    use super::rotated;

    #[test]
    fn rounds_rotate_the_order() {
        assert_eq!(rotated([1, 2, 3], 0), [1, 2, 3]);
        assert_eq!(rotated([1, 2, 3], 1), [2, 3, 1]);
        assert_eq!(rotated([1, 2, 3], 5), [3, 1, 2]);
    }
}
