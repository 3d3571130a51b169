//! Real containers for the tests: podman with runc and the cgroupfs manager (crun refuses
//! hybrid cgroup hosts like the development VM), from a rootfs of busybox-static and the
//! agent ([`crate::rootfs`]): no registry, no image store. The podman configuration is
//! the test's own (`CONTAINERS_CONF`), so the machine's is neither needed nor changed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{in_ci, procmon_bin, run_with_timeout, TempDir};

/// Where Debian's busybox-static installs.
const BUSYBOX: &str = "/bin/busybox";
/// How long one podman command may take (a container start is a second or two here).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether the container tests can run: root, podman, runc and busybox-static. Panics in CI
/// (a skipped suite would look green), prints the reason and returns false elsewhere.
pub fn require_podman(test: &str) -> bool {
    if !crate::require_root(test) {
        return false;
    }
    let missing: Vec<&str> = [("podman", "podman"), ("runc", "runc")]
        .into_iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, package)| package)
        .chain((!Path::new(BUSYBOX).is_file()).then_some("busybox-static"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "needs the Debian packages {} (cargo xtask test installs them)",
        missing.join(" ")
    );
    if in_ci() {
        panic!("{test}: {why}, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// A podman set up for the tests, with a rootfs holding busybox (as `/bin/sh` and friends)
/// and the agent (`/usr/bin/procmon`). Containers it started are removed on drop.
pub struct Podman {
    dir: TempDir,
    started: std::cell::RefCell<Vec<String>>,
}

impl Podman {
    pub fn new() -> Podman {
        let dir = TempDir::new("podman");
        // runc, not crun; cgroupfs, as there is no systemd to ask for scopes; no default
        // ulimits, since raising RLIMIT_NOFILE needs CAP_SYS_RESOURCE, which this VM lacks.
        fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
             runtime = \"runc\"\nevents_logger = \"file\"\n",
        )
        .expect("writing containers.conf");
        let rootfs = dir.path().join("rootfs");
        let agent = procmon_bin();
        crate::rootfs::assemble(
            &rootfs,
            &[
                (Path::new(BUSYBOX), "/bin/busybox"),
                (agent.as_path(), "/usr/bin/procmon"),
            ],
        )
        .expect("assembling the container rootfs");
        for applet in ["sh", "sleep", "head", "tr", "kill", "cat", "dd"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("linking a busybox applet");
        }
        Podman {
            dir,
            started: Default::default(),
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// `podman <args>` with the tests' configuration.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"));
        cmd
    }

    /// Runs `podman <args>` to completion; panics with its stderr unless it succeeds.
    pub fn run(&self, args: &[&str]) -> String {
        let out = run_with_timeout(self.command().args(args), PODMAN_TIMEOUT);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts a detached container from the rootfs: `podman run -d <flags> --rootfs
    /// ROOTFS <command>`. Returns its full id.
    pub fn start(&self, flags: &[&str], command: &[&str]) -> String {
        let rootfs = self.rootfs();
        let mut args = vec!["run", "-d"];
        args.extend(flags);
        args.extend(["--rootfs", rootfs.to_str().expect("UTF-8 temp path")]);
        args.extend(command);
        let id = self.run(&args);
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "podman run -d printed `{id}`, not a container id"
        );
        self.started.borrow_mut().push(id.clone());
        id
    }

    /// Starts a detached container from `image` (its entrypoint) with `args`. Returns its
    /// full id.
    pub fn start_image(&self, flags: &[&str], image: &str, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend(flags);
        all.push(image);
        all.extend(args);
        let id = self.run(&all);
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "podman run -d printed `{id}`, not a container id"
        );
        self.started.borrow_mut().push(id.clone());
        id
    }

    /// The container's exit code once it has exited (bounded wait).
    pub fn wait(&self, id: &str) -> i32 {
        let code = self.run(&["wait", id]);
        code.parse()
            .unwrap_or_else(|_| panic!("podman wait {id} printed `{code}`"))
    }

    /// What the container wrote to stdout and stderr.
    pub fn logs(&self, id: &str) -> String {
        let out = run_with_timeout(self.command().args(["logs", id]), PODMAN_TIMEOUT);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The pids (host namespace) of the container's processes.
    pub fn pids(&self, id: &str) -> Vec<u32> {
        self.run(&["top", id, "hpid"])
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for id in self.started.borrow().iter() {
            let _ = run_with_timeout(
                self.command().args(["rm", "-f", "-t", "0", id]),
                PODMAN_TIMEOUT,
            );
        }
    }
}
