//! An exec loop: workers that fork and exec /bin/true back to back, each waiting for its
//! child. stress-ng's `--exec` stressor refuses to run as root, and as another user it
//! re-execs its own 2 MB binary (about 200 execs/s here), which measures the loader more than
//! the lifecycle; /bin/true is the smallest real exec.
use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::stress::Throughput;

const PROGRAM: &str = "/bin/true";

/// Runs `workers` loops for `seconds`; ops are completed execs.
pub fn run(workers: u32, seconds: u32) -> Result<Throughput> {
    eprintln!("$ exec loop: {workers} workers x (fork + exec {PROGRAM} + wait) for {seconds} s");
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let counts: Vec<Result<u64>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| worker(&stop)))
            .collect();
        thread::sleep(Duration::from_secs(seconds.into()));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().expect("exec loop worker panicked"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let ops = counts.into_iter().sum::<Result<u64>>()? as f64;
    Ok(Throughput {
        ops,
        seconds: elapsed,
        ops_per_second: ops / elapsed,
    })
}

fn worker(stop: &AtomicBool) -> Result<u64> {
    let mut execs = 0;
    while !stop.load(Ordering::Relaxed) {
        // std spawns with posix_spawn (clone with CLONE_VFORK, then execve): the fork+exec
        // path of shells, make and most supervisors.
        let status = Command::new(PROGRAM)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {PROGRAM}"))?;
        if !status.success() {
            bail!("{PROGRAM} exited with {status}");
        }
        execs += 1;
    }
    Ok(execs)
}
