//! `procmon run -- CMD` end to end, on real process trees: a parallel `make` build with gcc,
//! a Python multiprocessing pool, a shell pipeline, and exit statuses passed through. The
//! JSON report (`--json FILE`) is checked for shape and internal consistency and against
//! what each command is known to spawn; the stderr tree must name every process.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use procmon_tests::{procmon, require_root, require_tool, run_with_timeout, TempDir};
use serde_json::Value;

/// Bounds one `procmon run` (a wait, not a speed assertion).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

const OUTCOMES: [&str; 5] = ["clean", "error", "crashed", "oom_killed", "killed"];

struct Run {
    out: Output,
    report: Value,
    stderr: String,
}

/// `procmon run --json FILE -- cmd...` in `cwd`; returns its output and the parsed report.
fn procmon_run(cmd: &[&str], cwd: Option<&Path>) -> Run {
    let dir = TempDir::new("run");
    let json = dir.path().join("run.json");
    let mut args = vec!["run", "--json", json.to_str().unwrap(), "--"];
    args.extend_from_slice(cmd);
    let mut command = procmon(&args);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let out = run_with_timeout(&mut command, RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "procmon run -- {cmd:?} ({}) left no readable {}: {e}; stderr:\n{stderr}",
            out.status,
            json.display()
        )
    });
    let report: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("--json of procmon run -- {cmd:?} is not JSON ({e}):\n{text}"));
    assert!(
        !stderr.contains("panicked"),
        "procmon run -- {cmd:?} panicked:\n{stderr}"
    );
    let command: Vec<&str> = report["command"]
        .as_array()
        .unwrap_or_else(|| panic!("no `command` array in {report}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("non-string in command: {v}"))
        })
        .collect();
    assert_eq!(command, cmd, "`command` in the report");
    assert!(
        report["duration_seconds"].as_f64().is_some_and(|d| d > 0.0),
        "`duration_seconds` missing or not > 0 in the report"
    );
    check_node(&report["root"], "root");
    Run {
        out,
        report,
        stderr,
    }
}

fn num(node: &Value, field: &str, path: &str) -> f64 {
    node[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{path}: `{field}` is not a number in {}", brief(node)))
}

/// A node without its children, for messages.
fn brief(node: &Value) -> String {
    let mut n = node.clone();
    if let Some(o) = n.as_object_mut() {
        o.remove("children");
    }
    n.to_string()
}

/// Checks one node and (recursively) its children for the contract's shape and internal
/// consistency; returns the number of nodes in its subtree.
fn check_node(node: &Value, path: &str) -> u64 {
    let b = brief(node);
    assert!(
        node["pid"].as_u64().is_some_and(|p| p > 0),
        "{path}: bad pid in {b}"
    );
    assert!(node["ppid"].is_u64(), "{path}: bad ppid in {b}");
    assert!(
        node["comm"].as_str().is_some_and(|c| !c.is_empty()),
        "{path}: bad comm in {b}"
    );
    assert!(
        node["exe"].is_string() || node["exe"].is_null(),
        "{path}: exe is neither a string nor null in {b}"
    );
    assert_eq!(
        node["running"], false,
        "{path}: still running after the command exited (no daemons here): {b}"
    );
    for f in [
        "lifetime_seconds",
        "cpu_user_seconds",
        "cpu_system_seconds",
        "peak_rss_bytes",
    ] {
        assert!(num(node, f, path) >= 0.0, "{path}: negative `{f}` in {b}");
    }
    let outcome = node["outcome"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no string outcome in {b}"));
    assert!(
        OUTCOMES.contains(&outcome),
        "{path}: unknown outcome in {b}"
    );
    match outcome {
        "clean" => assert!(
            node["exit_code"] == 0 && node["signal"].is_null(),
            "{path}: clean needs exit_code 0 and signal null: {b}"
        ),
        "error" => assert!(
            node["exit_code"].as_i64().is_some_and(|c| c != 0) && node["signal"].is_null(),
            "{path}: error needs a non-zero exit_code and signal null: {b}"
        ),
        _ => assert!(
            node["exit_code"].is_null() && node["signal"].as_i64().is_some_and(|s| s > 0),
            "{path}: {outcome} needs a signal and exit_code null: {b}"
        ),
    }

    let children = node["children"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no `children` array in {b}"));
    let mut count = 1;
    let mut cpu = num(node, "cpu_user_seconds", path) + num(node, "cpu_system_seconds", path);
    let mut prev = f64::INFINITY;
    for (i, c) in children.iter().enumerate() {
        let cpath = format!("{path}/{}[{i}]", c["comm"].as_str().unwrap_or("?"));
        assert_eq!(
            c["ppid"], node["pid"],
            "{cpath}: ppid is not its parent node's pid {}",
            node["pid"]
        );
        count += check_node(c, &cpath);
        let c_cpu = num(&c["subtree"], "cpu_seconds", &cpath);
        assert!(
            c_cpu <= prev,
            "{path}: children not sorted by subtree cpu_seconds descending ({prev} then {c_cpu} \
             at {cpath})"
        );
        prev = c_cpu;
        cpu += c_cpu;
    }
    let sub = &node["subtree"];
    assert_eq!(
        sub["processes"].as_u64(),
        Some(count),
        "{path}: subtree.processes vs the nodes in its subtree: {b}"
    );
    let sub_cpu = num(sub, "cpu_seconds", path);
    assert!(
        (sub_cpu - cpu).abs() <= 1e-3 + cpu * 1e-3,
        "{path}: subtree.cpu_seconds {sub_cpu} is not its own user+system plus its children's \
         subtree cpu_seconds ({cpu}): {b}"
    );
    assert!(
        num(sub, "peak_rss_bytes", path) >= num(node, "peak_rss_bytes", path),
        "{path}: subtree.peak_rss_bytes below the node's own peak_rss_bytes: {b}"
    );
    count
}

/// Every node of the tree, depth first.
fn nodes(node: &Value) -> Vec<&Value> {
    let mut out = vec![node];
    for c in node["children"].as_array().into_iter().flatten() {
        out.extend(nodes(c));
    }
    out
}

fn count_comm(nodes: &[&Value], comm: &str) -> usize {
    nodes.iter().filter(|n| n["comm"] == comm).count()
}

/// The stderr tree names every process: its pid and its comm.
fn check_stderr_tree(run: &Run) {
    for n in nodes(&run.report["root"]) {
        let (pid, comm) = (n["pid"].to_string(), n["comm"].as_str().unwrap());
        assert!(
            run.stderr.contains(&pid) && run.stderr.contains(comm),
            "stderr tree lacks pid {pid} / comm {comm:?}:\n{}",
            run.stderr
        );
    }
}

fn check_status(run: &Run, code: i32) {
    assert_eq!(
        run.out.status.code(),
        Some(code),
        "procmon run exit status {}; stderr:\n{}",
        run.out.status,
        run.stderr
    );
    assert_eq!(run.report["status"], code, "report `status`");
}

#[test]
fn make_j2_build_tree() {
    let test = "run::make_j2_build_tree";
    if !require_root(test)
        || !require_tool(test, "make", "Debian package make")
        || !require_tool(test, "gcc", "Debian package gcc")
    {
        return;
    }
    const UNITS: usize = 6;
    let dir = TempDir::new("make");
    let mut objs = Vec::new();
    for i in 0..UNITS {
        let body = if i == 0 {
            let decls: String = (1..UNITS).map(|j| format!("int f{j}(int);\n")).collect();
            let calls: String = (1..UNITS).map(|j| format!(" + f{j}(argc)")).collect();
            format!("{decls}int main(int argc, char **argv) {{ (void)argv; return 0 * (argc{calls}); }}\n")
        } else {
            format!("int f{i}(int x) {{ int s = 0; for (int k = 0; k < x * {i}; k++) s += k; return s; }}\n")
        };
        std::fs::write(dir.path().join(format!("u{i}.c")), body).expect("writing a C file");
        objs.push(format!("u{i}.o"));
    }
    let makefile = format!(
        "OBJS = {}\nprog: $(OBJS)\n\tgcc -o $@ $(OBJS)\n%.o: %.c\n\tgcc -O1 -c $< -o $@\n",
        objs.join(" ")
    );
    std::fs::write(dir.path().join("Makefile"), makefile).expect("writing the Makefile");

    let run = procmon_run(&["make", "-j2"], Some(dir.path()));
    check_status(&run, 0);
    assert!(dir.path().join("prog").is_file(), "make built no prog");
    let root = &run.report["root"];
    assert_eq!(root["comm"], "make", "root comm: {}", brief(root));
    assert!(
        root["exe"].as_str().is_some_and(|e| e.ends_with("/make")),
        "root exe: {}",
        brief(root)
    );
    assert_eq!(root["outcome"], "clean", "root: {}", brief(root));
    let all = nodes(root);
    for n in &all {
        assert_eq!(
            n["outcome"],
            "clean",
            "every build step succeeds: {}",
            brief(n)
        );
    }
    let gcc_under_make = root["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["comm"] == "gcc")
        .count();
    let counts: Vec<_> = ["gcc", "cc1", "as", "collect2", "ld"]
        .iter()
        .map(|c| (*c, count_comm(&all, c)))
        .collect();
    println!(
        "make -j2: {} processes, gcc directly under make {gcc_under_make}, by comm {counts:?}, \
         subtree cpu {} s",
        all.len(),
        root["subtree"]["cpu_seconds"]
    );
    assert_eq!(
        gcc_under_make,
        UNITS + 1,
        "gcc children of make ({UNITS} compiles + 1 link)"
    );
    for (comm, at_least) in [("cc1", UNITS), ("as", UNITS), ("collect2", 1), ("ld", 1)] {
        assert!(
            count_comm(&all, comm) >= at_least,
            "expected at least {at_least} `{comm}` processes in the tree, got {counts:?}"
        );
    }
    assert_eq!(
        root["subtree"]["processes"].as_u64(),
        Some(all.len() as u64),
        "root subtree.processes vs nodes in the tree"
    );
    check_stderr_tree(&run);
}

#[test]
fn python_multiprocessing_pool() {
    let test = "run::python_multiprocessing_pool";
    if !require_root(test) {
        return;
    }
    // Debian's interpreter when present (no pyenv shim process chain in the tree).
    let python = if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else if require_tool(test, "python3", "the multiprocessing workload") {
        "python3"
    } else {
        return;
    };
    let script = "import multiprocessing as m; p=m.Pool(3); print(sum(p.map(abs, range(1000)))); p.close(); p.join()";
    let run = procmon_run(&[python, "-c", script], None);
    check_status(&run, 0);
    let stdout = String::from_utf8_lossy(&run.out.stdout);
    assert!(
        stdout.contains("499500"),
        "the script's output did not come through: {stdout:?}"
    );
    let root = &run.report["root"];
    assert_eq!(root["outcome"], "clean", "root: {}", brief(root));
    let children = root["children"].as_array().unwrap();
    let workers = children
        .iter()
        .filter(|c| c["comm"].as_str().is_some_and(|c| c.starts_with("python")))
        .count();
    println!(
        "python pool: root comm {}, {} children, {workers} python workers",
        root["comm"],
        children.len()
    );
    assert!(
        workers >= 3,
        "expected at least 3 python worker children under the root, got {workers}: {:?}",
        children.iter().map(brief).collect::<Vec<_>>()
    );
    check_stderr_tree(&run);
}

#[test]
fn shell_pipeline() {
    if !require_root("run::shell_pipeline") {
        return;
    }
    let run = procmon_run(
        &["sh", "-c", "seq 1 100000 | sort -r | head -n 3 > /dev/null"],
        None,
    );
    check_status(&run, 0);
    let root = &run.report["root"];
    assert_eq!(root["comm"], "sh", "root: {}", brief(root));
    let comms: Vec<&str> = root["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["comm"].as_str().unwrap())
        .collect();
    println!("pipeline: children of sh {comms:?}");
    for want in ["seq", "sort", "head"] {
        assert!(
            comms.contains(&want),
            "`{want}` is not a child of sh; children: {comms:?}"
        );
    }
    check_stderr_tree(&run);
}

#[test]
fn exit_status_passes_through() {
    if !require_root("run::exit_status_passes_through") {
        return;
    }
    let run = procmon_run(&["sh", "-c", "exit 7"], None);
    check_status(&run, 7);
    let (report, root) = (&run.report, &run.report["root"]);
    assert_eq!(report["exit_code"], 7, "report exit_code");
    assert!(
        report["signal"].is_null(),
        "report signal must be null: {report}"
    );
    assert_eq!(root["outcome"], "error", "root: {}", brief(root));
    assert_eq!(root["exit_code"], 7, "root: {}", brief(root));

    let run = procmon_run(&["sh", "-c", "kill -TERM $$"], None);
    check_status(&run, 128 + libc::SIGTERM);
    let (report, root) = (&run.report, &run.report["root"]);
    assert_eq!(report["signal"], libc::SIGTERM, "report signal");
    assert!(
        report["exit_code"].is_null(),
        "report exit_code must be null when killed: {report}"
    );
    assert_eq!(root["outcome"], "killed", "root: {}", brief(root));
    assert_eq!(root["signal"], libc::SIGTERM, "root: {}", brief(root));
}
