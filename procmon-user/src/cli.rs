//! Command line and config file. Flags override the config file, which overrides defaults;
//! every value is validated before anything starts (bad input exits 2).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::{
    agent::PipelineConfig,
    attribution::{AttributionConfig, Selector},
    events::EventKind,
    http::Security,
    profile::{pegged::PeggedConfig, ProfileConfig},
};

/// Where the agent listens without `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

#[derive(Parser)]
#[command(
    name = "procmon",
    version,
    about = "eBPF process lifecycle tracer: process tree, CPU/RSS attribution, crash and OOM events"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Trace every process on the host; serve /metrics and /healthz, optionally write events.
    Agent(AgentArgs),
    /// Run a command and report every process it spawned: CPU, peak RSS, lifetime, outcome.
    Run(RunArgs),
    /// Sample where a running process (and optionally its children) spends CPU; write folded
    /// stacks, an SVG flame graph or JSON.
    Profile(ProfileArgs),
}

#[derive(Args)]
pub struct ProfileArgs {
    /// The process to profile.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: u32,
    /// Also profile its descendants, including those that start during the profile.
    #[arg(long)]
    pub children: bool,
    /// How long to sample.
    #[arg(long, value_name = "N", default_value = "10", value_parser = parse_seconds)]
    pub seconds: f64,
    /// Samples per second per CPU.
    #[arg(long, value_name = "HZ", default_value = "99", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub hz: u64,
    /// Output format: folded stacks (for flame graph tools), an SVG flame graph, or JSON.
    #[arg(long, value_enum, default_value = "folded")]
    pub format: ProfileFormat,
    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileFormat {
    Folded,
    Svg,
    Json,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n <= 86_400.0 => Ok(n),
        _ => Err(format!(
            "`{s}` is not a number of seconds between 0 and 86400"
        )),
    }
}

#[derive(Args)]
pub struct AgentArgs {
    /// Address for the HTTP endpoints (/metrics, /healthz) [default: 127.0.0.1:9464]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Write events as JSON lines to FILE (appended), or to stdout with `-`.
    #[arg(long, value_name = "FILE|-")]
    pub events: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args)]
pub struct RunArgs {
    /// Also write the report as one JSON document to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Serve /metrics and /healthz while the command runs.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The accepted range of each numeric setting, for its flag and its config key alike: one
/// validation, whichever way a value comes in.
mod ranges {
    use std::ops::RangeInclusive;
    pub const HISTORY: RangeInclusive<u64> = 0..=1_048_576;
    pub const MAX_SSE_CLIENTS: RangeInclusive<u64> = 1..=100_000;
    pub const MAX_CHILD_SERIES: RangeInclusive<u64> = 1..=1_000_000;
    pub const MAX_WORKLOADS: RangeInclusive<u64> = 1..=100_000;
    pub const MAX_PROCESSES: RangeInclusive<u64> = 16..=16_777_216;
    pub const PROFILE_HZ: RangeInclusive<u64> = 0..=100_000;
}

/// A config file's number, checked against the range its flag accepts.
fn in_range(
    key: &'static str,
    value: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, SettingsError> {
    match value {
        Some(v) if !range.contains(&v) => Err(SettingsError::key(
            key,
            format!("{v} is not in {}..={}", range.start(), range.end()),
        )),
        v => Ok(v),
    }
}

#[derive(Args, Default)]
pub struct CommonArgs {
    /// Read settings from a TOML file; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve HTTP over TLS and/or behind basic auth, as a Prometheus exporter's web config
    /// file (YAML: tls_server_config, basic_auth_users, http_server_config); SIGHUP
    /// re-reads it.
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Watch processes: their direct children get their own series, with everything their
    /// subtrees use rolled in. pid:N, comm:NAME, exe:PATH or cgroup:PATH; repeatable.
    #[arg(long = "watch", value_name = "SELECTOR")]
    pub watch: Vec<Selector>,
    /// Event kinds to write with --events, comma-separated (fork, exec, exit, oom_kill,
    /// crash, cpu_pegged, cpu_pegged_cleared) [default: all]
    #[arg(long, value_name = "KINDS", value_delimiter = ',')]
    pub event_kinds: Option<Vec<EventKind>>,
    /// Recent events kept for /events clients that ask for them (?since=SEQ,
    /// Last-Event-ID), at most 64 MiB of them; 0 keeps none [default: 4096]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(ranges::HISTORY))]
    pub history: Option<u64>,
    /// Clients of the /events stream served at once; more get a 503 [default: 256]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(ranges::MAX_SSE_CLIENTS))]
    pub max_sse_clients: Option<u64>,
    /// How often live processes' CPU and RSS are sampled, e.g. 1s, 500ms [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_sample_interval)]
    pub sample_interval: Option<Duration>,
    /// How long an exited child of a watched process, or a workload with no processes left,
    /// keeps its series [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retain_exited: Option<Duration>,
    /// Most child series across all watched processes; the rest share pid="_other" [default: 1000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(ranges::MAX_CHILD_SERIES))]
    pub max_child_series: Option<u64>,
    /// Most exited watched processes and children that keep their series for
    /// --retain-exited; past it the oldest go first [default: 1000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(ranges::MAX_CHILD_SERIES))]
    pub max_exited_series: Option<u64>,
    /// Most workload series; the rest share workload="_other" [default: 500]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(ranges::MAX_WORKLOADS))]
    pub max_workloads: Option<u64>,
    /// Most processes the tree tracks; beyond it the oldest are evicted (and counted) [default: 65536]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(ranges::MAX_PROCESSES))]
    pub max_processes: Option<u64>,
    /// How often the tree is reconciled against /proc, e.g. 30s, 5m [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_reconcile_interval)]
    pub reconcile_interval: Option<Duration>,
    /// Kernel ring-buffer size in bytes: a power of two, 64 KiB to 1 GiB [default: 2097152]
    #[arg(long, value_name = "BYTES", value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: Option<u32>,
    /// CPU samples per second per CPU for recent stacks (cpu_pegged, crash and oom_kill
    /// events); 0 turns sampling off [default: 19]
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u64).range(ranges::PROFILE_HZ))]
    pub profile_hz: Option<u64>,
    /// CPU use, in cores, at or above which a process counts as pegged [default: 0.95]
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub pegged_ratio: Option<f64>,
    /// How long a process must stay pegged before a cpu_pegged event [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_pegged_for)]
    pub pegged_for: Option<Duration>,
}

/// The config file: the same settings as the flags, by the same names with `_`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub events: Option<PathBuf>,
    pub web_config: Option<PathBuf>,
    pub event_kinds: Option<Vec<String>>,
    pub history: Option<u64>,
    pub max_sse_clients: Option<u64>,
    #[serde(default)]
    pub watch: Vec<String>,
    pub sample_interval: Option<String>,
    pub retain_exited: Option<String>,
    pub max_child_series: Option<u64>,
    pub max_exited_series: Option<u64>,
    pub max_workloads: Option<u64>,
    pub max_processes: Option<u64>,
    pub reconcile_interval: Option<String>,
    pub ringbuf_bytes: Option<u32>,
    pub profile_hz: Option<u64>,
    pub pegged_ratio: Option<f64>,
    pub pegged_for: Option<String>,
}

/// Settings resolved from flags, config file and defaults.
pub struct Settings {
    pub listen: Option<SocketAddr>,
    pub events: Option<PathBuf>,
    /// TLS and basic auth for the HTTP endpoints (plain and open without --web-config).
    pub web: Arc<Security>,
    pub pipeline: PipelineConfig,
}

impl CommonArgs {
    /// Merges flags over the config file over defaults. Errors name the setting and say
    /// what is expected.
    pub fn resolve(
        self,
        listen: Option<SocketAddr>,
        events: Option<PathBuf>,
    ) -> Result<Settings, SettingsError> {
        let file = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| SettingsError::ReadConfig {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str::<ConfigFile>(&text).map_err(|e| SettingsError::ConfigSyntax {
                    path: path.clone(),
                    message: located(&text, &e),
                })?
            }
            None => ConfigFile::default(),
        };
        let from_file = |key: &'static str,
                         value: &Option<String>,
                         parse: fn(&str) -> Result<Duration, ValueError>|
         -> Result<Option<Duration>, SettingsError> {
            value
                .as_deref()
                .map(parse)
                .transpose()
                .map_err(|e| SettingsError::key(key, e))
        };
        let mut watch = file
            .watch
            .iter()
            .map(|s| {
                s.parse::<Selector>()
                    .map_err(|e| SettingsError::key("watch", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        watch.extend(self.watch);
        let event_kinds = match (self.event_kinds, file.event_kinds) {
            (Some(k), _) => k,
            (None, Some(k)) => k
                .iter()
                .map(|s| s.parse())
                .collect::<Result<_, _>>()
                .map_err(|e| SettingsError::key("event_kinds", e))?,
            (None, None) => EventKind::ALL.to_vec(),
        };
        let listen = match (listen, &file.listen) {
            (Some(l), _) => Some(l),
            (None, Some(l)) => Some(
                l.parse()
                    .map_err(|_| SettingsError::key("listen", format!("`{l}` is not ADDR:PORT")))?,
            ),
            (None, None) => None,
        };
        let ringbuf_bytes = match (self.ringbuf_bytes, file.ringbuf_bytes) {
            (Some(n), _) => n,
            (None, Some(n)) => parse_ringbuf_bytes(&n.to_string())
                .map_err(|e| SettingsError::key("ringbuf_bytes", e))?,
            // 2 MiB holds ~9,500 fork+exit pairs; the agent drains every 50 ms (a 10 s
            // `stress-ng --fork 2` storm lost nothing). Each MiB is two MiB of the agent's
            // RSS: the kernel maps the data pages twice.
            (None, None) => 2 << 20,
        };
        let sample_interval = self
            .sample_interval
            .or(from_file(
                "sample_interval",
                &file.sample_interval,
                parse_sample_interval,
            )?)
            .unwrap_or(Duration::from_secs(1));
        let retain_exited = self
            .retain_exited
            .or(from_file(
                "retain_exited",
                &file.retain_exited,
                parse_duration,
            )?)
            .unwrap_or(Duration::from_secs(300));
        let reconcile_interval = self
            .reconcile_interval
            .or(from_file(
                "reconcile_interval",
                &file.reconcile_interval,
                parse_reconcile_interval,
            )?)
            .unwrap_or(Duration::from_secs(30));
        let defaults = ProfileConfig::default();
        let profile_hz = self
            .profile_hz
            .or(in_range("profile_hz", file.profile_hz, ranges::PROFILE_HZ)?)
            .unwrap_or(defaults.hz);
        let max_processes = self
            .max_processes
            .or(in_range(
                "max_processes",
                file.max_processes,
                ranges::MAX_PROCESSES,
            )?)
            .unwrap_or(65536);
        let history = self
            .history
            .or(in_range("history", file.history, ranges::HISTORY)?)
            .unwrap_or(4096);
        let max_sse_clients = self
            .max_sse_clients
            .or(in_range(
                "max_sse_clients",
                file.max_sse_clients,
                ranges::MAX_SSE_CLIENTS,
            )?)
            .unwrap_or(256);
        let max_child_series = self
            .max_child_series
            .or(in_range(
                "max_child_series",
                file.max_child_series,
                ranges::MAX_CHILD_SERIES,
            )?)
            .unwrap_or(1000);
        let max_exited_series = self
            .max_exited_series
            .or(in_range(
                "max_exited_series",
                file.max_exited_series,
                ranges::MAX_CHILD_SERIES,
            )?)
            .unwrap_or(1000);
        let max_workloads = self
            .max_workloads
            .or(in_range(
                "max_workloads",
                file.max_workloads,
                ranges::MAX_WORKLOADS,
            )?)
            .unwrap_or(500);
        let pegged_ratio = match (self.pegged_ratio, file.pegged_ratio) {
            (Some(r), _) => r,
            (None, Some(r)) => {
                parse_ratio(&r.to_string()).map_err(|e| SettingsError::key("pegged_ratio", e))?
            }
            (None, None) => defaults.pegged.ratio,
        };
        let pegged_for = self
            .pegged_for
            .or(from_file("pegged_for", &file.pegged_for, parse_pegged_for)?)
            .unwrap_or(defaults.pegged.hold);
        let web = match self.web_config.or(file.web_config) {
            Some(path) => Security::load(path.clone())
                .map_err(|source| SettingsError::WebConfig { path, source })?,
            None => Security::plain(),
        };
        Ok(Settings {
            listen,
            events: events.or(file.events),
            web: Arc::new(web),
            pipeline: PipelineConfig {
                max_processes: max_processes as usize,
                reconcile_interval,
                sample_interval,
                ringbuf_bytes,
                event_kinds,
                history: history as usize,
                max_sse_clients: max_sse_clients as usize,
                attribution: AttributionConfig {
                    selectors: watch,
                    retain_exited_ns: retain_exited.as_nanos() as u64,
                    max_child_series: max_child_series as usize,
                    max_exited_series: max_exited_series as usize,
                    max_workloads: max_workloads as usize,
                },
                profile: ProfileConfig {
                    hz: profile_hz,
                    pegged: PeggedConfig {
                        ratio: pegged_ratio,
                        hold: pegged_for,
                    },
                    ..defaults
                },
            },
        })
    }
}

/// A TOML error with the line and the key it is about: toml's own message says what is
/// wrong (`invalid type: string "x", expected u64`, `duplicate key`) but not where.
fn located(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    match line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty())
    {
        Some(key) => format!("line {line_no}, `{key}`: {}", e.message()),
        None => format!("line {line_no}: {}", e.message()),
    }
}

/// Why settings (flags over the config file over defaults) were rejected: each message
/// names the setting, and the agent exits 2 with it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {}: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    ConfigSyntax { path: PathBuf, message: String },
    #[error("config `{key}`: {message}")]
    Key { key: &'static str, message: String },
    #[error("web config {}: {source}", path.display())]
    WebConfig {
        path: PathBuf,
        source: crate::http::web_config::WebConfigError,
    },
}

impl SettingsError {
    fn key(key: &'static str, message: impl std::fmt::Display) -> Self {
        SettingsError::Key {
            key,
            message: message.to_string(),
        }
    }
}

/// Why a flag's (or config key's) value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{input}`: {reason} (examples: 500ms, 30s, 5m)")]
    Duration { input: String, reason: String },
    #[error("`{input}`: must be at least {min}")]
    TooShort { input: String, min: &'static str },
    #[error("`{0}` is not a byte count")]
    ByteCount(String),
    #[error("must be a power of two between 65536 and 1073741824")]
    RingbufSize,
    #[error("`{0}` is not a CPU ratio: give cores as a number above 0, e.g. 0.95 or 2")]
    Ratio(String),
}

fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(s).map_err(|e| ValueError::Duration {
        input: s.to_string(),
        reason: e.to_string(),
    })
}

fn parse_sample_interval(s: &str) -> Result<Duration, ValueError> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(ValueError::TooShort {
            input: s.to_string(),
            min: "100ms",
        });
    }
    Ok(d)
}

fn parse_ratio(s: &str) -> Result<f64, ValueError> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 4096.0 => Ok(r),
        _ => Err(ValueError::Ratio(s.to_string())),
    }
}

fn parse_pegged_for(s: &str) -> Result<Duration, ValueError> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(ValueError::TooShort {
            input: s.to_string(),
            min: "1s",
        });
    }
    Ok(d)
}

fn parse_reconcile_interval(s: &str) -> Result<Duration, ValueError> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(ValueError::TooShort {
            input: s.to_string(),
            min: "1s",
        });
    }
    Ok(d)
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, ValueError> {
    let n: u32 = s
        .parse()
        .map_err(|_| ValueError::ByteCount(s.to_string()))?;
    if !n.is_power_of_two() || !(64 << 10..=1 << 30).contains(&n) {
        return Err(ValueError::RingbufSize);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(args: &[&str]) -> CommonArgs {
        let mut argv = vec!["procmon", "agent"];
        argv.extend(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Agent(a) => a.common,
            Command::Run(_) | Command::Profile(_) => unreachable!(),
        }
    }

    fn config(text: &str) -> (tempfile_path::Guard, String) {
        let g = tempfile_path::Guard::new(text);
        let p = g.path();
        (g, p)
    }

    /// A config file in the temp dir, removed on drop.
    mod tempfile_path {
        pub struct Guard(std::path::PathBuf);
        impl Guard {
            pub fn new(text: &str) -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("procmon-cli-test-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).unwrap();
                Guard(p)
            }
            pub fn path(&self) -> String {
                self.0.display().to_string()
            }
        }
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    /// deploy/config.example.toml documents every setting with its default: it must parse,
    /// and resolve to exactly what no config at all resolves to.
    #[test]
    fn example_config_states_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        for key in [
            "listen",
            "events",
            "event_kinds",
            "history",
            "watch",
            "sample_interval",
            "retain_exited",
            "max_child_series",
            "max_exited_series",
            "max_workloads",
            "max_processes",
            "reconcile_interval",
            "ringbuf_bytes",
            "web_config",
        ] {
            assert!(keys.contains(&key), "{example} does not document `{key}`");
        }
        let from_example = common(&["--config", example]).resolve(None, None).unwrap();
        let defaults = common(&[]).resolve(None, None).unwrap();
        assert_eq!(from_example.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert_eq!(from_example.events, defaults.events);
        assert_eq!(
            (from_example.web.scheme(), defaults.web.scheme()),
            ("http", "http")
        );
        let (a, b) = (&from_example.pipeline, &defaults.pipeline);
        assert_eq!(
            (
                a.max_processes,
                a.reconcile_interval,
                a.sample_interval,
                a.ringbuf_bytes
            ),
            (
                b.max_processes,
                b.reconcile_interval,
                b.sample_interval,
                b.ringbuf_bytes
            )
        );
        assert_eq!(
            (&a.event_kinds, a.history, a.max_sse_clients),
            (&b.event_kinds, b.history, b.max_sse_clients)
        );
        assert_eq!(a.profile, b.profile);
        let (a, b) = (&a.attribution, &b.attribution);
        assert_eq!(
            (
                a.selectors.len(),
                a.retain_exited_ns,
                a.max_child_series,
                a.max_exited_series,
                a.max_workloads
            ),
            (
                b.selectors.len(),
                b.retain_exited_ns,
                b.max_child_series,
                b.max_exited_series,
                b.max_workloads
            )
        );
    }

    #[test]
    fn flags_override_the_config_file_and_watches_add_up() {
        let (_g, path) =
            config("watch = [\"comm:make\"]\nsample_interval = \"2s\"\nmax_child_series = 7\n");
        let s = common(&[
            "--config",
            &path,
            "--watch",
            "pid:5",
            "--sample-interval",
            "500ms",
        ])
        .resolve(None, None)
        .unwrap();
        assert_eq!(s.pipeline.sample_interval, Duration::from_millis(500));
        assert_eq!(s.pipeline.attribution.max_child_series, 7);
        let watch: Vec<String> = s
            .pipeline
            .attribution
            .selectors
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(watch, ["comm:make", "pid:5"]);
    }

    #[test]
    fn bad_config_values_are_named() {
        for (text, needle) in [
            ("bogus = 1\n", "unknown field `bogus`"),
            ("watch = [\"make\"]\n", "config `watch`"),
            ("sample_interval = \"10ms\"\n", "config `sample_interval`"),
            ("ringbuf_bytes = 1000\n", "config `ringbuf_bytes`"),
            ("listen = \"nope\"\n", "config `listen`"),
            ("pegged_ratio = -1.0\n", "config `pegged_ratio`"),
            (
                "max_processes = 0\n",
                "config `max_processes`: 0 is not in 16..=16777216",
            ),
            ("max_child_series = 0\n", "config `max_child_series`"),
            ("max_workloads = 0\n", "config `max_workloads`"),
            ("history = 2000000\n", "config `history`"),
            (
                "max_processes = \"x\"\n",
                "line 1, `max_processes`: invalid type",
            ),
            (
                "history = 5\nhistory = 6\n",
                "line 2, `history`: duplicate key",
            ),
            ("pegged_for = \"10ms\"\n", "config `pegged_for`"),
            ("profile_hz = 200000\n", "config `profile_hz`"),
        ] {
            let (_g, path) = config(text);
            let err = common(&["--config", &path])
                .resolve(None, None)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let err = common(&["--config", "/nonexistent.toml"])
            .resolve(None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }

    /// --web-config and the file's `web_config` go through the same loading; the flag wins,
    /// and a bad web config is a settings error naming the file and the key.
    #[test]
    fn web_config_from_flag_or_file() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let (_good, good) = config(&format!("basic_auth_users:\n  alice: '{hash}'\n"));
        let (_bad, bad) = config("basic_auth_users:\n  alice: plain\n");
        let (_file, file) = config(&format!("web_config = {good:?}\n"));
        let s = common(&["--config", &file]).resolve(None, None).unwrap();
        assert!(s.web.current().auth.is_some());
        let err = common(&["--config", &file, "--web-config", &bad])
            .resolve(None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "web config {bad}: `basic_auth_users.alice`: not a bcrypt hash"
            )),
            "{err}"
        );
        let err = common(&["--web-config", "/nonexistent.yml"])
            .resolve(None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("web config /nonexistent.yml: cannot read it"),
            "{err}"
        );
    }

    #[test]
    fn profile_settings_resolve_from_flags_and_file() {
        let (_g, path) = config("profile_hz = 0\npegged_ratio = 2.0\npegged_for = \"1m\"\n");
        let s = common(&["--config", &path, "--pegged-for", "5s"])
            .resolve(None, None)
            .unwrap();
        let p = s.pipeline.profile;
        assert_eq!(p.hz, 0);
        assert_eq!(p.pegged.ratio, 2.0);
        assert_eq!(p.pegged.hold, Duration::from_secs(5));
        let d = common(&[]).resolve(None, None).unwrap().pipeline.profile;
        assert_eq!((d.hz, d.pegged.ratio), (19, 0.95));
        for args in [
            &["profile", "--pid", "0"][..],
            &["profile", "--pid", "1", "--seconds", "0"],
            &["profile", "--pid", "1", "--format", "png"],
            &["profile", "--pid", "1", "--hz", "0"],
            &["profile"],
        ] {
            let mut argv = vec!["procmon"];
            argv.extend(args);
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }

    #[test]
    fn bad_flags_are_rejected_by_the_parser() {
        for args in [
            &["--watch", "bogus"][..],
            &["--sample-interval", "1ms"],
            &["--ringbuf-bytes", "1000"],
            &["--pegged-ratio", "0"],
            &["--pegged-ratio", "NaN"],
            &["--pegged-for", "100ms"],
            &["--profile-hz", "-1"],
        ] {
            let mut argv = vec!["procmon", "agent"];
            argv.extend(args);
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}
