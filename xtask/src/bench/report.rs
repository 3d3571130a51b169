//! Benchmark tables: per-round results, then one summary row per figure checked.
use super::Workload;

/// One baseline/with-agent pair of runs.
pub struct Round {
    pub baseline: f64,
    pub with_agent: f64,
    pub lost_events: f64,
    pub agent_cpu_seconds: f64,
}

/// One line of the summary. Benchmarks add as many as they measure; a target, when present, is
/// checked and the verdict printed (never turned into a failure: this is a measurement).
pub struct Row {
    pub benchmark: String,
    pub metric: &'static str,
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
        "baseline ops/s",
        "with agent ops/s",
        "ratio",
        "lost events",
        "agent CPU s",
    ])];
    for (i, r) in rounds.iter().enumerate() {
        table.push(vec![
            (i + 1).to_string(),
            format!("{:.2}", r.baseline),
            format!("{:.2}", r.with_agent),
            format!("{:.4}", r.with_agent / r.baseline),
            format!("{}", r.lost_events),
            format!("{:.2}", r.agent_cpu_seconds),
        ]);
    }
    print_table(&table);
}

pub fn summarize(workload: &Workload, rounds: &[Round]) -> Vec<Row> {
    let baseline = median(rounds.iter().map(|r| r.baseline));
    let with_agent = median(rounds.iter().map(|r| r.with_agent));
    let slowdown = (1.0 - with_agent / baseline) * 100.0;
    let lost: f64 = rounds.iter().map(|r| r.lost_events).sum();
    let cpu = median(rounds.iter().map(|r| r.agent_cpu_seconds));
    let row = |metric, value, target| Row {
        benchmark: workload.name.to_string(),
        metric,
        value,
        target,
    };
    let max = workload.max_slowdown_percent;
    vec![
        row("median baseline ops/s", format!("{baseline:.2}"), None),
        row("median with-agent ops/s", format!("{with_agent:.2}"), None),
        row(
            "median slowdown",
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
        row("agent CPU s per run", format!("{cpu:.2}"), None),
    ]
}

pub fn print_summary(rows: &[Row]) {
    let mut table = vec![cells(["benchmark", "metric", "value", "target", "result"])];
    for row in rows {
        let (target, result) = match &row.target {
            Some(t) => (
                t.text.clone(),
                if t.met { "ok" } else { "MISSED" }.to_string(),
            ),
            None => (String::new(), String::new()),
        };
        table.push(vec![
            row.benchmark.clone(),
            row.metric.to_string(),
            row.value.clone(),
            target,
            result,
        ]);
    }
    print_table(&table);
}

fn cells<const N: usize>(header: [&str; N]) -> Vec<String> {
    header.iter().map(|s| s.to_string()).collect()
}

/// Left-aligned text in columns two spaces apart.
fn print_table(table: &[Vec<String>]) {
    let columns = table.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .filter_map(|row| row.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Median; the mean of the middle two for an even count.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn slowdown_target() {
        let workload = Workload {
            name: "w",
            stressor: "fork",
            instances: 1,
            max_slowdown_percent: 3.0,
        };
        let rounds = [Round {
            baseline: 100.0,
            with_agent: 96.0,
            lost_events: 0.0,
            agent_cpu_seconds: 0.1,
        }];
        let rows = summarize(&workload, &rounds);
        let slowdown = rows.iter().find(|r| r.metric == "median slowdown").unwrap();
        assert_eq!(slowdown.value, "4.00 %");
        assert!(!slowdown.target.as_ref().unwrap().met);
        let lost = rows.iter().find(|r| r.metric.starts_with("lost")).unwrap();
        assert!(lost.target.as_ref().unwrap().met);
    }
}
