//! Running stress-ng and reading its throughput.
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Workload;
use crate::cmd;

/// Runs the workload once and returns its bogo ops per second of wall-clock time.
pub fn run(workload: &Workload, seconds: u32) -> Result<f64> {
    let mut stress = Command::new("stress-ng");
    stress
        .arg(format!("--{}", workload.stressor))
        .arg(workload.instances.to_string())
        .arg("--timeout")
        .arg(format!("{seconds}s"))
        .arg("--metrics-brief");
    eprintln!("$ {}", cmd::display(&stress));
    let out = cmd::output(&mut stress)?;
    // Where the metrics go (stdout or stderr) differs between stress-ng versions.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{text}",
            cmd::display(&stress),
            out.status
        );
    }
    parse_ops_per_second(&text, workload.stressor).with_context(|| {
        format!(
            "cannot find the {} throughput in stress-ng's output:\n{text}",
            workload.stressor
        )
    })
}

/// Reads the "bogo ops/s (real time)" column of the stressor's `--metrics-brief` line. stress-ng
/// 0.15 prints (0.13 says `info:` where 0.15 says `metrc:`):
///
/// ```text
/// stress-ng: metrc: [5554] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s
/// stress-ng: metrc: [5554]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)
/// stress-ng: metrc: [5554] fork               7383      2.00      1.90      2.01      3691.10        1885.16
/// ```
fn parse_ops_per_second(output: &str, stressor: &str) -> Result<f64> {
    for line in output.lines() {
        let Some((_, metrics)) = line.split_once("] ") else {
            continue;
        };
        let fields: Vec<&str> = metrics.split_whitespace().collect();
        // stressor, bogo ops, real time, usr time, sys time, bogo ops/s (real time), ...
        if fields.len() >= 6 && fields[0] == stressor {
            return fields[5]
                .parse()
                .with_context(|| format!("bad bogo ops/s in {line:?}"));
        }
    }
    bail!("no `{stressor}` metrics line (was --metrics-brief passed?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT_0_15: &str = "\
stress-ng: info:  [5554] setting to a 2 second run per stressor
stress-ng: info:  [5554] dispatching hogs: 2 fork
stress-ng: metrc: [5554] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s
stress-ng: metrc: [5554]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)
stress-ng: metrc: [5554] fork               7383      2.00      1.90      2.01      3691.10        1885.16
stress-ng: info:  [5554] successful run completed in 2.00s
";

    #[test]
    fn reads_real_time_throughput() {
        assert_eq!(parse_ops_per_second(OUTPUT_0_15, "fork").unwrap(), 3691.10);
    }

    #[test]
    fn older_info_prefix() {
        let old = "stress-ng: info:  [77] fork  100  1.00  0.50  0.50  100.00  100.00\n";
        assert_eq!(parse_ops_per_second(old, "fork").unwrap(), 100.0);
    }

    #[test]
    fn missing_stressor_is_an_error() {
        assert!(parse_ops_per_second(OUTPUT_0_15, "exec").is_err());
        assert!(
            parse_ops_per_second("stress-ng: info:  [1] dispatching hogs: 2 fork\n", "fork")
                .is_err()
        );
    }
}
