//! Lifecycle events as users see them: exit classification and the JSON objects written to
//! `--events` (and, later, streamed over SSE). Each event is rendered to JSON once, then
//! shared as `Bytes` by every consumer.

use bytes::Bytes;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Fork,
    Exec,
    Exit,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Fork, EventKind::Exec, EventKind::Exit];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Fork => "fork",
            EventKind::Exec => "exec",
            EventKind::Exit => "exit",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind `{s}` (expected fork, exec or exit)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Clean,
    Error,
    Crashed,
    OomKilled,
    Killed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Clean,
        Outcome::Error,
        Outcome::Crashed,
        Outcome::OomKilled,
        Outcome::Killed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Error => "error",
            Outcome::Crashed => "crashed",
            Outcome::OomKilled => "oom_killed",
            Outcome::Killed => "killed",
        }
    }
}

/// A decoded wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<u8>,
    pub signal: Option<u8>,
    pub core_dumped: bool,
}

impl ExitStatus {
    /// From the kernel's `task_struct.exit_code` (the wait(2) status layout).
    pub fn from_raw(raw: u32) -> Self {
        let signal = (raw & 0x7f) as u8;
        if signal == 0 {
            Self {
                code: Some(((raw >> 8) & 0xff) as u8),
                signal: None,
                core_dumped: false,
            }
        } else {
            Self {
                code: None,
                signal: Some(signal),
                core_dumped: raw & 0x80 != 0,
            }
        }
    }

    /// The default action of these signals is to dump core: a death by one of them is a crash.
    pub fn outcome(&self) -> Outcome {
        const CORE_SIGNALS: [i32; 8] = [
            libc::SIGSEGV,
            libc::SIGABRT,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGQUIT,
        ];
        match (self.code, self.signal) {
            (Some(0), _) => Outcome::Clean,
            (Some(_), _) => Outcome::Error,
            (None, Some(sig)) if CORE_SIGNALS.contains(&(sig as i32)) => Outcome::Crashed,
            _ => Outcome::Killed,
        }
    }
}

/// One rendered event, cheap to clone to every consumer.
#[derive(Debug, Clone)]
pub struct EventMsg {
    pub kind: EventKind,
    /// One JSON object, no trailing newline.
    pub json: Bytes,
}

#[derive(Serialize)]
pub struct ForkEvent<'a> {
    pub kind: EventKind,
    pub time: &'a str,
    pub pid: u32,
    pub ppid: u32,
    pub comm: &'a str,
}

#[derive(Serialize)]
pub struct ExecEvent<'a> {
    pub kind: EventKind,
    pub time: &'a str,
    pub pid: u32,
    pub ppid: u32,
    pub comm: &'a str,
    pub filename: &'a str,
    pub old_comm: Option<&'a str>,
}

#[derive(Serialize)]
pub struct ExitEvent<'a> {
    pub kind: EventKind,
    pub time: &'a str,
    pub pid: u32,
    pub ppid: u32,
    pub comm: &'a str,
    pub exit_code: Option<u8>,
    pub signal: Option<u8>,
    pub core_dumped: bool,
    pub outcome: Outcome,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub peak_rss_bytes: u64,
    pub lifetime_seconds: f64,
}

pub fn render<T: Serialize>(kind: EventKind, event: &T) -> EventMsg {
    // Serializing these plain structs cannot fail.
    let json = serde_json::to_vec(event).expect("event serializes");
    EventMsg {
        kind,
        json: Bytes::from(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Comm;

    #[test]
    fn classifies_wait_statuses() {
        let cases = [
            (0, Some(0), None, false, Outcome::Clean),
            (3 << 8, Some(3), None, false, Outcome::Error),
            (11, None, Some(11), false, Outcome::Crashed),
            (11 | 0x80, None, Some(11), true, Outcome::Crashed),
            (6, None, Some(6), false, Outcome::Crashed),
            (8, None, Some(8), false, Outcome::Crashed),
            (9, None, Some(9), false, Outcome::Killed),
            (15, None, Some(15), false, Outcome::Killed),
        ];
        for (raw, code, signal, core, outcome) in cases {
            let s = ExitStatus::from_raw(raw);
            assert_eq!(
                (s.code, s.signal, s.core_dumped, s.outcome()),
                (code, signal, core, outcome),
                "raw {raw:#x}"
            );
        }
    }

    #[test]
    fn hostile_comm_renders_as_valid_json() {
        let comm = Comm::from_bytes(b"a\"b\\c\nd\xff");
        let name = comm.to_lossy();
        let msg = render(
            EventKind::Fork,
            &ForkEvent {
                kind: EventKind::Fork,
                time: "2026-11-22T00:00:00.000000000Z",
                pid: 1,
                ppid: 0,
                comm: &name,
            },
        );
        assert!(!msg.json.contains(&b'\n'), "one event per line");
        let v: serde_json::Value = serde_json::from_slice(&msg.json).unwrap();
        assert_eq!(v["comm"], "a\"b\\c\nd\u{fffd}");
        assert_eq!(v["kind"], "fork");
    }

    #[test]
    fn parses_event_kinds() {
        assert_eq!("exec".parse::<EventKind>(), Ok(EventKind::Exec));
        assert!("bogus"
            .parse::<EventKind>()
            .unwrap_err()
            .contains("fork, exec or exit"));
    }
}
