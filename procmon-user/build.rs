//! Builds the kernel programs (procmon-ebpf) and hands their object to the agent, which
//! embeds it: one `cargo build` yields a self-contained `procmon`.
//!
//! The eBPF crate needs nightly (`-Z build-std=core`) and bpf-linker; `cargo xtask build-ebpf`
//! installs both and runs the same command. NB: keep the arguments in sync with
//! `xtask/src/ebpf.rs`. The nested cargo uses its own target dir (target/bpf) so it never
//! waits on the lock this build holds.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("procmon-ebpf");
    let target_dir = root.join("target").join("bpf");
    for path in [
        "procmon-ebpf/src",
        "procmon-ebpf/Cargo.toml",
        "procmon-common/src",
        "procmon-common/Cargo.toml",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release"])
        .args([
            "--package",
            "procmon-ebpf",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    // The outer cargo's settings (its rustc, flags, toolchain) must not leak into the nightly
    // eBPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let cargo_setting = key.starts_with("CARGO") && key != "CARGO_HOME";
        if cargo_setting
            || key.starts_with("RUSTC")
            || key == "RUSTUP_TOOLCHAIN"
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo` ({e}): run `cargo xtask build-ebpf` to install the eBPF toolchain")
    });
    if !status.success() {
        panic!("building procmon-ebpf failed ({status}); run `cargo xtask build-ebpf` to install nightly rust-src and bpf-linker, then build again");
    }
    let object = target_dir.join("bpfel-unknown-none/release/procmon");
    println!("cargo:rustc-env=PROCMON_EBPF_OBJECT={}", object.display());
}
