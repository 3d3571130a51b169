//! `procmon`: an eBPF process lifecycle tracer.
//!
//! Exit status: 0 on success, 2 for bad flags or config (nothing started), 1 when the
//! environment stops procmon (privileges, BTF, a busy port). `procmon run` exits with the
//! command's own status.

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use procmon_user::{
    agent::{self, Pipeline},
    allocator,
    cli::{Cli, Command, Settings, DEFAULT_LISTEN},
    http, kernel, logging, profile, run,
};

fn main() -> ExitCode {
    logging::init();
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
            return usage_error(first.trim_start_matches("error: "));
        }
    };
    let result = match cli.command {
        Command::Agent(a) => match a.common.resolve(a.listen, a.events) {
            Ok(settings) => run_async(agent_main(settings)),
            Err(e) => return usage_error(&e.to_string()),
        },
        Command::Run(r) => match r.common.resolve(r.listen, None) {
            Ok(settings) => run_async(run::execute(settings, r.command, r.json)),
            Err(e) => return usage_error(&e.to_string()),
        },
        Command::Profile(p) => run_async(profile::command::profile(p)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("procmon: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("procmon: {message} (see `procmon --help`)");
    ExitCode::from(2)
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<u8>>) -> anyhow::Result<u8> {
    allocator::tune();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(fut);
    // Dropping the runtime would wait for every blocking-pool thread, and one can be stuck
    // in a write to a FIFO whose reader stopped reading: shutdown already gave up on it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(300));
    result
}

async fn agent_main(settings: Settings) -> anyhow::Result<u8> {
    kernel::check_privileges()?;
    http::raise_fd_limit();
    let addr: SocketAddr = settings
        .listen
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap());
    let listener = agent::bind(addr).await?;
    // With port 0 the kernel picked one: say which.
    let addr = listener.local_addr().unwrap_or(addr);
    let events_out = match &settings.events {
        Some(path) => Some(agent::open_events(path).await?),
        None => None,
    };
    // Before anything serves: a SIGTERM that arrives once /healthz answers must stop the
    // agent cleanly, not kill it.
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    // SIGHUP's default action would kill the agent without a word; it reopens the events
    // file (log rotation) and re-reads the web config (certificate rotation) instead.
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    let scheme = settings.web.scheme();
    let mut pipeline =
        Pipeline::start(settings.pipeline, Some(listener), settings.web, events_out).await?;
    allocator::release_free();
    log::info!("ready, listening on {scheme}://{addr}");
    let failure = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = hup.recv() => pipeline.reload(),
            e = pipeline.sink_closed() => break Some(e),
        }
    };
    log::info!("shutting down");
    pipeline.stop().await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(0),
    }
}
