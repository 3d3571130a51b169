//! The kernel's own counts, machine-wide, from /proc/stat: `processes` (tasks created since
//! boot, threads included) and `ctxt` (context switches since boot). They are the
//! denominators of "BPF time per fork+exit" and "per context switch": the probes run for
//! every fork and switch on the machine, not only the storm's, so both sides of the ratio
//! count the same population.
use std::fs;

use anyhow::{Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub forks: u64,
    pub switches: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;

    fn sub(self, before: Counts) -> Counts {
        Counts {
            forks: self.forks.saturating_sub(before.forks),
            switches: self.switches.saturating_sub(before.switches),
        }
    }
}

pub fn read() -> Result<Counts> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse(&stat).context("no `processes` or `ctxt` line in /proc/stat")
}

fn parse(stat: &str) -> Option<Counts> {
    let field = |name: &str| -> Option<u64> {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse().ok())
    };
    Some(Counts {
        forks: field("processes")?,
        switches: field("ctxt")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_processes_and_ctxt() {
        let stat = "cpu  1 2 3\nctxt 2284\nbtime 1763800000\nprocesses 48123\nprocs_running 3\n";
        let counts = parse(stat).unwrap();
        assert_eq!(
            counts,
            Counts {
                forks: 48123,
                switches: 2284
            }
        );
        assert_eq!(parse("cpu 1 2\nctxt 5\n"), None);
        let now = read().unwrap();
        assert!(now.forks > 0 && now.switches > 0);
    }
}
