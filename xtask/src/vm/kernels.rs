//! Debian cloud kernels for the matrix: resolved through a private apt state (so the
//! machine's own sources stay untouched) and cached as .deb plus extracted vmlinuz under
//! target/vm/kernels/.
use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const MAIN: &str = "http://deb.debian.org/debian";

/// A kernel of the matrix: the metapackage of one suite that names it.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// What `--kernel` calls it.
    pub name: &'static str,
    uri: &'static str,
    suite: &'static str,
    /// Depends on the concrete `linux-image-<abi>-cloud-amd64`.
    meta: &'static str,
    /// Run both vCPUs on one host thread (`-accel tcg,thread=single`) instead of one each.
    pub single_tcg_thread: bool,
}

pub const ALL: [Spec; 4] = [
    Spec {
        name: "5.10",
        uri: SECURITY,
        suite: "bullseye-security",
        meta: "linux-image-cloud-amd64",
        single_tcg_thread: false,
    },
    Spec {
        name: "6.1",
        uri: SECURITY,
        suite: "bookworm-security",
        meta: "linux-image-cloud-amd64",
        single_tcg_thread: false,
    },
    // NB: bookworm-security carries 6.12 as a separate LTS flavour (for the upgrade path to
    // trixie) and is ahead of bookworm-backports' 6.12, so take it from there.
    Spec {
        name: "6.12",
        uri: SECURITY,
        suite: "bookworm-security",
        meta: "linux-image-6.12-cloud-amd64",
        single_tcg_thread: false,
    },
    // NB: 7.3 under multi-threaded TCG intermittently dies with "Oops: int3" at the
    // sched_switch tracepoint's patch site in __schedule (2 of 4 guests, each time an agent
    // attached and the static key was flipped by text_poke_bp while the other vCPU was
    // scheduling); with both vCPUs on one host thread it has not happened (0 of 3). 6.12 and
    // older never showed it, and keep two truly parallel vCPUs, which finds more races.
    // procmon no longer attaches to sched_switch; 7.3 stays on one host thread until a run
    // with two shows the oops is gone.
    Spec {
        name: "newest",
        uri: MAIN,
        suite: "trixie-backports",
        meta: "linux-image-cloud-amd64",
        single_tcg_thread: true,
    },
];

pub fn spec(name: &str) -> Result<Spec> {
    ALL.iter()
        .copied()
        .find(|s| s.name == name)
        .with_context(|| {
            let names: Vec<_> = ALL.iter().map(|s| s.name).collect();
            format!(
                "unknown kernel {name:?}: choose one of {} or all",
                names.join(", ")
            )
        })
}

/// A downloaded kernel, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: &'static str,
    pub single_tcg_thread: bool,
    /// The package that holds vmlinuz, and its version: what the report names.
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
}

/// Fetches kernels, updating each suite's index at most once per run.
pub struct Fetcher {
    dir: PathBuf,
    updated: HashSet<&'static str>,
}

impl Fetcher {
    pub fn new(root: &Path) -> Fetcher {
        Fetcher {
            dir: root.join("target/vm"),
            updated: HashSet::new(),
        }
    }

    /// The newest kernel `spec` names, downloaded unless the cache already has it. With the
    /// mirror unreachable, the kernel resolved last time is used if it is cached.
    pub fn fetch(&mut self, spec: Spec) -> Result<Kernel> {
        let kernels = self.dir.join("kernels");
        fs::create_dir_all(&kernels).with_context(|| format!("creating {}", kernels.display()))?;
        let record = kernels.join(format!("{}.resolved", spec.name));
        let (package, version) = match self.resolve(spec) {
            Ok(resolved) => resolved,
            Err(e) => {
                let cached = fs::read_to_string(&record).ok().and_then(|r| {
                    let (p, v) = r.trim().split_once(' ')?;
                    let k = cached_vmlinuz(&kernels, p, v);
                    k.is_file().then(|| (p.to_string(), v.to_string()))
                });
                let Some(cached) = cached else { return Err(e) };
                eprintln!(
                    "warning: {e:#}\nusing the cached {} kernel {} {}",
                    spec.name, cached.0, cached.1
                );
                cached
            }
        };
        let vmlinuz = cached_vmlinuz(&kernels, &package, &version);
        if !vmlinuz.is_file() {
            self.download(spec, &kernels, &package, &version, &vmlinuz)?;
        }
        fs::write(&record, format!("{package} {version}\n"))
            .with_context(|| format!("writing {}", record.display()))?;
        Ok(Kernel {
            name: spec.name,
            single_tcg_thread: spec.single_tcg_thread,
            package,
            version,
            vmlinuz,
        })
    }

    /// The package holding vmlinuz and its version: the metapackage's `linux-image-*`
    /// dependency, or (7.x onwards, where the image package only ties the parts together)
    /// that package's `linux-binary-*` dependency.
    fn resolve(&mut self, spec: Spec) -> Result<(String, String)> {
        self.update(spec)?;
        let meta = self.show(spec, spec.meta)?;
        let image = dependency(&meta, "linux-image-").with_context(|| {
            format!(
                "{} in {} depends on no linux-image-* package: has Debian renamed the \
                 kernel packages? Update xtask/src/vm/kernels.rs",
                spec.meta, spec.suite
            )
        })?;
        let fields = self.show(spec, &image)?;
        let package = dependency(&fields, "linux-binary-").unwrap_or(image);
        let fields = self.show(spec, &package)?;
        let version = field(&fields, "Version")
            .with_context(|| format!("apt-cache show {package} names no Version"))?;
        Ok((package, version.to_string()))
    }

    fn update(&mut self, spec: Spec) -> Result<()> {
        if self.updated.contains(spec.suite) {
            return Ok(());
        }
        let state = self.state(spec);
        for dir in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(state.join(dir))
                .with_context(|| format!("creating {}", state.join(dir).display()))?;
        }
        fs::write(
            state.join("sources.list"),
            format!(
                "deb [signed-by={KEYRING}] {} {} main\n",
                spec.uri, spec.suite
            ),
        )?;
        if !state.join("status").exists() {
            fs::write(state.join("status"), "")?;
        }
        let out = cmd::output(self.apt("apt-get", spec).args(["-q", "update"]))?;
        if !out.status.success() {
            bail!(
                "cannot fetch the package index of {} from {}: check network access to \
                 deb.debian.org (and that debian-archive-keyring is installed)\n{}",
                spec.suite,
                spec.uri,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.updated.insert(spec.suite);
        Ok(())
    }

    fn show(&self, spec: Spec, package: &str) -> Result<String> {
        let out = cmd::output(
            self.apt("apt-cache", spec)
                .args(["show", "--no-all-versions"])
                .arg(package),
        )?;
        if !out.status.success() {
            bail!(
                "{package} is not in {} ({}): the mirror no longer serves it, or the kernel \
                 table in xtask/src/vm/kernels.rs is stale\n{}",
                spec.suite,
                spec.uri,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn download(
        &self,
        spec: Spec,
        kernels: &Path,
        package: &str,
        version: &str,
        vmlinuz: &Path,
    ) -> Result<()> {
        eprintln!("downloading {package} {version} ({} kernel)", spec.name);
        // A scratch directory per attempt, so an interrupted download never looks cached.
        let scratch = kernels.join(format!("{package}.partial"));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)?;
        let out = cmd::output(
            self.apt("apt-get", spec)
                .current_dir(&scratch)
                .args(["-q", "download"])
                .arg(format!("{package}={version}")),
        )?;
        if !out.status.success() {
            bail!(
                "downloading {package} {version} from {} failed: check network access to \
                 deb.debian.org\n{}",
                spec.uri,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let deb = only_deb(&scratch)?;
        let tree = scratch.join("tree");
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))
            .with_context(|| format!("extracting {}", deb.display()))?;
        let found = find_vmlinuz(&tree)?.with_context(|| {
            format!("{package} holds no vmlinuz (looked in boot/ and usr/lib/modules/*/)")
        })?;
        let dest_dir = vmlinuz.parent().expect("vmlinuz has a parent");
        fs::create_dir_all(dest_dir)?;
        fs::copy(&found, vmlinuz)
            .with_context(|| format!("copying {} to {}", found.display(), vmlinuz.display()))?;
        // Keep the .deb next to the kernel; the extracted modules are hundreds of MB we
        // never boot with.
        fs::rename(&deb, dest_dir.join(deb.file_name().expect("a file name")))?;
        fs::remove_dir_all(&scratch)?;
        Ok(())
    }

    fn state(&self, spec: Spec) -> PathBuf {
        self.dir.join("apt").join(spec.suite)
    }

    /// An apt command that sees only this suite's private state.
    fn apt(&self, program: &str, spec: Spec) -> Command {
        let state = self.state(spec);
        let opt = |key: &str, value: &Path| format!("{key}={}", value.display());
        let mut c = Command::new(program);
        c.arg("-o")
            .arg(opt("Dir::Etc::SourceList", &state.join("sources.list")))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(opt("Dir::State", &state))
            .arg("-o")
            .arg(opt("Dir::State::status", &state.join("status")))
            .arg("-o")
            .arg(opt("Dir::Cache", &state.join("cache")))
            // Root downloading into root's target/: apt's _apt sandbox user could not write
            // there and would only warn before falling back.
            .args(["-o", "APT::Sandbox::User=root"])
            .args(["-o", "APT::Architecture=amd64"]);
        c
    }
}

fn cached_vmlinuz(kernels: &Path, package: &str, version: &str) -> PathBuf {
    // Debian versions may contain ':' (epochs), which is awkward in paths.
    kernels
        .join(format!("{package}_{}", version.replace(':', "%3a")))
        .join("vmlinuz")
}

/// `boot/vmlinuz-<release>` up to 6.x; from 7.x the `linux-binary-*` package has
/// `usr/lib/modules/<release>/vmlinuz`.
fn find_vmlinuz(tree: &Path) -> Result<Option<PathBuf>> {
    let is_vmlinuz = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n == "vmlinuz" || n.to_string_lossy().starts_with("vmlinuz-"))
    };
    let mut dirs = vec![tree.join("boot")];
    if let Ok(modules) = fs::read_dir(tree.join("usr/lib/modules")) {
        dirs.extend(modules.filter_map(|e| e.ok().map(|e| e.path())));
    }
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_file() && is_vmlinuz(&path) {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

fn only_deb(dir: &Path) -> Result<PathBuf> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    if debs.len() != 1 {
        bail!(
            "expected one .deb in {} after apt-get download, found {}",
            dir.display(),
            debs.len()
        );
    }
    Ok(debs.remove(0))
}

/// The value of `name:` in one apt-cache show stanza.
fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The first dependency whose name starts with `prefix` (alternatives included).
fn dependency(stanza: &str, prefix: &str) -> Option<String> {
    field(stanza, "Depends")?
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .find(|name| name.starts_with(prefix))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_depends_to_the_concrete_package() {
        let meta = "Package: linux-image-cloud-amd64\nVersion: 7.3.4-1~bpo13+1\n\
                    Depends: linux-base-cloud-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-image-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)\n";
        assert_eq!(
            dependency(meta, "linux-image-").as_deref(),
            Some("linux-image-7.3.4+deb13-cloud-amd64")
        );
        let image = "Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                     linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)\n";
        assert_eq!(
            dependency(image, "linux-binary-").as_deref(),
            Some("linux-binary-7.3.4+deb13-cloud-amd64")
        );
        assert_eq!(field(meta, "Version"), Some("7.3.4-1~bpo13+1"));
        assert_eq!(
            dependency("Depends: kmod, linux-base\n", "linux-binary-"),
            None
        );
    }
}
