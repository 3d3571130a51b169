//! prometheus-process-exporter, the /proc-reading peer: it reads /proc for every tracked process
//! at each scrape, so its scrape latency is its time to produce fresh CPU/RSS figures.
use std::{
    fs::{self, File},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{agent, prom};

const BIN: &str = "prometheus-process-exporter";
const SERVICE: &str = "prometheus-process-exporter";
/// Every process with a command line (kernel threads have none), one group per comm: the
/// children all land in group "bench-idle", so the response stays small while /proc is read
/// for each of them.
const CONFIG: &str = "process_names:\n  - name: \"{{.Comm}}\"\n    cmdline:\n    - '.+'\n";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Scrapes {
    /// Latency of each measured scrape, in seconds.
    pub seconds: Vec<f64>,
    /// The exporter's CPU (all threads, Go GC included) per scrape, in seconds.
    pub cpu_seconds_per_scrape: f64,
    pub bytes: usize,
    /// What the exporter says it tracks (namedprocess_namegroup_num_procs, all groups).
    pub processes: f64,
    /// Its resident memory after the scrapes (VmRSS).
    pub rss_bytes: u64,
}

struct Exporter {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn measure(log_dir: &Path, scrapes: usize) -> Result<Scrapes> {
    stop_service();
    let config = log_dir.join("process-exporter.yml");
    fs::write(&config, CONFIG).with_context(|| format!("cannot write {}", config.display()))?;
    let addr = agent::free_port()?;
    let log = log_dir.join("process-exporter.log");
    let mut command = Command::new(BIN);
    command
        .arg("-config.path")
        .arg(&config)
        .arg(format!("-web.listen-address={addr}"))
        // Threads and smaps (PSS) are extra /proc reads per process that procmon does not do:
        // turned off, the comparison is CPU + RSS against CPU + RSS (and favours the exporter).
        .args(["-threads=false", "-gather-smaps=false"]);
    eprintln!(
        "$ {} (log: {})",
        crate::cmd::display(&command),
        log.display()
    );
    let log_file =
        File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    agent::die_with_xtask(&mut command);
    let child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {BIN}: is the Debian package installed?"))?;
    let mut exporter = Exporter { child, addr };
    // The first scrape matches every new process's cmdline once: a warm-up, not measured.
    let warm = wait_ready(&mut exporter)?;
    let processes = prom::parse(&warm.body)?.sum("namedprocess_namegroup_num_procs", &[]);
    let cpu_before = agent::cpu_seconds(exporter.child.id())?;
    let mut seconds = Vec::new();
    let mut bytes = 0;
    for _ in 0..scrapes {
        let response = prom::get(exporter.addr, "/metrics")?;
        if response.status != 200 {
            bail!("GET http://{addr}/metrics returned {}", response.status);
        }
        seconds.push(response.elapsed.as_secs_f64());
        bytes = response.body.len();
    }
    let cpu = agent::cpu_seconds(exporter.child.id())? - cpu_before;
    Ok(Scrapes {
        seconds,
        cpu_seconds_per_scrape: cpu / scrapes as f64,
        bytes,
        processes,
        rss_bytes: agent::rss_bytes(exporter.child.id())?,
    })
}

fn wait_ready(exporter: &mut Exporter) -> Result<prom::Response> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = exporter.child.try_wait()? {
            bail!("{BIN} exited before it served /metrics ({status}); see its log");
        }
        match prom::get(exporter.addr, "/metrics") {
            Ok(response) if response.status == 200 => return Ok(response),
            _ if Instant::now() > deadline => {
                bail!("{BIN} did not serve /metrics within {READY_TIMEOUT:?}")
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The Debian package enables a service on :9256. A second exporter walking /proc every
/// Prometheus interval would load the machine during the measurement, so it is stopped (it
/// stays enabled; the next boot or `systemctl start` brings it back).
fn stop_service() {
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", SERVICE])
        // Without systemd (containers) it says so on stderr: then no service runs either.
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if active {
        let mut stop = Command::new("systemctl");
        stop.args(["stop", SERVICE]);
        if let Err(e) = crate::cmd::run(&mut stop) {
            eprintln!("warning: {e:#}; its scrapes may disturb the measurement");
        }
    }
}
