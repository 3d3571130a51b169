//! A `procmon agent` under test: started on a free port, read over HTTP and /proc, stopped
//! the way an operator would (SIGTERM).
use std::{
    fs::{self, File},
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::prom;

/// Loading the programs and seeding the tree from /proc takes about a second here; the margin
/// covers slow CI machines.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// USER_HZ: the unit of utime/stime in /proc/<pid>/stat on every Linux architecture we run on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

pub struct Agent {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Agent {
    /// Starts `procmon agent --listen <free port> <args>` and waits until GET /healthz answers
    /// 200.
    pub fn start(bin: &Path, log: &Path, args: &[String]) -> Result<Agent> {
        Self::start_with_env(bin, log, args, &[])
    }

    /// [`Agent::start`] with these environment variables set.
    pub fn start_with_env(
        bin: &Path,
        log: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let addr = free_port()?;
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(bin);
        command
            .args(["agent", "--listen", &addr.to_string()])
            .args(args)
            .envs(env.iter().copied());
        eprintln!(
            "$ {} (log: {})",
            crate::cmd::display(&command),
            log.display()
        );
        // The log goes to a file, not a pipe: nobody reads a pipe while stress-ng runs, and a
        // full pipe would stall the agent and skew the measurement.
        die_with_xtask(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut agent = Agent {
            child,
            addr,
            log: log.to_path_buf(),
        };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the agent exited before it was ready ({status}){}",
                    self.log_tail()
                );
            }
            if prom::get(self.addr, "/healthz").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "GET http://{}/healthz did not return 200 within {READY_TIMEOUT:?}{}",
                    self.addr,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sum of every `procmon_events_lost_total` series (0 when the agent exports none yet).
    pub fn lost_events(&self) -> Result<f64> {
        Ok(prom::parse(&self.metrics()?.body)?.sum("procmon_events_lost_total", &[]))
    }

    /// One scrape of /metrics, timed.
    pub fn metrics(&self) -> Result<prom::Response> {
        let response = prom::get(self.addr, "/metrics")?;
        if response.status != 200 {
            bail!(
                "GET http://{}/metrics returned {}",
                self.addr,
                response.status
            );
        }
        Ok(response)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time the agent has used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.child.id()).context("did the agent die?")
    }

    /// Resident memory (anonymous and file-backed) from /proc/PID/status.
    pub fn rss_bytes(&self) -> Result<u64> {
        self.status_bytes("VmRSS")
    }

    /// Resident anonymous memory (heap, stacks): RSS without the file pages the agent maps
    /// (its binary, and the binaries and debug info the symbolizer reads), which the kernel
    /// can drop and which other processes share.
    pub fn rss_anon_bytes(&self) -> Result<u64> {
        self.status_bytes("RssAnon")
    }

    fn status_bytes(&self, field: &str) -> Result<u64> {
        let pid = self.child.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status: did the agent die?"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    }

    /// Whether the agent process is still running (not exited, not reaped).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SIGTERM, then wait: the contract promises a clean exit (status 0) on it.
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            bail!(
                "cannot send SIGTERM to the agent: {}",
                std::io::Error::last_os_error()
            );
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "the agent exited with {status} after SIGTERM{}",
                        self.log_tail()
                    );
                }
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the agent did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed it){}",
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("\nlast lines of {}:\n{tail}", self.log.display())
    }
}

impl Drop for Agent {
    /// An agent left behind would keep its probes attached and skew every later run.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User plus system CPU time process `pid` has used so far, all its threads, in ticks of 10 ms.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu_seconds(&stat).with_context(|| format!("unexpected {path}: {stat:?}"))
}

/// Resident memory of process `pid` now (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no VmRSS in {path}"))
}

/// SIGTERM to the child when xtask dies without unwinding (SIGKILL, a second Ctrl-C), so no
/// agent or exporter outlives the bench, probes attached or /proc being read.
pub fn die_with_xtask(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as a pre_exec hook must be.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        })
    };
}

/// A port nobody listens on right now; the server under test binds it a moment later.
pub fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a local port")?;
    Ok(listener.local_addr()?)
}

/// utime + stime from /proc/<pid>/stat; fields are counted after the `(comm)`, which may itself
/// contain spaces and parentheses.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state) in proc(5), so utime (14) and stime (15) are 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_from_stat_with_odd_comm() {
        let stat =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
    }

    #[test]
    fn cpu_seconds_of_this_process() {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_cpu_seconds(&stat).is_some());
    }
}
