//! `cargo xtask bench soak [--minutes 10]`: the agent under everything at once for a long
//! time. A fork storm, a crashing child every 2 s, an OOM kill in a memory cgroup every 20 s,
//! 50 clients on `/events` (25 reading every event, 25 only `crash,oom_kill`) and a
//! `/metrics` scrape every second. The agent's RSS is sampled every 10 s.
//!
//! Verdicts:
//! - up: at the end the agent still runs, `/healthz` answers 200, and SIGTERM stops it with
//!   status 0;
//! - RSS flat: the last RSS sample minus the first one at or after the warm-up (2 minutes,
//!   or a fifth of a shorter soak) is at most 2 MiB; a least-squares slope over the same
//!   samples is printed beside it;
//! - every loss counted (see [`client_problems`]): each client was sent every event the soak
//!   made that it subscribed to, except as many as the agent says it lost
//!   (`procmon_events_lost_total`) plus the drops it announced to that client; no client got
//!   more than was made; an unfiltered client's `id:` gaps add up exactly to the drops
//!   announced to it; and the drops announced to clients add up to the rise of
//!   `procmon_sse_dropped_events_total`.
mod clients;
mod load;
mod losses;
mod rss;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use procmon_tests::memcg::Memcg;

use super::{
    agent::Agent,
    prom,
    report::{quantile, Row, Target},
};
use clients::{Subjects, Tally};
use losses::{client_problems, print_clients, Truth};
use rss::{rss_verdict, RssSample};

const CLIENTS: usize = 50;
const FILTERED_PATH: &str = "/events?kind=crash,oom_kill";
const CRASH_EVERY: Duration = Duration::from_secs(2);
const OOM_EVERY: Duration = Duration::from_secs(20);
const MEMCG_LIMIT: u64 = 64 << 20;
const RSS_EVERY: Duration = Duration::from_secs(10);
const MAX_RSS_GROWTH: f64 = 2.0 * 1048576.0;
/// How long the clients get to catch up after the load stops: until none received anything
/// for `QUIET`, at most `CATCH_UP`.
const QUIET: Duration = Duration::from_secs(2);
const CATCH_UP: Duration = Duration::from_secs(60);

struct Counters {
    lost: f64,
    sse_dropped: f64,
}

fn counters(agent: &Agent) -> Result<Counters> {
    let metrics = prom::parse(&agent.metrics()?.body)?;
    Ok(Counters {
        lost: metrics.sum("procmon_events_lost_total", &[]),
        sse_dropped: metrics.sum("procmon_sse_dropped_events_total", &[]),
    })
}

pub fn run(agent_bin: &Path, log_dir: &Path, minutes: u32) -> Result<(Vec<Row>, Vec<String>)> {
    let soak = Duration::from_secs(u64::from(minutes) * 60);
    let warm_up = Duration::from_secs(120).min(soak / 5);
    let memcg = Memcg::create(&format!("procmon-soak-{}", std::process::id()), MEMCG_LIMIT)
        .context(
            "no memory cgroup hierarchy (v1 memory, or v2 with the memory controller): \
             the soak needs one for its OOM kills",
        )?;
    let mut agent = Agent::start(agent_bin, &log_dir.join("agent-soak.log"), &[])?;
    let mut storm = load::ForkStorm::start()?;
    let subjects = Subjects {
        storm: storm.pid(),
        parent: std::process::id(),
    };
    let closing = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let path = if i % 2 == 0 { "/events" } else { FILTERED_PATH };
        clients.push(clients::connect(
            agent.addr(),
            path,
            subjects,
            closing.clone(),
        )?);
    }
    wait_for_clients(&agent)?;
    let before = counters(&agent)?;
    let cpu_before = agent.cpu_seconds()?;
    eprintln!(
        "\n==> soak: {minutes} min: fork storm (pid {}), a crash every {CRASH_EVERY:?}, an OOM kill \
         every {OOM_EVERY:?} in {}, {CLIENTS} /events clients, a scrape every second",
        storm.pid(),
        memcg.dir().display()
    );
    storm.begin()?;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (made, samples, scrapes) = thread::scope(|scope| -> Result<_> {
        let crasher =
            scope.spawn(|| load::crashes_and_ooms(&stop, memcg.dir(), CRASH_EVERY, OOM_EVERY));
        let watched = watch(&mut agent, started, soak);
        stop.store(true, Ordering::Relaxed);
        let made = crasher.join().expect("the crash/OOM thread panicked");
        let (samples, scrapes) = watched?;
        Ok((made?, samples, scrapes))
    })?;
    let forks = storm.stop()?;
    let elapsed = started.elapsed();
    let cpu_seconds = agent.cpu_seconds()? - cpu_before;
    catch_up(&clients);
    let up = agent.running() && prom::get(agent.addr(), "/healthz").is_ok_and(|r| r.status == 200);
    let after = counters(&agent)?;
    closing.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = clients.into_iter().map(clients::Client::close).collect();
    let stopped = agent.stop();
    let kernel_ooms = load::memcg_oom_kills(memcg.dir());
    drop(memcg);

    let truth = Truth {
        forks,
        crashes: made.crashes.clone(),
        oom_victims: made.oom_victims.clone(),
        lost: after.lost - before.lost,
    };
    print_clients(&tallies, &truth);
    let sse_dropped = after.sse_dropped - before.sse_dropped;
    let told: u64 = tallies.iter().map(|t| t.dropped).sum();
    let failing: Vec<usize> = (0..tallies.len())
        .filter(|&i| !client_problems(&tallies[i], &truth).is_empty())
        .collect();
    for &i in &failing {
        eprintln!(
            "client {}: {}",
            i + 1,
            client_problems(&tallies[i], &truth).join("; ")
        );
    }
    let rss = rss_verdict(&samples, warm_up);
    println!(
        "\nagent RSS every {RSS_EVERY:?} (seconds: MiB / anonymous MiB / processes in its tree)"
    );
    println!(
        "{}",
        samples
            .iter()
            .map(|s| format!(
                "{:.0}s:{:.1}/{:.1}/{}",
                s.at.as_secs_f64(),
                s.bytes as f64 / 1048576.0,
                s.anon as f64 / 1048576.0,
                s.tree
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let unfiltered = tallies.iter().filter(|t| !t.filtered);
    let seen_min = unfiltered.clone().map(|t| t.storm_exits).min().unwrap_or(0);
    let seen_max = unfiltered.map(|t| t.storm_exits).max().unwrap_or(0);
    let ok_scrapes = scrapes.iter().filter(|s| s.is_some()).count();
    let latencies: Vec<f64> = scrapes.iter().flatten().copied().collect();
    let row = |metric: &str, value: String, target: Option<Target>| Row {
        benchmark: "soak".into(),
        metric: metric.into(),
        value,
        target,
    };
    let rows = vec![
        row(
            "load made (exact counts)",
            format!(
                "{:.1} min: {forks} storm forks ({:.0}/s), {} crashes, {} OOM kills (memcg count {})",
                elapsed.as_secs_f64() / 60.0,
                forks as f64 / elapsed.as_secs_f64(),
                made.crashes.len(),
                made.oom_victims.len(),
                kernel_ooms.map_or("n/a".into(), |n| n.to_string())
            ),
            Some(Target {
                text: "children died as meant".into(),
                met: made.misfires.is_empty(),
            }),
        ),
        row(
            "agent up at the end (/healthz, SIGTERM exit 0)",
            match (&stopped, up) {
                (Ok(()), true) => "yes".into(),
                (Err(e), _) => format!("no: {e:#}"),
                (Ok(()), false) => "no: /healthz did not answer 200".into(),
            },
            Some(Target {
                text: "up".into(),
                met: up && stopped.is_ok(),
            }),
        ),
        row(
            &format!(
                "RSS growth: last sample - first at or after {:.0} s",
                warm_up.as_secs_f64()
            ),
            format!(
                "{:+.2} MiB ({:.1} -> {:.1} MiB; anonymous {:+.2} MiB; least-squares {:+.3} \
                 MiB/min; max {:.1} MiB; tree {} -> {} processes)",
                rss.growth / 1048576.0,
                rss.from / 1048576.0,
                rss.to / 1048576.0,
                rss.anon_growth / 1048576.0,
                rss.slope_per_minute / 1048576.0,
                rss.max / 1048576.0,
                rss.tree_from,
                rss.tree_to
            ),
            Some(Target {
                text: "<= +2 MiB".into(),
                met: rss.growth <= MAX_RSS_GROWTH,
            }),
        ),
        row(
            "agent CPU over the soak",
            format!(
                "{:.1} % of a core",
                cpu_seconds / elapsed.as_secs_f64() * 100.0
            ),
            None,
        ),
        row(
            "/metrics scrapes ok / made, p50 / p99 / max",
            format!(
                "{ok_scrapes} / {}, {:.1} / {:.1} / {:.1} ms",
                scrapes.len(),
                quantile(&latencies, 0.5) * 1e3,
                quantile(&latencies, 0.99) * 1e3,
                quantile(&latencies, 1.0) * 1e3
            ),
            Some(Target {
                text: "all ok".into(),
                met: ok_scrapes == scrapes.len(),
            }),
        ),
        row(
            "storm exits seen per unfiltered client (min-max of made)",
            format!("{seen_min}-{seen_max} of {forks}"),
            None,
        ),
        row(
            "events lost by the agent (procmon_events_lost_total rise)",
            truth.lost.to_string(),
            None,
        ),
        row(
            "SSE drops: announced to clients / procmon_sse_dropped_events_total rise",
            format!("{told} / {sse_dropped}"),
            Some(Target {
                text: "equal".into(),
                met: told as f64 == sse_dropped,
            }),
        ),
        row(
            "every loss counted: clients passing",
            format!("{} / {}", tallies.len() - failing.len(), tallies.len()),
            Some(Target {
                text: "all".into(),
                met: failing.is_empty(),
            }),
        ),
    ];
    let mut notes = vec![format!(
        "soak: {CLIENTS} clients, every other one filtered to crash,oom_kill; RSS verdict on the \
         last sample minus the first at or after {:.0} s",
        warm_up.as_secs_f64()
    )];
    notes.extend(made.misfires);
    Ok((rows, notes))
}

/// Scrapes /metrics every second and samples RSS every [`RSS_EVERY`] until `soak` has
/// passed. Returns the RSS samples and each scrape's latency in seconds (None for a failed
/// one).
fn watch(
    agent: &mut Agent,
    started: Instant,
    soak: Duration,
) -> Result<(Vec<RssSample>, Vec<Option<f64>>)> {
    let (mut samples, mut scrapes) = (Vec::new(), Vec::new());
    let mut next_rss = Duration::ZERO;
    let mut second = 0;
    while started.elapsed() < soak {
        super::bpf::interrupted()?;
        if !agent.running() {
            bail!("the agent died {:?} into the soak", started.elapsed());
        }
        let scrape = agent.metrics().ok();
        scrapes.push(scrape.as_ref().map(|r| r.elapsed.as_secs_f64()));
        if started.elapsed() >= next_rss {
            next_rss += RSS_EVERY;
            let sample = rss_sample(agent, started, scrape.as_ref())?;
            eprintln!(
                "soak {:>4.0} s: agent RSS {:.1} MiB ({:.1} MiB anonymous), {} processes in \
                 its tree",
                sample.at.as_secs_f64(),
                sample.bytes as f64 / 1048576.0,
                sample.anon as f64 / 1048576.0,
                sample.tree
            );
            samples.push(sample);
        }
        second += 1;
        let next = started + Duration::from_secs(second);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    samples.push(rss_sample(agent, started, agent.metrics().ok().as_ref())?);
    Ok((samples, scrapes))
}

fn rss_sample(
    agent: &Agent,
    started: Instant,
    scrape: Option<&prom::Response>,
) -> Result<RssSample> {
    let tree = scrape
        .and_then(|r| prom::parse(&r.body).ok())
        .map_or(f64::NAN, |m| m.sum("procmon_tree_processes", &[]));
    Ok(RssSample {
        at: started.elapsed(),
        bytes: agent.rss_bytes()?,
        anon: agent.rss_anon_bytes()?,
        tree,
    })
}

/// Waits until no client has received anything for [`QUIET`] (at most [`CATCH_UP`]), so
/// every client has been sent what the load made before the counts are compared.
fn catch_up(clients: &[clients::Client]) {
    let deadline = Instant::now() + CATCH_UP;
    let counts = || -> Vec<u64> {
        clients
            .iter()
            .map(|c| c.messages.load(Ordering::Relaxed))
            .collect()
    };
    let mut last = counts();
    while Instant::now() < deadline {
        thread::sleep(QUIET);
        let now = counts();
        if now == last {
            return;
        }
        last = now;
    }
}

fn wait_for_clients(agent: &Agent) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = prom::parse(&agent.metrics()?.body)?;
        if metrics.sum("procmon_sse_clients", &[]) >= CLIENTS as f64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent did not count {CLIENTS} /events clients within 30 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
}
