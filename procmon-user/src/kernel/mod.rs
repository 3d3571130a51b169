//! Everything that touches the kernel: privilege checks, BTF offsets, loading and attaching
//! the probes, and reading their maps.

pub mod btf;
pub mod features;
pub mod perf;
pub mod prog_stats;
pub mod reader;
pub mod sampler;
#[cfg(test)]
mod verifier_cfg;

use std::path::Path;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit},
    Ebpf, EbpfLoader,
};
use caps::{CapSet, Capability};
use procmon_common::{cost_floor, stat, ProbeConfig};

pub use features::{Feature, Features};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("procmon needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {0}); run it with sudo or grant them (e.g. AmbientCapabilities= in a systemd unit)")]
    Privileges(String),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("cannot load the kernel BTF for attaching probes: {0}")]
    AyaBtf(#[from] aya::BtfError),
    #[error("the kernel rejected procmon's eBPF programs: {0} (BTF-enabled tracepoints need Linux 5.8+)")]
    Load(#[from] aya::EbpfError),
    #[error("cannot attach to tracepoint {tracepoint}: {source}")]
    Attach {
        tracepoint: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {0} is missing or has the wrong type: the embedded object is broken")]
    Map(&'static str),
    #[error(transparent)]
    Perf(#[from] perf::PerfError),
    #[error("bpf(2) is refused ({0}) although procmon holds CAP_BPF: a seccomp profile{1} or a security module blocks it; in a container, run without the runtime's default seccomp profile (Kubernetes: securityContext.seccompProfile.type: Unconfined, podman: --security-opt seccomp=unconfined; see docs/kubernetes.md)")]
    BpfBlocked(std::io::Error, &'static str),
    #[error("{COST_FLOOR_ENV}={0:?} is not a benchmark setting: unset it (it is for `cargo xtask bench floor`, which sets `hooks` or `ring`)")]
    CostFloor(String),
    #[error("procmon needs Linux {}.{} or newer (BPF ring buffer, BPF task iterator); this kernel is {release}: upgrade the kernel", features::MINIMUM_KERNEL.0, features::MINIMUM_KERNEL.1)]
    TooOld { release: String },
}

/// Set by `cargo xtask bench floor` only: the lifecycle probes stop early and send nothing
/// (procmon_common::cost_floor), so the agent reports no process at all.
pub const COST_FLOOR_ENV: &str = "PROCMON_BENCH_COST_FLOOR";

fn cost_floor_from_env() -> Result<u32, KernelError> {
    let value = std::env::var_os(COST_FLOOR_ENV);
    let floor = parse_cost_floor(value.as_deref())?;
    if floor != cost_floor::NONE {
        log::warn!(
            "{COST_FLOOR_ENV} is set: the lifecycle probes send nothing (benchmark mode); no \
             process is traced"
        );
    }
    Ok(floor)
}

fn parse_cost_floor(value: Option<&std::ffi::OsStr>) -> Result<u32, KernelError> {
    let Some(value) = value else {
        return Ok(cost_floor::NONE);
    };
    match value.to_str() {
        Some("hooks") => Ok(cost_floor::HOOKS),
        Some("ring") => Ok(cost_floor::RING),
        _ => Err(KernelError::CostFloor(value.to_string_lossy().into_owned())),
    }
}

/// Refuses kernels older than [`features::MINIMUM_KERNEL`] up front, before a loader error
/// that would not say why.
pub fn check_version() -> Result<(), KernelError> {
    match features::kernel_version() {
        Some(version) if version < features::MINIMUM_KERNEL => Err(KernelError::TooOld {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }),
        _ => Ok(()),
    }
}

/// Checks privileges before anything is loaded, so the user gets one actionable line
/// instead of an EPERM from deep inside the loader.
pub fn check_privileges() -> Result<(), KernelError> {
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    if has(Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (Capability::CAP_BPF, "CAP_BPF"),
        (Capability::CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(c, _)| !has(*c))
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        return Err(KernelError::Privileges(missing.join(", ")));
    }
    bpf_syscall_allowed()
}

/// Creates and closes a one-entry array map: the cheapest bpf(2) call that needs CAP_BPF.
/// Container runtimes' default seccomp profiles refuse bpf(2) to anyone without
/// CAP_SYS_ADMIN, which would otherwise surface as an EPERM from the loader that reads
/// like a kernel problem.
fn bpf_syscall_allowed() -> Result<(), KernelError> {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};
    // SAFETY: a plain C union of integers (bindgen), valid when all zero.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // `__bindgen_anon_1` is the union member BPF_MAP_CREATE reads.
    attr.__bindgen_anon_1.map_type = bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;
    attr.__bindgen_anon_1.key_size = 4;
    attr.__bindgen_anon_1.value_size = 4;
    attr.__bindgen_anon_1.max_entries = 1;
    // SAFETY: `attr` is a valid bpf_attr for this command, of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_CREATE as libc::c_long,
            &mut attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) });
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EPERM) {
        // Not a permission problem: let the loader report it in context.
        return Ok(());
    }
    let filtered = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"]))
    });
    Err(KernelError::BpfBlocked(
        error,
        if filtered {
            " (this process has one)"
        } else {
            ""
        },
    ))
}

pub struct LoadConfig {
    pub ringbuf_bytes: u32,
    /// CPU sampling, if on.
    pub profile: Option<ProfileLoad>,
}

/// CPU sampling at `hz`, drained every `drain` (the map sizes follow from both).
#[derive(Debug, Clone, Copy)]
pub struct ProfileLoad {
    pub hz: u64,
    pub drain: std::time::Duration,
}

/// The attached probes and the maps the agent reads. Dropping it detaches everything.
pub struct Probes {
    /// Owns the attached programs: dropping it detaches them.
    pub ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    /// What this kernel degrades (see features.rs).
    pub features: Features,
    /// The lifecycle programs' fds, for their skipped runs (prog_stats.rs).
    pub program_fds: Vec<(&'static str, std::os::fd::OwnedFd)>,
    /// CPU sampling, when asked for.
    pub cpu: Option<perf::CpuSampling>,
}

/// The task iterator used for live sampling (kernel/sampler.rs).
pub const SAMPLE_PROGRAM: &str = "sample_tasks";

/// The release probe completes exits with their final CPU (procmon-ebpf/src/probes/release.rs);
/// it is attached first so no traced exit misses its release.
pub const PROGRAMS: [&str; 5] = [
    "sched_process_free",
    "sched_wakeup_new",
    "sched_process_exec",
    "sched_process_exit",
    "mark_victim",
];

pub fn load(cfg: &LoadConfig) -> Result<Probes, KernelError> {
    check_version()?;
    raise_memlock_limit();
    let offsets = btf::resolve_offsets(Path::new(btf::VMLINUX_BTF))?;
    let kernel_btf = aya::Btf::from_sys_fs()?;
    let probe_config = ProbeConfig {
        // Wake the reader at 1/8 full: bounded wakeups, ample headroom before drops.
        wakeup_bytes: u64::from(cfg.ringbuf_bytes / 8),
        cost_floor: cost_floor_from_env()?,
        _pad: 0,
    };
    let profile = cfg.profile.map(clamp_rate);
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&kernel_btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global("CONFIG", &probe_config, true)
        .map_max_entries("EVENTS", cfg.ringbuf_bytes);
    if let Some(p) = profile {
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let sizes = perf::MapSizes::for_rate(p.hz, cpus, p.drain);
        loader
            .map_max_entries("STACKS_0", sizes.stacks)
            .map_max_entries("STACKS_1", sizes.stacks)
            .map_max_entries("SAMPLES", sizes.samples);
    }
    let mut ebpf = loader.load(aya::include_bytes_aligned!(env!("PROCMON_EBPF_OBJECT")))?;
    for tracepoint in PROGRAMS {
        let attach = |ebpf: &mut Ebpf| -> Result<(), aya::programs::ProgramError> {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(tracepoint)
                .expect("program compiled into the object")
                .try_into()?;
            program.load(tracepoint, &kernel_btf)?;
            program.attach()?;
            Ok(())
        };
        attach(&mut ebpf).map_err(|source| KernelError::Attach { tracepoint, source })?;
    }
    let sampler: &mut aya::programs::Iter = ebpf
        .program_mut(SAMPLE_PROGRAM)
        .expect("program compiled into the object")
        .try_into()
        .map_err(|source| KernelError::Attach {
            tracepoint: "iter/task",
            source,
        })?;
    sampler
        .load("task", &kernel_btf)
        .map_err(|source| KernelError::Attach {
            tracepoint: "iter/task",
            source,
        })?;
    // Optional: without it the OOM probe infers a memory cgroup constraint from the page
    // counters instead (probes/oom.rs).
    let oom_context_error = attach_oom_context(&mut ebpf, &kernel_btf)
        .err()
        .map(|e| error_chain(&e));
    let group_dead_error = if offsets.exit_has_group_dead != 0 {
        None
    } else {
        attach_fentry(&mut ebpf, "taskstats_exit", "taskstats_exit", &kernel_btf)
            .err()
            .map(|e| error_chain(&e))
    };
    let features = Features::decide(
        oom_context_error,
        offsets.mark_victim_has_task != 0,
        group_dead_error,
    );
    let events = ebpf
        .take_map("EVENTS")
        .and_then(|m| RingBuf::try_from(m).ok())
        .ok_or(KernelError::Map("EVENTS"))?;
    let stats = ebpf
        .take_map("STATS")
        .and_then(|m| PerCpuArray::try_from(m).ok())
        .ok_or(KernelError::Map("STATS"))?;
    let program_fds = prog_stats::program_fds(&ebpf, PROGRAMS);
    let cpu = profile
        .map(|p| perf::CpuSampling::attach(&mut ebpf, p.hz))
        .transpose()?;
    Ok(Probes {
        ebpf,
        events,
        stats,
        features,
        program_fds,
        cpu,
    })
}

/// Sampling above `kernel.perf_event_max_sample_rate` fails with EINVAL: clamped, and said.
fn clamp_rate(mut p: ProfileLoad) -> ProfileLoad {
    if let Some(max) = perf::max_sample_rate().filter(|&max| p.hz > max) {
        log::warn!(
            "sampling at {max} Hz instead of {} Hz: the kernel allows at most {max} (kernel.perf_event_max_sample_rate)",
            p.hz
        );
        p.hz = max;
    }
    p
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        // Some errors (aya's among them) already print their cause.
        let cause_text = cause.to_string();
        if !out.contains(&cause_text) {
            out.push_str(": ");
            out.push_str(&cause_text);
        }
        source = cause.source();
    }
    out
}

/// fentry/fexit on `out_of_memory()` (probes/oom.rs): the exact OOM constraint and memory
/// cgroup. They need trampolines (BPF_TRACE_FENTRY), which some kernels refuse (on the
/// 6.18 test VM loading any fentry program fails with EPERM).
fn attach_oom_context(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<(), aya::programs::ProgramError> {
    attach_fentry(ebpf, "oom_enter", "out_of_memory", btf)?;
    let exit: &mut FExit = ebpf
        .program_mut("oom_exit")
        .expect("program compiled into the object")
        .try_into()?;
    exit.load("out_of_memory", btf)?;
    exit.attach()?;
    Ok(())
}

/// Loads and attaches fentry program `program` on kernel function `function`.
fn attach_fentry(
    ebpf: &mut Ebpf,
    program: &str,
    function: &str,
    btf: &aya::Btf,
) -> Result<(), aya::programs::ProgramError> {
    let fentry: &mut FEntry = ebpf
        .program_mut(program)
        .expect("program compiled into the object")
        .try_into()?;
    fentry.load(function, btf)?;
    fentry.attach()?;
    Ok(())
}

/// Sums the probes' per-CPU counters.
pub fn read_stats(stats: &PerCpuArray<MapData, u64>) -> [u64; stat::COUNT as usize] {
    let mut out = [0u64; stat::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        if let Ok(values) = stats.get(&(i as u32), 0) {
            *slot = values.iter().sum();
        }
    }
    out
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones use memcg accounting,
/// so failing to raise it (no CAP_SYS_RESOURCE) only matters on old kernels.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0
        && features::kernel_version().is_some_and(|v| v < (5, 11))
    {
        log::warn!("cannot raise RLIMIT_MEMLOCK ({}); loading may fail on this kernel, grant CAP_SYS_RESOURCE", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn the_cost_floor_is_off_unless_the_benchmark_asks_and_a_wrong_value_is_refused() {
        assert_eq!(parse_cost_floor(None).unwrap(), cost_floor::NONE);
        assert_eq!(
            parse_cost_floor(Some(OsStr::new("hooks"))).unwrap(),
            cost_floor::HOOKS
        );
        assert_eq!(
            parse_cost_floor(Some(OsStr::new("ring"))).unwrap(),
            cost_floor::RING
        );
        let message = parse_cost_floor(Some(OsStr::new("1")))
            .unwrap_err()
            .to_string();
        assert!(
            message
                .starts_with("PROCMON_BENCH_COST_FLOOR=\"1\" is not a benchmark setting: unset it"),
            "{message}"
        );
    }
}
