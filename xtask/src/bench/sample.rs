//! "10,000 processes": the cost of knowing every live process's CPU and RSS, fresh. procmon
//! samples with a BPF task iterator (one pass, a few read()s) and serves /metrics from memory;
//! the alternatives read two /proc files per process, in a poller (the sampler procmon
//! rejected) or at each scrape (prometheus-process-exporter). The processes are idle children
//! of one parent the agent watches, so its /metrics carries series for each child: the largest
//! scrape it can be asked for.
use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    agent::Agent,
    exporter::{self, Scrapes},
    idle::IdleTree,
    procpoll::{self, Poll},
    prom::{self, Histogram},
    report::{median, quantile, Row, Target},
};

const PROC_PASSES: usize = 10;
const PROCMON_SCRAPES: usize = 200;
const EXPORTER_SCRAPES: usize = 50;
const MIN_SPEEDUP: f64 = 50.0;
const MAX_SCRAPE_P99_MS: f64 = 10.0;
const PASS_HISTOGRAM: &str = "procmon_sample_duration_seconds";
/// The agent seeds its tree from /proc and attributes the children after /healthz is up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Procmon {
    /// Passes during the idle window; None when the agent does not export the histogram.
    passes: Option<Histogram>,
    live: f64,
    idle_cpu_ratio: f64,
    child_series: usize,
    scrape_seconds: Vec<f64>,
    /// Agent CPU per scrape, net of what it uses idle over the same time.
    scrape_cpu_seconds: f64,
    bytes: usize,
}

pub fn run(
    agent_bin: &Path,
    log_dir: &Path,
    processes: u32,
    seconds: u32,
) -> Result<(Vec<Row>, Vec<String>)> {
    eprintln!("\n==> {processes} processes: forking them, idle");
    let tree = IdleTree::spawn(processes)?;
    // First, while nothing else reads /proc.
    eprintln!("==> /proc poller: {PROC_PASSES} passes over every pid's stat + statm");
    let poll = procpoll::measure(PROC_PASSES)?;
    let log = log_dir.join("agent-sample.log");
    let procmon = procmon(agent_bin, &log, tree.parent(), processes, seconds)?;
    eprintln!("==> process-exporter: {EXPORTER_SCRAPES} scrapes");
    let exporter = exporter::measure(log_dir, EXPORTER_SCRAPES)?;
    tree.stop()?;
    let (rows, mut notes) = report(processes, &poll, &procmon, &exporter);
    // Wall times swing with whatever else runs here; the CPU figures much less.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    notes.push(format!("load average at the end: {}", load.join(" ")));
    Ok((rows, notes))
}

fn procmon(bin: &Path, log: &Path, parent: u32, processes: u32, seconds: u32) -> Result<Procmon> {
    eprintln!(
        "==> procmon agent watching pid {parent}: {seconds} s idle, then {PROCMON_SCRAPES} scrapes"
    );
    let args = [
        "--watch".into(),
        format!("pid:{parent}"),
        "--sample-interval".into(),
        "1s".into(),
        // The default cap (1000) would fold most children into pid="_other".
        "--max-child-series".into(),
        processes.to_string(),
    ];
    let agent = Agent::start(bin, log, &args)?;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let first = loop {
        let scrape = agent.metrics()?;
        let series = prom::parse(&scrape.body)?
            .series("procmon_child_alive")
            .count();
        if series >= processes as usize || Instant::now() > deadline {
            break scrape;
        }
        thread::sleep(Duration::from_millis(500));
    };
    let (cpu, started) = (agent.cpu_seconds()?, Instant::now());
    thread::sleep(Duration::from_secs(seconds.into()));
    let idle_cpu_ratio = (agent.cpu_seconds()? - cpu) / started.elapsed().as_secs_f64();
    let first = prom::parse(&first.body)?;
    let last = prom::parse(&agent.metrics()?.body)?;
    let passes = match (
        prom::histogram(&first, PASS_HISTOGRAM)?,
        prom::histogram(&last, PASS_HISTOGRAM)?,
    ) {
        (Some(first), Some(last)) => Some(last.since(&first)),
        _ => None,
    };
    let (cpu, started) = (agent.cpu_seconds()?, Instant::now());
    let mut scrape_seconds = Vec::new();
    let mut bytes = 0;
    for _ in 0..PROCMON_SCRAPES {
        let scrape = agent.metrics()?;
        scrape_seconds.push(scrape.elapsed.as_secs_f64());
        bytes = scrape.body.len();
    }
    let busy = agent.cpu_seconds()? - cpu - idle_cpu_ratio * started.elapsed().as_secs_f64();
    agent.stop()?;
    Ok(Procmon {
        passes,
        live: last.sum("procmon_processes_live", &[]),
        idle_cpu_ratio,
        child_series: last.series("procmon_child_alive").count(),
        scrape_seconds,
        scrape_cpu_seconds: busy.max(0.0) / PROCMON_SCRAPES as f64,
        bytes,
    })
}

fn report(
    processes: u32,
    poll: &Poll,
    procmon: &Procmon,
    exporter: &Scrapes,
) -> (Vec<Row>, Vec<String>) {
    // "10000 processes": the default, or what --processes asked for.
    let bench = format!("{processes} processes");
    let nan = f64::NAN;
    let (pass_count, pass_mean, pass_p50, pass_p99) =
        procmon.passes.as_ref().map_or((0.0, nan, nan, nan), |h| {
            (h.count, h.mean(), h.quantile(0.5), h.quantile(0.99))
        });
    let scrape = |q| quantile(&procmon.scrape_seconds, q);
    let export = |q| quantile(&exporter.seconds, q);
    let poll_pass = median(&poll.pass_seconds);
    let proc_ratio = poll_pass / pass_mean;
    let speedup = export(0.5) / (pass_mean + scrape(0.5));
    let row = |metric: String, value: String, target: Option<Target>| Row {
        benchmark: bench.clone(),
        metric,
        value,
        target,
    };
    let rows = vec![
        row(
            "live processes: procmon / /proc poll / exporter".into(),
            format!(
                "{} / {} / {}",
                procmon.live, poll.processes, exporter.processes
            ),
            None,
        ),
        row(
            format!("procmon sampling pass, mean of {pass_count} passes (exact)"),
            ms(pass_mean),
            None,
        ),
        row(
            "procmon sampling pass p50 / p99 (bucket-interpolated)".into(),
            format!("{} / {}", ms(pass_p50), ms(pass_p99)),
            None,
        ),
        row(
            format!("procmon agent CPU, idle with {processes} processes"),
            format!("{:.2} % of a core", procmon.idle_cpu_ratio * 100.0),
            None,
        ),
        row(
            format!(
                "procmon /metrics scrape p50 / p99 ({} child series, {})",
                procmon.child_series,
                size(procmon.bytes)
            ),
            format!("{} / {}", ms(scrape(0.5)), ms(scrape(0.99))),
            Some(Target {
                text: format!("p99 < {MAX_SCRAPE_P99_MS} ms"),
                met: scrape(0.99) * 1e3 < MAX_SCRAPE_P99_MS,
            }),
        ),
        row(
            "procmon agent CPU per scrape (net of idle)".into(),
            ms(procmon.scrape_cpu_seconds),
            None,
        ),
        row(
            format!("/proc poll pass (stat + statm), median of {PROC_PASSES}"),
            ms(poll_pass),
            None,
        ),
        row(
            "/proc poll CPU per pass (median)".into(),
            ms(median(&poll.cpu_seconds)),
            None,
        ),
        row("/proc pass ÷ iterator pass".into(), times(proc_ratio), None),
        row(
            format!(
                "process-exporter scrape p50 / p99 ({})",
                size(exporter.bytes)
            ),
            format!("{} / {}", ms(export(0.5)), ms(export(0.99))),
            None,
        ),
        row(
            "process-exporter CPU per scrape".into(),
            ms(exporter.cpu_seconds_per_scrape),
            None,
        ),
        row(
            "fresh CPU/RSS: exporter scrape p50 ÷ (procmon pass + scrape p50)".into(),
            times(speedup),
            Some(Target {
                text: format!(">= {MIN_SPEEDUP}x"),
                met: speedup >= MIN_SPEEDUP,
            }),
        ),
    ];
    let mut notes = vec![if procmon.passes.is_some() {
        format!(
            "{bench}: pass p50/p99 are as coarse as the histogram's buckets (and p99 of \
             {pass_count} passes is about their max); the ratios use the exact mean"
        )
    } else {
        format!(
            "{bench}: the agent does not export {PASS_HISTOGRAM}: pass times and ratios are n/a"
        )
    }];
    if procmon.child_series < processes as usize {
        notes.push(format!(
            "{bench}: the scrape held {} child series, not {processes}",
            procmon.child_series
        ));
    }
    (rows, notes)
}

fn ms(seconds: f64) -> String {
    if seconds.is_finite() {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        "n/a".into()
    }
}

fn times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.1}x")
    } else {
        "n/a".into()
    }
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}
