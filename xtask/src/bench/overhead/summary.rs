//! The overhead benchmark's tables: per round, per BPF program, and its summary rows.
use super::{Arm, ArmRun, Round, Storm};
use crate::bench::{
    bpf,
    report::{median, quantile, Row, Target},
    table::{cells, print_table},
};

impl Round {
    fn run(&self, arm: Arm) -> &ArmRun {
        &self.runs[arm as usize]
    }

    /// Throughput under `arm` relative to the no-tracer run of the same round: the runs of a
    /// round share the machine's state of the moment, which a ratio of medians would not.
    fn ratio(&self, arm: Arm) -> f64 {
        self.run(arm).throughput.ops_per_second / self.run(Arm::None).throughput.ops_per_second
    }
}

impl ArmRun {
    /// BPF time of the programs that run per process lifecycle: for procmon all but its
    /// timer-driven ones (bpf::per_lifecycle), for the peers all of theirs.
    fn lifecycle_ns(&self, arm: Arm) -> f64 {
        self.probes
            .iter()
            .filter(|p| arm != Arm::Procmon || bpf::per_lifecycle(&p.name))
            .map(|p| p.run_time_ns as f64)
            .sum()
    }

    /// Per task the kernel created during the run, or per context switch for a storm that
    /// creates none: the storm's and the machine's others, which the probes ran for too.
    fn ns_per_event(&self, arm: Arm, storm: &Storm) -> f64 {
        self.lifecycle_ns(arm) / self.events(storm).max(1) as f64
    }

    fn events(&self, storm: &Storm) -> u64 {
        match storm.lifecycle {
            Some(_) => self.kernel.forks,
            None => self.kernel.switches,
        }
    }

    fn bpf_share_percent(&self, cores: u32) -> f64 {
        let ns: f64 = self.probes.iter().map(|p| p.run_time_ns as f64).sum();
        ns / 1e9 / (f64::from(cores) * self.throughput.seconds) * 100.0
    }
}

pub fn print_rounds(storm: &Storm, rounds: &[Round]) {
    let unit = storm.unit;
    let mut table = vec![cells([
        "round",
        "order",
        &format!("none {unit}"),
        &format!("procmon {unit}"),
        "ratio",
        &format!("peers {unit}"),
        "ratio",
        "procmon lost",
        event_count_label(storm),
    ])];
    for (i, r) in rounds.iter().enumerate() {
        let ops = |arm| format!("{:.1}", r.run(arm).throughput.ops_per_second);
        table.push(vec![
            (i + 1).to_string(),
            r.order.map(Arm::label).join(","),
            ops(Arm::None),
            ops(Arm::Procmon),
            format!("{:.4}", r.ratio(Arm::Procmon)),
            ops(Arm::Peers),
            format!("{:.4}", r.ratio(Arm::Peers)),
            r.run(Arm::Procmon).lost_events.to_string(),
            r.run(Arm::Procmon).events(storm).to_string(),
        ]);
    }
    print_table(&table);
}

/// Per tracer and program: runs and run time as a mean per run, and per task created when
/// the storm makes processes. `*` marks what the per-lifecycle sum counts.
pub fn print_programs(storm: &Storm, rounds: &[Round]) {
    let n = rounds.len() as f64;
    let mut table = vec![cells([
        "tracer",
        "program",
        "runs per run",
        "ns per program run",
        "ms per run",
        per_event_label(storm),
    ])];
    for arm in [Arm::Procmon, Arm::Peers] {
        let runs = || rounds.iter().map(move |r| r.run(arm));
        let events: f64 = runs().map(|r| r.events(storm) as f64).sum();
        let mut names: Vec<&str> = runs()
            .flat_map(|r| r.probes.iter().map(|p| p.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut row = |name: String, count: f64, ns: f64| {
            table.push(vec![
                arm.label().to_string(),
                name,
                format!("{:.0}", count / n),
                if count > 0.0 {
                    format!("{:.0}", ns / count)
                } else {
                    "-".into()
                },
                format!("{:.2}", ns / n / 1e6),
                format!("{:.0}", ns / events.max(1.0)),
            ]);
        };
        let (mut all_count, mut all_ns) = (0.0, 0.0);
        for name in names {
            let (count, ns) = runs()
                .flat_map(|r| r.probes.iter().filter(|p| p.name == name))
                .fold((0.0, 0.0), |(c, t), p| {
                    (c + p.runs as f64, t + p.run_time_ns as f64)
                });
            let counted = arm != Arm::Procmon || bpf::per_lifecycle(name);
            if counted {
                (all_count, all_ns) = (all_count + count, all_ns + ns);
            }
            row(
                format!("{name}{}", if counted { " *" } else { "" }),
                count,
                ns,
            );
        }
        row("sum of *".into(), all_count, all_ns);
    }
    print_table(&table);
    println!(
        "{}: over every {} during the run (/proc/stat `{}`, machine-wide), which the probes ran \
         for; * = counted in the per-lifecycle sum",
        per_event_label(storm),
        if storm.lifecycle.is_some() {
            "task the kernel created"
        } else {
            "context switch"
        },
        if storm.lifecycle.is_some() {
            "processes"
        } else {
            "ctxt"
        }
    );
}

fn per_event_label(storm: &Storm) -> &'static str {
    if storm.lifecycle.is_some() {
        "ns per fork"
    } else {
        "ns per switch"
    }
}

fn event_count_label(storm: &Storm) -> &'static str {
    if storm.lifecycle.is_some() {
        "kernel forks (procmon run)"
    } else {
        "kernel switches (procmon run)"
    }
}

fn ratio_quartiles(rounds: &[Round], arm: Arm) -> (f64, f64, f64) {
    let ratios: Vec<f64> = rounds.iter().map(|r| r.ratio(arm)).collect();
    (
        quantile(&ratios, 0.25),
        median(&ratios),
        quantile(&ratios, 0.75),
    )
}

pub fn rows(storm: &Storm, rounds: &[Round], cores: u32) -> Vec<Row> {
    let med = |f: &dyn Fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let row = |metric: String, value: String, target: Option<Target>| Row {
        benchmark: storm.name.to_string(),
        metric,
        value,
        target,
    };
    let mut rows = vec![row(
        format!("{}, no tracer (median)", storm.unit),
        format!(
            "{:.1}",
            med(&|r| r.run(Arm::None).throughput.ops_per_second)
        ),
        None,
    )];
    for arm in [Arm::Procmon, Arm::Peers] {
        let (p25, ratio, p75) = ratio_quartiles(rounds, arm);
        let target = match (arm, storm.min_ratio) {
            (Arm::Procmon, Some(min)) => Some(Target {
                text: format!(">= {min}"),
                met: ratio >= min,
            }),
            _ => None,
        };
        rows.push(row(
            format!("{} / none (median, IQR)", name(arm)),
            format!("{ratio:.4} ({p25:.4}-{p75:.4})"),
            target,
        ));
    }
    let lost: f64 = rounds.iter().map(|r| r.run(Arm::Procmon).lost_events).sum();
    rows.push(row(
        "procmon events lost (all rounds)".into(),
        lost.to_string(),
        Some(Target {
            text: "0".into(),
            met: lost == 0.0,
        }),
    ));
    for arm in [Arm::Procmon, Arm::Peers] {
        let ns = med(&|r| r.run(arm).ns_per_event(arm, storm));
        let target = match (arm, storm.max_bpf_ns_per_process) {
            (Arm::Procmon, Some(max)) => Some(Target {
                text: format!("<= {max} ns"),
                met: ns <= max,
            }),
            _ => None,
        };
        rows.push(row(
            format!(
                "{} BPF ns per {} (median)",
                name(arm),
                storm.lifecycle.unwrap_or("context switch")
            ),
            format!("{ns:.0} ns"),
            target,
        ));
    }
    rows.push(row(
        format!("BPF CPU share of {cores} cores: procmon / peers (median)"),
        format!(
            "{:.2} % / {:.2} %",
            med(&|r| r.run(Arm::Procmon).bpf_share_percent(cores)),
            med(&|r| r.run(Arm::Peers).bpf_share_percent(cores))
        ),
        None,
    ));
    rows.push(row(
        "userspace CPU s per run: procmon / peers (median)".into(),
        format!(
            "{:.2} / {:.2}",
            med(&|r| r.run(Arm::Procmon).tracer_cpu_seconds),
            med(&|r| r.run(Arm::Peers).tracer_cpu_seconds)
        ),
        None,
    ));
    rows
}

fn name(arm: Arm) -> &'static str {
    match arm {
        Arm::Peers => "exitsnoop+execsnoop",
        _ => arm.label(),
    }
}

/// Says so when procmon's ratios scatter more than its target's margin: a verdict finer than
/// the noise is luck.
pub fn noise_note(storm: &Storm, rounds: &[Round]) -> Option<String> {
    let (p25, _, p75) = ratio_quartiles(rounds, Arm::Procmon);
    let iqr = (p75 - p25) * 100.0;
    let margin = (1.0 - storm.min_ratio?) * 100.0;
    (iqr > margin).then(|| {
        format!(
            "{}: noise: IQR of procmon's ratios is {iqr:.1}%, wider than the target's {margin:.0}% \
             margin; the verdict cannot be resolved here",
            storm.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        bpf::ProbeCost,
        overhead::{ARMS, STORMS},
        stress::Throughput,
    };

    fn arm_run(ops_per_second: f64, probes: &[(&str, u64)]) -> ArmRun {
        ArmRun {
            throughput: Throughput {
                ops: ops_per_second * 2.0,
                seconds: 2.0,
                ops_per_second,
            },
            kernel: crate::bench::kstat::Counts {
                forks: 1000,
                switches: 4000,
            },
            probes: probes
                .iter()
                .map(|&(name, run_time_ns)| ProbeCost {
                    name: name.into(),
                    runs: 10,
                    run_time_ns,
                })
                .collect(),
            lost_events: 0.0,
            tracer_cpu_seconds: 0.1,
        }
    }

    fn round(none: f64, procmon: f64, peers: f64) -> Round {
        Round {
            order: ARMS,
            runs: [
                arm_run(none, &[]),
                // cpu_sample runs on a timer: not part of the per-lifecycle sum.
                arm_run(
                    procmon,
                    &[("sched_process_fork", 300_000), ("cpu_sample", 5_000_000)],
                ),
                arm_run(peers, &[("sched_process_exit", 200_000)]),
            ],
        }
    }

    fn value(rows: &[Row], prefix: &str) -> (String, Option<bool>) {
        let row = rows.iter().find(|r| r.metric.starts_with(prefix)).unwrap();
        (row.value.clone(), row.target.as_ref().map(|t| t.met))
    }

    #[test]
    fn verdicts_on_the_median_of_per_round_ratios() {
        // The medians of each arm would say 150 vs 100 (33 %); the paired ratios say 0.96.
        let rounds = [
            round(100.0, 96.0, 99.0),
            round(150.0, 144.0, 147.0),
            round(200.0, 100.0, 198.0),
        ];
        let rows = rows(&STORMS[0], &rounds, 2);
        assert_eq!(
            value(&rows, "procmon / none"),
            ("0.9600 (0.7300-0.9600)".into(), Some(false))
        );
        assert_eq!(value(&rows, "exitsnoop+execsnoop / none").1, None);
        assert_eq!(
            value(&rows, "procmon events lost"),
            ("0".into(), Some(true))
        );
        // 300 µs of lifecycle programs over 1000 forks; cpu_sample left out.
        assert_eq!(
            value(&rows, "procmon BPF ns per fork+exit"),
            ("300 ns".into(), Some(true))
        );
        assert_eq!(value(&rows, "exitsnoop+execsnoop BPF ns").0, "200 ns");
        assert!(noise_note(&STORMS[0], &rounds)
            .unwrap()
            .contains("IQR of procmon's ratios is 23.0%"));
        let steady = [round(100.0, 99.0, 99.0), round(50.0, 49.5, 49.0)];
        assert_eq!(noise_note(&STORMS[0], &steady), None);
        // The switch storm makes no processes: BPF time per context switch; its target is
        // 0.99.
        let rows = super::rows(&STORMS[1], &steady, 2);
        assert!(!rows.iter().any(|r| r.metric.contains("per fork")));
        assert_eq!(
            value(&rows, "procmon BPF ns per context switch"),
            ("75 ns".into(), None)
        );
        assert_eq!(value(&rows, "procmon / none").1, Some(true));
    }
}
