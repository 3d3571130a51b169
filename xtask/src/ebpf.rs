//! Builds the kernel programs (procmon-ebpf) for `bpfel-unknown-none`, with the command
//! procmon-user's build.rs also uses (procmon-user/ebpf_build.rs).
use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd;

#[path = "../../procmon-user/ebpf_build.rs"]
mod ebpf_build;

pub use ebpf_build::{cargo, remove_cargo_env};

/// Builds target/bpf/bpfel-unknown-none/release/procmon.
pub fn build(root: &Path) -> Result<()> {
    cmd::run(&mut ebpf_build::command(root)).context(
        "building the eBPF programs failed; if the error is about bpf-linker, rust-src or \
         LLVM, check the toolchain steps printed above (they need root to install packages)",
    )?;
    let object = ebpf_build::object(root);
    anyhow::ensure!(
        object.is_file(),
        "the eBPF build succeeded but {} is missing",
        object.display()
    );
    eprintln!("eBPF object: {}", object.display());
    Ok(())
}
