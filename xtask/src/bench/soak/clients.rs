//! The soak's `/events` readers: each a thread on its own connection, tallying what it was
//! sent. Events are matched by substring, not parsed: 25 unfiltered clients under a fork
//! storm read tens of thousands of messages a second on two cores, and JSON parsing there
//! would make the clients, not the agent, the bottleneck.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::load::{OOM_COMM, SEGV_COMM};

/// What one client was sent.
#[derive(Default, Debug)]
pub struct Tally {
    pub filtered: bool,
    pub messages: u64,
    /// Fork and exit events of the storm's children.
    pub storm_forks: u64,
    pub storm_exits: u64,
    /// `crash` events of the soak's SIGSEGV children and `oom_kill` events of its victims,
    /// counted by pid (pids wrap at pid_max during a storm: one pid can be two children).
    pub crashes: HashMap<u32, u64>,
    pub oom_kills: HashMap<u32, u64>,
    /// Sum of N over the `event: dropped` / `{"dropped":N}` notices.
    pub dropped: u64,
    /// Events missing from the sequence of `id:`s (unfiltered clients only: a filter skips ids).
    pub id_gaps: u64,
    /// The stream ended before the soak closed it.
    pub cut_off: bool,
}

pub struct Client {
    stream: TcpStream,
    thread: JoinHandle<Tally>,
    /// Messages so far, to see when the clients have caught up.
    pub messages: Arc<AtomicU64>,
}

/// What the clients match events against.
#[derive(Clone, Copy)]
pub struct Subjects {
    pub storm: u32,
    pub parent: u32,
}

pub fn connect(
    addr: SocketAddr,
    path: &str,
    subjects: Subjects,
    closing: Arc<AtomicBool>,
) -> Result<Client> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if !status.contains(" 200 ") {
        bail!("GET {path}: {}", status.trim());
    }
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
    }
    let messages = Arc::new(AtomicU64::new(0));
    let counter = messages.clone();
    let filtered = path.contains("kind=");
    let thread = thread::spawn(move || read(reader, filtered, subjects, &counter, &closing));
    Ok(Client {
        stream,
        thread,
        messages,
    })
}

impl Client {
    /// Closes the connection and returns what the client was sent.
    pub fn close(self) -> Tally {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.thread.join().expect("SSE client thread panicked")
    }
}

fn read(
    mut reader: BufReader<TcpStream>,
    filtered: bool,
    subjects: Subjects,
    counter: &AtomicU64,
    closing: &AtomicBool,
) -> Tally {
    let mut tally = Tally {
        filtered,
        ..Tally::default()
    };
    let (mut event, mut id, mut last_id) = (String::new(), None::<u64>, None::<u64>);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = line.trim_end_matches('\n');
        if let Some(kind) = line.strip_prefix("event: ") {
            event = kind.to_string();
        } else if let Some(n) = line.strip_prefix("id: ") {
            id = n.parse().ok();
        } else if let Some(data) = line.strip_prefix("data: ") {
            tally.messages += 1;
            counter.store(tally.messages, Ordering::Relaxed);
            if let (Some(id), Some(last), false) = (id, last_id, filtered) {
                tally.id_gaps += id.saturating_sub(last + 1);
            }
            last_id = id.or(last_id);
            tally.count(&event, data, subjects);
            (event, id) = (String::new(), None);
        }
    }
    tally.cut_off = !closing.load(Ordering::Relaxed);
    tally
}

impl Tally {
    fn count(&mut self, event: &str, data: &str, subjects: Subjects) {
        match event {
            "dropped" => self.dropped += number(data, "dropped").unwrap_or(0),
            "fork" | "exit" if number(data, "ppid") == Some(subjects.storm.into()) => {
                if event == "fork" {
                    self.storm_forks += 1;
                } else {
                    self.storm_exits += 1;
                }
            }
            "crash" | "oom_kill" if number(data, "ppid") == Some(subjects.parent.into()) => {
                let pid = number(data, "pid").unwrap_or(0) as u32;
                if event == "crash" && has_comm(data, SEGV_COMM) {
                    *self.crashes.entry(pid).or_default() += 1;
                } else if event == "oom_kill" && has_comm(data, OOM_COMM) {
                    *self.oom_kills.entry(pid).or_default() += 1;
                }
            }
            _ => {}
        }
    }
}

/// The unsigned number of top-level-looking field `"key":N` (the first occurrence: `pid`
/// and `ppid` come before any nested object in procmon's events).
fn number(data: &str, key: &str) -> Option<u64> {
    let start = data.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = data[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn has_comm(data: &str, comm: &str) -> bool {
    data.contains(&format!("\"comm\":\"{comm}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECTS: Subjects = Subjects {
        storm: 500,
        parent: 42,
    };

    #[test]
    fn tallies_what_the_soak_made() {
        let mut t = Tally::default();
        t.count(
            "fork",
            r#"{"kind":"fork","pid":501,"ppid":500,"comm":"soak-storm"}"#,
            SUBJECTS,
        );
        t.count(
            "exit",
            r#"{"kind":"exit","pid":501,"ppid":500,"comm":"soak-storm"}"#,
            SUBJECTS,
        );
        // Not the storm's: ppid 5000 starts with 500.
        t.count(
            "fork",
            r#"{"kind":"fork","pid":7,"ppid":5000,"comm":"x"}"#,
            SUBJECTS,
        );
        let crash =
            r#"{"kind":"crash","pid":77,"ppid":42,"comm":"soak-segv","ancestry":[{"pid":42}]}"#;
        t.count("crash", crash, SUBJECTS);
        t.count("crash", crash, SUBJECTS);
        t.count(
            "oom_kill",
            r#"{"kind":"oom_kill","pid":78,"ppid":42,"comm":"soak-oom"}"#,
            SUBJECTS,
        );
        t.count("dropped", r#"{"dropped":12}"#, SUBJECTS);
        assert_eq!((t.storm_forks, t.storm_exits), (1, 1));
        assert_eq!(t.crashes, [(77, 2)].into());
        assert_eq!(t.oom_kills, [(78, 1)].into());
        assert_eq!(t.dropped, 12);
    }

    #[test]
    fn numbers_by_key() {
        let data = r#"{"pid":12,"ppid":3,"x":{"pid":9}}"#;
        assert_eq!(number(data, "pid"), Some(12));
        assert_eq!(number(data, "ppid"), Some(3));
        assert_eq!(number(data, "missing"), None);
    }
}
