//! Failure modes of `procmon agent` (contract: bad flags → one line, exit 2, nothing
//! started; environment problems → a message naming what is missing, exit 1, no panic).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

use procmon_tests::{free_loopback_addr, procmon_bin, require_root, run_with_timeout, TempDir};

/// Bounds each run: a misbehaving agent that starts instead of failing is killed, not waited on.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn agent(args: &[&str]) -> Command {
    let mut cmd = Command::new(procmon_bin());
    cmd.arg("agent").args(args);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bogus_flag_is_one_line_and_exit_2() {
    let out = run_with_timeout(&mut agent(&["--bogus"]), RUN_TIMEOUT);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "`procmon agent --bogus` status {}; stderr:\n{err}",
        out.status
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "expected a one-line error, got:\n{err}"
    );
    assert!(
        err.contains("--bogus"),
        "error does not name the bad flag:\n{err}"
    );
}

#[test]
fn port_in_use_is_exit_1_naming_the_address() {
    if !require_root("errors::port_in_use_is_exit_1_naming_the_address") {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new("port-in-use");
    let events = dir.path().join("events.jsonl");
    let out = run_with_timeout(
        &mut agent(&["--listen", &addr, "--events", events.to_str().unwrap()]),
        RUN_TIMEOUT,
    );
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "agent on busy {addr}: status {}; stderr:\n{err}",
        out.status
    );
    assert!(err.contains(&addr), "error does not name {addr}:\n{err}");
    assert!(!err.contains("panicked"), "agent panicked:\n{err}");
}

#[test]
fn unprivileged_is_exit_1_naming_the_capability() {
    if !require_root("errors::unprivileged_is_exit_1_naming_the_capability") {
        return;
    }
    let addr = free_loopback_addr().to_string();
    let mut cmd = agent(&["--listen", &addr]);
    // Become nobody:nogroup with no supplementary groups; euid != 0 drops every capability.
    // SAFETY: the pre_exec closure runs in the forked child before exec and calls only
    // setgroups/setgid/setuid (async-signal-safe; setgroups with size 0 reads no list, so a
    // null pointer is allowed) and reads errno; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "agent as uid 65534: status {}; stderr:\n{err}",
        out.status
    );
    assert!(
        err.contains("CAP_BPF") || err.contains("root"),
        "error names neither CAP_BPF nor root:\n{err}"
    );
    assert!(!err.contains("panicked"), "agent panicked:\n{err}");
}
