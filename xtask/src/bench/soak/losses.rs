//! "Every loss counted": what each /events client was sent, against what the soak made and
//! what the agent says it lost.
use std::collections::HashMap;

use super::clients::Tally;
use crate::bench::table::{cells, print_table};

/// What the soak made, and what the agent says it lost.
pub struct Truth {
    pub forks: u64,
    pub crashes: Vec<u32>,
    pub oom_victims: Vec<u32>,
    pub lost: f64,
}

/// Why `tally` fails "every loss counted", empty if it passes. For each kind of event the soak
/// made (storm forks and exits for unfiltered clients, crashes and OOM kills for all): the
/// client saw no more than was made, and what it missed is at most the agent's own count of
/// lost events plus the drops announced to this client. An unfiltered client sees every
/// event's `id:`, so its gaps must equal the drops announced to it, exactly.
pub fn client_problems(tally: &Tally, truth: &Truth) -> Vec<String> {
    let mut problems = Vec::new();
    let allowance = tally.dropped as f64 + truth.lost;
    let mut check = |what: &str, seen: u64, made: u64, extra: u64| {
        if seen > made || extra > 0 {
            problems.push(format!(
                "{what}: saw {seen} + {extra} unknown of {made} made"
            ));
        } else if (made - seen) as f64 > allowance {
            problems.push(format!(
                "{what}: missed {} of {made}, but only {allowance} losses were counted",
                made - seen
            ));
        }
    };
    if !tally.filtered {
        check("storm forks", tally.storm_forks, truth.forks, 0);
        check("storm exits", tally.storm_exits, truth.forks, 0);
    }
    let (crashes, extra) = matched(&tally.crashes, &truth.crashes);
    check("crashes", crashes, truth.crashes.len() as u64, extra);
    let (ooms, extra) = matched(&tally.oom_kills, &truth.oom_victims);
    check("OOM kills", ooms, truth.oom_victims.len() as u64, extra);
    if !tally.filtered && tally.id_gaps != tally.dropped {
        problems.push(format!(
            "{} events missing from the ids, {} announced as dropped",
            tally.id_gaps, tally.dropped
        ));
    }
    if tally.cut_off {
        problems.push("the stream ended before the soak closed it".into());
    }
    problems
}

/// Events seen (by pid) that match children made (pids, repeats allowed), and the events
/// beyond those: for a pid, at most as many events match as children had it.
fn matched(seen: &HashMap<u32, u64>, made: &[u32]) -> (u64, u64) {
    let mut made_per_pid: HashMap<u32, u64> = HashMap::new();
    for &pid in made {
        *made_per_pid.entry(pid).or_default() += 1;
    }
    seen.iter().fold((0, 0), |(matched, extra), (pid, &n)| {
        let m = n.min(made_per_pid.get(pid).copied().unwrap_or(0));
        (matched + m, extra + n - m)
    })
}

pub fn print_clients(tallies: &[Tally], truth: &Truth) {
    let mut table = vec![cells([
        "client",
        "filter",
        "messages",
        "dropped",
        "id gaps",
        "storm forks",
        "storm exits",
        "crashes",
        "OOM kills",
        "verdict",
    ])];
    for (i, t) in tallies.iter().enumerate() {
        let problems = client_problems(t, truth);
        table.push(vec![
            (i + 1).to_string(),
            if t.filtered { "crash,oom_kill" } else { "all" }.into(),
            t.messages.to_string(),
            t.dropped.to_string(),
            if t.filtered {
                "-".into()
            } else {
                t.id_gaps.to_string()
            },
            t.storm_forks.to_string(),
            t.storm_exits.to_string(),
            t.crashes.values().sum::<u64>().to_string(),
            t.oom_kills.values().sum::<u64>().to_string(),
            if problems.is_empty() { "ok" } else { "FAILED" }.into(),
        ]);
    }
    println!(
        "\nsoak: /events clients (made: {} storm forks, {} crashes, {} OOM kills; agent lost {})",
        truth.forks,
        truth.crashes.len(),
        truth.oom_victims.len(),
        truth.lost
    );
    print_table(&table);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth() -> Truth {
        Truth {
            forks: 100,
            // Pid 3 twice: pids wrap during a storm.
            crashes: vec![1, 2, 3, 3],
            oom_victims: vec![9],
            lost: 0.0,
        }
    }

    fn complete() -> Tally {
        Tally {
            storm_forks: 100,
            storm_exits: 100,
            crashes: [(1, 1), (2, 1), (3, 2)].into(),
            oom_kills: [(9, 1)].into(),
            ..Tally::default()
        }
    }

    #[test]
    fn a_client_that_saw_everything_passes() {
        assert!(client_problems(&complete(), &truth()).is_empty());
    }

    #[test]
    fn missing_events_must_be_announced_or_counted_as_lost() {
        let mut t = complete();
        t.storm_exits = 90;
        assert_eq!(client_problems(&t, &truth()).len(), 1);
        // Announced as dropped, with matching id gaps: counted.
        t.dropped = 10;
        t.id_gaps = 10;
        assert!(client_problems(&t, &truth()).is_empty());
        // Gaps nobody announced.
        t.id_gaps = 11;
        assert_eq!(client_problems(&t, &truth()).len(), 1);
        // Lost by the agent (ring buffer full): counted.
        let mut t = complete();
        t.crashes.insert(3, 1);
        assert_eq!(client_problems(&t, &truth()).len(), 1);
        let lost = Truth {
            lost: 1.0,
            ..truth()
        };
        assert!(client_problems(&t, &lost).is_empty());
    }

    #[test]
    fn more_than_was_made_fails() {
        let mut t = complete();
        t.storm_forks = 101;
        t.crashes.insert(3, 3);
        assert_eq!(client_problems(&t, &truth()).len(), 2);
        // Filtered clients are not asked about the storm, and have no id sequence.
        let filtered = Tally {
            filtered: true,
            id_gaps: 5,
            crashes: [(1, 1), (2, 1), (3, 2)].into(),
            oom_kills: [(9, 1)].into(),
            ..Tally::default()
        };
        assert!(client_problems(&filtered, &truth()).is_empty());
    }
}
