//! The peers procmon is compared with: libbpf-tools' `exitsnoop` and `execsnoop` (Debian
//! package `libbpf-tools`, installed as /usr/sbin/exitsnoop and /usr/sbin/execsnoop), both
//! running, output to /dev/null: together they see about what procmon's lifecycle probes
//! see (exits with status, execs with arguments), with none of procmon's bookkeeping.
use std::{
    collections::HashSet,
    fs::File,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{agent, bpf};

pub const TOOLS: [&str; 2] = ["/usr/sbin/exitsnoop", "/usr/sbin/execsnoop"];
/// Loading and attaching takes well under a second here; the margin is for loaded machines.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// The tools print nothing we can wait for (their output goes to /dev/null), so "attached" is
/// their set of BPF link fds not changing for this long.
const SETTLED: Duration = Duration::from_millis(300);

pub struct Peers {
    children: Vec<Child>,
}

impl Peers {
    /// Starts both tools and returns once their programs are attached. Their stderr goes to
    /// `log_dir/peer-<tool>.log`.
    pub fn start(log_dir: &Path) -> Result<Peers> {
        let mut peers = Peers {
            children: Vec::new(),
        };
        for tool in TOOLS {
            let name = Path::new(tool).file_name().unwrap().to_string_lossy();
            let log = log_dir.join(format!("peer-{name}.log"));
            let stderr =
                File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
            let mut command = Command::new(tool);
            agent::die_with_xtask(&mut command);
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .with_context(|| format!("cannot start {tool} (Debian package libbpf-tools)"))?;
            peers.children.push(child);
        }
        for child in &mut peers.children {
            wait_attached(child)?;
        }
        Ok(peers)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// User plus system CPU time both tools have used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        self.pids()
            .into_iter()
            .map(|pid| agent::cpu_seconds(pid).context("did a peer tool die?"))
            .sum()
    }

    /// Every program the tools hold.
    pub fn snapshot(&self) -> Result<Vec<bpf::Prog>> {
        bpf::snapshot_programs(&self.pids(), |_| true)
    }

    /// SIGINT, as a user stops them, then wait.
    pub fn stop(mut self) -> Result<()> {
        for child in &self.children {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    bail!("peer tool pid {} ignored SIGINT for 10 s", child.id());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Peers {
    /// A peer left behind would keep its probes attached and skew every later run.
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn wait_attached(child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let (mut last, mut since): (HashSet<u32>, Instant) = (HashSet::new(), Instant::now());
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "peer tool pid {} exited before attaching ({status}); see target/bench/peer-*.log",
                child.id()
            );
        }
        let links = bpf::fd_link_ids(child.id());
        if links != last {
            (last, since) = (links, Instant::now());
        } else if !last.is_empty() && since.elapsed() >= SETTLED {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "peer tool pid {} attached no BPF link within {ATTACH_TIMEOUT:?}",
                child.id()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}
