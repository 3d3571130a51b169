//! The Prometheus text exposition format (0.0.4) as procmon and process-exporter serve it,
//! parsed into samples: shared by the end-to-end tests and `cargo xtask bench`.
//!
//! NB: hand-written on purpose. `prometheus-parse` 0.2.5 (the usual crate) splits the label
//! set on every `,` and `=` and ends it at the first `}`, without reading quotes or escapes:
//! `comm="a,b=c"` comes back as `comm="a", b="c"`, a sample with `}` in a label value is
//! dropped, `\\`, `\"` and `\n` stay escaped, and a malformed line is skipped, not reported.
//! procmon's `comm` labels are process names, which any process can set to such text
//! (prctl(PR_SET_NAME)), so a test could pass on a wrong page. `openmetrics-parser` resolves escapes but is
//! LGPL-3.0. This one is ~100 lines and checked against the `prometheus` crate's encoder
//! (the agent's) below.

use std::collections::BTreeMap;

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the Prometheus text exposition format (version 0.0.4): `#` lines are skipped,
    /// label values are unescaped, an optional timestamp after the value is ignored.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let samples = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, l)| parse_sample(l).map_err(|e| format!("line {}: {e}: {l:?}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Metrics { samples })
    }

    /// All series of metric `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the series with exactly these labels, if it is exported.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| {
                s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Series of metric `name` whose labels include all of `labels` (others may be present).
    pub fn matching<'a: 'b, 'b>(
        &'a self,
        name: &'b str,
        labels: &'b [(&'b str, &'b str)],
    ) -> impl Iterator<Item = &'a Sample> + 'b {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of [`Metrics::matching`] series (0 when there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// [`Metrics::get`], with a series not (yet) exported counting as 0: counter vectors
    /// usually appear only once a label value is first incremented.
    pub fn get_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let line = line.trim();
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    let valid_name = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start();
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = r.split_once('=').ok_or("label without '='")?;
            let key = key.trim();
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            let after = after
                .trim_start()
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let (value, after) = unescape_label_value(after)?;
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("duplicate label {key:?}"));
            }
            r = after.trim_start();
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value.parse().map_err(|_| format!("bad value {value:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing garbage".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads a label value up to its closing quote; returns it unescaped and the text after it.
fn unescape_label_value(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                other => return Err(format!("bad escape {other:?} in label value")),
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value".into())
}

/// A histogram without labels of its own, read from a [`Metrics`]: cumulative counts by
/// upper bound, ascending, the last one +Inf.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Metrics {
    /// Histogram `name` (its `_bucket`, `_sum` and `_count` series); None when the page does
    /// not carry it (an agent that does not export it).
    pub fn histogram(&self, name: &str) -> Result<Option<Histogram>, String> {
        let last = |suffix: &str| {
            self.series(&format!("{name}{suffix}"))
                .last()
                .map_or(f64::NAN, |s| s.value)
        };
        let mut buckets = self
            .series(&format!("{name}_bucket"))
            .map(|s| {
                let le = s
                    .labels
                    .get("le")
                    .ok_or_else(|| format!("{name}_bucket{:?} has no le label", s.labels))?;
                let le: f64 = le
                    .parse()
                    .map_err(|_| format!("{name}_bucket: bad le {le:?}"))?;
                Ok((le, s.value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if buckets.is_empty() {
            return Ok(None);
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Some(Histogram {
            buckets,
            sum: last("_sum"),
            count: last("_count"),
        }))
    }
}

impl Histogram {
    /// The observations made after `earlier` (a scrape of the same process).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|b| b.0 == le)
                    .map_or(0.0, |b| b.1);
                (le, n - before)
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// Exact, unlike the quantiles.
    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// As PromQL's histogram_quantile: linear within the bucket the rank falls in, the highest
    /// finite bound when it falls in +Inf. Only as fine as the buckets.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |b| b.1);
        if total <= 0.0 {
            return f64::NAN;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank && n > below {
                if le.is_infinite() {
                    return lower;
                }
                return lower + (le - lower) * (rank - below) / (n - below);
            }
            (lower, below) = (le, n);
        }
        lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP procmon_process_exits_total Processes that exited, by outcome.
# TYPE procmon_process_exits_total counter
procmon_process_exits_total{outcome="clean"} 42
procmon_process_exits_total{outcome="crashed"} 1
procmon_processes_live 301
# TYPE procmon_ringbuf_reader_lag_seconds histogram
procmon_ringbuf_reader_lag_seconds_bucket{le="0.001"} 7
procmon_ringbuf_reader_lag_seconds_bucket{le="+Inf"} 9
procmon_ringbuf_reader_lag_seconds_sum 1.5e-3
procmon_events_lost_total{kind="exit", reason="ringbuf_full",} 0 1700000000000

weird{path="C:\\dir\"x\"\nnext"} NaN
"#;

    #[test]
    fn parses_names_labels_values() {
        let m = Metrics::parse(PAGE).expect("valid page");
        assert_eq!(m.samples.len(), 8);
        assert_eq!(
            m.get("procmon_process_exits_total", &[("outcome", "clean")]),
            Some(42.0)
        );
        assert_eq!(m.get("procmon_processes_live", &[]), Some(301.0));
        assert_eq!(
            m.get(
                "procmon_ringbuf_reader_lag_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(9.0)
        );
        assert_eq!(
            m.get("procmon_ringbuf_reader_lag_seconds_sum", &[]),
            Some(0.0015)
        );
        assert_eq!(
            m.get(
                "procmon_events_lost_total",
                &[("kind", "exit"), ("reason", "ringbuf_full")]
            ),
            Some(0.0),
            "spaces after commas, a trailing comma and a timestamp are all allowed"
        );
        let weird = m.series("weird").next().expect("weird sample");
        assert_eq!(weird.labels["path"], "C:\\dir\"x\"\nnext");
        assert!(weird.value.is_nan());
    }

    #[test]
    fn get_needs_the_exact_label_set() {
        let m = Metrics::parse(PAGE).unwrap();
        assert_eq!(m.get("procmon_process_exits_total", &[]), None);
        assert_eq!(
            m.get("procmon_events_lost_total", &[("kind", "exit")]),
            None
        );
        assert_eq!(
            m.get_or_zero("procmon_process_exits_total", &[("outcome", "error")]),
            0.0
        );
        assert_eq!(m.series("procmon_process_exits_total").count(), 2);
    }

    #[test]
    fn matching_is_a_label_subset() {
        let m = Metrics::parse(PAGE).unwrap();
        assert_eq!(m.matching("procmon_process_exits_total", &[]).count(), 2);
        assert_eq!(
            m.matching("procmon_events_lost_total", &[("kind", "exit")])
                .count(),
            1
        );
        assert_eq!(m.sum("procmon_process_exits_total", &[]), 43.0);
        assert_eq!(
            m.sum("procmon_process_exits_total", &[("outcome", "error")]),
            0.0
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "no_value",
            "x{a=\"1\"}",
            "x{a=1} 2",
            "x{a=\"1} 2",
            "x{a=\"\\t\"} 1",
            "x{a=\"1\",a=\"2\"} 1",
            "x 1 2 3",
            "x one",
            "1x 1",
            "x 1 1.5",
        ] {
            assert!(Metrics::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    /// What the agent serves: hostile process names in labels, rendered by the `prometheus`
    /// crate's encoder (the agent's), must come back as they went in.
    #[test]
    fn reads_what_the_prometheus_encoder_writes() {
        use prometheus::{Encoder, GaugeVec, HistogramOpts, Opts, Registry};
        let hostile = [
            "plain",
            "a,b=c",
            "x\"y}z{",
            "C:\\dir\\",
            "two\nlines",
            "\\\"\\n",
            "\u{fffd} é 进程",
            "",
            " = , } ",
        ];
        let registry = Registry::new();
        let alive = GaugeVec::new(
            Opts::new("procmon_child_alive", "help with \\ and \n and \""),
            &["comm", "pid"],
        )
        .unwrap();
        let lag = prometheus::Histogram::with_opts(
            HistogramOpts::new("lag_seconds", "h").buckets(vec![0.001, 0.002]),
        )
        .unwrap();
        registry.register(Box::new(alive.clone())).unwrap();
        registry.register(Box::new(lag.clone())).unwrap();
        for (pid, comm) in hostile.iter().enumerate() {
            alive
                .with_label_values(&[*comm, pid.to_string().as_str()])
                .set(pid as f64);
        }
        lag.observe(0.0015);
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();

        let m = Metrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for (pid, comm) in hostile.iter().enumerate() {
            assert_eq!(
                m.get(
                    "procmon_child_alive",
                    &[("comm", comm), ("pid", &pid.to_string())]
                ),
                Some(pid as f64),
                "comm {comm:?} in\n{text}"
            );
        }
        assert_eq!(m.series("procmon_child_alive").count(), hostile.len());
        let h = m.histogram("lag_seconds").unwrap().expect("lag_seconds");
        assert_eq!(
            h.buckets,
            vec![(0.001, 0.0), (0.002, 1.0), (f64::INFINITY, 1.0)]
        );
        assert_eq!((h.sum, h.count), (0.0015, 1.0));
    }

    fn histogram_page(counts: [u32; 4], sum: f64) -> Metrics {
        let [a, b, c, inf] = counts;
        Metrics::parse(&format!(
            "# TYPE s histogram\ns_bucket{{le=\"0.001\"}} {a}\ns_bucket{{le=\"0.002\"}} {b}\n\
             s_bucket{{le=\"0.004\"}} {c}\ns_bucket{{le=\"+Inf\"}} {inf}\ns_sum {sum}\ns_count {inf}\n\
             s_other 1\n"
        ))
        .unwrap()
    }

    #[test]
    fn histogram_difference_mean_and_quantiles() {
        let hist = |counts, sum| histogram_page(counts, sum).histogram("s").unwrap().unwrap();
        let before = hist([1, 1, 2, 2], 0.003);
        let after = hist([1, 5, 12, 12], 0.023);
        let d = after.since(&before);
        assert_eq!(d.count, 10.0);
        assert_eq!(d.buckets[1], (0.002, 4.0));
        assert!((d.mean() - 0.002).abs() < 1e-12);
        // Rank 5 of 10: the 4 observations in (0.001, 0.002], then 1 of the 6 in (0.002, 0.004].
        assert!((d.quantile(0.5) - (0.002 + 0.002 / 6.0)).abs() < 1e-12);
        assert_eq!(d.quantile(1.0), 0.004);
        assert_eq!(hist([0, 0, 0, 3], 9.0).quantile(0.99), 0.004);
        assert!(before.since(&before).quantile(0.5).is_nan());
    }

    #[test]
    fn absent_histogram_is_none() {
        let page = |text| Metrics::parse(text).unwrap();
        assert_eq!(page("s_sum 1\ns_count 1\n").histogram("s").unwrap(), None);
        assert!(page("s_bucket{x=\"1\"} 1\n").histogram("s").is_err());
    }

    /// What the benches read: every series of a name, and nothing of a longer name sharing
    /// its prefix (`..._total_created`).
    #[test]
    fn sums_every_series_and_skips_lookalikes() {
        let m = Metrics::parse(
            "\
# HELP procmon_events_lost_total Records lost.
# TYPE procmon_events_lost_total counter
procmon_events_lost_total{kind=\"fork\",reason=\"ringbuf_full\"} 3
procmon_events_lost_total{kind=\"exit\",reason=\"sink_lagged\"} 4 1700000000000
procmon_events_lost_total_created 1700000000
procmon_events_total{kind=\"fork\"} 100
",
        )
        .unwrap();
        assert_eq!(m.sum("procmon_events_lost_total", &[]), 7.0);
        assert_eq!(m.series("procmon_events_lost_total").count(), 2);
        assert_eq!(Metrics::parse("").unwrap().sum("x", &[]), 0.0);
    }
}
