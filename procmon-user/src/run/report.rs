//! What `procmon run` reports: the tree of every process of the command, as one JSON
//! document (`--json`) and as text on stderr.

use std::fmt::Write as _;

use serde::Serialize;

use crate::events::Outcome;

#[derive(Debug, Clone, Serialize)]
pub struct Subtree {
    /// This process and all its descendants.
    pub processes: u64,
    pub cpu_seconds: f64,
    /// The largest peak of any single process in the subtree.
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub lifetime_seconds: f64,
    pub running: bool,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<u8>,
    pub signal: Option<u8>,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub peak_rss_bytes: u64,
    pub subtree: Subtree,
    pub children: Vec<Node>,
}

/// The whole `--json` document.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub command: Vec<String>,
    /// What procmon exits with: the command's exit code, or 128 + the signal that killed it.
    pub status: i32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_seconds: f64,
    pub root: Option<Node>,
}

/// The human-readable tree for stderr: expensive branches first.
pub fn render_text(report: &RunReport) -> String {
    let mut out = String::new();
    let how = match (report.exit_code, report.signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".to_string(),
    };
    let _ = write!(
        out,
        "procmon: `{}` {how} after {:.2}s",
        report.command.join(" "),
        report.duration_seconds
    );
    let Some(root) = &report.root else {
        out.push_str(" (its processes were not observed)\n");
        return out;
    };
    let _ = writeln!(
        out,
        ": {} processes, {:.3}s CPU, largest peak RSS {}",
        root.subtree.processes,
        root.subtree.cpu_seconds,
        bytes(root.subtree.peak_rss_bytes)
    );
    let _ = writeln!(
        out,
        "{:>8} {:>9} {:>9} {:>9} {:>10} {:<10} {:>10} {:>6}  COMMAND",
        "PID", "LIFETIME", "CPU USER", "CPU SYS", "PEAK RSS", "OUTCOME", "SUBTREE", "PROCS"
    );
    render_node(&mut out, root, "", "");
    out
}

fn render_node(out: &mut String, n: &Node, prefix: &str, child_prefix: &str) {
    let outcome = if n.running {
        "running"
    } else {
        n.outcome.map_or("?", |o| o.as_str())
    };
    let _ = writeln!(
        out,
        "{:>8} {:>8.3}s {:>8.3}s {:>8.3}s {:>10} {:<10} {:>9.3}s {:>6}  {prefix}{}",
        n.pid,
        n.lifetime_seconds,
        n.cpu_user_seconds,
        n.cpu_system_seconds,
        bytes(n.peak_rss_bytes),
        outcome,
        n.subtree.cpu_seconds,
        n.subtree.processes,
        n.comm.escape_debug()
    );
    for (i, c) in n.children.iter().enumerate() {
        let last = i + 1 == n.children.len();
        let (branch, cont) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        render_node(
            out,
            c,
            &format!("{child_prefix}{branch}"),
            &format!("{child_prefix}{cont}"),
        );
    }
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
