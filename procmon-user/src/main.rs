//! `procmon`: an eBPF process lifecycle tracer.
//!
//! Exit status: 0 on success, 2 for bad flags (nothing started), 1 when the environment
//! stops the agent (privileges, BTF, a busy port).

mod agent;
mod clock;
mod crash;
mod deaths;
mod events;
mod history;
mod http;
mod hub;
mod ingest;
mod kernel;
mod metrics;
mod oom;
mod procfs;
mod record;
mod sink;
mod sse;
mod tree;
mod workload;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::events::EventKind;

#[derive(Parser)]
#[command(
    name = "procmon",
    version,
    about = "eBPF process lifecycle tracer: process tree, CPU/RSS attribution, crash and OOM events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace every process on the host; serve /metrics, /healthz and /events, optionally
    /// write events.
    Agent(AgentArgs),
}

#[derive(Args)]
struct AgentArgs {
    /// Address for the HTTP endpoints (/metrics, /healthz, /events).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Write events as JSON lines to FILE (appended), or to stdout with `-`.
    #[arg(long, value_name = "FILE|-")]
    events: Option<PathBuf>,
    /// Event kinds to write with --events, comma-separated (fork, exec, exit, oom_kill, crash).
    #[arg(
        long,
        value_name = "KINDS",
        value_delimiter = ',',
        default_value = "fork,exec,exit,oom_kill,crash"
    )]
    event_kinds: Vec<EventKind>,
    /// Recent events kept for /events clients that ask for them (?since=SEQ, Last-Event-ID);
    /// 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    history: u64,
    /// Most processes the tree tracks; beyond it the oldest are evicted (and counted).
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(16..=16_777_216))]
    max_processes: u64,
    /// How often the tree is reconciled against /proc, e.g. 30s, 5m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_interval)]
    reconcile_interval: Duration,
    /// Kernel ring-buffer size in bytes: a power of two, 64 KiB to 1 GiB.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20, value_parser = parse_ringbuf_bytes)]
    ringbuf_bytes: u32,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m)"))?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))?;
    if !n.is_power_of_two() || !(64 << 10..=1 << 30).contains(&n) {
        return Err("must be a power of two between 65536 and 1073741824".into());
    }
    Ok(n)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the problem, not clap's usage block.
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "procmon: {} (see `procmon --help`)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Agent(a) => run_async(agent::run(agent::AgentConfig {
            listen: a.listen,
            events: a.events,
            event_kinds: a.event_kinds,
            max_processes: a.max_processes as usize,
            reconcile_interval: a.reconcile_interval,
            ringbuf_bytes: a.ringbuf_bytes,
            history: a.history as usize,
        })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procmon: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(fut)
}
