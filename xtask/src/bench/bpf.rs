//! What the agent's probes cost, from the kernel's own accounting. With run-time statistics
//! on (kernel.bpf_stats_enabled=1, or a BPF_ENABLE_STATS fd) the kernel times every run of
//! every BPF program (`run_time_ns`,
//! `run_cnt`, which `bpftool prog show --json` reports). Unlike throughput, these figures do not
//! swing with whatever else the machine is doing: they are the CPU the probes take, charged to
//! the tasks that fork, exec, exit and switch.
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    os::fd::{FromRawFd, OwnedFd},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd;

/// `BPF_ENABLE_STATS` in `enum bpf_cmd` (include/uapi/linux/bpf.h, Linux 5.8).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME` in `enum bpf_stats_type`.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Keeps the kernel's BPF run-time statistics on while alive, through a `BPF_ENABLE_STATS`
/// fd rather than the kernel.bpf_stats_enabled sysctl. The kernel counts each holder: stats
/// stay on while any fd or the sysctl asks for them, so another session's bench that sets
/// the sysctl back to 0 when it ends cannot switch them off mid-run (it did: every figure
/// after its second round read 0), and closing the fd (also when xtask dies) switches them
/// off unless someone else still wants them: the stats cost two clock reads per program
/// run, which nobody should keep paying after the bench.
pub struct StatsEnabled {
    _fd: OwnedFd,
}

impl StatsEnabled {
    pub fn enable() -> Result<StatsEnabled> {
        // union bpf_attr, as far as BPF_ENABLE_STATS reads it: `enable_stats.type`.
        let attr: u32 = BPF_STATS_RUN_TIME;
        // SAFETY: bpf(2) reads `size` bytes from a live, initialised u32.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const u32,
                std::mem::size_of::<u32>() as u32,
            )
        };
        if fd < 0 {
            bail!(
                "cannot enable BPF run-time statistics (bpf BPF_ENABLE_STATS): {}; needs root \
                 (CAP_SYS_ADMIN) and Linux 5.8 or later",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the kernel just returned this fd, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Ctrl-C would kill xtask without unwinding (the fd closes anyway, but the agent's
        // and the peers' logs would be cut short). With a handler, xtask lives on: the
        // children (exec resets handled signals to the default) get the same SIGINT and stop,
        // and the bench checks `interrupted()` after each run, so the error unwinds.
        extern "C" fn note(_: libc::c_int) {
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
        let handler: extern "C" fn(libc::c_int) = note;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
        Ok(StatsEnabled { _fd: fd })
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Err once Ctrl-C was pressed while the stats were on (stress-ng, for one, exits 0 on SIGINT).
pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        // SAFETY: restores the default action installed at exec.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    }
}

/// One loaded BPF program and its cumulative statistics since it was loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Prog {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// The processes holding the program open, when bpftool was built to find them.
    pids: Option<Vec<u32>>,
}

/// What one probe did between two snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeCost {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

/// Every program the agent holds, as bpftool sees them now.
pub fn snapshot(agent_pid: u32) -> Result<Vec<Prog>> {
    snapshot_programs(&[agent_pid], |_| true)
}

/// Whether procmon runs program `name` per process lifecycle (fork, wakeup, exec, exit,
/// context switch, ...). The exceptions run on timers, not per process: CPU sampling
/// (`cpu_sample`) and the sampling pass's task iterator (`sample_tasks`). An exclusion list,
/// so that a lifecycle program added later (sched_process_free, say) is counted unasked.
pub fn per_lifecycle(name: &str) -> bool {
    !matches!(name, "cpu_sample" | "sample_tasks")
}

/// The programs held open by any of `pids` whose (possibly kernel-truncated) name `wanted`
/// accepts.
pub fn snapshot_programs(pids: &[u32], wanted: fn(&str) -> bool) -> Result<Vec<Prog>> {
    let mut bpftool = Command::new("bpftool");
    bpftool.args(["prog", "show", "--json"]);
    let out = cmd::output(&mut bpftool)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::display(&bpftool),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let progs = parse_progs(&String::from_utf8_lossy(&out.stdout))?;
    let fd_ids: HashSet<u32> = pids.iter().flat_map(|&pid| fd_prog_ids(pid)).collect();
    let probes = owned_programs(progs, pids, &fd_ids, wanted);
    if probes.is_empty() {
        bail!("bpftool shows none of the programs of pids {pids:?} that the benchmark looks for");
    }
    Ok(probes)
}

/// Per probe name: runs and run time between `before` and `after`, sorted by name.
pub fn difference(before: &[Prog], after: &[Prog]) -> Vec<ProbeCost> {
    let mut costs: BTreeMap<&str, ProbeCost> = BTreeMap::new();
    for prog in after {
        let (runs0, time0) = before
            .iter()
            .find(|b| b.id == prog.id)
            .map_or((0, 0), |b| (b.run_cnt, b.run_time_ns));
        let cost = costs.entry(&prog.name).or_insert_with(|| ProbeCost {
            name: prog.name.clone(),
            runs: 0,
            run_time_ns: 0,
        });
        cost.runs += prog.run_cnt.saturating_sub(runs0);
        cost.run_time_ns += prog.run_time_ns.saturating_sub(time0);
    }
    costs.into_values().collect()
}

/// `bpftool prog show --json`: an array of objects. The kernel truncates names to 15 bytes
/// (`sched_process_e...`), and bpftool omits `run_time_ns`/`run_cnt` while they are 0.
fn parse_progs(json: &str) -> Result<Vec<Prog>> {
    let value: Value = serde_json::from_str(json).context("bpftool printed invalid JSON")?;
    let Some(array) = value.as_array() else {
        bail!("bpftool printed no JSON array");
    };
    let mut progs = Vec::new();
    for p in array {
        let u64_field = |key| p.get(key).and_then(Value::as_u64);
        let (Some(id), Some(name)) = (u64_field("id"), p.get("name").and_then(Value::as_str))
        else {
            continue; // unnamed programs (some loaders leave the name empty) are not ours
        };
        let pids = p.get("pids").and_then(Value::as_array).map(|pids| {
            pids.iter()
                .filter_map(|o| o.get("pid").and_then(Value::as_u64))
                .map(|pid| pid as u32)
                .collect()
        });
        progs.push(Prog {
            id: id as u32,
            name: name.to_string(),
            run_time_ns: u64_field("run_time_ns").unwrap_or(0),
            run_cnt: u64_field("run_cnt").unwrap_or(0),
            pids,
        });
    }
    Ok(progs)
}

/// Other sessions may run agents, tests or peer tools with the same probes, so the programs
/// of `owners` are picked out: by bpftool's `pids` when it was built with BPF skeletons
/// (Debian's is not); else by the program ids they hold open (/proc/PID/fdinfo); failing
/// both, the newest program of each name (theirs were loaded last, unless something loaded
/// probes since).
fn owned_programs(
    progs: Vec<Prog>,
    owners: &[u32],
    fd_ids: &HashSet<u32>,
    wanted: fn(&str) -> bool,
) -> Vec<Prog> {
    let probes: Vec<Prog> = progs.into_iter().filter(|p| wanted(&p.name)).collect();
    if probes.iter().any(|p| p.pids.is_some()) {
        let owned = |p: &Prog| {
            p.pids
                .as_ref()
                .is_some_and(|pids| pids.iter().any(|pid| owners.contains(pid)))
        };
        return probes.into_iter().filter(owned).collect();
    }
    if !fd_ids.is_empty() {
        return probes
            .into_iter()
            .filter(|p| fd_ids.contains(&p.id))
            .collect();
    }
    let mut newest: BTreeMap<String, Prog> = BTreeMap::new();
    for prog in probes {
        if newest.get(&prog.name).is_none_or(|n| n.id < prog.id) {
            newest.insert(prog.name.clone(), prog);
        }
    }
    newest.into_values().collect()
}

/// Ids of the BPF programs (and links, which name their program) open in process `pid`.
pub fn fd_prog_ids(pid: u32) -> HashSet<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return HashSet::new();
    };
    dir.filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| parse_fdinfo_prog_id(&info))
        .collect()
}

/// Ids of the BPF links open in process `pid`: a program is attached once its link exists.
pub fn fd_link_ids(pid: u32) -> HashSet<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return HashSet::new();
    };
    dir.filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| parse_fdinfo_link_id(&info))
        .collect()
}

fn parse_fdinfo_link_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("link_id:"))
        .and_then(|id| id.trim().parse().ok())
}

fn parse_fdinfo_prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("prog_id:"))
        .and_then(|id| id.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    // bpftool 7.1 with kernel.bpf_stats_enabled=1 (abridged); exec has not run yet, so it has
    // no stats fields, and another loader's program is in the list too.
    const JSON: &str = r#"[{"id":12,"type":"cgroup_skb","name":"","tag":"6deef7357e7b4530"},
{"id":521,"type":"tracing","name":"sched_switch","run_time_ns":5005511,"run_cnt":10543},
{"id":522,"type":"tracing","name":"sched_process_f","run_time_ns":3223698,"run_cnt":4401},
{"id":523,"type":"tracing","name":"sched_process_e"},
{"id":600,"type":"tracing","name":"sched_switch","run_time_ns":7,"run_cnt":1},
{"id":601,"type":"kprobe","name":"other","run_time_ns":1,"run_cnt":1}]"#;

    const SCHED: fn(&str) -> bool = |name| name.starts_with("sched_");

    fn ids(progs: &[Prog]) -> Vec<u32> {
        progs.iter().map(|p| p.id).collect()
    }

    #[test]
    fn parses_bpftool_json() {
        let progs = parse_progs(JSON).unwrap();
        assert_eq!(ids(&progs), [12, 521, 522, 523, 600, 601]);
        assert_eq!(progs[2].name, "sched_process_f");
        assert_eq!((progs[2].run_time_ns, progs[2].run_cnt), (3223698, 4401));
        assert_eq!((progs[3].run_time_ns, progs[3].run_cnt), (0, 0));
        assert!(parse_progs("not json").is_err());
    }

    #[test]
    fn picks_the_agents_probes() {
        let progs = parse_progs(JSON).unwrap();
        let fds: HashSet<u32> = [521, 522, 523].into();
        assert_eq!(
            ids(&owned_programs(progs.clone(), &[1], &fds, SCHED)),
            [521, 522, 523]
        );
        // No fd information: the newest program of each name.
        assert_eq!(
            ids(&owned_programs(progs, &[1], &HashSet::new(), SCHED)),
            [523, 522, 600]
        );
        // bpftool's `pids` wins over everything else.
        let with_pids = r#"[{"id":5,"name":"sched_switch","pids":[{"pid":42,"comm":"procmon"}]},
            {"id":6,"name":"sched_switch","pids":[{"pid":7,"comm":"other"}]}]"#;
        let progs = parse_progs(with_pids).unwrap();
        assert_eq!(ids(&owned_programs(progs, &[42], &[6].into(), SCHED)), [5]);
    }

    #[test]
    fn programs_of_several_owners_and_the_lifecycle_set() {
        let progs = parse_progs(JSON).unwrap();
        let fds: HashSet<u32> = [522, 601].into();
        assert_eq!(
            ids(&owned_programs(progs, &[1, 2], &fds, |_| true)),
            [522, 601]
        );
        assert!(per_lifecycle("sched_switch") && per_lifecycle("taskstats_exit"));
        assert!(per_lifecycle("sched_process_free"));
        assert!(!per_lifecycle("cpu_sample") && !per_lifecycle("sample_tasks"));
    }

    #[test]
    fn difference_per_name() {
        let prog = |id, name: &str, run_time_ns, run_cnt| Prog {
            id,
            name: name.into(),
            run_time_ns,
            run_cnt,
            pids: None,
        };
        let before = [prog(1, "sched_switch", 100, 10), prog(2, "sched_a", 5, 1)];
        let after = [
            prog(1, "sched_switch", 350, 20),
            prog(2, "sched_a", 5, 1),
            prog(3, "sched_b", 40, 2),
        ];
        let cost = |name: &str, runs, run_time_ns| ProbeCost {
            name: name.into(),
            runs,
            run_time_ns,
        };
        assert_eq!(
            difference(&before, &after),
            [
                cost("sched_a", 0, 0),
                cost("sched_b", 2, 40),
                cost("sched_switch", 10, 250)
            ]
        );
    }

    #[test]
    fn fdinfo_of_a_program_and_a_link() {
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_id:\t521\n";
        let link = "link_type:\traw_tracepoint\nlink_id:\t9\nprog_id:\t521\n";
        assert_eq!(parse_fdinfo_prog_id(prog), Some(521));
        assert_eq!(parse_fdinfo_prog_id(link), Some(521));
        assert_eq!(parse_fdinfo_prog_id("pos:\t0\n"), None);
        assert_eq!(parse_fdinfo_link_id(link), Some(9));
        assert_eq!(parse_fdinfo_link_id(prog), None);
    }
}
