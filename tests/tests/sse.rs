//! `/events` over a real socket: a reading client gets every event of a 20,000-event burst
//! while another client stays connected without reading, and the agent's memory stays
//! bounded; a late client can replay the kept history; a client that stops reading has its
//! losses counted while it stalls, and when it reads again is told of them and streams on.

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use procmon_tests::{
    as_pid, require_root, run_workload,
    sse::{Message, SseClient},
    wait_for, Agent,
};
use serde_json::Value;

/// 10,000 short-lived children: 20,000 fork + exit events.
const CHILDREN: usize = 10_000;
/// Bounds the wait for the reading client to see the whole burst (not a speed assertion).
const TIMEOUT: Duration = Duration::from_secs(120);
/// The agent's buffers are bounded: 64 Ki events per consumer plus 4096 of history, a few
/// hundred bytes each. Anything far beyond that would mean the stalled client is buffered
/// without bound.
const RSS_GROWTH_LIMIT_KB: u64 = 96 * 1024;

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

#[test]
fn slow_client_never_stalls_a_reading_client_and_memory_stays_bounded() {
    if !require_root("sse::slow_client_never_stalls_a_reading_client_and_memory_stays_bounded") {
        return;
    }
    let agent = Agent::start(&[]);

    // The stalled client: connected, reading nothing, with a small receive buffer.
    let stalled = TcpStream::connect(agent.addr).expect("connecting the stalled client");
    let rcvbuf: libc::c_int = 4096;
    // SAFETY: setsockopt reads size_of_val(&rcvbuf) bytes from the live local `rcvbuf`; the fd
    // belongs to `stalled`, which outlives the call.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            stalled.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of_val(&rcvbuf) as libc::socklen_t,
        );
    }
    use std::io::Write;
    write!(
        &stalled,
        "GET /events HTTP/1.0\r\nHost: {}\r\n\r\n",
        agent.addr
    )
    .unwrap();

    let mut reader = SseClient::connect(agent.addr, "/events?kind=fork,exit", &[]);
    reader.set_timeout(Duration::from_secs(5));
    wait_for(Duration::from_secs(10), || {
        (agent.metrics().get_or_zero("procmon_sse_clients", &[]) >= 2.0).then_some(())
    })
    .expect("both /events clients connected");
    let rss_before = vm_rss_kb(agent.pid());

    // Read in the background while the burst runs, until the burst and its children are gone.
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let collector = thread::spawn(move || {
        let mut messages: Vec<Message> = Vec::new();
        let mut burst_pid: Option<u32> = None;
        // The burst's own exit can come before some of its children's: an exit is held until
        // the process's release, at most RELEASE_WAIT (1 s), and goes out in release order.
        // So reading goes on after it, until every child's exit is in or 3 s have passed.
        let mut burst_exit_at: Option<Instant> = None;
        let mut child_exits = 0;
        let is_exit_of = |m: &Message, field: &str, pid: u32| {
            m.event.as_deref() == Some("exit")
                && serde_json::from_str::<Value>(&m.data).unwrap()[field] == pid
        };
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if burst_pid.is_none() {
                burst_pid = rx.try_recv().ok();
            }
            if let (Some(p), None) = (burst_pid, burst_exit_at) {
                if messages.iter().any(|m| is_exit_of(m, "pid", p)) {
                    burst_exit_at = Some(Instant::now());
                    child_exits = messages.iter().filter(|m| is_exit_of(m, "ppid", p)).count();
                }
            }
            if let Some(at) = burst_exit_at {
                if child_exits >= CHILDREN || at.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
            if let Some(m) = reader.next_message() {
                if burst_exit_at.is_some() && is_exit_of(&m, "ppid", burst_pid.unwrap()) {
                    child_exits += 1;
                }
                messages.push(m);
            }
        }
        messages
    });
    let burst = run_workload(env!("CARGO_BIN_EXE_burst"), &[&CHILDREN.to_string()]);
    let pid = as_pid(&burst["pid"]);
    tx.send(pid).unwrap();
    let messages = collector.join().expect("collector thread");
    let rss_after = vm_rss_kb(agent.pid());

    assert!(
        messages
            .iter()
            .all(|m| m.event.as_deref() != Some("dropped")),
        "the reading client lost events"
    );
    let ids: Vec<u64> = messages
        .iter()
        .map(|m| m.id.expect("every event has an id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    let events: Vec<Value> = messages
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(&m.data)
                .unwrap_or_else(|e| panic!("data is not JSON ({e}): {:?}", m.data));
            assert_eq!(
                Some(v["kind"].as_str().unwrap()),
                m.event.as_deref(),
                "event: = kind"
            );
            v
        })
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["kind"] == "fork" || e["kind"] == "exit"),
        "kind filter"
    );
    let count = |kind: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["ppid"] == pid)
            .count()
    };
    assert_eq!(
        count("fork"),
        CHILDREN,
        "fork events of the burst's children"
    );
    assert_eq!(
        count("exit"),
        CHILDREN,
        "exit events of the burst's children"
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT_KB,
        "agent VmRSS grew from {rss_before} kB to {rss_after} kB with a stalled client"
    );
    eprintln!(
        "agent VmRSS {rss_before} kB -> {rss_after} kB over {} events",
        ids.len()
    );
    drop(stalled);

    // A late client asks for everything: the kept history (4096) comes first, and what is
    // no longer kept is announced as dropped.
    let mut late = SseClient::connect(agent.addr, "/events?since=0&kind=exit", &[]);
    late.set_timeout(Duration::from_secs(5));
    let first = late.next_message().expect("a first message");
    assert_eq!(first.event.as_deref(), Some("dropped"), "{first:?}");
    let dropped: Value = serde_json::from_str(&first.data).unwrap();
    assert!(dropped["dropped"].as_u64().unwrap() > 0, "{first:?}");
    let replayed = late.next_message().expect("a replayed event");
    assert_eq!(replayed.event.as_deref(), Some("exit"));
    // Last-Event-ID resumes right after that event.
    let id = replayed.id.unwrap();
    let mut resumed = SseClient::connect(
        agent.addr,
        "/events?kind=exit",
        &[&format!("Last-Event-ID: {id}")],
    );
    resumed.set_timeout(Duration::from_secs(5));
    let next = resumed
        .next_message()
        .expect("an event after Last-Event-ID");
    assert!(next.id.unwrap() > id, "{next:?} after {id}");
    assert_eq!(next.event.as_deref(), Some("exit"));

    let (status, stderr) = agent.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "clean shutdown with clients connected: {stderr}"
    );
}

/// Bursts of this many children: 20,000 fork and exit events each.
const STALL_BURST: usize = 10_000;
/// 100,000 events: more than a client's buffer (65,536 events) plus what the connection
/// holds on its way (the agent's socket send buffer, up to 4 MiB here, and the client's
/// receive buffer: about 18,000 events measured), so a client that reads nothing through them
/// must lose some.
const STALL_BURSTS: usize = 5;
/// Bounds the wait for the agent to ingest what the bursts forked (not a speed assertion).
const INGEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Once a client's buffer is full, more events replace what it holds: RSS stays where it
/// is, give or take the allocator.
const PLATEAU_SLACK_KB: u64 = 16 * 1024;

/// Events a second that still count as "settled" (see the test).
const SETTLED_NOISE: f64 = 100.0;

/// Lines in the events file: every event the agent published so far.
fn events_published(agent: &Agent) -> usize {
    std::fs::read_to_string(&agent.events_path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// A client's stream as read so far: every event must follow the one before it, or the
/// events a `dropped` message stood for.
#[derive(Default)]
struct Followed {
    read: usize,
    /// `dropped` messages, and the losses they told of.
    dropped_messages: usize,
    told: u64,
    next_id: Option<u64>,
}

impl Followed {
    /// The next message; panics with `what` (where `{told}` is the losses told so far) if
    /// the stream stops, or if an event is missing without a `dropped` message for it.
    fn next(&mut self, client: &mut SseClient, what: &str) -> Message {
        let m = client.next_message().unwrap_or_else(|| {
            panic!(
                "the stream stopped after {} messages {}",
                self.read,
                what.replace("{told}", &self.told.to_string())
            )
        });
        self.read += 1;
        if m.event.as_deref() == Some("dropped") {
            let v: Value = serde_json::from_str(&m.data).unwrap();
            let n = v["dropped"].as_u64().expect("dropped count");
            self.told += n;
            self.dropped_messages += 1;
            self.next_id = self.next_id.map(|id| id + n);
        } else {
            let id = m.id.expect("every event has an id");
            if let Some(want) = self.next_id {
                assert_eq!(id, want, "an event missing without a dropped message");
            }
            self.next_id = Some(id + 1);
        }
        m
    }
}

/// NB: the client keeps the kernel's default receive buffer. With a tiny one (SO_RCVBUF
/// 4 KiB) on loopback, whose 64 KiB MTU makes segments far larger than that buffer, the
/// client's kernel prunes a segment it already advertised room for once it reads again
/// (TcpExtRcvPruned, TCPRcvQDrop), and the agent's kernel, whose retransmission timeout
/// backed off to 6.5 s probing the closed window during the stall (`ss -ti`: backoff:5),
/// resends it only that much later: the stream pauses for seconds after the few hundred
/// messages that were in flight, whatever the agent does (measured with the broadcast hub
/// and with the shared queue alike).
#[test]
fn a_stalled_clients_losses_are_counted_while_it_stalls_and_it_streams_on() {
    if !require_root("sse::a_stalled_clients_losses_are_counted_while_it_stalls_and_it_streams_on")
    {
        return;
    }
    let agent = Agent::start(&[]);
    let mut stalled = SseClient::connect(agent.addr, "/events", &[]);
    wait_for(Duration::from_secs(10), || {
        (agent.metrics().get_or_zero("procmon_sse_clients", &[]) >= 1.0).then_some(())
    })
    .expect("the /events client connected");
    let rss_before = vm_rss_kb(agent.pid());
    let dropped = || {
        agent
            .metrics()
            .get_or_zero("procmon_sse_dropped_events_total", &[])
    };

    // The client reads nothing while the bursts run: its losses must show on /metrics now,
    // not when (if ever) it reads again.
    for _ in 0..STALL_BURSTS {
        run_workload(env!("CARGO_BIN_EXE_burst"), &[&STALL_BURST.to_string()]);
    }
    // The counter once it is at least `at_least` and the agent has ingested what was
    // forked: it moves by less than SETTLED_NOISE events in a second (other processes of the
    // host are events too, and each is now a loss). A host that never quiets down (another
    // fork storm) gets the value at the deadline.
    let settled = |at_least: f64| {
        wait_for(INGEST_TIMEOUT, || {
            let d = dropped();
            if d < at_least {
                return None;
            }
            thread::sleep(Duration::from_secs(1));
            (dropped() - d < SETTLED_NOISE).then_some(d)
        })
        .or_else(|| Some(dropped()).filter(|&d| d >= at_least))
    };
    let counted_while_stalled = settled(1.0).unwrap_or_else(|| {
        panic!(
            "procmon_sse_dropped_events_total is {} after a client stalled through \
             {STALL_BURSTS} bursts of {STALL_BURST} children ({} events published)",
            dropped(),
            events_published(&agent)
        )
    });
    assert_eq!(
        agent.metrics().get_or_zero("procmon_sse_clients", &[]),
        1.0,
        "the stalled client is still connected"
    );
    let rss_full = vm_rss_kb(agent.pid());

    // One more burst, still stalled: every event of it is a loss, counted as it happens. At
    // least half of its 20,000 events must show: the agent may lose some itself.
    run_workload(env!("CARGO_BIN_EXE_burst"), &[&STALL_BURST.to_string()]);
    let counted_more = settled(counted_while_stalled + STALL_BURST as f64).unwrap_or_else(|| {
        panic!(
            "a burst of {STALL_BURST} children while the client stalls: \
             procmon_sse_dropped_events_total went from {counted_while_stalled} to {}",
            dropped()
        )
    });
    let rss_after = vm_rss_kb(agent.pid());
    assert!(
        rss_after <= rss_full + PLATEAU_SLACK_KB,
        "agent VmRSS kept growing with a stalled client past its buffer: {rss_full} kB -> \
         {rss_after} kB"
    );
    eprintln!(
        "{counted_while_stalled} drops counted while stalled, {counted_more} after one more \
         burst; agent VmRSS {rss_before} kB -> {rss_full} kB (buffer full) -> {rss_after} kB"
    );

    // Reading again, the client gets what was already on its way, then `dropped` with every
    // loss (counted once: while it stalled), then the events its buffer kept. Under load it
    // may also have lost some before its socket filled, told in a `dropped` message among
    // those in flight: every `dropped` message counts.
    stalled.set_timeout(Duration::from_secs(10));
    let mut stream = Followed::default();
    while stream.told < counted_more as u64 {
        stream.next(
            &mut stalled,
            &format!("once the client read again, told of {{told}} of {counted_more} losses"),
        );
    }
    let (read, told) = (stream.read, stream.told);
    let counted_after = dropped();
    assert!(
        told as f64 <= counted_after,
        "told of {told} losses, counted {counted_more} while stalled and {counted_after} after"
    );

    // A later burst comes through after the kept events: the stream goes on. Pids wrap
    // (pid_max is 32,768 here), so the burst is known by its exec, then its exit.
    let burst = run_workload(env!("CARGO_BIN_EXE_burst"), &["10"]);
    let pid = as_pid(&burst["pid"]);
    let mut exec_seen = false;
    loop {
        let m = stream.next(
            &mut stalled,
            &format!("before the exit of a later burst (pid {pid}), told of {{told}} losses"),
        );
        let Ok(v) = serde_json::from_str::<Value>(&m.data) else {
            continue;
        };
        if v["pid"] != pid {
            continue;
        }
        match m.event.as_deref() {
            Some("exec") => {
                exec_seen |= v["filename"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("/burst"));
            }
            Some("exit") if exec_seen => break,
            _ => {}
        }
    }
    // Caught up: nothing the client lost is left untold, and nothing was counted twice.
    assert_eq!(
        dropped(),
        stream.told as f64,
        "procmon_sse_dropped_events_total against the losses the client was told of"
    );
    eprintln!(
        "reading again: {read} messages until told of {told} losses, then {} up to the later \
         burst's exit; told of {} in all, in {} dropped messages",
        stream.read - read,
        stream.told,
        stream.dropped_messages
    );
    drop(stalled);
    let (status, stderr) = agent.stop();
    assert_eq!(status.code(), Some(0), "clean shutdown: {stderr}");
}

#[test]
fn bad_kind_filter_is_a_400() {
    if !require_root("sse::bad_kind_filter_is_a_400") {
        return;
    }
    let agent = Agent::start(&[]);
    let (status, body) = procmon_tests::http_get(agent.addr, "/events?kind=bogus").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bogus"), "{body}");
}

#[test]
fn many_clients_replaying_a_large_history_keep_memory_bounded_and_are_capped() {
    if !require_root(
        "sse::many_clients_replaying_a_large_history_keep_memory_bounded_and_are_capped",
    ) {
        return;
    }
    let agent = Agent::start(&["--history", "1048576", "--max-sse-clients", "40"]);
    // About 30,000 events into the history (fork, exec and exit of each of 10,000 commands).
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 10000 ]; do /bin/true; i=$((i+1)); done",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_secs(2));
    let before = vm_rss_kb(agent.pid());
    // 40 clients ask for the whole history and read only its first message: each used to
    // hold a copy of its replay (48 bytes an event, 1.4 MiB each here; 50 MiB each at a
    // million events).
    let clients: Vec<SseClient> = (0..40)
        .map(|_| {
            let mut c = SseClient::connect(agent.addr, "/events?since=0", &[]);
            c.set_timeout(Duration::from_secs(10));
            assert!(c.next_message().is_some(), "a replayed event");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let during = vm_rss_kb(agent.pid());
    println!("agent RSS: {before} KiB before, {during} KiB with 40 replaying clients");
    assert!(
        during < before + 16 * 1024,
        "RSS grew from {before} KiB to {during} KiB with 40 clients replaying the history"
    );
    // The 41st is refused, with the flag named.
    let (status, body) = procmon_tests::http_get(agent.addr, "/events").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-sse-clients"), "{body}");
    let m = agent.metrics();
    assert_eq!(m.get_or_zero("procmon_sse_refused_total", &[]), 1.0);
    drop(clients);
}
