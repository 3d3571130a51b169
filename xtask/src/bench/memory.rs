//! `bench memory`: what the agent keeps resident (issue 11, items 3 and 4). Its RSS idle,
//! with 10,000 live idle processes, and with 10,000 child series (the same processes, their
//! parent watched), each split by where it lives (/proc/PID/smaps); process-exporter's RSS on
//! the same processes; then RSS and agent CPU over a watched parent that forks short-lived
//! children as fast as it can for 60 s: memory must be bounded by the series caps, not by
//! fork rate × retention.
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    agent::Agent,
    exporter,
    idle::IdleTree,
    prom,
    report::{Row, Target},
    table::{cells, print_table},
};

const MIB: f64 = 1024.0 * 1024.0;
/// Issue 11, item 3.
const MAX_RSS_PROCESSES_MIB: f64 = 32.0;
const MAX_RSS_CHILD_SERIES_MIB: f64 = 48.0;
/// How long the agent runs before its RSS is read: seeding, a few sampling passes, a few
/// drains of CPU samples (whose symbolizing is part of what it keeps).
const SETTLE: Duration = Duration::from_secs(15);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
const FORK_STEP: Duration = Duration::from_secs(5);
const EXPORTER_SCRAPES: usize = 5;

/// Where the agent's resident memory is, from /proc/PID/smaps, in bytes.
#[derive(Default, Clone)]
struct Breakdown {
    total: u64,
    parts: BTreeMap<&'static str, u64>,
}

impl Breakdown {
    fn of(pid: u32, agent_bin: &Path) -> Result<Breakdown> {
        let path = format!("/proc/{pid}/smaps");
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let bin = fs::canonicalize(agent_bin).unwrap_or_else(|_| agent_bin.to_path_buf());
        let mut out = Breakdown::default();
        let mut part = "";
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                let perms = fields.next().unwrap_or("");
                let name = fields.nth(3).unwrap_or("");
                part = classify(name, perms, &bin);
            } else if first == "Rss:" {
                let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                *out.parts.entry(part).or_default() += kb * 1024;
                out.total += kb * 1024;
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.parts
            .iter()
            .filter(|(_, &b)| b >= 512 * 1024)
            .map(|(k, &b)| format!("{k} {}", mib(b)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The kind of a mapping. Thread stacks are anonymous mappings like glibc's per-thread malloc
/// arenas, so they are counted with the heap (the main thread's is `[stack]`).
fn classify(name: &str, perms: &str, bin: &Path) -> &'static str {
    if name.starts_with("anon_inode:bpf") {
        "BPF maps (ring buffer)"
    } else if name.is_empty() || name == "[heap]" {
        "heap+arenas+thread stacks"
    } else if name == "[stack]" {
        "main stack"
    } else if name.starts_with('[') {
        "vdso/vvar"
    } else if Path::new(name) == bin {
        "agent binary"
    } else if perms.ends_with('s') {
        // The symbolizer maps the ELF files of the processes it symbolizes (shared, read-only).
        "symbolizer's mapped ELF files"
    } else {
        "shared libraries"
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

pub fn run(agent_bin: &Path, log_dir: &Path, processes: u32) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut breakdowns: Vec<(String, Breakdown)> = Vec::new();
    let row = |bench: &str, metric: String, value: String, target: Option<Target>| Row {
        benchmark: bench.to_string(),
        metric,
        value,
        target,
    };

    eprintln!("\n==> memory: agent idle");
    let idle = settled(agent_bin, &log_dir.join("agent-memory-idle.log"), &[], None)?;
    rows.push(row(
        "memory",
        "agent RSS, idle".into(),
        mib(idle.total),
        None,
    ));
    breakdowns.push(("idle".into(), idle));

    eprintln!("\n==> memory: {processes} idle processes");
    let tree = IdleTree::spawn(processes)?;
    let live = settled(
        agent_bin,
        &log_dir.join("agent-memory-processes.log"),
        &[],
        None,
    )?;
    rows.push(row(
        "memory",
        format!("agent RSS, {processes} processes"),
        mib(live.total),
        Some(Target {
            text: format!("<= {MAX_RSS_PROCESSES_MIB} MiB"),
            met: live.total as f64 / MIB <= MAX_RSS_PROCESSES_MIB,
        }),
    ));
    breakdowns.push((format!("{processes} processes"), live));

    let watch = [
        "--watch".to_string(),
        format!("pid:{}", tree.parent()),
        "--max-child-series".into(),
        processes.to_string(),
    ];
    let series = settled(
        agent_bin,
        &log_dir.join("agent-memory-series.log"),
        &watch,
        Some(processes as usize),
    )?;
    rows.push(row(
        "memory",
        format!("agent RSS, {processes} child series"),
        mib(series.total),
        Some(Target {
            text: format!("<= {MAX_RSS_CHILD_SERIES_MIB} MiB"),
            met: series.total as f64 / MIB <= MAX_RSS_CHILD_SERIES_MIB,
        }),
    ));
    breakdowns.push((format!("{processes} child series"), series));

    eprintln!("==> memory: process-exporter on the same processes");
    match exporter::measure(log_dir, EXPORTER_SCRAPES) {
        Ok(scrapes) => rows.push(row(
            "memory",
            format!("process-exporter RSS, {processes} processes"),
            mib(scrapes.rss_bytes),
            None,
        )),
        Err(e) => eprintln!("warning: process-exporter not measured: {e:#}"),
    }
    tree.stop()?;

    eprintln!("\n==> memory: a watched parent forking short-lived children for 60 s");
    rows.extend(fast_fork(agent_bin, log_dir)?);

    println!("\nagent RSS by mapping (/proc/PID/smaps)");
    let mut table = vec![cells(["case", "RSS", "where"])];
    for (case, b) in &breakdowns {
        table.push(vec![case.clone(), mib(b.total), b.describe()]);
    }
    print_table(&table);
    Ok(rows)
}

/// Starts the agent, lets it settle (and, given `series`, waits for that many child series),
/// and reads where its RSS is.
fn settled(bin: &Path, log: &Path, args: &[String], series: Option<usize>) -> Result<Breakdown> {
    let agent = Agent::start(bin, log, args)?;
    if let Some(want) = series {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let have = prom::parse(&agent.metrics()?.body)?
                .series("procmon_child_alive")
                .count();
            if have >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!("the agent showed {have} of {want} child series within {SETTLE_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
    thread::sleep(SETTLE);
    // A scrape first: the rendered /metrics text is part of what it holds.
    agent.metrics()?;
    let breakdown = Breakdown::of(agent.pid(), bin)?;
    agent.stop()?;
    Ok(breakdown)
}

struct Step {
    at: Duration,
    rss: u64,
    cpu_ratio: f64,
    children: f64,
}

fn fast_fork(bin: &Path, log_dir: &Path) -> Result<Vec<Row>> {
    const SECONDS: u64 = 60;
    let forker = Forker::spawn()?;
    let args = ["--watch".to_string(), format!("pid:{}", forker.pid())];
    let agent = Agent::start(bin, &log_dir.join("agent-memory-fork.log"), &args)?;
    let started_metric = |agent: &Agent| -> Result<f64> {
        Ok(prom::parse(&agent.metrics()?.body)?.sum(
            "procmon_watched_descendants_started_total",
            &[("pid", &forker.pid().to_string())],
        ))
    };
    // Let the agent settle before the storm, so that the first step is its baseline.
    thread::sleep(Duration::from_secs(5));
    let t0 = Instant::now();
    let mut last = (agent.cpu_seconds()?, Instant::now());
    let mut steps = vec![Step {
        at: Duration::ZERO,
        rss: Breakdown::of(agent.pid(), bin)?.total,
        cpu_ratio: 0.0,
        children: 0.0,
    }];
    forker.go()?;
    while t0.elapsed() < Duration::from_secs(SECONDS) {
        thread::sleep(FORK_STEP);
        let cpu = agent.cpu_seconds()?;
        let now = Instant::now();
        steps.push(Step {
            at: t0.elapsed(),
            rss: Breakdown::of(agent.pid(), bin)?.total,
            cpu_ratio: (cpu - last.0) / now.duration_since(last.1).as_secs_f64(),
            children: started_metric(&agent)?,
        });
        last = (cpu, now);
    }
    let forked = forker.stop()?;
    // Agents before the bound (issue 11, item 4) do not export it.
    let units = prom::parse(&agent.metrics()?.body)?
        .series("procmon_attribution_units")
        .next()
        .map_or_else(|| "n/a".to_string(), |s| format!("{}", s.value));
    let lost = agent.lost_events()?;
    let end = Breakdown::of(agent.pid(), bin)?;
    agent.stop()?;

    println!("\nfast-forking watched parent: agent every {FORK_STEP:?}");
    let mut table = vec![cells(["t", "RSS", "agent CPU", "children seen"])];
    for s in &steps {
        table.push(vec![
            format!("{:.0} s", s.at.as_secs_f64()),
            mib(s.rss),
            format!("{:.1} % of a core", s.cpu_ratio * 100.0),
            format!("{:.0}", s.children),
        ]);
    }
    print_table(&table);
    let start = &steps[0];
    let peak = steps.iter().max_by_key(|s| s.rss).unwrap_or(start);
    let cpu_peak = steps.iter().map(|s| s.cpu_ratio).fold(0.0, f64::max);
    let cpu_end = steps.last().map_or(0.0, |s| s.cpu_ratio);
    let bench = format!("fast fork ({SECONDS} s)");
    let row = |metric: &str, value: String, target: Option<Target>| Row {
        benchmark: bench.clone(),
        metric: metric.into(),
        value,
        target,
    };
    // Bounded: what it holds at the end is what the caps allow, so the growth from start to
    // end must not follow the number of children (a few MiB of allocator slack aside).
    let growth = end.total.saturating_sub(start.rss) as f64 / MIB;
    Ok(vec![
        row("children forked", format!("{forked}"), None),
        row(
            "agent RSS start / peak / end",
            format!(
                "{} / {} / {}",
                mib(start.rss),
                mib(peak.rss),
                mib(end.total)
            ),
            Some(Target {
                text: "end <= start + 8 MiB".into(),
                met: growth <= 8.0,
            }),
        ),
        row(
            "agent CPU peak / end (per 5 s step)",
            format!(
                "{:.1} / {:.1} % of a core",
                cpu_peak * 100.0,
                cpu_end * 100.0
            ),
            None,
        ),
        row(
            "attribution units kept / events lost",
            format!("{units} / {lost}"),
            None,
        ),
    ])
}

/// A parent that, once told to go, forks children that exit at once and reaps them, as fast
/// as it can, until told to stop; then reports how many it forked.
struct Forker {
    pid: libc::pid_t,
    go: Option<OwnedFd>,
    stop: Option<OwnedFd>,
    report: Option<OwnedFd>,
}

impl Forker {
    fn spawn() -> Result<Forker> {
        let (go_r, go_w) = crate::cmd::pipe()?;
        let (stop_r, stop_w) = crate::cmd::pipe()?;
        let (report_r, report_w) = crate::cmd::pipe()?;
        // SAFETY: the child runs only async-signal-safe syscalls and never returns into Rust.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("cannot fork the forker: {}", io::Error::last_os_error());
        }
        if pid == 0 {
            // The write ends stay with xtask alone: the stop pipe's EOF is the stop.
            for fd in [&go_w, &stop_w, &report_r] {
                // SAFETY: closes fds this process holds and never uses again.
                unsafe { libc::close(fd.as_raw_fd()) };
            }
            let fds = [&go_r, &stop_r, &report_w].map(AsRawFd::as_raw_fd);
            // SAFETY: freshly forked; the fds are open here.
            unsafe { forker_main(fds) }
        }
        drop((go_r, stop_r, report_w));
        Ok(Forker {
            pid,
            go: Some(go_w),
            stop: Some(stop_w),
            report: Some(report_r),
        })
    }

    fn pid(&self) -> u32 {
        self.pid as u32
    }

    fn go(&self) -> Result<()> {
        let fd = self.go.as_ref().expect("go pipe").as_raw_fd();
        // SAFETY: writes one byte from a static to an open pipe.
        if unsafe { libc::write(fd, b"g".as_ptr().cast(), 1) } != 1 {
            bail!("cannot start the forker: {}", io::Error::last_os_error());
        }
        Ok(())
    }

    fn stop(mut self) -> Result<u64> {
        drop(self.stop.take());
        let mut count = [0u8; 8];
        fs::File::from(self.report.take().expect("report pipe"))
            .read_exact(&mut count)
            .context("the forker died before it reported")?;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        Ok(u64::from_ne_bytes(count))
    }
}

impl Drop for Forker {
    fn drop(&mut self) {
        if self.stop.take().is_some() {
            // SAFETY: signals and reaps our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// # Safety
///
/// Only in a freshly forked child of xtask: it uses async-signal-safe calls only and ends with
/// `_exit`. The fds are the read ends of the go and stop pipes and the write end of the
/// report pipe, all open.
unsafe fn forker_main([go, stop, report]: [RawFd; 3]) -> ! {
    let mut byte = 0u8;
    let mut forked: u64 = 0;
    // SAFETY: reads into a live local; prctl reads a static NUL-terminated name; fcntl on an
    // open fd.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"bench-forker".as_ptr());
        libc::read(go, (&raw mut byte).cast(), 1);
        libc::fcntl(stop, libc::F_SETFL, libc::O_NONBLOCK);
    }
    loop {
        // Check for the stop (EOF) every 64 children: a read per fork would halve the rate.
        if forked.is_multiple_of(64) {
            // SAFETY: non-blocking read into a live local from an open fd.
            let n = unsafe { libc::read(stop, (&raw mut byte).cast(), 1) };
            if n == 0 {
                break;
            }
        }
        // SAFETY: single-threaded forked process; the child only calls `_exit`.
        match unsafe { libc::fork() } {
            // SAFETY: ends the child at once.
            0 => unsafe { libc::_exit(0) },
            -1 => continue,
            child => {
                forked += 1;
                // SAFETY: reaps the child just forked; a null status pointer is allowed.
                unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            }
        }
    }
    // SAFETY: writes 8 bytes from a live local to an open pipe, then exits.
    unsafe {
        libc::write(report, forked.to_ne_bytes().as_ptr().cast(), 8);
        libc::_exit(0)
    }
}
