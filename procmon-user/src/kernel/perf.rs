//! CPU sampling: the `cpu_sample` perf-event program on every online CPU (software
//! `cpu-clock`: it works where a VM has no hardware counters), and the drain of its
//! in-kernel counts (procmon-ebpf/src/probes/profile.rs).
//!
//! A drain flips the window the probe writes, waits for samples already in flight, then
//! reads and clears the window it flipped away from: counts and the stacks they name are
//! read while nothing writes them.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, BorrowedFd},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, StackTraceMap},
    programs::perf_event::{
        PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
    },
    Ebpf,
};
use procmon_common::SampleKey;

/// The program, and the maps it writes.
pub const PROGRAM: &str = "cpu_sample";
const STACKS: [&str; 2] = ["STACKS_0", "STACKS_1"];
const SAMPLES: &str = "SAMPLES";
const WINDOW: &str = "PROFILE_WINDOW";

/// Where the kernel caps sampling frequencies (EINVAL above it).
const MAX_SAMPLE_RATE: &str = "/proc/sys/kernel/perf_event_max_sample_rate";

/// How long a drain waits after flipping windows: a sample that read the old window just
/// before the flip finishes within microseconds (it runs in a timer interrupt).
pub const FLIP_GRACE: Duration = Duration::from_millis(2);

/// The map sizes for a sampling rate and drain period, set before the object is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub stacks: u32,
    pub samples: u32,
}

impl MapSizes {
    /// A stack map is a hash table without chaining: a stack whose bucket is taken by
    /// another is refused (-EEXIST). Keeping it ~16x larger than the stacks a window can
    /// produce keeps collisions to a few percent at worst (they are counted).
    pub fn for_rate(hz: u64, cpus: usize, drain: Duration) -> Self {
        let samples = (hz as f64 * cpus as f64 * drain.as_secs_f64()).ceil() as u64;
        // A user and a kernel stack per sample.
        let stacks = (samples * 2 * 16).next_power_of_two().clamp(1024, 16384) as u32;
        // At most one count per (process, stack pair) and window, two windows live at once,
        // and room to spare so a hash map never runs full.
        let samples = (samples * 8).next_power_of_two();
        Self {
            stacks,
            samples: samples.clamp(1024, 65536) as u32,
        }
    }
}

/// The highest frequency the kernel accepts now, if it says.
pub fn max_sample_rate() -> Option<u64> {
    std::fs::read_to_string(MAX_SAMPLE_RATE)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One process's samples with one pair of stacks in a window. Stacks are instruction
/// addresses, leaf first, as the kernel records them; empty when unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    pub pid: u32,
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    /// The user stack was lost to a stack-map collision (not merely absent).
    pub user_lost: bool,
    pub count: u64,
}

pub struct CpuSampling {
    samples: BpfHashMap<MapData, SampleKey, u64>,
    stacks: [StackTraceMap<MapData>; 2],
    window_map: Array<MapData, u32>,
    window: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("eBPF map {0} is missing or has the wrong type: the embedded object is broken")]
    Map(&'static str),
    #[error("cannot start CPU sampling: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("cannot list online CPUs ({0}): {1}")]
    Cpus(&'static str, std::io::Error),
}

impl CpuSampling {
    /// Loads and attaches the sampler on every online CPU at `hz`, and takes its maps.
    pub fn attach(ebpf: &mut Ebpf, hz: u64) -> Result<Self, PerfError> {
        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM)
            .ok_or(PerfError::Map(PROGRAM))?
            .try_into()?;
        program.load()?;
        let cpus = aya::util::online_cpus().map_err(|(what, e)| PerfError::Cpus(what, e))?;
        for cpu in cpus {
            program.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                false,
            )?;
        }
        set_cloexec_on_perf_fds();
        let take =
            |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(PerfError::Map(name));
        let stack_map = |ebpf: &mut Ebpf, name: &'static str| {
            take(ebpf, name)
                .and_then(|m| StackTraceMap::try_from(m).map_err(|_| PerfError::Map(name)))
        };
        let stacks = [stack_map(ebpf, STACKS[0])?, stack_map(ebpf, STACKS[1])?];
        let samples =
            BpfHashMap::try_from(take(ebpf, SAMPLES)?).map_err(|_| PerfError::Map(SAMPLES))?;
        let window_map =
            Array::try_from(take(ebpf, WINDOW)?).map_err(|_| PerfError::Map(WINDOW))?;
        Ok(Self {
            samples,
            stacks,
            window_map,
            window: 0,
        })
    }

    /// Points the probe at the other window; returns the one to [`collect`](Self::collect)
    /// after [`FLIP_GRACE`].
    pub fn flip(&mut self) -> u32 {
        let old = self.window;
        self.window ^= 1;
        if let Err(e) = self.window_map.set(0, self.window, 0) {
            // The probe keeps writing the old window; collecting it now would race.
            log::warn!("cannot switch the CPU sample window: {e}");
            self.window = old;
            return old ^ 1;
        }
        old
    }

    /// Reads and clears window `window` (flipped away from at least [`FLIP_GRACE`] ago).
    pub fn collect(&mut self, window: u32) -> Vec<RawSample> {
        let keys: Vec<SampleKey> = self
            .samples
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.window == window)
            .collect();
        let stacks = &self.stacks[window as usize & 1];
        let mut resolved: HashMap<i32, Vec<u64>> = HashMap::new();
        let mut frames = |id: i32| -> Vec<u64> {
            if id < 0 {
                return Vec::new();
            }
            resolved
                .entry(id)
                .or_insert_with(|| {
                    stacks
                        .get(&(id as u32), 0)
                        .map(|s| s.frames().iter().map(|f| f.ip).collect())
                        .unwrap_or_default()
                })
                .clone()
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Ok(count) = self.samples.get(&key, 0) else {
                continue;
            };
            let _ = self.samples.remove(&key);
            out.push(RawSample {
                pid: key.pid,
                user: frames(key.user_stack),
                kernel: frames(key.kernel_stack),
                user_lost: key.user_stack == -libc::EEXIST,
                count,
            });
        }
        // Every stack of the window goes, also those whose count found the count map full:
        // the window must start empty next time.
        let stacks = &mut self.stacks[window as usize & 1];
        let ids: Vec<u32> = stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = stacks.remove(&id);
        }
        out
    }
}

/// aya opens perf events without `PERF_FLAG_FD_CLOEXEC`, so every process the agent starts
/// (`procmon run`'s command) would inherit them and keep the sampler alive after the agent
/// exits. This marks each of them close-on-exec.
fn set_cloexec_on_perf_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let is_perf = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:[perf_event]");
        if is_perf {
            // SAFETY: `fd` is open (listed just now) and only borrowed for the fcntl calls.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            set_cloexec(fd);
        }
    }
}

fn set_cloexec(fd: BorrowedFd<'_>) {
    // SAFETY: F_GETFD/F_SETFD on an open descriptor; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_with_rate_and_stay_bounded() {
        let agent = MapSizes::for_rate(19, 2, Duration::from_secs(1));
        assert_eq!(agent.stacks, 2048);
        let profile = MapSizes::for_rate(99, 2, Duration::from_millis(500));
        assert_eq!(profile.stacks, 4096);
        let huge = MapSizes::for_rate(10_000, 512, Duration::from_secs(10));
        assert_eq!(huge.stacks, 16384);
        assert_eq!(huge.samples, 65536);
        assert!(agent.samples >= 1024);
    }
}
