//! Benchmark tables: per-round results, the probes' own cost, then one summary row per figure.
use super::{
    bpf::ProbeCost,
    stress::Throughput,
    table::{cells, print_table},
    Workload,
};

/// One baseline/with-agent pair of runs.
pub struct Round {
    /// The with-agent run came first (even rounds: the ABBA order cancels linear drift).
    pub agent_first: bool,
    pub baseline: Throughput,
    pub with_agent: Throughput,
    pub lost_events: f64,
    pub agent_cpu_seconds: f64,
    /// The agent's probes during the with-agent storm, from the kernel's BPF stats.
    pub probes: Vec<ProbeCost>,
}

impl Round {
    /// Throughput with the agent relative to the baseline next to it: the pair shares the
    /// machine's state of the moment, which a ratio of medians over all rounds would not.
    fn ratio(&self) -> f64 {
        self.with_agent.ops_per_second / self.baseline.ops_per_second
    }

    fn probe_ns(&self) -> f64 {
        self.probes.iter().map(|p| p.run_time_ns as f64).sum()
    }

    fn probe_ns_per_op(&self) -> f64 {
        self.probe_ns() / self.with_agent.ops
    }

    /// Probe CPU as a share of all the CPU the machine had during the storm, in percent.
    fn probe_share_percent(&self, cores: u32) -> f64 {
        self.probe_ns() / 1e9 / (f64::from(cores) * self.with_agent.seconds) * 100.0
    }
}

/// One line of the summary. Benchmarks add as many as they measure; a target, when present, is
/// checked and the verdict printed (never turned into a failure: this is a measurement).
pub struct Row {
    pub benchmark: String,
    pub metric: String,
    pub value: String,
    pub target: Option<Target>,
}

pub struct Target {
    pub text: String,
    pub met: bool,
}

pub fn print_rounds(rounds: &[Round]) {
    let mut table = vec![cells([
        "round",
        "order",
        "baseline ops/s",
        "with agent ops/s",
        "ratio",
        "lost events",
        "agent CPU s",
        "probe CPU s",
        "probe ns/op",
    ])];
    for (i, r) in rounds.iter().enumerate() {
        table.push(vec![
            (i + 1).to_string(),
            if r.agent_first {
                "agent, base"
            } else {
                "base, agent"
            }
            .to_string(),
            format!("{:.2}", r.baseline.ops_per_second),
            format!("{:.2}", r.with_agent.ops_per_second),
            format!("{:.4}", r.ratio()),
            format!("{}", r.lost_events),
            format!("{:.2}", r.agent_cpu_seconds),
            format!("{:.4}", r.probe_ns() / 1e9),
            format!("{:.0}", r.probe_ns_per_op()),
        ]);
    }
    print_table(&table);
}

/// Per probe: how often it ran and what it cost, as a mean per with-agent storm.
pub fn print_probes(rounds: &[Round]) {
    let n = rounds.len() as f64;
    let mut names: Vec<&str> = rounds
        .iter()
        .flat_map(|r| r.probes.iter().map(|p| p.name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut table = vec![cells([
        "probe",
        "runs per storm",
        "avg ns/run",
        "probe CPU s per storm",
    ])];
    let mut row = |name: &str, runs: f64, ns: f64| {
        table.push(vec![
            name.to_string(),
            format!("{:.0}", runs / n),
            format!("{:.0}", ns / runs),
            format!("{:.4}", ns / n / 1e9),
        ]);
    };
    let all = rounds.iter().flat_map(|r| &r.probes);
    for name in &names {
        let (runs, ns) = all
            .clone()
            .filter(|p| p.name == *name)
            .fold((0.0, 0.0), sum);
        row(name, runs, ns);
    }
    let (runs, ns) = all.fold((0.0, 0.0), sum);
    row("all probes", runs, ns);
    print_table(&table);
}

fn sum((runs, ns): (f64, f64), p: &ProbeCost) -> (f64, f64) {
    (runs + p.runs as f64, ns + p.run_time_ns as f64)
}

/// Interquartile range of the per-round ratios, in percent of throughput.
fn ratio_iqr_percent(rounds: &[Round]) -> (f64, f64, f64) {
    let ratios: Vec<f64> = rounds.iter().map(Round::ratio).collect();
    let (p25, p75) = (quantile(&ratios, 0.25), quantile(&ratios, 0.75));
    (p25, p75, (p75 - p25) * 100.0)
}

pub fn summarize(workload: &Workload, rounds: &[Round], cores: u32) -> Vec<Row> {
    let med = |f: &dyn Fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let baseline = med(&|r| r.baseline.ops_per_second);
    let with_agent = med(&|r| r.with_agent.ops_per_second);
    let ratio = med(&Round::ratio);
    let (p25, p75, _) = ratio_iqr_percent(rounds);
    let slowdown = (1.0 - ratio) * 100.0;
    let lost: f64 = rounds.iter().map(|r| r.lost_events).sum();
    let row = |metric: &str, value, target| Row {
        benchmark: workload.name.to_string(),
        metric: metric.to_string(),
        value,
        target,
    };
    let max = workload.max_slowdown_percent;
    vec![
        row("baseline ops/s (median)", format!("{baseline:.2}"), None),
        row(
            "with-agent ops/s (median)",
            format!("{with_agent:.2}"),
            None,
        ),
        row(
            "ratio with/baseline (median, p25-p75)",
            format!("{ratio:.4} ({p25:.4}-{p75:.4})"),
            None,
        ),
        row(
            "slowdown (1 - median ratio)",
            format!("{slowdown:.2} %"),
            Some(Target {
                text: format!("<= {max} %"),
                met: slowdown <= max,
            }),
        ),
        row(
            "lost events (all rounds)",
            format!("{lost}"),
            Some(Target {
                text: "0".into(),
                met: lost == 0.0,
            }),
        ),
        row(
            "agent userspace CPU s per run (median)",
            format!("{:.2}", med(&|r| r.agent_cpu_seconds)),
            None,
        ),
        row(
            "probe CPU per fork op (median)",
            format!("{:.0} ns", med(&Round::probe_ns_per_op)),
            None,
        ),
        row(
            &format!("probe CPU share of {cores} cores (median)"),
            format!("{:.2} %", med(&|r| r.probe_share_percent(cores))),
            None,
        ),
    ]
}

/// Says so when the rounds scatter more than the target: a verdict finer than the noise is luck.
pub fn noise_note(workload: &Workload, rounds: &[Round]) -> Option<String> {
    let (_, _, iqr) = ratio_iqr_percent(rounds);
    (iqr > workload.max_slowdown_percent).then(|| {
        format!(
            "{}: noise: IQR of ratios is {iqr:.1}%; a slowdown below that cannot be resolved here",
            workload.name
        )
    })
}

pub fn print_summary(rows: &[Row]) {
    let mut table = vec![cells(["benchmark", "metric", "value", "target", "result"])];
    for row in rows {
        let (target, result) = match &row.target {
            Some(t) => (t.text.clone(), if t.met { "ok" } else { "MISSED" }.into()),
            None => (String::new(), String::new()),
        };
        table.push(vec![
            row.benchmark.clone(),
            row.metric.clone(),
            row.value.clone(),
            target,
            result,
        ]);
    }
    print_table(&table);
}

pub(super) fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The q-quantile, interpolating linearly between the closest ranks (so the median of an even
/// count is the mean of the middle two).
pub(super) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = q * (values.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    values[low] + (values[high] - values[low]) * (rank - low as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), 2.0);
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 0.75), 3.25);
        assert_eq!(quantile(&[7.0], 0.25), 7.0);
    }

    fn round(baseline: f64, with_agent: f64) -> Round {
        let run = |ops_per_second: f64| Throughput {
            ops: ops_per_second * 2.0,
            seconds: 2.0,
            ops_per_second,
        };
        Round {
            agent_first: false,
            baseline: run(baseline),
            with_agent: run(with_agent),
            lost_events: 0.0,
            agent_cpu_seconds: 0.1,
            probes: vec![ProbeCost {
                name: "sched_switch".into(),
                runs: 100,
                run_time_ns: 40_000_000,
            }],
        }
    }

    const WORKLOAD: Workload = Workload {
        name: "w",
        stressor: "fork",
        instances: 1,
        max_slowdown_percent: 3.0,
    };

    #[test]
    fn verdict_on_the_median_of_per_round_ratios() {
        // The medians of each side would say 150 vs 100 (33 %); the paired ratios say 4 %.
        let rounds = [round(100.0, 96.0), round(150.0, 144.0), round(200.0, 100.0)];
        let rows = summarize(&WORKLOAD, &rounds, 2);
        let value = |prefix: &str| {
            let row = rows.iter().find(|r| r.metric.starts_with(prefix)).unwrap();
            (row.value.clone(), row.target.as_ref().map(|t| t.met))
        };
        assert_eq!(value("slowdown"), ("4.00 %".into(), Some(false)));
        assert_eq!(value("lost"), ("0".into(), Some(true)));
        // 40 ms of probes over 200 ops (the median round), and over 2 cores x 2 s.
        assert_eq!(value("probe CPU per").0, "200000 ns");
        assert_eq!(value("probe CPU share of 2").0, "1.00 %");
        assert!(noise_note(&WORKLOAD, &rounds)
            .unwrap()
            .contains("IQR of ratios is 23.0%"));
        let steady = [round(100.0, 99.0), round(50.0, 49.5)];
        assert_eq!(noise_note(&WORKLOAD, &steady), None);
    }
}
