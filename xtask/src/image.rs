//! `cargo xtask image`: procmon's container image, built here without a registry. The
//! release binary and the libraries it links become a rootfs (procmon-tests' `rootfs`,
//! the same one the container tests run), which `buildah build` turns into an image with
//! deploy/Containerfile (`FROM scratch`, so nothing is pulled).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{cmd, ensure};

/// The tag deploy/kubernetes/kustomization.yaml deploys (`images:`).
pub const NAME: &str = "localhost/procmon";

#[derive(clap::Args)]
pub struct Options {
    /// Also write the image as a docker-archive tarball, for `ctr -n k8s.io images import`
    /// or `docker load` on a node without a registry.
    #[arg(long, value_name = "FILE")]
    pub archive: Option<PathBuf>,
}

pub fn tag() -> String {
    format!("{NAME}:{}", env!("CARGO_PKG_VERSION"))
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    ensure::ensure(&[ensure::Need::Toolchain, ensure::Need::Image])?;
    crate::build_agent(root)?;
    let tag = build(root)?;
    if let Some(archive) = &options.archive {
        cmd::run(
            Command::new("buildah")
                .arg("push")
                .arg(&tag)
                .arg(format!("docker-archive:{}:{tag}", archive.display())),
        )?;
    }
    eprintln!("built {tag} (podman and buildah see it; `podman save` it for other runtimes)");
    Ok(())
}

/// Builds the image from the release agent already built; returns its tag.
pub fn build(root: &Path) -> Result<String> {
    let context = root.join("target/image");
    if context.exists() {
        fs::remove_dir_all(&context)
            .with_context(|| format!("cannot clear {}", context.display()))?;
    }
    let agent = crate::agent_path(root);
    procmon_tests::rootfs::assemble(&context.join("rootfs"), &[(&agent, "/usr/bin/procmon")])
        .context("cannot assemble the image's rootfs")?;
    let tag = tag();
    cmd::run(
        Command::new("buildah")
            .args(["build", "--layers=false", "-f"])
            .arg(root.join("deploy/Containerfile"))
            .args(["-t", &tag])
            .arg(&context),
    )
    .context("buildah could not build the image")?;
    Ok(tag)
}
