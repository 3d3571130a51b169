//! The `oom_kill` event: the kernel's record of the victim, completed from the agent's
//! process tree (executable, ancestry).

use procmon_common::{oom_flags, OomConstraint, OomKillRecord};

use std::path::Path;

use crate::{
    attribution::ProcessTree,
    clock::{rfc3339, WallClock},
    events::{self, ContainerFields, EventKind, EventMsg, OomKillEvent},
    procfs,
    record::cgroup_path,
    workload::Identity,
};

/// With [`oom_flags::INFERRED`], 0 means no memory cgroup was at its limit: `global`.
pub fn constraint_name(flags: u32, constraint: u32) -> &'static str {
    if flags & (oom_flags::CONTEXT | oom_flags::INFERRED) == 0 {
        return "unknown";
    }
    OomConstraint::from_raw(constraint).map_or("unknown", OomConstraint::name)
}

/// Where the constraint came from (the event's `constraint_source`).
pub fn constraint_source(flags: u32) -> Option<&'static str> {
    if flags & oom_flags::CONTEXT != 0 {
        Some("oom_context")
    } else if flags & oom_flags::INFERRED != 0 {
        Some("inferred")
    } else {
        None
    }
}

/// Where an `oom_kill` event is observed from: the tree before the victim's exit, /proc,
/// and the wall clock of the batch.
pub struct Seen<'a> {
    pub tree: &'a ProcessTree,
    pub recent: &'a crate::profile::recent::Recent,
    pub proc_root: &'a Path,
    pub clock: &'a WallClock,
}

pub fn render_oom_kill(
    seen: &Seen<'_>,
    r: &OomKillRecord,
    comm: &str,
    cgroup: Option<&str>,
    identity: &Identity,
) -> EventMsg {
    let has_task = r.flags & oom_flags::TASK != 0;
    // Saturating, like peak_rss_bytes: a garbage counter must not panic or wrap.
    let page = procfs::page_size();
    let time = rfc3339(seen.clock.at(r.time_ns));
    // The victim was sent SIGKILL but is usually still alive while it releases memory, so
    // /proc can fill in what the tree never saw (processes older than the agent).
    let exe = seen
        .tree
        .get_exact(r.pid, r.start_ns)
        .and_then(|p| p.exe.as_deref().map(str::to_string))
        .or_else(|| {
            has_task
                .then(|| procfs::read_exe(seen.proc_root, r.pid, r.start_ns))
                .flatten()
        });
    let memcg = if r.flags & oom_flags::MEMCG != 0 {
        cgroup_path(&r.memcg)
    } else {
        None
    };
    let ancestry = if has_task {
        super::ancestry::ancestry(seen.tree, r.ppid)
    } else {
        Vec::new()
    };
    events::render(
        EventKind::OomKill,
        &OomKillEvent {
            kind: EventKind::OomKill,
            time: &time,
            pid: r.pid,
            ppid: r.ppid,
            comm,
            exe: exe.as_deref(),
            uid: has_task.then_some(r.uid),
            cgroup,
            workload: &identity.workload,
            container: ContainerFields::of(Some(identity)),
            constraint: constraint_name(r.flags, r.constraint),
            constraint_source: constraint_source(r.flags),
            memcg: memcg.as_deref(),
            rss_anon_bytes: r.rss_anon_pages.saturating_mul(page),
            rss_file_bytes: r.rss_file_pages.saturating_mul(page),
            rss_shmem_bytes: r.rss_shmem_pages.saturating_mul(page),
            total_vm_bytes: r.total_vm_pages.saturating_mul(page),
            pgtables_bytes: r.pgtables_bytes,
            oom_score_adj: r.oom_score_adj,
            ancestry: &ancestry,
            last_sample: super::last_sample(seen.tree.get_exact(r.pid, r.start_ns), r.time_ns),
            recent: seen.recent.flight_record(
                r.pid,
                r.start_ns,
                r.time_ns,
                crate::profile::TOP_STACKS,
            ),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_constraints() {
        let ctx = oom_flags::CONTEXT;
        assert_eq!(constraint_name(ctx, 0), "global");
        assert_eq!(constraint_name(ctx, 3), "memcg");
        assert_eq!(constraint_name(0, 3), "unknown", "no OOM context traced");
        assert_eq!(constraint_name(ctx, 42), "unknown");
        assert_eq!(constraint_name(oom_flags::INFERRED, 0), "global");
        assert_eq!(constraint_name(oom_flags::INFERRED, 3), "memcg");
    }
}
