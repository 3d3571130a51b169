//! Harness for the privileged end-to-end tests: starts the real `procmon` agent (which loads
//! the real eBPF programs), talks to its HTTP endpoints and reads its JSON-lines event file.
//!
//! Everything here panics with a message instead of returning `Result`: a failed assertion
//! in a privileged test must say where and why (aya's `test/README.md` habit).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod kmsg;
pub mod memcg;
pub mod sse;
pub mod workload;

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
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("procmon-{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
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

/// A minimal HTTP/1.0 GET: (status, body). HTTP/1.0 with `Connection: close` means the body
/// ends at EOF; chunked bodies are still decoded in case a server answers with them anyway.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("bad chunked body"))?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
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
        let line = wait_for(timeout, || {
            let text = fs::read_to_string(&self.stdout_path).unwrap_or_default();
            if let Some(i) = text.find('\n') {
                return Some(text[..i].to_string());
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
                "{} printed no report within {timeout:?}; stderr:\n{}",
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

/// Events of one `kind` for one `pid`.
pub fn events_for<'a>(events: &'a [Value], kind: &str, pid: u32) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["pid"] == pid)
        .collect()
}

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the Prometheus text exposition format (version 0.0.4): `#` lines are skipped,
    /// label values are unescaped, an optional timestamp after the value is ignored.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let samples = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, l)| parse_sample(l).map_err(|e| format!("line {}: {e}: {l:?}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Metrics { samples })
    }

    /// All series of metric `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the series with exactly these labels, if it is exported.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| {
                s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Series of metric `name` whose labels include all of `labels` (others may be present).
    pub fn matching<'a: 'b, 'b>(
        &'a self,
        name: &'b str,
        labels: &'b [(&'b str, &'b str)],
    ) -> impl Iterator<Item = &'a Sample> + 'b {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of [`Metrics::matching`] series (0 when there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// [`Metrics::get`], with a series not (yet) exported counting as 0: counter vectors
    /// usually appear only once a label value is first incremented.
    pub fn get_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let line = line.trim();
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    let valid_name = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start();
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = r.split_once('=').ok_or("label without '='")?;
            let key = key.trim();
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            let after = after
                .trim_start()
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let (value, after) = unescape_label_value(after)?;
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("duplicate label {key:?}"));
            }
            r = after.trim_start();
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value.parse().map_err(|_| format!("bad value {value:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing garbage".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads a label value up to its closing quote; returns it unescaped and the text after it.
fn unescape_label_value(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                other => return Err(format!("bad escape {other:?} in label value")),
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP procmon_process_exits_total Processes that exited, by outcome.
# TYPE procmon_process_exits_total counter
procmon_process_exits_total{outcome="clean"} 42
procmon_process_exits_total{outcome="crashed"} 1
procmon_processes_live 301
# TYPE procmon_ringbuf_reader_lag_seconds histogram
procmon_ringbuf_reader_lag_seconds_bucket{le="0.001"} 7
procmon_ringbuf_reader_lag_seconds_bucket{le="+Inf"} 9
procmon_ringbuf_reader_lag_seconds_sum 1.5e-3
procmon_events_lost_total{kind="exit", reason="ringbuf_full",} 0 1700000000000

weird{path="C:\\dir\"x\"\nnext"} NaN
"#;

    #[test]
    fn parses_names_labels_values() {
        let m = Metrics::parse(PAGE).expect("valid page");
        assert_eq!(m.samples.len(), 8);
        assert_eq!(
            m.get("procmon_process_exits_total", &[("outcome", "clean")]),
            Some(42.0)
        );
        assert_eq!(m.get("procmon_processes_live", &[]), Some(301.0));
        assert_eq!(
            m.get(
                "procmon_ringbuf_reader_lag_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(9.0)
        );
        assert_eq!(
            m.get("procmon_ringbuf_reader_lag_seconds_sum", &[]),
            Some(0.0015)
        );
        assert_eq!(
            m.get(
                "procmon_events_lost_total",
                &[("kind", "exit"), ("reason", "ringbuf_full")]
            ),
            Some(0.0),
            "spaces after commas, a trailing comma and a timestamp are all allowed"
        );
        let weird = m.series("weird").next().expect("weird sample");
        assert_eq!(weird.labels["path"], "C:\\dir\"x\"\nnext");
        assert!(weird.value.is_nan());
    }

    #[test]
    fn get_needs_the_exact_label_set() {
        let m = Metrics::parse(PAGE).unwrap();
        assert_eq!(m.get("procmon_process_exits_total", &[]), None);
        assert_eq!(
            m.get("procmon_events_lost_total", &[("kind", "exit")]),
            None
        );
        assert_eq!(
            m.get_or_zero("procmon_process_exits_total", &[("outcome", "error")]),
            0.0
        );
        assert_eq!(m.series("procmon_process_exits_total").count(), 2);
    }

    #[test]
    fn matching_is_a_label_subset() {
        let m = Metrics::parse(PAGE).unwrap();
        assert_eq!(m.matching("procmon_process_exits_total", &[]).count(), 2);
        assert_eq!(
            m.matching("procmon_events_lost_total", &[("kind", "exit")])
                .count(),
            1
        );
        assert_eq!(m.sum("procmon_process_exits_total", &[]), 43.0);
        assert_eq!(
            m.sum("procmon_process_exits_total", &[("outcome", "error")]),
            0.0
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "no_value",
            "x{a=\"1\"}",
            "x{a=1} 2",
            "x{a=\"1} 2",
            "x{a=\"\\t\"} 1",
            "x{a=\"1\",a=\"2\"} 1",
            "x 1 2 3",
            "x one",
            "1x 1",
            "x 1 1.5",
        ] {
            assert!(Metrics::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n").as_deref(),
            Some("abcde")
        );
        assert_eq!(dechunk("5\r\nab\r\n"), None);
    }
}
