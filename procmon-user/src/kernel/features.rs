//! What this kernel lets procmon do beyond its core needs, decided once at load.
//!
//! A missing core need (BTF, the BPF ring buffer, tp_btf, the task iterator) stops the agent
//! with [`super::KernelError`]; a missing extra degrades one feature, which is logged once
//! at start and exported as `procmon_kernel_feature{feature,state}`.

use std::fmt;

/// The oldest kernel with every core need: the BPF ring buffer and `iter/task` (5.8).
pub const MINIMUM_KERNEL: (u32, u32) = (5, 8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// fentry/fexit on `out_of_memory()`: the exact OOM constraint and memory cgroup.
    OomContext,
    /// The OOM victim's task (comm, RSS breakdown, cgroup, ancestry), not only its pid.
    OomVictim,
    /// Which thread ends a process, told by the kernel (probes/exit.rs `is_group_dead`).
    ExitGroupDead,
}

impl Feature {
    pub const ALL: [Feature; 3] = [
        Feature::OomContext,
        Feature::OomVictim,
        Feature::ExitGroupDead,
    ];

    /// The `feature` label.
    pub fn name(self) -> &'static str {
        match self {
            Feature::OomContext => "oom_context",
            Feature::OomVictim => "oom_victim",
            Feature::ExitGroupDead => "exit_group_dead",
        }
    }
}

/// Each feature's state; `Some(reason)` where it is degraded.
#[derive(Clone, Debug, Default)]
pub struct Features {
    oom_context: Option<String>,
    oom_victim: Option<String>,
    exit_group_dead: Option<String>,
}

impl Features {
    /// `oom_context_error`: why the OOM context probes could not be attached, if they could
    /// not; `mark_victim_has_task`: whether the tracepoint passes the victim (Linux ≥ 6.8);
    /// `group_dead_error`: why fentry on `taskstats_exit` could not be attached, where the
    /// exit tracepoint lacks `group_dead` (before 6.16).
    pub fn decide(
        oom_context_error: Option<String>,
        mark_victim_has_task: bool,
        group_dead_error: Option<String>,
    ) -> Features {
        let oom_victim = (!mark_victim_has_task && oom_context_error.is_some()).then(|| {
            "oom:mark_victim passes only the victim's pid before Linux 6.8 and the OOM context \
             is unavailable: oom_kill events name the victim's pid, and what the process tree \
             knows of it"
                .to_string()
        });
        let oom_context = oom_context_error.map(|e| {
            format!(
                "fentry/fexit on out_of_memory() cannot be attached ({e}): the OOM constraint is \
                 inferred from memory cgroup usage, and cpuset/mempolicy OOMs read as global"
            )
        });
        let exit_group_dead = group_dead_error.map(|e| {
            format!(
                "fentry on taskstats_exit() cannot be attached ({e}) and sched_process_exit has \
                 no group_dead argument before Linux 6.16: when threads of a process exit at \
                 once, more than one may look like the last; the agent keeps the first exit \
                 (procmon_kernel_duplicate_exits_total counts the rest), whose CPU may miss \
                 the other's share"
            )
        });
        Features {
            oom_context,
            oom_victim,
            exit_group_dead,
        }
    }

    pub fn degraded(&self, feature: Feature) -> Option<&str> {
        match feature {
            Feature::OomContext => self.oom_context.as_deref(),
            Feature::OomVictim => self.oom_victim.as_deref(),
            Feature::ExitGroupDead => self.exit_group_dead.as_deref(),
        }
    }

    pub fn is_ok(&self, feature: Feature) -> bool {
        self.degraded(feature).is_none()
    }
}

/// One line per degraded feature, for the start-up log.
impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for feature in Feature::ALL {
            if let Some(why) = self.degraded(feature) {
                writeln!(f, "degraded feature {}: {why}", feature.name())?;
            }
        }
        Ok(())
    }
}

/// The running kernel's (major, minor), from its release string; None if unreadable.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&release)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    Some((parts.next()?, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distribution_releases() {
        assert_eq!(parse_release("5.10.0-46-cloud-amd64\n"), Some((5, 10)));
        assert_eq!(parse_release("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_release("7.3.1+deb13-cloud-amd64"), Some((7, 3)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn oom_victim_needs_the_task_argument_or_the_context() {
        let new_kernel = Features::decide(None, true, None);
        assert!(new_kernel.is_ok(Feature::OomVictim) && new_kernel.is_ok(Feature::OomContext));
        assert_eq!(new_kernel.to_string(), "");

        let old_kernel_with_fentry = Features::decide(None, false, None);
        assert!(old_kernel_with_fentry.is_ok(Feature::OomVictim));

        let no_fentry = Features::decide(Some("EPERM".into()), true, None);
        assert!(!no_fentry.is_ok(Feature::OomContext) && no_fentry.is_ok(Feature::OomVictim));
        assert!(
            no_fentry.to_string().contains("oom_context")
                && no_fentry.to_string().contains("EPERM")
        );

        let old_kernel_without_fentry = Features::decide(Some("EPERM".into()), false, None);
        assert!(!old_kernel_without_fentry.is_ok(Feature::OomVictim));
        assert_eq!(old_kernel_without_fentry.to_string().lines().count(), 2);

        let racy_exits = Features::decide(None, true, Some("EPERM".into()));
        assert!(!racy_exits.is_ok(Feature::ExitGroupDead));
        assert!(racy_exits
            .to_string()
            .starts_with("degraded feature exit_group_dead: "));
    }
}
