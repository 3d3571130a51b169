//! The HTTP server cannot be starved: with the agent started at systemd's 1,024-fd soft
//! limit, 1,100 idle connections leave `/metrics` answering and sampling working, and
//! slowloris connections (headers never finished) are closed.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use procmon_tests::{
    free_loopback_addr, http, procmon_bin, require_root, wait_for, Metrics, TempDir,
};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn idle_and_slow_connections_do_not_starve_metrics_or_sampling() {
    if !require_root("http_limits::idle_and_slow_connections_do_not_starve_metrics_or_sampling") {
        return;
    }
    let dir = TempDir::new("http-limits");
    let addr = free_loopback_addr();
    let err_path = dir.path().join("agent.stderr");
    let mut cmd = Command::new(procmon_bin());
    cmd.args([
        "agent",
        "--listen",
        &addr.to_string(),
        "--sample-interval",
        "500ms",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(&err_path).unwrap());
    // SAFETY: pre_exec runs in the forked child before exec; setrlimit is async-signal-safe
    // and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = 1024;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut agent = cmd.spawn().unwrap();
    wait_for(TIMEOUT, || {
        http::get(addr, "/healthz", Duration::from_secs(2))
            .ok()
            .filter(|r| r.status == 200)
    })
    .unwrap_or_else(|| {
        panic!(
            "agent not up: {}",
            fs::read_to_string(&err_path).unwrap_or_default()
        )
    });

    let passes = |m: &Metrics| m.get_or_zero("procmon_sample_duration_seconds_count", &[]);
    let scrape = || {
        let r = http::get(addr, "/metrics", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("/metrics did not answer: {e}"));
        assert_eq!(r.status, 200);
        (Metrics::parse(&r.body).unwrap(), r.elapsed)
    };
    let (before, _) = scrape();

    // 1,100 idle connections (more than the soft limit the agent started with), and 50
    // slowloris ones that start a request and never finish its headers.
    let idle: Vec<TcpStream> = (0..1100)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (during, elapsed) = scrape();
    assert!(
        elapsed < Duration::from_secs(1),
        "/metrics took {elapsed:?} with 1,150 idle connections"
    );
    std::thread::sleep(Duration::from_secs(2));
    let (later, _) = scrape();
    assert!(passes(&later) > passes(&during), "sampling stopped");
    assert!(passes(&during) >= passes(&before));

    // Headers never finished: closed after the header timeout (10 s).
    let started = Instant::now();
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(_) => {} // EOF (0) or a 408 answer, then EOF: closed either way
            Err(e) => panic!(
                "a slowloris connection stayed open past {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    drop(idle);
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    assert!(!stderr.contains("bpf_link_create"), "{stderr}");
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_for(TIMEOUT, || agent.try_wait().unwrap()).expect("agent stops");
    assert!(status.success(), "{stderr}");
}
