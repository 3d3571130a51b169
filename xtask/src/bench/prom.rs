//! Reading Prometheus endpoints (procmon's and process-exporter's): a minimal HTTP GET that
//! times the whole exchange, and just enough text-format parsing for the figures we report.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub struct Response {
    pub status: u16,
    pub body: String,
    /// From connect to the last byte: what a Prometheus server waits per scrape.
    pub elapsed: Duration,
}

/// A minimal HTTP/1.0 GET: the server closes the connection after the response, so the body is
/// everything after the headers, with no chunking or keep-alive to handle (and no gzip: we do
/// not ask for it, so the latency is the server's rendering, not its compressor's).
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    // A 10k-process scrape of process-exporter takes seconds on a loaded VM.
    let timeout = Duration::from_secs(30);
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading GET {path}"))?;
    // Stopped before the UTF-8 check and the copies below, which are ours, not the server's.
    let elapsed = started.elapsed();
    let response = String::from_utf8(response)
        .with_context(|| format!("GET {path}: response is not UTF-8"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path}: bad status line {:?}", head.lines().next()))?;
    Ok(Response {
        status,
        body: body.to_string(),
        elapsed,
    })
}

/// The label set (without braces, "" when none) and the value text of one sample of `name`,
/// or None for comments, other metrics and longer names sharing the prefix (`..._total_created`).
fn sample<'a>(line: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let rest = line.strip_prefix(name)?;
    let (labels, rest) = match rest.chars().next()? {
        '{' => rest[1..].rsplit_once('}')?,
        ' ' => ("", rest),
        _ => return None,
    };
    // A sample is `value [timestamp]`.
    Some((labels, rest.split_whitespace().next()?))
}

fn value(line: &str, text: &str) -> Result<f64> {
    text.parse()
        .with_context(|| format!("bad value in {line:?}"))
}

/// Sums all series of `name`.
pub fn sum_metric(text: &str, name: &str) -> Result<f64> {
    let mut sum = 0.0;
    for line in text.lines() {
        if let Some((_, v)) = sample(line, name) {
            sum += value(line, v)?;
        }
    }
    Ok(sum)
}

/// How many series of `name` the exposition holds.
pub fn count_series(text: &str, name: &str) -> usize {
    text.lines().filter(|l| sample(l, name).is_some()).count()
}

/// A histogram without labels of its own: cumulative counts by upper bound, ascending, the last
/// one +Inf.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// None when the exposition does not carry `name` (an agent that does not export it).
    pub fn parse(text: &str, name: &str) -> Result<Option<Histogram>> {
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        let mut h = Histogram {
            buckets: Vec::new(),
            sum: f64::NAN,
            count: f64::NAN,
        };
        for line in text.lines() {
            if let Some((labels, v)) = sample(line, &bucket) {
                let le = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("le=\""))
                    .and_then(|l| l.strip_suffix('"'))
                    .with_context(|| format!("no le label in {line:?}"))?;
                h.buckets.push((value(line, le)?, value(line, v)?));
            } else if let Some((_, v)) = sample(line, &sum) {
                h.sum = value(line, v)?;
            } else if let Some((_, v)) = sample(line, &count) {
                h.count = value(line, v)?;
            }
        }
        if h.buckets.is_empty() {
            return Ok(None);
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Some(h))
    }

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

    #[test]
    fn sums_every_series_and_skips_comments_and_lookalikes() {
        let text = "\
# HELP procmon_events_lost_total Records lost.
# TYPE procmon_events_lost_total counter
procmon_events_lost_total{kind=\"fork\",reason=\"ringbuf_full\"} 3
procmon_events_lost_total{kind=\"exit\",reason=\"sink_lagged\"} 4 1700000000000
procmon_events_lost_total_created 1700000000
procmon_events_total{kind=\"fork\"} 100
";
        assert_eq!(sum_metric(text, "procmon_events_lost_total").unwrap(), 7.0);
        assert_eq!(count_series(text, "procmon_events_lost_total"), 2);
        assert_eq!(
            sum_metric("procmon_events_lost_total 2\n", "procmon_events_lost_total").unwrap(),
            2.0
        );
        assert_eq!(sum_metric("", "procmon_events_lost_total").unwrap(), 0.0);
    }

    fn scrape(counts: [u32; 4], sum: f64) -> String {
        let [a, b, c, inf] = counts;
        format!(
            "# TYPE s histogram\ns_bucket{{le=\"0.001\"}} {a}\ns_bucket{{le=\"0.002\"}} {b}\n\
             s_bucket{{le=\"0.004\"}} {c}\ns_bucket{{le=\"+Inf\"}} {inf}\ns_sum {sum}\ns_count {inf}\n\
             s_other 1\n"
        )
    }

    #[test]
    fn histogram_difference_mean_and_quantiles() {
        let before = Histogram::parse(&scrape([1, 1, 2, 2], 0.003), "s")
            .unwrap()
            .unwrap();
        let after = Histogram::parse(&scrape([1, 5, 12, 12], 0.023), "s")
            .unwrap()
            .unwrap();
        let d = after.since(&before);
        assert_eq!(d.count, 10.0);
        assert_eq!(d.buckets[1], (0.002, 4.0));
        assert!((d.mean() - 0.002).abs() < 1e-12);
        // Rank 5 of 10: the 4 observations in (0.001, 0.002], then 1 of the 6 in (0.002, 0.004].
        assert!((d.quantile(0.5) - (0.002 + 0.002 / 6.0)).abs() < 1e-12);
        assert_eq!(d.quantile(1.0), 0.004);
        let slow = Histogram::parse(&scrape([0, 0, 0, 3], 9.0), "s")
            .unwrap()
            .unwrap();
        assert_eq!(slow.quantile(0.99), 0.004);
        assert!(before.since(&before).quantile(0.5).is_nan());
    }

    #[test]
    fn absent_histogram_is_none() {
        assert_eq!(Histogram::parse("s_sum 1\ns_count 1\n", "s").unwrap(), None);
        assert!(Histogram::parse("s_bucket{x=\"1\"} 1\n", "s").is_err());
    }
}
