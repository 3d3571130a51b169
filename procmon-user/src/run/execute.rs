//! Running the command: the pipeline starts, the command runs as the watched root, and its
//! tree is reported when it exits.

use std::os::unix::process::ExitStatusExt;

use crate::whole_file::WholeFile;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use std::sync::{Arc, Mutex};

use super::{
    log::{RunLog, SharedRunLog},
    report::{render_text, RunReport},
};

/// `procmon run`: starts the pipeline, runs the command as a watched root, reports.
pub async fn execute(
    settings: crate::cli::Settings,
    command: Vec<String>,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<u8> {
    crate::kernel::check_privileges()?;
    // Fail before running anything if the report cannot be written.
    let json_file = json
        .as_ref()
        .map(|p| {
            WholeFile::create(p)
                .with_context(|| format!("cannot create --json file {}", p.display()))
        })
        .transpose()?;
    let listener = match settings.listen {
        Some(addr) => Some(crate::agent::bind(addr).await?),
        None => None,
    };
    let pipeline =
        crate::agent::Pipeline::start(settings.pipeline, listener, settings.web, None).await?;

    // The command is spawned with the state locked: the reader cannot apply its fork (or
    // anything it forks) before it is watched, and the command never waits on procmon.
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    let started = std::time::Instant::now();
    let mut run_log = None;
    let spawned = {
        let mut state = pipeline.shared.lock();
        cmd.spawn().inspect(|child| {
            state.watch_pid(child.id());
            let log = SharedRunLog(Arc::new(Mutex::new(RunLog::new(child.id(), &state.tree))));
            state.observe(Box::new(log.clone()));
            run_log = Some(log);
        })
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            pipeline.stop().await?;
            log::error!("cannot run `{}`: {e}", command[0]);
            // What shells return for a command that cannot be found or executed.
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let pid = child.id();

    // Ctrl-C and SIGTERM go to the command; procmon reports once it is gone.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let wait = tokio::task::spawn_blocking(move || child.wait());
    tokio::pin!(wait);
    let status = loop {
        tokio::select! {
            status = &mut wait => break status?.context("waiting for the command failed")?,
            // SAFETY: kill takes no pointers; `pid` is our child, not yet reaped (the wait
            // above has not returned), so the pid cannot have been reused.
            _ = int.recv() => unsafe { libc::kill(pid as i32, libc::SIGINT); },
            // SAFETY: as above.
            _ = term.recv() => unsafe { libc::kill(pid as i32, libc::SIGTERM); },
        }
    };
    let duration = started.elapsed();
    // Reaped above: its release, with the final CPU, follows within an RCU grace period and
    // is read within a drain interval.
    for _ in 0..300 {
        if run_log.as_ref().is_some_and(|l| l.lock().root_exited()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let shared = pipeline.shared.clone();
    pipeline.stop().await?;
    let root = {
        let state = shared.lock();
        run_log
            .as_ref()
            .and_then(|log| log.lock().report(&state.tree, crate::clock::boottime_ns()))
    };
    let (exit_code, signal) = (status.code(), status.signal());
    let code = exit_code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
    let report = RunReport {
        command,
        status: code,
        exit_code,
        signal,
        duration_seconds: duration.as_secs_f64(),
        root,
    };
    eprint!("{}", render_text(&report));
    if let Some(file) = json_file {
        let mut body = serde_json::to_vec_pretty(&report)?;
        body.push(b'\n');
        let path = file.path().display().to_string();
        file.write(&body).with_context(|| {
            format!("cannot write the --json report to {path}; the command's own status was {code}")
        })?;
    }
    Ok(code.clamp(0, 255) as u8)
}
