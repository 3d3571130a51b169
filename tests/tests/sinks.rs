//! The events output failing under the agent, with real files, pipes and FIFOs: a full
//! disk (/dev/full), stdout closed by `| head`, a FIFO nobody reads at start, a reader that
//! stops reading at shutdown, log rotation (SIGHUP), and `--listen` on port 0.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use procmon_tests::{
    http_get, procmon_bin, require_root, run_with_timeout, wait_for, Metrics, TempDir,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// `procmon agent --listen 127.0.0.1:0 ARGS`, stderr to a file; returns the child and the
/// address it says it listens on.
fn start(dir: &Path, args: &[&str], stdout: Stdio) -> (Child, SocketAddr) {
    let err = dir.join("agent.stderr");
    let child = Command::new(procmon_bin())
        .args(["agent", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let addr = wait_for(TIMEOUT, || {
        let text = fs::read_to_string(&err).unwrap_or_default();
        let at = text.find("listening on http://")?;
        let rest = &text[at + "listening on http://".len()..];
        rest.lines().next()?.trim().parse::<SocketAddr>().ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "no ready line: {}",
            fs::read_to_string(&err).unwrap_or_default()
        )
    });
    assert_ne!(
        addr.port(),
        0,
        "--listen 127.0.0.1:0 names the port it bound"
    );
    (child, addr)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo {}", path.display());
}

fn stderr_of(dir: &Path) -> String {
    fs::read_to_string(dir.join("agent.stderr")).unwrap_or_default()
}

fn terminate(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_for(TIMEOUT, || child.try_wait().unwrap()).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the agent ignored SIGTERM for {TIMEOUT:?}")
    });
    (status, started.elapsed())
}

/// Some events: processes that start and exit.
fn churn(n: usize) {
    for _ in 0..n {
        Command::new("true").status().unwrap();
    }
}

#[test]
fn a_full_disk_is_counted_logged_once_and_shown_in_healthz() {
    if !require_root("sinks::a_full_disk_is_counted_logged_once_and_shown_in_healthz") {
        return;
    }
    let dir = TempDir::new("sink-full");
    let (mut agent, addr) = start(dir.path(), &["--events", "/dev/full"], Stdio::null());
    churn(20);
    let lost = wait_for(TIMEOUT, || {
        let (_, body) = http_get(addr, "/metrics").ok()?;
        let m = Metrics::parse(&body).ok()?;
        let n = m.get_or_zero(
            "procmon_events_lost_total",
            &[("kind", "unknown"), ("reason", "sink_error")],
        );
        (n >= 20.0).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "sink errors not counted; stderr:\n{}",
            stderr_of(dir.path())
        )
    });
    assert!(lost >= 20.0);
    let (status, body) = http_get(addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.starts_with("degraded:") && body.contains("No space left"),
        "{body}"
    );
    churn(5);
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = terminate(&mut agent);
    assert!(status.success());
    let err = stderr_of(dir.path());
    assert_eq!(
        err.matches("cannot write events to /dev/full").count(),
        1,
        "logged once:\n{err}"
    );
}

#[test]
fn closed_stdout_stops_the_agent_with_a_message() {
    if !require_root("sinks::closed_stdout_stops_the_agent_with_a_message") {
        return;
    }
    let dir = TempDir::new("sink-pipe");
    let (mut agent, _) = start(dir.path(), &["--events", "-"], Stdio::piped());
    // `| head -n 3`: read three lines, then close the pipe.
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..3 {
        churn(2);
        line.clear();
        out.read_line(&mut line).unwrap();
    }
    drop(out);
    let status = wait_for(TIMEOUT, || {
        churn(2);
        agent.try_wait().unwrap()
    })
    .unwrap_or_else(|| {
        let _ = agent.kill();
        panic!("the agent kept running with its stdout closed")
    });
    assert_eq!(status.code(), Some(1), "{}", stderr_of(dir.path()));
    assert!(
        stderr_of(dir.path()).contains("the events output (stdout) was closed"),
        "{}",
        stderr_of(dir.path())
    );
}

#[test]
fn a_fifo_without_reader_is_refused_at_start() {
    if !require_root("sinks::a_fifo_without_reader_is_refused_at_start") {
        return;
    }
    let dir = TempDir::new("sink-fifo-start");
    let fifo = dir.path().join("events.fifo");
    mkfifo(&fifo);
    let out = run_with_timeout(
        Command::new(procmon_bin()).args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--events",
            fifo.to_str().unwrap(),
        ]),
        TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a FIFO that nobody reads"), "{err}");
}

#[test]
fn sigterm_does_not_wait_for_a_reader_that_stopped_reading() {
    if !require_root("sinks::sigterm_does_not_wait_for_a_reader_that_stopped_reading") {
        return;
    }
    let dir = TempDir::new("sink-fifo-stall");
    let fifo = dir.path().join("events.fifo");
    mkfifo(&fifo);
    // A reader that opens the FIFO and never reads: the pipe fills, writes block.
    let mut reader = Command::new("sh")
        .arg("-c")
        .arg(format!("exec sleep 60 < {}", fifo.display()))
        .spawn()
        .unwrap();
    let (mut agent, _) = start(
        dir.path(),
        &["--events", fifo.to_str().unwrap()],
        Stdio::null(),
    );
    churn(400); // more than a pipe holds
    std::thread::sleep(Duration::from_secs(1));
    let (status, took) = terminate(&mut agent);
    let _ = reader.kill();
    let _ = reader.wait();
    assert!(status.success(), "{}", stderr_of(dir.path()));
    assert!(
        took < Duration::from_secs(2),
        "shutdown took {took:?}: {}",
        stderr_of(dir.path())
    );
    assert!(
        stderr_of(dir.path()).contains("stopping without them"),
        "{}",
        stderr_of(dir.path())
    );
}

#[test]
fn sighup_reopens_a_rotated_events_file() {
    if !require_root("sinks::sighup_reopens_a_rotated_events_file") {
        return;
    }
    let dir = TempDir::new("sink-rotate");
    let path = dir.path().join("events.jsonl");
    let (mut agent, _) = start(
        dir.path(),
        &["--events", path.to_str().unwrap()],
        Stdio::null(),
    );
    churn(3);
    wait_for(TIMEOUT, || fs::metadata(&path).ok().filter(|m| m.len() > 0)).expect("events written");
    let rotated = dir.path().join("events.jsonl.1");
    fs::rename(&path, &rotated).unwrap();
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGHUP) };
    wait_for(TIMEOUT, || {
        stderr_of(dir.path())
            .contains("reopened events file")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no reopen: {}", stderr_of(dir.path())));
    churn(3);
    let fresh = wait_for(TIMEOUT, || {
        fs::read_to_string(&path)
            .ok()
            .filter(|t| t.lines().count() >= 3)
    })
    .expect("events in the reopened file");
    for line in fresh.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let (status, _) = terminate(&mut agent);
    assert!(
        status.success(),
        "SIGHUP did not kill it: {}",
        stderr_of(dir.path())
    );
}

#[test]
fn procmon_run_says_when_its_report_cannot_be_written() {
    if !require_root("sinks::procmon_run_says_when_its_report_cannot_be_written") {
        return;
    }
    let out = run_with_timeout(
        Command::new(procmon_bin()).args([
            "run",
            "--json",
            "/dev/full",
            "--",
            "sh",
            "-c",
            "exit 3",
        ]),
        TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write the --json report to /dev/full"),
        "{err}"
    );
}
