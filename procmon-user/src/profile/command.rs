//! `procmon profile --pid P`: where one process (with `--children`, its whole subtree,
//! children started during the profile included) spends its CPU, by sampling every CPU for a
//! while and keeping the samples of its processes. Written as folded stacks, an SVG flame
//! graph or JSON.
//!
//! It runs the agent's pipeline (so forks are followed as they happen) with CPU sampling at
//! the profile's rate and a short drain period, and collects drained samples as an
//! [`Observer`] of the state.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;

use super::{
    collect::Sampled,
    folded::{self, Stack as FoldedStack},
    symbolize::Frame,
    ProfileConfig, SHALLOW_NOTE,
};
use crate::{
    attribution::{ProcessTree, TrackedProcess},
    cli::{ProfileArgs, ProfileFormat},
    state::Observer,
    whole_file::WholeFile,
};
use procmon_common::{exit_flags, ExitRecord};

/// How often samples are drained while profiling: short, so a child that lives a moment is
/// symbolized while its maps still exist.
const DRAIN: Duration = Duration::from_millis(250);

/// What the profile collected.
#[derive(Default)]
struct Collected {
    target: u32,
    children: bool,
    members: HashSet<u32>,
    /// Root first, the process's comm as the root frame.
    stacks: HashMap<Vec<Frame>, u64>,
    samples: u64,
    shallow_samples: u64,
    /// When the target process exited, if it did.
    target_exited: Option<Instant>,
    /// Names of members that exited (their last samples are drained after the tree forgot
    /// them).
    names: HashMap<u32, Frame>,
}

impl Collected {
    fn wants(&self, tree: &ProcessTree, pid: u32) -> bool {
        if self.members.contains(&pid) {
            return true;
        }
        // A process whose fork was not seen (it started before the probes).
        self.children && descends(tree, pid, self.target)
    }
}

/// Whether `ancestor` is above `pid` in the tree.
fn descends(tree: &ProcessTree, pid: u32, ancestor: u32) -> bool {
    tree.get(pid).is_some_and(|p| {
        tree.ancestry(p.ppid)
            .iter()
            .any(|&(above, _)| above == ancestor)
    })
}

#[derive(Clone)]
struct Collector(Arc<Mutex<Collected>>);

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Observer for Collector {
    fn on_fork(&mut self, tree: &ProcessTree, pid: u32) {
        let mut c = self.lock();
        if c.children && tree.get(pid).is_some_and(|p| c.members.contains(&p.ppid)) {
            c.members.insert(pid);
        }
    }

    fn on_exec(&mut self, _tree: &ProcessTree, _pid: u32) {}

    fn on_exit(&mut self, gone: Option<&TrackedProcess>, r: &ExitRecord) {
        let mut c = self.lock();
        if let Some(p) = gone.filter(|p| c.members.contains(&p.pid)) {
            c.names.insert(p.pid, p.comm.to_lossy().into());
        }
        if r.pid == c.target && r.flags & exit_flags::GROUP_DEAD != 0 {
            c.target_exited.get_or_insert_with(Instant::now);
        }
    }

    fn on_cpu_samples(&mut self, tree: &ProcessTree, sampled: &[Sampled]) {
        let mut c = self.lock();
        for s in sampled {
            if !c.wants(tree, s.pid) {
                continue;
            }
            let comm: Frame = match (tree.get(s.pid), c.names.get(&s.pid)) {
                (Some(p), _) => p.comm.to_lossy().into(),
                (None, Some(name)) => name.clone(),
                (None, None) => format!("pid {}", s.pid).into(),
            };
            let mut frames = Vec::with_capacity(s.stack.len() + 1);
            frames.push(comm);
            frames.extend(s.stack.iter().cloned());
            *c.stacks.entry(frames).or_default() += s.samples;
            c.samples += s.samples;
            if s.shallow {
                c.shallow_samples += s.samples;
            }
        }
    }
}

#[derive(Serialize)]
struct JsonProfile<'a> {
    pid: u32,
    children: bool,
    seconds: f64,
    hz: u64,
    samples: u64,
    on_cpu_seconds: f64,
    stacks: Vec<JsonStack<'a>>,
    note: Option<&'static str>,
}

#[derive(Serialize)]
struct JsonStack<'a> {
    /// Root first: the process's comm, user frames, then kernel frames (`_[k]`).
    frames: &'a [Frame],
    samples: u64,
    share: f64,
}

/// Runs `procmon profile`; the exit status is 0 when the profile covered the whole time.
pub async fn profile(args: ProfileArgs) -> anyhow::Result<u8> {
    crate::kernel::check_privileges()?;
    let pid = args.pid;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        anyhow::bail!("no process with pid {pid}; check the pid (e.g. `ps -p {pid}`)");
    }
    // Fail before sampling if the output cannot be written.
    let out = Output::open(args.out.as_deref())?;
    let hz = match crate::kernel::perf::max_sample_rate() {
        Some(max) if args.hz > max => {
            log::warn!("sampling at {max} Hz instead of {} Hz: the kernel allows at most {max} (kernel.perf_event_max_sample_rate)", args.hz);
            max
        }
        _ => args.hz,
    };
    let mut settings = crate::cli::CommonArgs::default()
        .resolve(None, None)
        .expect("the defaults are valid");
    settings.pipeline.history = 0;
    settings.pipeline.profile = ProfileConfig {
        hz,
        drain: DRAIN,
        release_symbolizer: false,
        ..ProfileConfig::default()
    };
    let pipeline =
        crate::agent::Pipeline::start(settings.pipeline, None, settings.web, None).await?;
    let collector = Collector(Arc::new(Mutex::new(Collected {
        target: pid,
        children: args.children,
        members: HashSet::from([pid]),
        ..Default::default()
    })));
    {
        let mut state = pipeline.shared.lock();
        if args.children {
            let mut c = collector.lock();
            let below: Vec<u32> = state
                .tree
                .iter()
                .filter(|p| descends(&state.tree, p.pid, pid))
                .map(|p| p.pid)
                .collect();
            c.members.extend(below);
        }
        state.observe(Box::new(collector.clone()));
    }
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.seconds);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install SIGINT handler")?;
    loop {
        let left = duration.saturating_sub(started.elapsed());
        if left.is_zero() || collector.lock().target_exited.is_some() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(left.min(Duration::from_millis(100))) => {}
            // Ctrl-C ends the profile early and keeps what was collected.
            _ = term.recv() => break,
        }
    }
    let elapsed = started.elapsed();
    // The last drain happens on stop.
    pipeline.stop().await?;
    let c = collector.lock();
    let covered = match c.target_exited {
        Some(at) => at.duration_since(started),
        None => elapsed,
    };
    let seconds = duration.as_secs_f64();
    let on_cpu = c.samples as f64 / hz as f64;
    let mut stacks: Vec<FoldedStack> = c
        .stacks
        .iter()
        .map(|(frames, &count)| FoldedStack {
            frames: frames.clone(),
            count,
        })
        .collect();
    stacks.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.frames.cmp(&b.frames)));
    let shallow = c.shallow_samples * 2 > c.samples;
    let who = if args.children {
        format!("{pid} and its children")
    } else {
        pid.to_string()
    };
    if c.samples == 0 {
        eprintln!(
            "procmon: {who} was on CPU for 0.00 s of {:.0} s; nothing to show",
            covered.as_secs_f64()
        );
    }
    let body = match args.format {
        ProfileFormat::Folded => folded::folded(&stacks).into_bytes(),
        ProfileFormat::Svg if stacks.is_empty() => Vec::new(),
        ProfileFormat::Svg => folded::svg(&stacks, &format!("procmon profile: pid {who}"))?,
        ProfileFormat::Json => {
            let doc = JsonProfile {
                pid,
                children: args.children,
                seconds: covered.as_secs_f64(),
                hz,
                samples: c.samples,
                on_cpu_seconds: on_cpu,
                stacks: stacks
                    .iter()
                    .map(|s| JsonStack {
                        frames: &s.frames,
                        samples: s.count,
                        share: s.count as f64 / c.samples.max(1) as f64,
                    })
                    .collect(),
                note: shallow.then_some(SHALLOW_NOTE),
            };
            let mut v = serde_json::to_vec_pretty(&doc)?;
            v.push(b'\n');
            v
        }
    };
    let wrote = out.describe();
    if !body.is_empty() || !matches!(args.format, ProfileFormat::Svg) {
        out.write(&body)?;
    }
    if c.samples > 0 {
        eprintln!(
            "procmon: profiled {who} for {:.1} s at {hz} Hz: {} samples, {on_cpu:.2} s on CPU, {} distinct stacks{}",
            covered.as_secs_f64(),
            c.samples,
            stacks.len(),
            wrote
        );
    }
    if shallow {
        eprintln!("procmon: note: {SHALLOW_NOTE}");
    }
    if let Some(at) = c.target_exited {
        anyhow::bail!(
            "pid {pid} exited after {:.1} s of {seconds:.0} s; the profile covers only that time",
            at.duration_since(started).as_secs_f64()
        );
    }
    Ok(0)
}

/// Where the profile goes: stdout, or a file written whole (whole_file.rs).
enum Output {
    Stdout,
    File(WholeFile),
}

impl Output {
    fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        match path.filter(|p| p.as_os_str() != "-") {
            None => Ok(Output::Stdout),
            Some(path) => WholeFile::create(path).map(Output::File).with_context(|| {
                format!(
                    "cannot write --out {}; check the directory exists and is writable",
                    path.display()
                )
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Output::Stdout => String::new(),
            Output::File(f) => format!("; wrote {}", f.path().display()),
        }
    }

    fn write(self, body: &[u8]) -> anyhow::Result<()> {
        match self {
            Output::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(body)
                    .and_then(|()| stdout.flush())
                    .context("cannot write the profile to stdout")
            }
            Output::File(f) => {
                let path = f.path().display().to_string();
                f.write(body)
                    .with_context(|| format!("cannot write --out {path}"))
            }
        }
    }
}
