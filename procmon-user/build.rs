//! Builds the kernel programs (procmon-ebpf) and hands their object to the agent, which
//! embeds it: one `cargo build` yields a self-contained `procmon`.
//!
//! The eBPF crate needs nightly (`-Z build-std=core`) and bpf-linker; `cargo xtask build-ebpf`
//! installs both and runs the same command (ebpf_build.rs).
// Shared with xtask, which also uses `cargo` (for clippy); this script only builds.
#[allow(dead_code)]
#[path = "ebpf_build.rs"]
mod ebpf_build;

use std::{env, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    for path in [
        "procmon-ebpf/src",
        "procmon-ebpf/Cargo.toml",
        "procmon-common/src",
        "procmon-common/Cargo.toml",
        "procmon-user/ebpf_build.rs",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let status = ebpf_build::command(&root).status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo` ({e}): run `cargo xtask build-ebpf` to install the eBPF toolchain")
    });
    if !status.success() {
        panic!("building procmon-ebpf failed ({status}); run `cargo xtask build-ebpf` to install nightly rust-src and bpf-linker, then build again");
    }
    println!(
        "cargo:rustc-env=PROCMON_EBPF_OBJECT={}",
        ebpf_build::object(&root).display()
    );
}
