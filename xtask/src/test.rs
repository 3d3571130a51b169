//! `cargo xtask test`: everything CI runs, in order, stopping at the first failure.
use std::path::Path;

use anyhow::{Context, Result};

use crate::{cmd, ebpf, ensure};

pub fn run(root: &Path) -> Result<()> {
    let stages = 8;
    let mut stage = 0;
    let mut header = |what: &str| {
        stage += 1;
        eprintln!("\n==> [{stage}/{stages}] {what}");
    };

    header("ensure toolchain and test dependencies");
    ensure::ensure(&[
        ensure::Need::Toolchain,
        ensure::Need::Lint,
        ensure::Need::Agent,
        ensure::Need::Tests,
        ensure::Need::Containers,
        ensure::Need::Image,
        ensure::Need::Fuzz,
    ])?;

    let kubernetes_validate = ensure::kubernetes_validate(root)?;

    header("build eBPF programs");
    ebpf::build(root)?;

    // Default members only (procmon-common, procmon-user, xtask): `--workspace` would also pick
    // procmon-ebpf, which only builds for the BPF target, and the privileged tests.
    let mut tally = cmd::TestTally::default();
    header("unit tests (no root)");
    cmd::run_tests(cmd::cargo(root).args(["test", "--release"]), &mut tally)
        .context("unit tests failed")?;

    // Cheap, so before the slow stages; it runs no tests, so it adds nothing to the tally.
    header("lints (clippy -D warnings on every crate, rustfmt --check)");
    lint(root)?;

    // No root needed, and a crash here names its reproducer before the long stages run.
    header("fuzz targets (25 s each)");
    crate::fuzz::run(
        root,
        &crate::fuzz::Options {
            seconds: crate::fuzz::CI_SECONDS,
            targets: Vec::new(),
        },
    )
    .context("the fuzz stage failed")?;

    header("build release agent and its image");
    crate::build_agent(root)?;
    // The container tests run the DaemonSet's security context on this very image.
    let image = crate::image::build(root)?;

    header("end-to-end tests (root, one at a time)");
    let agent = crate::agent_path(root);
    cmd::run_tests(
        cmd::cargo(root)
            .args([
                "test",
                "--release",
                "--package",
                "procmon-tests",
                "--",
                "--test-threads=1",
            ])
            .env("PROCMON_BIN", &agent)
            .env("PROCMON_KUBERNETES_VALIDATE", &kubernetes_validate)
            .env("PROCMON_IMAGE", &image),
        &mut tally,
    )
    .context("end-to-end tests failed")?;

    header("kernel matrix under QEMU (5.10, 6.1, 6.12, newest, self-test)");
    let matrix = if skip_vm() {
        eprintln!("skipped: PROCMON_SKIP_VM=1 (CI=true would run it)");
        Ok(())
    } else {
        crate::vm::run_in_test(root, &mut tally).context("kernel matrix failed")
    };

    if matrix.is_ok() {
        eprintln!("\nall stages passed");
    }
    // The plain closing line CI reads: every test of every stage. The matrix is the last
    // stage, so its failures are counted here too.
    println!("{} passed, {} failed", tally.passed, tally.failed);
    matrix
}

/// Fails on any clippy warning (the workspace lints in the root Cargo.toml included: every
/// `unsafe` says why it is sound) or any unformatted file.
fn lint(root: &Path) -> Result<()> {
    let deny = ["--", "-D", "warnings"];
    // The host crates, procmon-common with the `user` feature (its aya::Pod impls).
    cmd::run(
        cmd::cargo(root)
            .args(["clippy", "--release", "--all-targets"])
            .args(["-p", "procmon-user", "-p", "xtask", "-p", "procmon-tests"])
            .args(["-p", "procmon-common", "--features", "procmon-common/user"])
            .args(deny),
    )
    .context("clippy found warnings in the host crates: fix them (or `#[allow]` with a reason)")?;
    // procmon-common alone: the no_std build without `user` that the eBPF programs use.
    cmd::run(
        cmd::cargo(root)
            .args([
                "clippy",
                "--release",
                "--all-targets",
                "-p",
                "procmon-common",
            ])
            .args(deny),
    )
    .context("clippy found warnings in procmon-common without the `user` feature")?;
    cmd::run(cmd::cargo(root).args(["fmt", "--all", "--check"]))
        .context("files are not rustfmt-formatted: run `cargo fmt --all`")?;
    // The fuzz targets are a workspace of their own (nightly only): formatted, not linted
    // here, since clippy would build all of procmon-user again for them.
    cmd::run(cmd::cargo(root).args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]))
        .context(
        "fuzz targets are not rustfmt-formatted: run `cargo fmt --manifest-path fuzz/Cargo.toml`",
    )?;
    // The eBPF crate only builds for its own target, on nightly, like `ebpf::build`: from its
    // directory, with the outer cargo's settings removed, into the same target/bpf.
    let mut ebpf_clippy = ebpf::cargo(root, "clippy");
    ebpf_clippy.args(deny);
    cmd::run(&mut ebpf_clippy)
        .context("clippy found warnings in procmon-ebpf (nightly, bpfel-unknown-none)")
}

/// The kernel matrix takes many minutes of emulation, so a local run may skip it with
/// `PROCMON_SKIP_VM=1`; CI (`CI=true`) always runs it, as it must not go green by skipping.
fn skip_vm() -> bool {
    let set =
        |var: &str, values: &[&str]| std::env::var(var).is_ok_and(|v| values.contains(&v.as_str()));
    let skip = set("PROCMON_SKIP_VM", &["1", "true"]);
    if skip && set("CI", &["1", "true"]) {
        eprintln!("PROCMON_SKIP_VM ignored: CI=true runs the kernel matrix");
        return false;
    }
    skip
}
