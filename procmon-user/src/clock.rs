//! Boottime (the probes' clock) to wall-clock time.

use std::time::{Duration, SystemTime};

/// `CLOCK_BOOTTIME` now, ns.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME exists on every supported kernel.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Maps boottime ns to wall-clock time. Taken fresh per ring-buffer batch, so wall-clock
/// steps (NTP, suspend) are followed.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    boot_epoch: SystemTime,
}

impl WallClock {
    pub fn now() -> Self {
        let boot = boottime_ns();
        Self {
            boot_epoch: SystemTime::now() - Duration::from_nanos(boot),
        }
    }

    pub fn at(&self, boottime_ns: u64) -> SystemTime {
        self.boot_epoch + Duration::from_nanos(boottime_ns)
    }
}

/// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-22T09:29:33.123456789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}
