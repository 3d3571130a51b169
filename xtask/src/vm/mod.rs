//! `cargo xtask vm-test`: the kernel matrix. Boots Debian's cloud kernels under QEMU with an
//! initramfs holding the release agent and the end-to-end test executables, runs a focused
//! subset of the privileged tests in each guest and tabulates what the guests report.
mod initramfs;
mod kernels;
mod qemu;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, ensure};

/// The guest suite: (integration test target, test fn). Each is one focused end-to-end
/// check that depends on the kernel: probes loading and attaching, every process seen,
/// exit classification, a real memcg OOM kill, CPU accounting, the metrics contract, and
/// perf-event fds kept from commands (before 5.15 a perf event stays an open fd of the
/// agent; later kernels hold it in a BPF link, so only old kernels can show a leak).
const SUITE: [(&str, &str); 9] = [
    ("lifecycle", "spawn_tree_events_and_outcome_counters"),
    ("short_lived", "burst_of_short_lived_children_is_fully_seen"),
    (
        "crashes",
        "crashes_and_exits_are_classified_once_per_process",
    ),
    (
        "oom",
        "oom_kill_in_a_memory_cgroup_is_reported_like_the_kernel_does",
    ),
    ("attribution", "child_cpu_matches_rusage_of_1000_children"),
    (
        "zombies",
        "an_exit_is_reported_while_its_parent_keeps_it_a_zombie",
    ),
    (
        "pid_reuse",
        "pids_reused_within_a_tick_stay_distinct_processes",
    ),
    ("promtool", "metrics_pass_promtool_check"),
    (
        "profile",
        "perf_event_descriptors_do_not_leak_into_commands",
    ),
];

/// Bounds one guest, boot to poweroff. Generous: TCG runs a guest several times slower
/// than the host, and a guest that never reports `done` fails anyway.
const GUEST_TIMEOUT: Duration = Duration::from_secs(8 * 60);
/// Bounds one test inside the guest, so a hung test still leaves time for the others.
const TEST_TIMEOUT_SECS: u32 = 120;
/// Console lines shown for a failed guest.
const TAIL_LINES: usize = 150;

/// The kernel the self-test boots unless `--kernel` names another: one procmon passes on.
const SELF_TEST_KERNEL: &str = "6.12";
/// The exit probe's name (program, section `tp_btf/sched_process_exit` and attach target)
/// and an equally long tracepoint that does not exist.
const PROBE: &[u8] = b"sched_process_exit";
const BROKEN_PROBE: &[u8] = b"sched_process_exiz";

#[derive(clap::Args)]
pub struct Options {
    /// Kernel to boot: 5.10, 6.1, 6.12, newest or all [default: all; 6.12 with --self-test].
    #[arg(long, value_name = "NAME|all")]
    kernel: Option<String>,
    /// Prove the harness can fail: boot one kernel with an agent whose exit probe names a
    /// tracepoint that does not exist, and succeed only if the guest suite goes red.
    #[arg(long)]
    self_test: bool,
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let artifacts = prepare(root)?;
    if options.self_test {
        let kernel = options.kernel.as_deref().unwrap_or(SELF_TEST_KERNEL);
        if kernel == "all" {
            bail!("--self-test boots one kernel: name it with --kernel (e.g. 6.12)");
        }
        let failed = self_test(root, &artifacts, kernels::spec(kernel)?)?;
        println!("self-test: broken guest detected ({failed} tests failed)");
        return Ok(());
    }
    let specs = match options.kernel.as_deref().unwrap_or("all") {
        "all" => kernels::ALL.to_vec(),
        name => vec![kernels::spec(name)?],
    };
    let results = matrix(root, &artifacts, &specs)?;
    let failed = results.iter().filter(|r| !r.passed()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} kernels failed (see the table and console tails above; full logs \
             in target/vm/<kernel>/console.log)",
            results.len()
        );
    }
    Ok(())
}

/// `cargo xtask test`'s stage: every kernel and the self-test, each guest test (and the
/// self-test) counted in `tally`. Fails if any of them did.
pub fn run_in_test(root: &Path, tally: &mut cmd::TestTally) -> Result<()> {
    let artifacts = prepare(root)?;
    let results = matrix(root, &artifacts, &kernels::ALL)?;
    for result in &results {
        for (_, outcome) in result.outcomes() {
            match outcome {
                Some(t) if t.passed => tally.passed += 1,
                _ => tally.failed += 1,
            }
        }
    }
    let self_test = self_test(root, &artifacts, kernels::spec(SELF_TEST_KERNEL)?);
    match &self_test {
        Ok(failed) => {
            tally.passed += 1;
            println!("self-test: broken guest detected ({failed} tests failed)");
        }
        Err(e) => {
            tally.failed += 1;
            eprintln!("error: {e:#}");
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    if failed > 0 {
        bail!(
            "kernel matrix: {failed} of {} kernels failed",
            results.len()
        );
    }
    self_test.map(drop)
}

/// What goes into a guest, built on the host.
struct Artifacts {
    agent: PathBuf,
    /// Integration test target name → its executable.
    tests: BTreeMap<String, PathBuf>,
    /// The test crate's helper binaries (burst, spawn_tree, ...), run by absolute path.
    helpers: Vec<PathBuf>,
}

fn prepare(root: &Path) -> Result<Artifacts> {
    ensure::ensure(&[ensure::Need::Toolchain, ensure::Need::Vm])?;
    crate::build_agent(root)?;
    let artifacts = build_tests(root)?;
    for (target, name) in SUITE {
        let bin = &artifacts.tests[target];
        // libtest runs zero tests, and passes, when --exact names none: a renamed test would
        // turn into a silent green.
        let out = cmd::output(std::process::Command::new(bin).args(["--list", "--exact", name]))?;
        let listing = String::from_utf8_lossy(&out.stdout);
        if !listing.lines().any(|l| l == format!("{name}: test")) {
            bail!(
                "test {target}::{name} does not exist in {}: update SUITE in xtask/src/vm/mod.rs",
                bin.display()
            );
        }
    }
    Ok(artifacts)
}

/// `cargo test --no-run` for the end-to-end crate, reading the executables from cargo's
/// JSON messages (their names carry a hash).
fn build_tests(root: &Path) -> Result<Artifacts> {
    let mut build = cmd::cargo(root);
    build.args([
        "test",
        "--release",
        "--package",
        "procmon-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("$ {}", cmd::display(&build));
    let out = build
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    if !out.status.success() {
        bail!("building the end-to-end tests failed ({})", out.status);
    }
    let mut tests = BTreeMap::new();
    let mut helpers = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds = &msg["target"]["kind"];
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        if msg["profile"]["test"] == true && kinds[0] == "test" {
            tests.insert(name.to_string(), PathBuf::from(exe));
        } else if kinds[0] == "bin" {
            helpers.push(PathBuf::from(exe));
        }
    }
    for (target, _) in SUITE {
        if !tests.contains_key(target) {
            bail!("cargo built no test executable for tests/tests/{target}.rs: update SUITE in xtask/src/vm/mod.rs");
        }
    }
    Ok(Artifacts {
        agent: crate::agent_path(root),
        tests,
        helpers,
    })
}

/// One guest test as its marker line reported it.
#[derive(Debug, Clone, Copy)]
struct TestOutcome {
    passed: bool,
    secs: f64,
}

/// What one guest reported.
struct GuestResult {
    name: &'static str,
    /// None if the kernel could not be downloaded ([`GuestResult::download_error`]).
    kernel: Option<kernels::Kernel>,
    download_error: Option<String>,
    uname: Option<String>,
    tests: BTreeMap<String, TestOutcome>,
    done: bool,
    timed_out: bool,
    wall: Duration,
    console: PathBuf,
    /// Booted a second time because the first guest never reported `done` (see `matrix`).
    retried: bool,
}

impl GuestResult {
    fn not_downloaded(name: &'static str, error: &anyhow::Error) -> GuestResult {
        GuestResult {
            name,
            kernel: None,
            download_error: Some(format!("{error:#}")),
            uname: None,
            tests: BTreeMap::new(),
            done: false,
            timed_out: false,
            wall: Duration::ZERO,
            console: PathBuf::new(),
            retried: false,
        }
    }

    /// Every suite test, in order, with its outcome if the guest reported one.
    fn outcomes(&self) -> impl Iterator<Item = (&'static str, Option<TestOutcome>)> + '_ {
        SUITE
            .iter()
            .map(|(target, _)| (*target, self.tests.get(*target).copied()))
    }

    fn passed(&self) -> bool {
        self.done && self.outcomes().all(|(_, t)| t.is_some_and(|t| t.passed))
    }

    fn failed_tests(&self) -> usize {
        self.outcomes()
            .filter(|(_, t)| !t.is_some_and(|t| t.passed))
            .count()
    }
}

/// Boots every kernel in `specs` in turn (guests side by side would starve each other of
/// the two host cores and slow every test) and prints the table.
fn matrix(root: &Path, artifacts: &Artifacts, specs: &[kernels::Spec]) -> Result<Vec<GuestResult>> {
    let vm = root.join("target/vm");
    let initrd = vm.join("initramfs.cpio.gz");
    pack(artifacts, &artifacts.agent, &initrd)?;
    let mut fetcher = kernels::Fetcher::new(root);
    let mut results = Vec::new();
    for &spec in specs {
        let kernel = match fetcher.fetch(spec) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: kernel {}: {e:#}", spec.name);
                results.push(GuestResult::not_downloaded(spec.name, &e));
                continue;
            }
        };
        eprintln!(
            "\n--- kernel {}: {} {}",
            kernel.name, kernel.package, kernel.version
        );
        let mut result = boot(&vm.join(spec.name), kernel.clone(), &initrd)?;
        if !result.done {
            // NB: the emulator, not the guest suite: multi-threaded TCG has wedged a guest
            // (5.10, both vCPUs spinning after an OOM kill, once in about ten runs) and oopsed
            // one (7.3, see kernels.rs). A guest that never reports `done` is booted once more
            // with both vCPUs on one host thread; a test that reports a failure is not retried.
            eprintln!(
                "kernel {}: the guest never reported `done` (console kept as console-1.log); \
                 booting it once more on one TCG thread",
                spec.name
            );
            let dir = vm.join(spec.name);
            let _ = fs::rename(dir.join("console.log"), dir.join("console-1.log"));
            let mut single = kernel;
            single.single_tcg_thread = true;
            result = boot(&dir, single, &initrd)?;
            result.retried = true;
        }
        results.push(result);
    }
    print_table(&results);
    for r in results.iter().filter(|r| !r.passed()) {
        print_tail(r);
    }
    Ok(results)
}

/// Boots one guest and reads its markers.
fn boot(dir: &Path, kernel: kernels::Kernel, initrd: &Path) -> Result<GuestResult> {
    fs::create_dir_all(dir)?;
    let console = dir.join("console.log");
    let boot = qemu::boot(
        &kernel.vmlinuz,
        initrd,
        &console,
        GUEST_TIMEOUT,
        kernel.name,
        kernel.single_tcg_thread,
    )?;
    let text = fs::read_to_string(&console).unwrap_or_default();
    let mut result = GuestResult {
        name: kernel.name,
        kernel: Some(kernel),
        download_error: None,
        uname: None,
        tests: BTreeMap::new(),
        done: false,
        timed_out: boot.timed_out,
        wall: boot.wall,
        console,
        retried: false,
    };
    for line in text.lines() {
        let Some(i) = line.find(qemu::MARKER) else {
            continue;
        };
        let words: Vec<&str> = line[i + qemu::MARKER.len()..].split_whitespace().collect();
        match words.as_slice() {
            ["uname", release] => result.uname = Some(release.to_string()),
            ["done"] => result.done = true,
            [test, verdict @ ("pass" | "fail"), secs] => {
                result.tests.insert(
                    test.to_string(),
                    TestOutcome {
                        passed: *verdict == "pass",
                        secs: secs.parse().unwrap_or(f64::NAN),
                    },
                );
            }
            _ => {}
        }
    }
    Ok(result)
}

fn print_table(results: &[GuestResult]) {
    let mut out = String::from("\nkernel matrix\n");
    let mut header = format!("{:<7} {:<30}", "kernel", "uname -r");
    for (target, _) in SUITE {
        let _ = write!(header, " {target:>12}");
    }
    let _ = writeln!(out, "{header} {:>8}  result", "wall");
    for r in results {
        let uname = r.uname.as_deref().unwrap_or("(no report)");
        let _ = write!(out, "{:<7} {uname:<30}", r.name);
        for (_, outcome) in r.outcomes() {
            let cell = match outcome {
                Some(t) if t.passed => format!("ok {:.0}s", t.secs),
                Some(t) => format!("FAIL {:.0}s", t.secs),
                None => "-".to_string(),
            };
            let _ = write!(out, " {cell:>12}");
        }
        let verdict = if r.passed() && r.retried {
            "PASS (second boot, one TCG thread)".to_string()
        } else if r.passed() {
            "PASS".to_string()
        } else if r.download_error.is_some() {
            "FAIL (kernel download failed)".to_string()
        } else if r.timed_out {
            format!("FAIL (timed out after {}s)", GUEST_TIMEOUT.as_secs())
        } else if !r.done {
            "FAIL (guest stopped before `done`)".to_string()
        } else {
            format!("FAIL ({} tests failed)", r.failed_tests())
        };
        let _ = writeln!(out, " {:>7.0}s  {verdict}", r.wall.as_secs_f64());
    }
    for r in results {
        match (&r.kernel, &r.download_error) {
            (Some(k), _) => writeln!(out, "{:<7} {} {}", r.name, k.package, k.version),
            (None, Some(e)) => writeln!(out, "{:<7} download failed: {e}", r.name),
            (None, None) => unreachable!("a result has a kernel or a download error"),
        }
        .expect("writing to a String");
    }
    let passed = results.iter().filter(|r| r.passed()).count();
    let tests: usize = results.iter().map(|_| SUITE.len()).sum();
    let failed_tests: usize = results.iter().map(GuestResult::failed_tests).sum();
    let wall: f64 = results.iter().map(|r| r.wall.as_secs_f64()).sum();
    let _ = writeln!(
        out,
        "total: {passed} of {} kernels passed; {} of {tests} guest tests passed; {wall:.0}s in guests",
        results.len(),
        tests - failed_tests,
    );
    println!("{out}");
}

fn print_tail(r: &GuestResult) {
    if let Some(e) = &r.download_error {
        println!("--- kernel {}: download failed ---\n{e}\n", r.name);
        return;
    }
    let text = fs::read_to_string(&r.console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    println!(
        "--- last {} lines of the {} guest's console ({}) ---",
        tail.len(),
        r.name,
        r.console.display()
    );
    for line in tail {
        println!("{}", strip_escapes(line));
    }
    println!("--- end of the {} guest's console ---\n", r.name);
}

/// `line` without terminal escape sequences: the firmware clears the screen, which would
/// garble the terminal the tail is printed to.
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters, then one final byte in @..~; otherwise ESC and one char.
        if chars.next_if_eq(&'[').is_some() {
            while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
        } else {
            chars.next();
        }
    }
    out
}

/// Boots `spec` with an agent whose exit probe cannot attach. Ok(number of failed guest
/// tests) if the suite went red, Err if the broken guest passed or never finished.
fn self_test(root: &Path, artifacts: &Artifacts, spec: kernels::Spec) -> Result<usize> {
    let dir = root.join("target/vm/selftest");
    fs::create_dir_all(&dir)?;
    let agent = dir.join("procmon");
    let hits = break_exit_probe(&artifacts.agent, &agent)?;
    eprintln!(
        "self-test: {} has {hits} occurrences of {} patched to {}",
        agent.display(),
        String::from_utf8_lossy(PROBE),
        String::from_utf8_lossy(BROKEN_PROBE)
    );
    let initrd = dir.join("initramfs.cpio.gz");
    pack(artifacts, &agent, &initrd)?;
    let kernel = kernels::Fetcher::new(root).fetch(spec)?;
    let result = boot(
        &root.join(format!("target/vm/selftest-{}", spec.name)),
        kernel,
        &initrd,
    )?;
    print_table(std::slice::from_ref(&result));
    if !result.done {
        print_tail(&result);
        bail!(
            "self-test: the broken guest never reported `done` (see {}), so it proves nothing",
            result.console.display()
        );
    }
    if result.passed() {
        print_tail(&result);
        bail!(
            "self-test: the guest suite passed with an agent whose exit probe cannot attach: \
             the harness cannot fail, or the patch no longer breaks the agent"
        );
    }
    // Red for the planted reason, not because the guest could not run its tests at all (a
    // harness bug would make this self-test pass too).
    let console = fs::read(&result.console)
        .with_context(|| format!("reading {}", result.console.display()))?;
    if !console
        .windows(BROKEN_PROBE.len())
        .any(|w| w == BROKEN_PROBE)
    {
        print_tail(&result);
        bail!(
            "self-test: the broken guest failed, but not because of the planted fault (the \
             agent never named `{}`): the harness itself is broken",
            String::from_utf8_lossy(BROKEN_PROBE)
        );
    }
    Ok(result.failed_tests())
}

/// Copies `agent` to `out` with every occurrence of the exit probe's name replaced.
///
/// NB: aya takes a BTF tracepoint's attach target from what `BtfTracePoint::load` is given
/// (the agent passes the program name), not from the `tp_btf/...` section name. Patching
/// only the section breaks the agent differently (it no longer finds the program by name
/// and panics). Patching every occurrence renames the section, the program and the agent's
/// name for it together, so the agent fails the way a kernel without the tracepoint makes
/// it fail: it asks the kernel's BTF for a tracepoint that does not exist.
fn break_exit_probe(agent: &Path, out: &Path) -> Result<usize> {
    let mut bytes = fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    let section = [b"tp_btf/".as_slice(), PROBE].concat();
    let sections = count(&bytes, &section);
    if sections == 0 {
        bail!(
            "self-test: {} has no `{}` section name to patch: has the exit probe been renamed? \
             Update PROBE in xtask/src/vm/mod.rs",
            agent.display(),
            String::from_utf8_lossy(&section)
        );
    }
    let hits = replace_all(&mut bytes, PROBE, BROKEN_PROBE);
    fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(out, fs::Permissions::from_mode(0o755))?;
    Ok(hits)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len(), "an in-place patch keeps every offset");
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    hits
}

/// Writes the guest's initramfs with `agent` as the agent under test.
fn pack(artifacts: &Artifacts, agent: &Path, out: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    let mut image = initramfs::Initramfs::with_busybox(busybox)
        .context("busybox-static provides /bin/busybox: install it (cargo xtask vm-test does)")?;
    image.binary(agent)?;
    for (target, _) in SUITE {
        image.binary(&artifacts.tests[target])?;
    }
    for helper in &artifacts.helpers {
        image.binary(helper)?;
    }
    let promtool = Path::new("/usr/bin/promtool");
    image
        .binary(promtool)
        .context("promtool comes from the Debian package prometheus: install it")?;
    image.file(
        Path::new("/init"),
        init_script(artifacts, agent).into_bytes(),
        0o755,
    );
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    let bytes = image.write(out)?;
    eprintln!(
        "initramfs: {} ({} MiB unpacked, {} MiB gzip'd)",
        out.display(),
        bytes >> 20,
        fs::metadata(out)?.len() >> 20
    );
    Ok(())
}

/// The guest's /init: mount what the agent and tests need, run the suite, power off.
fn init_script(artifacts: &Artifacts, agent: &Path) -> String {
    let mut s = format!(
        r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root CI=true PROCMON_VM=1
export PROCMON_BIN={agent}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# NB: no tmpfs over /tmp: the initramfs (itself in memory, writable) holds the binaries at
# their host paths, and a checkout under /tmp (CI's clone may be one) would be hidden.
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# Cgroup v2 only: 6.12 onwards builds no v1 memory controller, and one hierarchy on
# every kernel keeps the guests comparable. The OOM test makes its memcg under the root.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for c in memory cpu; do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || echo "warning: no cgroup v2 $c controller"
done
ip link set lo up
echo "{marker}uname $(uname -r)"

# Centiseconds since boot: busybox sh has integer arithmetic only.
now() {{
    read up rest < /proc/uptime
    echo $(( ${{up%.*}}${{up#*.}} ))
}}

# run TEST BINARY FN: one test of one binary, then its marker line.
run() {{
    echo "{marker}start $1"
    start=$(now)
    if timeout {timeout} "$2" --test-threads=1 --exact "$3"; then verdict=pass; else verdict=fail; fi
    took=$(( $(now) - start ))
    printf '{marker}%s %s %d.%02d\n' "$1" "$verdict" $(( took / 100 )) $(( took % 100 ))
}}

"#,
        agent = agent.display(),
        marker = qemu::MARKER,
        timeout = TEST_TIMEOUT_SECS,
    );
    for (target, name) in SUITE {
        let _ = writeln!(
            s,
            "run {target} {} {name}",
            artifacts.tests[target].display()
        );
    }
    let _ = write!(s, "echo \"{}done\"\nsync\npoweroff -f\n", qemu::MARKER);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS"),
            "SeaBIOS"
        );
        assert_eq!(strip_escapes("plain [1] text"), "plain [1] text");
    }

    #[test]
    fn patch_replaces_every_occurrence_in_place() {
        let mut bytes = b"xx tp_btf/sched_process_exit\0sched_process_exit yy".to_vec();
        let len = bytes.len();
        assert_eq!(replace_all(&mut bytes, PROBE, BROKEN_PROBE), 2);
        assert_eq!(bytes.len(), len);
        assert_eq!(count(&bytes, PROBE), 0);
        assert_eq!(count(&bytes, b"tp_btf/sched_process_exiz"), 1);
    }
}
