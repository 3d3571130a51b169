//! Lifecycle events as users see them: exit classification and the JSON objects written to
//! `--events` and streamed over SSE (`/events`). Each event is rendered to JSON once, then
//! shared as `Bytes` by every consumer.

pub mod history;
pub mod hub;
pub mod sink;
pub mod sse;

use std::sync::Arc;

use bytes::Bytes;
use procmon_common::{signal, wait_status, CRASH_SIGNALS};
use serde::Serialize;

use crate::{
    profile::recent::{FlightRecord, TopStack},
    workload::Identity,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Fork,
    Exec,
    Exit,
    OomKill,
    Crash,
    CpuPegged,
    CpuPeggedCleared,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Fork,
        EventKind::Exec,
        EventKind::Exit,
        EventKind::OomKill,
        EventKind::Crash,
        EventKind::CpuPegged,
        EventKind::CpuPeggedCleared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Fork => "fork",
            EventKind::Exec => "exec",
            EventKind::Exit => "exit",
            EventKind::OomKill => "oom_kill",
            EventKind::Crash => "crash",
            EventKind::CpuPegged => "cpu_pegged",
            EventKind::CpuPeggedCleared => "cpu_pegged_cleared",
        }
    }

    /// Parses a comma-separated list (`oom_kill,crash`); empty parts are ignored.
    pub fn parse_list(s: &str) -> Result<Vec<EventKind>, UnknownEventKind> {
        s.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::parse)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind `{0}` (expected fork, exec, exit, oom_kill, crash, cpu_pegged or cpu_pegged_cleared)")]
pub struct UnknownEventKind(pub String);

impl std::str::FromStr for EventKind {
    type Err = UnknownEventKind;
    fn from_str(s: &str) -> Result<Self, UnknownEventKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownEventKind(s.to_string()))
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
        let signal = wait_status::signal(raw) as u8;
        if signal == 0 {
            Self {
                code: Some(wait_status::exit_code(raw) as u8),
                signal: None,
                core_dumped: false,
            }
        } else {
            Self {
                code: None,
                signal: Some(signal),
                core_dumped: wait_status::core_dumped(raw),
            }
        }
    }

    /// [`ExitStatus::outcome`], except that a SIGKILL death of a process the OOM killer
    /// chose is `oom_killed`.
    pub fn outcome_given_oom(&self, oom_victim: bool) -> Outcome {
        if oom_victim && self.signal == Some(signal::SIGKILL) {
            Outcome::OomKilled
        } else {
            self.outcome()
        }
    }

    /// A death by a signal in [`CRASH_SIGNALS`] (they dump core by default) is a crash.
    pub fn outcome(&self) -> Outcome {
        match (self.code, self.signal) {
            (Some(0), _) => Outcome::Clean,
            (Some(_), _) => Outcome::Error,
            (None, Some(sig)) if CRASH_SIGNALS.contains(&sig) => Outcome::Crashed,
            _ => Outcome::Killed,
        }
    }
}

/// The `signal` label of the crash and OOM-kill counters: a small fixed set.
pub fn signal_label(sig: Option<u8>) -> &'static str {
    match sig {
        Some(signal::SIGQUIT) => "SIGQUIT",
        Some(signal::SIGILL) => "SIGILL",
        Some(signal::SIGTRAP) => "SIGTRAP",
        Some(signal::SIGABRT) => "SIGABRT",
        Some(signal::SIGBUS) => "SIGBUS",
        Some(signal::SIGFPE) => "SIGFPE",
        Some(signal::SIGKILL) => "SIGKILL",
        Some(signal::SIGSEGV) => "SIGSEGV",
        Some(signal::SIGSYS) => "SIGSYS",
        Some(_) => "other",
        None => "none",
    }
}

/// One rendered event, cheap to clone to every consumer.
#[derive(Debug, Clone)]
pub struct EventMsg {
    pub kind: EventKind,
    /// Position in the agent's event stream (from 1, no gaps), assigned when published
    /// (hub.rs); 0 until then. It is the SSE `id:`.
    pub seq: u64,
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

#[derive(Serialize, Clone)]
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
    /// False when the parent had not reaped the process within 1 s: the CPU above misses
    /// what its exit path spent after the exit tracepoint (release.rs).
    pub cpu_final: bool,
    pub peak_rss_bytes: u64,
    pub lifetime_seconds: f64,
    #[serde(flatten)]
    pub container: ContainerFields<'a>,
}

/// The container a process ran in: present on `exit`, `crash` and `oom_kill` events of
/// containerized processes only, so other events are unchanged.
#[derive(Serialize, Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ContainerFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<&'a str>,
}

impl<'a> ContainerFields<'a> {
    pub fn of(identity: Option<&'a Identity>) -> Self {
        let Some(id) = identity else {
            return Self::default();
        };
        Self {
            container_id: id.container_id.as_deref(),
            runtime: id.runtime,
            pod_uid: id.pod_uid.as_deref(),
            qos_class: id.qos.map(|q| q.as_str()),
        }
    }
}

/// One ancestor of a process, nearest first: from the agent's process tree, so `comm` is
/// null for an ancestor the tree does not know.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: Option<String>,
}

/// The OOM killer chose a victim and sent it SIGKILL. Sizes are bytes; the memory figures
/// are the ones the kernel logs in its "Killed process" line.
#[derive(Serialize)]
pub struct OomKillEvent<'a> {
    pub kind: EventKind,
    pub time: &'a str,
    pub pid: u32,
    pub ppid: u32,
    pub comm: &'a str,
    pub exe: Option<&'a str>,
    pub uid: Option<u32>,
    /// The victim's memory cgroup path.
    pub cgroup: Option<&'a str>,
    pub workload: &'a str,
    #[serde(flatten)]
    pub container: ContainerFields<'a>,
    /// `memcg` (a memory cgroup's limit), `global` (the machine), `cpuset`,
    /// `memory_policy`, or `unknown` (the OOM context could not be traced).
    pub constraint: &'a str,
    /// How `constraint` was found: `oom_context` (read from the kernel's OOM context via
    /// fentry on out_of_memory), `inferred` (from memory cgroup usage, where fentry is
    /// unavailable), or null when it is `unknown`.
    pub constraint_source: Option<&'a str>,
    /// The memory cgroup whose limit was hit, when `constraint` is `memcg`.
    pub memcg: Option<&'a str>,
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    pub rss_shmem_bytes: u64,
    pub total_vm_bytes: u64,
    pub pgtables_bytes: u64,
    pub oom_score_adj: i32,
    pub ancestry: &'a [Ancestor],
    /// The victim's last sampled CPU/RSS (null if it never lived through a sample).
    pub last_sample: Option<LastSample>,
    /// Its recent stacks and CPU/RSS trajectory (null unless CPU sampling caught it).
    pub recent: Option<FlightRecord>,
}

/// A process died of a crash signal or was OOM-killed: its exit event's fields, plus where
/// it ran and who started it.
#[derive(Serialize)]
pub struct CrashEvent<'a> {
    #[serde(flatten)]
    pub exit: ExitEvent<'a>,
    pub cgroup: Option<&'a str>,
    pub workload: &'a str,
    pub ancestry: &'a [Ancestor],
    /// The process's last sampled CPU/RSS (null if it never lived through a sample).
    pub last_sample: Option<LastSample>,
    /// Its recent stacks and CPU/RSS trajectory (null unless CPU sampling caught it).
    pub recent: Option<FlightRecord>,
}

/// A process has used at least `--pegged-ratio` of a core for `--pegged-for`, with where
/// its CPU went over that time.
#[derive(Serialize)]
pub struct CpuPeggedEvent<'a> {
    pub kind: EventKind,
    pub time: &'a str,
    pub pid: u32,
    pub ppid: u32,
    pub comm: &'a str,
    pub exe: Option<&'a str>,
    pub workload: &'a str,
    pub ancestry: &'a [Ancestor],
    /// Average over `pegged_seconds`; 1.0 = one full core.
    pub cpu_usage_ratio: f64,
    pub pegged_seconds: f64,
    /// Sampled stacks over `pegged_seconds`, most samples first (empty with --profile-hz 0).
    pub top_stacks: &'a [TopStack],
    /// Set when user stacks are one frame deep: the binary lacks frame pointers.
    pub note: Option<&'a str>,
}

/// A process reported `cpu_pegged` no longer is: it calmed down or exited.
#[derive(Serialize)]
pub struct CpuPeggedClearedEvent<'a> {
    pub kind: EventKind,
    pub time: &'a str,
    pub pid: u32,
    pub ppid: u32,
    pub comm: &'a str,
    pub workload: &'a str,
    /// `calmed` or `exited`.
    pub reason: &'a str,
    /// How long it was pegged, from when it started to when it stopped.
    pub pegged_seconds: f64,
    /// Average over `pegged_seconds` (0 when it exited).
    pub cpu_usage_ratio: f64,
}

/// What the sampler last saw of a process: the "last seen RSS" of a post-mortem.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LastSample {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    /// 1.0 = one full core, over the sample interval before it.
    pub cpu_usage_ratio: f64,
    /// How long before the death the sample was taken.
    pub age_seconds: f64,
}

/// The owned parts of an exit event, shared by the `exit` and `crash` events of a death.
pub struct ExitFields {
    pub time: String,
    pub comm: String,
    pub pid: u32,
    pub ppid: u32,
    pub status: ExitStatus,
    pub outcome: Outcome,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub cpu_final: bool,
    pub peak_rss_bytes: u64,
    pub lifetime_seconds: f64,
    /// What the tree knew of the process's cgroup, when it names a container.
    pub identity: Option<Arc<Identity>>,
}

impl ExitFields {
    pub fn event(&self) -> ExitEvent<'_> {
        ExitEvent {
            kind: EventKind::Exit,
            time: &self.time,
            pid: self.pid,
            ppid: self.ppid,
            comm: &self.comm,
            exit_code: self.status.code,
            signal: self.status.signal,
            core_dumped: self.status.core_dumped,
            outcome: self.outcome,
            cpu_user_seconds: self.cpu_user_seconds,
            cpu_system_seconds: self.cpu_system_seconds,
            cpu_final: self.cpu_final,
            peak_rss_bytes: self.peak_rss_bytes,
            lifetime_seconds: self.lifetime_seconds,
            container: ContainerFields::of(self.identity.as_deref()),
        }
    }
}

pub fn render<T: Serialize>(kind: EventKind, event: &T) -> EventMsg {
    // Serializing these plain structs cannot fail.
    let json = serde_json::to_vec(event).expect("event serializes");
    EventMsg {
        kind,
        seq: 0,
        json: Bytes::from(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signal numbers procmon-common gives the probes are the C library's.
    #[test]
    fn common_signal_numbers_are_libcs() {
        for (ours, libc) in [
            (signal::SIGQUIT, libc::SIGQUIT),
            (signal::SIGILL, libc::SIGILL),
            (signal::SIGTRAP, libc::SIGTRAP),
            (signal::SIGABRT, libc::SIGABRT),
            (signal::SIGBUS, libc::SIGBUS),
            (signal::SIGFPE, libc::SIGFPE),
            (signal::SIGKILL, libc::SIGKILL),
            (signal::SIGSEGV, libc::SIGSEGV),
            (signal::SIGSYS, libc::SIGSYS),
        ] {
            assert_eq!(i32::from(ours), libc, "{}", signal_label(Some(ours)));
        }
    }
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
    fn oom_victims_sigkill_is_oom_killed() {
        let sigkill = ExitStatus::from_raw(libc::SIGKILL as u32);
        assert_eq!(sigkill.outcome_given_oom(true), Outcome::OomKilled);
        assert_eq!(sigkill.outcome_given_oom(false), Outcome::Killed);
        // A victim that died of something else keeps its own outcome.
        let segv = ExitStatus::from_raw(libc::SIGSEGV as u32);
        assert_eq!(segv.outcome_given_oom(true), Outcome::Crashed);
        assert_eq!(signal_label(Some(11)), "SIGSEGV");
        assert_eq!(signal_label(Some(60)), "other");
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
            .to_string()
            .contains("cpu_pegged or cpu_pegged_cleared"));
        assert_eq!(
            EventKind::parse_list("oom_kill, crash,"),
            Ok(vec![EventKind::OomKill, EventKind::Crash])
        );
        assert!(EventKind::parse_list("exit,nope").is_err());
    }
}
