//! The profiling tests' CPU burner (tests/workloads/hot.c), built with frame pointers, and a
//! reader of the folded stacks `procmon profile` writes.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// Compiles hot.c into `dir` (gcc is on every machine CI runs on).
pub fn build(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/hot.c");
    let bin = dir.join("hot");
    let out = Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running gcc: {e}"));
    assert!(
        out.status.success(),
        "gcc {} failed: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// A running burner, killed on drop.
pub struct Hot(pub Child);

impl Hot {
    /// Starts `bin args` and waits for its "ready" line.
    pub fn start(bin: &Path, args: &[&str]) -> Hot {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading hot's ready line");
        assert_eq!(line.trim(), "ready", "hot said {line:?}");
        Hot(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Hot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Folded stacks (`frame;frame;leaf count` per line; the count follows the last space).
/// Panics on a malformed line: the output must parse.
pub fn parse_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (stack, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("folded line without a count: {line:?}"));
            let count = count
                .parse()
                .unwrap_or_else(|_| panic!("folded line with a bad count: {line:?}"));
            (stack.split(';').map(str::to_string).collect(), count)
        })
        .collect()
}

/// Samples whose leaf is `leaf` with `caller` right beneath it, and all samples.
pub fn leaf_share(stacks: &[(Vec<String>, u64)], leaf: &str, caller: &str) -> (u64, u64) {
    let total = stacks.iter().map(|(_, n)| n).sum();
    let hits = stacks
        .iter()
        .filter(|(frames, _)| {
            let n = frames.len();
            n >= 2 && frames[n - 1] == leaf && frames[n - 2] == caller
        })
        .map(|(_, n)| n)
        .sum();
    (hits, total)
}
