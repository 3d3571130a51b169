//! Builds the kernel programs (procmon-ebpf) for `bpfel-unknown-none`.
use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::cmd;

/// Builds target/bpf/bpfel-unknown-none/release/procmon.
///
/// NB: keep this command in sync with procmon-user/build.rs, which runs the same build so that
/// a plain `cargo build` embeds a fresh object. The separate target dir (target/bpf) keeps the
/// nightly build from waiting on, or invalidating, the stable build's lock and artifacts.
pub fn build(root: &Path) -> Result<()> {
    let mut build = Command::new("rustup");
    build
        .args(["run", "nightly", "cargo", "build", "--release"])
        .args([
            "--package",
            "procmon-ebpf",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(root.join("target/bpf"))
        .current_dir(root.join("procmon-ebpf"));
    cmd::run(cmd::remove_cargo_env(&mut build)).context(
        "building the eBPF programs failed; if the error is about bpf-linker, rust-src or \
         LLVM, check the toolchain steps printed above (they need root to install packages)",
    )?;
    let object = root.join("target/bpf/bpfel-unknown-none/release/procmon");
    anyhow::ensure!(
        object.is_file(),
        "the eBPF build succeeded but {} is missing",
        object.display()
    );
    eprintln!("eBPF object: {}", object.display());
    Ok(())
}
