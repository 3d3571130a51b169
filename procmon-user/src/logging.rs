//! Leveled logging to stderr, one line per message in the formats users and tests read:
//! `procmon: MESSAGE` (info), `procmon: warning: MESSAGE`, `procmon: error: MESSAGE`,
//! `procmon: debug: MESSAGE`. `PROCMON_LOG` sets the level (error, warn, info, debug,
//! trace; default info).
//!
//! The `log` facade, with a logger this small, rather than a logging framework: the agent
//! writes a handful of lines in its lifetime and needs no spans, filters or formats.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

static LOGGER: Stderr = Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        eprintln!("procmon: {level}{}", record.args());
    }

    fn flush(&self) {}
}

/// Installs the logger; the level comes from `PROCMON_LOG`.
pub fn init() {
    let level = std::env::var("PROCMON_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
