//! How the kernel programs (procmon-ebpf) are built: one definition for the two places that
//! build them, procmon-user's build.rs (so a plain `cargo build` embeds a fresh object) and
//! `cargo xtask build-ebpf` (which first installs the toolchain). Both include this file by
//! path; it uses std only.
//!
//! The nested cargo uses its own target dir (target/bpf), so it never waits on, or
//! invalidates, the lock and artifacts of the stable build that runs it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

/// `rustup run nightly cargo build` of procmon-ebpf for `bpfel-unknown-none`, for the
/// workspace at `root`, with the outer cargo's settings removed from its environment.
pub fn command(root: &Path) -> Command {
    cargo(root, "build")
}

/// `rustup run nightly cargo SUBCOMMAND` (build, clippy) of procmon-ebpf for its target.
pub fn cargo(root: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", subcommand, "--release"])
        .args([
            "--package",
            "procmon-ebpf",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(root.join("target/bpf"))
        .current_dir(root.join("procmon-ebpf"));
    remove_cargo_env(&mut cmd);
    cmd
}

/// The object `command` produces.
pub fn object(root: &Path) -> PathBuf {
    root.join("target/bpf/bpfel-unknown-none/release/procmon")
}

/// Removes the settings an outer cargo hands to what it runs (its rustc, flags, toolchain
/// pin), so that a nested build on another toolchain (nightly, `cargo install`) starts clean.
pub fn remove_cargo_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let cargo_setting = key.starts_with("CARGO") && key != "CARGO_HOME";
        if cargo_setting
            || key.starts_with("RUSTC")
            || key == "RUSTUP_TOOLCHAIN"
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(OsStr::new(key.as_ref()));
        }
    }
    cmd
}
