//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (the ring-buffer record decoder and
//! the ingest path behind it, the /proc parsers, cgroup path identities), each for a bounded
//! time. CI runs them briefly as
//! a stage of `cargo xtask test`; by hand they run as long as asked.
//!
//! Each target starts from its committed seeds (fuzz/seeds/<target>, read only) and grows its
//! own corpus in fuzz/corpus/<target>, kept between runs on the same machine. A crash, panic,
//! leak or hang fails the run and names the input that reproduces it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, ensure};

#[derive(clap::Args)]
pub struct Options {
    /// How long each target runs.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Targets to run (default: every target of fuzz/Cargo.toml).
    pub targets: Vec<String>,
}

/// Seconds per target in CI: about two minutes for all five, after the build.
pub const CI_SECONDS: u64 = 25;

pub fn run(root: &Path, options: &Options) -> Result<()> {
    ensure::ensure(&[ensure::Need::Fuzz])?;
    let targets = if options.targets.is_empty() {
        list(root)?
    } else {
        options.targets.clone()
    };
    cmd::run(&mut cargo_fuzz(root, &["build"]))
        .context("building the fuzz targets failed (cargo +nightly fuzz build)")?;
    for target in &targets {
        run_target(root, target, options.seconds)?;
    }
    eprintln!(
        "fuzzed {} for {} s each: no crash",
        targets.join(", "),
        options.seconds
    );
    Ok(())
}

/// `rustup run nightly cargo fuzz ARGS` from the workspace root (cargo-fuzz finds fuzz/
/// there), with the outer stable cargo's settings removed.
fn cargo_fuzz(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .args(args)
        .current_dir(root);
    crate::ebpf::remove_cargo_env(&mut cmd);
    cmd
}

fn list(root: &Path) -> Result<Vec<String>> {
    let out = cmd::output(&mut cargo_fuzz(root, &["list"]))?;
    if !out.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn run_target(root: &Path, target: &str, seconds: u64) -> Result<()> {
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    if !seeds.is_dir() {
        bail!(
            "no seeds for fuzz target {target} at {}: add a few real inputs there",
            seeds.display()
        );
    }
    let before = findings(&artifacts);
    let time = format!("-max_total_time={seconds}");
    let corpus_arg = corpus.to_string_lossy().into_owned();
    let seeds_arg = seeds.to_string_lossy().into_owned();
    // -timeout: an input that takes 10 s is a hang, reported like a crash.
    let status = cmd::status(&mut cargo_fuzz(
        root,
        &[
            "run",
            target,
            &corpus_arg,
            &seeds_arg,
            "--",
            &time,
            "-timeout=10",
            "-print_final_stats=1",
        ],
    ))?;
    if status.success() {
        return Ok(());
    }
    let found: Vec<PathBuf> = findings(&artifacts)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if found.is_empty() {
        bail!("fuzz target {target} failed ({status}) without leaving a reproducer");
    }
    let list: Vec<String> = found.iter().map(|f| f.display().to_string()).collect();
    bail!(
        "fuzz target {target} found a failing input: {}; reproduce with `cargo +nightly fuzz \
         run {target} {}` from the repository root, and add a unit test with that input",
        list.join(", "),
        list[0]
    )
}

/// What libFuzzer leaves for a failing input: crash-*, leak-*, timeout-*, oom-* files.
fn findings(artifacts: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(artifacts) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                ["crash-", "leak-", "timeout-", "oom-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect()
}
