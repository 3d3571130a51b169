//! Harness for the privileged end-to-end tests: starts the real `procmon` agent (which loads
//! the real eBPF programs), talks to its HTTP endpoints and reads its JSON-lines event file.
//!
//! Everything here panics with a message instead of returning `Result`: a failed assertion
//! in a privileged test must say where and why (aya's `test/README.md` habit).

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cgroup;
pub mod container;
pub mod daemonset;
pub mod hot;
pub mod http;
pub mod kmsg;
pub mod memcg;
pub mod prom;
pub mod rootfs;
pub mod sse;
pub mod workload;

pub use http::http_get;
pub use prom::{Metrics, Sample};

/// How long the agent may take to load and attach its programs and start serving.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd agent may take to shut down before it is SIGKILLed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// `CI=true` (or `1`): privileged tests must run, never skip.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Whether the test may go on: true as root. Otherwise it panics in CI (a skipped privileged
/// suite would look green) and prints the reason and returns false elsewhere.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no arguments or preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if in_ci() {
        panic!("{test}: needs root and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root; run it as root");
    false
}

/// Like [`require_root`] for an external tool the test depends on.
pub fn require_tool(test: &str, tool: &str, why: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        return true;
    }
    if in_ci() {
        panic!("{test}: `{tool}` not found in PATH ({why}) and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: `{tool}` not found in PATH ({why})");
    false
}

/// The agent binary: `$PROCMON_BIN` (set by `cargo xtask test`), else the workspace's
/// release build.
pub fn procmon_bin() -> PathBuf {
    let path = match std::env::var_os("PROCMON_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/procmon"),
    };
    assert!(
        path.is_file(),
        "agent binary {} not found: build it with cargo build --release -p procmon-user \
         (or set PROCMON_BIN)",
        path.display()
    );
    path
}

/// A directory under the system temp dir, removed on drop unless the test is panicking
/// (then it is kept and its path printed, for the post-mortem).
pub struct TempDir(Option<tempfile::TempDir>);

impl TempDir {
    /// A new, empty directory of its own: the name is unique and created exclusively, so
    /// what an earlier run kept for inspection is never read as this run's.
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("procmon-{tag}-"))
            .tempdir()
            .unwrap_or_else(|e| {
                panic!(
                    "creating a directory in {}: {e}",
                    std::env::temp_dir().display()
                )
            });
        TempDir(Some(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("present until dropped").path()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let dir = self.0.take().expect("present until dropped");
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", dir.keep().display());
        }
    }
}

/// A loopback address with a port that was free a moment ago (the agent binds it next; the
/// window for another process to take it is tiny and only costs a retry of the test).
pub fn free_loopback_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local_addr of a bound listener")
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes (then `None`).
/// The timeout bounds a wait; it is never an assertion about speed.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` with stdout/stderr captured (through files, so a chatty child cannot block on
/// a full pipe), killing it and panicking if it has not exited within `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let dir = TempDir::new("cmd");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("creating stdout file"))
        .stderr(fs::File::create(&err_path).expect("creating stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let status = wait_for(timeout, || child.try_wait().expect("try_wait")).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{cmd:?} still running after {timeout:?}; stderr:\n{}",
            fs::read_to_string(&err_path).unwrap_or_default()
        )
    });
    Output {
        status,
        stdout: fs::read(&out_path).expect("reading stdout file"),
        stderr: fs::read(&err_path).expect("reading stderr file"),
    }
}

/// Runs a workload binary of this crate to completion (bounded) and parses the one JSON
/// line it prints; panics with its stderr if it fails.
pub fn run_workload(path: &str, args: &[&str]) -> Value {
    let out = run_with_timeout(Command::new(path).args(args), Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{path} {args:?} failed with {}; stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{path} printed non-JSON ({e}): {stdout}"))
}

/// A JSON number that must be a pid.
pub fn as_pid(v: &Value) -> u32 {
    v.as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("not a pid: {v}"))
}

/// A running `procmon agent`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Agent {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub events_path: PathBuf,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// Starts `procmon agent --listen 127.0.0.1:PORT --events FILE <extra_args>` and waits
    /// until `/healthz` answers 200. Panics with the agent's stderr if it exits first.
    pub fn start(extra_args: &[&str]) -> Agent {
        let dir = TempDir::new("agent");
        let addr = free_loopback_addr();
        let events_path = dir.path().join("events.jsonl");
        let stderr_path = dir.path().join("agent.stderr");
        let child = Command::new(procmon_bin())
            .arg("agent")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--events")
            .arg(&events_path)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).expect("creating agent stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", procmon_bin().display()));
        let mut agent = Agent {
            child: Some(child),
            addr,
            events_path,
            stderr_path,
            _dir: dir,
        };
        let ready = wait_for(STARTUP_TIMEOUT, || {
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "agent exited during startup with {status}; stderr:\n{}",
                    agent.stderr()
                );
            }
            matches!(http_get(addr, "/healthz"), Ok((200, _))).then_some(())
        });
        if ready.is_none() {
            panic!(
                "agent not healthy on http://{addr}/healthz after {STARTUP_TIMEOUT:?}; stderr:\n{}",
                agent.stderr()
            );
        }
        agent
    }

    /// What the agent wrote to stderr so far.
    /// Starts the agent watching `pid:<pid>` (plus `extra_args`) and waits until the watched
    /// root's series show up, so that a workload released afterwards is attributed from its
    /// start. Returns the agent and the `watch` label.
    pub fn watching(pid: u32, extra_args: &[&str]) -> (Agent, String) {
        let watch = format!("pid:{pid}");
        let mut args = vec!["--watch", watch.as_str()];
        args.extend_from_slice(extra_args);
        let agent = Agent::start(&args);
        let pid_s = pid.to_string();
        let found = wait_for(Duration::from_secs(60), || {
            let m = agent.metrics();
            (m.matching(
                "procmon_watched_cpu_seconds_total",
                &[("watch", &watch), ("pid", &pid_s)],
            )
            .count()
                == 1)
                .then_some(())
        });
        if found.is_none() {
            panic!(
                "no procmon_watched_cpu_seconds_total{{watch=\"{watch}\",pid=\"{pid}\"}} within \
                 60 s of starting the agent with --watch {watch}; /metrics:\n{}",
                agent.scrape()
            );
        }
        (agent, watch)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent already stopped").id()
    }

    /// The `/metrics` text; panics unless the answer is 200.
    pub fn scrape(&self) -> String {
        match http_get(self.addr, "/metrics") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET /metrics answered {status}: {body}"),
            Err(e) => panic!(
                "GET http://{}/metrics: {e}; agent stderr:\n{}",
                self.addr,
                self.stderr()
            ),
        }
    }

    /// `/metrics`, parsed.
    pub fn metrics(&self) -> Metrics {
        let text = self.scrape();
        Metrics::parse(&text).unwrap_or_else(|e| panic!("unparsable /metrics: {e}\n{text}"))
    }

    /// Every complete line of the events file so far (a trailing line without its newline
    /// is still being written and is left for the next call).
    pub fn events(&self) -> Vec<Value> {
        let text = match fs::read_to_string(&self.events_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("reading {}: {e}", self.events_path.display()),
        };
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Sends SIGTERM and waits for the agent to exit; returns its status and stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let status = self.terminate();
        (status, self.stderr())
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        // SAFETY: kill takes no pointers; the agent is our unreaped child, so its pid cannot
        // have been reused by another process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        match wait_for(SHUTDOWN_TIMEOUT, || child.try_wait().expect("try_wait")) {
            Some(status) => status,
            None => {
                eprintln!("agent ignored SIGTERM for {SHUTDOWN_TIMEOUT:?}; killing it");
                let _ = child.kill();
                child.wait().expect("waiting for the killed agent")
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- agent stderr ---\n{}--- end agent stderr ---",
                self.stderr()
            );
        }
    }
}

/// `procmon <args>` (e.g. `run --json FILE -- CMD`), not yet spawned: run it with
/// [`run_with_timeout`].
pub fn procmon(args: &[&str]) -> Command {
    let mut cmd = Command::new(procmon_bin());
    cmd.args(args);
    cmd
}

/// Bounds how long a [`Workload`] may take to exit once its stdin is closed.
const WORKLOAD_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A workload binary of this crate that runs alongside the agent, following one protocol:
/// it starts, blocks until it reads a byte on stdin ([`Workload::release`]), does its work,
/// prints one JSON line ([`Workload::report`]) and then stays alive (so it can be watched
/// and scraped) until its stdin is closed ([`Workload::finish`], or drop, which also kills
/// it if it does not exit).
pub struct Workload {
    name: String,
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Workload {
    pub fn spawn(path: &str, args: &[&str]) -> Workload {
        let name = Path::new(path)
            .file_name()
            .map_or(path.into(), |n| n.to_string_lossy().into_owned());
        let dir = TempDir::new(&format!("workload-{name}"));
        let stdout_path = dir.path().join("stdout");
        let stderr_path = dir.path().join("stderr");
        let mut child = Command::new(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&stdout_path).expect("creating workload stdout file"))
            .stderr(fs::File::create(&stderr_path).expect("creating workload stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {path}: {e}"));
        let stdin = child.stdin.take();
        Workload {
            name,
            child: Some(child),
            stdin,
            stdout_path,
            stderr_path,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("workload already finished").id()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Lets the workload start its work.
    pub fn release(&mut self) {
        let stdin = self.stdin.as_mut().expect("workload stdin already closed");
        stdin
            .write_all(b"\n")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("releasing {}: {e}; stderr:\n{}", self.name, self.stderr()));
    }

    /// Waits (bounded) for the workload's JSON report line and parses it. Panics with its
    /// stderr if it exits first or prints something that is not JSON.
    pub fn report(&mut self, timeout: Duration) -> Value {
        self.report_line(0, timeout)
    }

    /// Like [`Workload::report`], for the workload's `index`-th line (0 is the first), for
    /// workloads that report more than once.
    pub fn report_line(&mut self, index: usize, timeout: Duration) -> Value {
        let line = wait_for(timeout, || {
            let text = fs::read_to_string(&self.stdout_path).unwrap_or_default();
            let complete: Vec<&str> = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .collect();
            if let Some(line) = complete.get(index) {
                return Some(line.to_string());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "{} exited with {status} before reporting; stdout:\n{text}\nstderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            None
        })
        .unwrap_or_else(|| {
            panic!(
                "{} printed no report line {index} within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            )
        });
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("{} printed non-JSON ({e}): {line}", self.name))
    }

    /// Closes stdin (the workload's signal to end) and waits for it to exit; kills it if it
    /// does not within a bound.
    pub fn finish(mut self) -> ExitStatus {
        self.end()
    }

    fn end(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        let mut child = self.child.take().expect("workload already finished");
        match wait_for(WORKLOAD_EXIT_TIMEOUT, || {
            child.try_wait().expect("try_wait")
        }) {
            Some(status) => status,
            None => {
                eprintln!(
                    "{} still running {WORKLOAD_EXIT_TIMEOUT:?} after its stdin closed; killing it",
                    self.name
                );
                let _ = child.kill();
                child.wait().expect("waiting for the killed workload")
            }
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.end();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} stderr ---\n{}--- end {} stderr ---",
                self.name,
                self.stderr(),
                self.name
            );
        }
    }
}

/// How many events of one `kind` have parent `ppid`.
pub fn count_children(events: &[Value], kind: &str, ppid: u32) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["ppid"] == ppid)
        .count()
}

/// Events of one `kind` for one `pid`.
pub fn events_for<'a>(events: &'a [Value], kind: &str, pid: u32) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["pid"] == pid)
        .collect()
}
