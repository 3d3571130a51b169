//! Installs what a command needs, idempotently: a step prints something only when it
//! actually installs, so on a prepared machine this is silent and fast.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// What a command is about to do, and therefore what it needs on the machine.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Build the eBPF programs: nightly rust-src, bpf-linker and the LLVM it links against.
    Toolchain,
    /// Lint every crate: nightly clippy (with rust-src) for the eBPF crate's own target.
    Lint,
    /// Run the agent (or tests that load the probes): tracefs mounted.
    Agent,
    /// The end-to-end tests: promtool checks the /metrics output.
    Tests,
    /// The benchmarks: stress-ng generates the load.
    Bench,
    /// `cargo xtask image`: buildah builds the image.
    Image,
    /// The container tests: podman with runc runs them (crun refuses hybrid cgroup hosts),
    /// busybox-static is the containers' userland, kubectl renders the DaemonSet whose
    /// security context they reproduce, and buildah builds the image.
    Containers,
    /// The fuzz targets: nightly (libFuzzer's sanitizer flags) and cargo-fuzz.
    Fuzz,
    /// The kernel matrix: QEMU boots the kernels, busybox is the guest's userland and
    /// promtool runs inside the guest.
    Vm,
}

impl Need {
    fn packages(self) -> (&'static [&'static str], &'static str) {
        match self {
            Need::Toolchain => (
                &[
                    "llvm-22-dev",
                    "libpolly-22-dev",
                    "zlib1g-dev",
                    "libzstd-dev",
                ],
                "bpf-linker links eBPF objects with LLVM 22",
            ),
            Need::Agent | Need::Lint | Need::Fuzz => (&[], ""),
            Need::Tests => (
                &["prometheus", "make", "nodejs", "curl", "openssl"],
                "the end-to-end tests check /metrics with promtool, trace a make -j2 build, \
                 profile a JIT runtime (node --perf-basic-prof) and scrape over TLS with curl \
                 and certificates openssl makes",
            ),
            Need::Bench => (
                &[
                    "stress-ng",
                    "bpftool",
                    "prometheus-process-exporter",
                    "libbpf-tools",
                ],
                "the benchmarks generate fork storms with stress-ng, read BPF stats with bpftool, \
                 compare sampling against process-exporter and tracing against libbpf-tools' \
                 exitsnoop and execsnoop",
            ),
            Need::Image => (
                &["buildah"],
                "cargo xtask image builds the image with buildah",
            ),
            Need::Containers => (
                &[
                    "podman",
                    "runc",
                    "buildah",
                    "busybox-static",
                    "kubernetes-client",
                    "python3-yaml",
                    "python3-venv",
                    "systemd",
                ],
                "the container tests run workloads and the agent in podman containers (runc), \
                 from a busybox-static rootfs, with the security context kubectl renders from \
                 deploy/kubernetes (read with python3-yaml); systemd-analyze verifies the unit",
            ),
            Need::Vm => (
                &["qemu-system-x86", "busybox-static", "prometheus"],
                "the kernel matrix boots kernels with QEMU, in guests built from busybox-static \
                 that check /metrics with promtool",
            ),
        }
    }
}

pub fn ensure(needs: &[Need]) -> Result<()> {
    debian_packages(needs)?;
    if [Need::Toolchain, Need::Lint, Need::Fuzz]
        .iter()
        .any(|n| needs.contains(n))
    {
        nightly_toolchain()?;
        nightly_component(
            "rust-src",
            "-Z build-std=core compiles core for the BPF target from it",
        )?;
    }
    if needs.contains(&Need::Lint) {
        nightly_component(
            "clippy",
            "the eBPF crate is linted on nightly for its own target",
        )?;
        for name in ["clippy", "rustfmt"] {
            component(
                "stable",
                name,
                "the lint stage runs clippy and rustfmt on the host crates",
            )?;
        }
    }
    if needs.contains(&Need::Toolchain) {
        bpf_linker()?;
    }
    if needs.contains(&Need::Fuzz) {
        cargo_fuzz()?;
    }
    if needs.contains(&Need::Agent) {
        tracefs();
    }
    Ok(())
}

fn debian_packages(needs: &[Need]) -> Result<()> {
    let mut missing = Vec::new();
    for need in needs {
        let (packages, why) = need.packages();
        for &package in packages {
            if !installed(package)? && !provided_otherwise(package) {
                eprintln!("installing Debian package {package}: {why}");
                missing.push(package);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    require_root(&format!(
        "installing Debian packages ({})",
        missing.join(" ")
    ))?;
    cmd::run(Command::new("apt-get").arg("update"))
        .context("apt-get update failed: check network access")?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )
    .context("apt-get install failed: check the apt sources (LLVM 22 comes from bookworm-security)")
}

/// PyPI's kubernetes-validate (Kubernetes' OpenAPI schemas, offline), in a virtualenv under
/// `target/` (Debian's Python refuses system-wide pip installs). Returns its executable,
/// which the end-to-end tests get as `PROCMON_KUBERNETES_VALIDATE`.
pub fn kubernetes_validate(root: &Path) -> Result<std::path::PathBuf> {
    let venv = root.join("target/tools/kubernetes-validate");
    let exe = venv.join("bin/kubernetes-validate");
    if exe.is_file() {
        return Ok(exe);
    }
    eprintln!(
        "installing kubernetes-validate (PyPI) in {}: the tests validate the rendered \
         manifests against Kubernetes' schemas",
        venv.display()
    );
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("cannot create a Python virtualenv (Debian package python3-venv)")?;
    cmd::run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "kubernetes-validate",
    ]))
    .context("pip could not install kubernetes-validate: check network access to PyPI")?;
    Ok(exe)
}

/// A command a package provides that may come from elsewhere: a kubectl installed with
/// the cloud SDKs must not be overwritten by Debian's older one.
fn provided_otherwise(package: &str) -> bool {
    let command = match package {
        "kubernetes-client" => "kubectl",
        _ => return false,
    };
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(command).is_file()))
}

fn installed(package: &str) -> Result<bool> {
    let query = cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .context("dpkg-query is missing: xtask expects a Debian-based machine")?;
    // Exit status 1 just means "not known to dpkg".
    Ok(String::from_utf8_lossy(&query.stdout).contains("install ok installed"))
}

fn nightly_toolchain() -> Result<()> {
    let toolchains = stdout(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        eprintln!("installing the nightly Rust toolchain: the eBPF crate needs -Z build-std");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    Ok(())
}

/// Adds rustup component `name` (e.g. "rust-src", "clippy") to the nightly toolchain, unless
/// it is already installed; `why` is printed when it is not.
fn nightly_component(name: &str, why: &str) -> Result<()> {
    component("nightly", name, why)
}

/// Installs rustup component `name` of `toolchain` if it is missing.
fn component(toolchain: &str, name: &str, why: &str) -> Result<()> {
    let components = stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))?;
    // Installed components are listed with their target ("clippy-x86_64-unknown-linux-gnu"),
    // except target-independent ones ("rust-src").
    let installed = components
        .lines()
        .any(|line| line == name || line.starts_with(&format!("{name}-")));
    if !installed {
        eprintln!("installing {toolchain} {name}: {why}");
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            name,
            "--toolchain",
            toolchain,
        ]))?;
    }
    Ok(())
}

const BPF_LINKER_VERSION: &str = "0.13.0";

fn bpf_linker() -> Result<()> {
    let cargo_bin = cargo_home().join("bin/bpf-linker");
    for candidate in [Path::new("bpf-linker"), cargo_bin.as_path()] {
        if let Ok(out) = Command::new(candidate).arg("--version").output() {
            // "bpf-linker 0.13.0": any 0.13.x links what aya 0.14 emits.
            let version = String::from_utf8_lossy(&out.stdout);
            if out.status.success()
                && version
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|v| v.starts_with("0.13."))
            {
                return Ok(());
            }
        }
    }
    eprintln!(
        "installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22: it links the eBPF crate \
         (the default feature wants LLVM 23, which Debian does not ship)"
    );
    let install = |locked: bool| {
        let mut install = Command::new("cargo");
        install.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
        if locked {
            install.arg("--locked");
        }
        install
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        cmd::run(crate::ebpf::remove_cargo_env(&mut install))
    };
    if install(true).is_err() {
        eprintln!("`cargo install --locked` failed; retrying without --locked (newer dependency versions)");
        install(false).context(
            "cannot install bpf-linker: check that llvm-22-dev and libpolly-22-dev are installed",
        )?;
    }
    Ok(())
}

/// cargo-fuzz, once: `cargo install --locked` keeps the versions it was released with.
fn cargo_fuzz() -> Result<()> {
    let works = Command::new(cargo_home().join("bin/cargo-fuzz"))
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if works {
        return Ok(());
    }
    eprintln!("installing cargo-fuzz: it builds and runs the fuzz targets in fuzz/");
    let mut install = Command::new("cargo");
    install.args(["install", "cargo-fuzz", "--locked"]);
    cmd::run(crate::ebpf::remove_cargo_env(&mut install))
        .context("cannot install cargo-fuzz: check network access to crates.io")
}

fn cargo_home() -> std::path::PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// procmon's tp_btf probes attach without tracefs, but the tools tests and benchmarks compare
/// against (bpftrace, perf, tracepoint format files) need it mounted; a failed mount warns.
fn tracefs() {
    if Path::new("/sys/kernel/tracing/trace").exists() {
        return;
    }
    eprintln!("mounting tracefs at /sys/kernel/tracing: peer tools read tracepoints from it");
    if let Err(e) = require_root("mounting tracefs") {
        eprintln!("warning: {e:#}");
        return;
    }
    let mount =
        cmd::run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]));
    if let Err(e) = mount {
        eprintln!("warning: {e:#}; peer tools that need tracefs will fail");
    }
}

fn require_root(what: &str) -> Result<()> {
    let uid = stdout(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        bail!(
            "{what} needs root (uid is {}): rerun this command as root",
            uid.trim()
        );
    }
    Ok(())
}

fn stdout(command: &mut Command) -> Result<String> {
    let out = cmd::output(command)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::display(command),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
