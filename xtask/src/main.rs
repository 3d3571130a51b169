//! Project automation: `cargo xtask <command>` (alias in .cargo/config.toml).
//!
//! Every command first installs what it needs (see ensure.rs), so a fresh machine only needs
//! rustup, gcc and root to go from clone to green tests.
mod bench;
mod cmd;
mod ebpf;
mod ensure;
mod fuzz;
mod image;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "procmon build, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain if missing, then build the kernel programs.
    BuildEbpf,
    /// Build the release agent and run it: `cargo xtask run -- agent --listen ...`.
    Run {
        /// Arguments passed to `procmon`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Unit tests, then the privileged end-to-end tests (needs root).
    Test,
    /// Benchmarks (needs root): tracing overhead against libbpf-tools, sampling 10,000
    /// processes, CPU sampling, a soak.
    Bench(bench::Options),
    /// Build the agent's container image (localhost/procmon:VERSION) with buildah, from
    /// the release binary and deploy/Containerfile, without a registry.
    Image(image::Options),
    /// Run the fuzz targets in fuzz/ (records, ingest, /proc parsers, cgroup paths) for
    /// `--seconds` each: `cargo xtask fuzz [--seconds N] [TARGET...]`.
    Fuzz(fuzz::Options),
    /// Kernel matrix (needs root): boot Debian cloud kernels 5.10, 6.1, 6.12 and the newest
    /// under QEMU and run a focused end-to-end suite in each.
    VmTest(vm::Options),
}

// Errors print as one context chain (what failed, then why), not as a Debug dump with a
// backtrace of xtask itself, which says nothing about the failed build or test.
fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::BuildEbpf => {
            ensure::ensure(&[ensure::Need::Toolchain])?;
            ebpf::build(root())
        }
        Command::Run { args } => {
            ensure::ensure(&[ensure::Need::Toolchain, ensure::Need::Agent])?;
            build_agent(root())?;
            let status = cmd::status(std::process::Command::new(agent_path(root())).args(&args))?;
            // Exit like procmon did, so scripts see its status (2 = bad flags, 1 = environment),
            // and like a shell would for a signal.
            use std::os::unix::process::ExitStatusExt;
            std::process::exit(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            );
        }
        Command::Test => test::run(root()),
        Command::Bench(options) => bench::run(root(), &options),
        Command::VmTest(options) => vm::run(root(), &options),
        Command::Image(options) => image::run(root(), &options),
        Command::Fuzz(options) => fuzz::run(root(), &options),
    }
}

/// The workspace root: xtask always lives one level below it.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
}

/// `cargo build --release -p procmon-user`; its build.rs builds and embeds the eBPF object.
fn build_agent(root: &Path) -> Result<()> {
    cmd::run(cmd::cargo(root).args(["build", "--release", "--package", "procmon-user"]))
}

fn agent_path(root: &Path) -> PathBuf {
    root.join("target/release/procmon")
}
