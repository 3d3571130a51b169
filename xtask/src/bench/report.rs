//! The summary every benchmark adds its figures to, and the order statistics they use.
use super::table::{cells, print_table};

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
}
