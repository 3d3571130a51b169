//! Running stress-ng and reading its throughput.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// What one stress-ng run achieved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// Bogo ops in total (for the fork stressor: forks); the denominator of probe cost per op.
    pub ops: f64,
    /// Wall-clock length of the run as stress-ng measured it, in seconds.
    pub seconds: f64,
    /// Bogo ops per second of wall-clock time.
    pub ops_per_second: f64,
}

/// Runs `stress-ng --<stressor> <instances> <args>` for `seconds` and returns what it
/// achieved.
pub fn run(stressor: &str, instances: u32, args: &[&str], seconds: u32) -> Result<Throughput> {
    let mut stress = Command::new("stress-ng");
    stress
        .arg(format!("--{stressor}"))
        .arg(instances.to_string())
        .args(args)
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
    parse_metrics(&text, stressor).with_context(|| {
        format!("cannot find the {stressor} throughput in stress-ng's output:\n{text}")
    })
}

/// Reads bogo ops, real time and "bogo ops/s (real time)" from the stressor's `--metrics-brief`
/// line. stress-ng
/// 0.15 prints (0.13 says `info:` where 0.15 says `metrc:`):
///
/// ```text
/// stress-ng: metrc: [5554] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s
/// stress-ng: metrc: [5554]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)
/// stress-ng: metrc: [5554] fork               7383      2.00      1.90      2.01      3691.10        1885.16
/// ```
fn parse_metrics(output: &str, stressor: &str) -> Result<Throughput> {
    for line in output.lines() {
        let Some((_, metrics)) = line.split_once("] ") else {
            continue;
        };
        let fields: Vec<&str> = metrics.split_whitespace().collect();
        // stressor, bogo ops, real time, usr time, sys time, bogo ops/s (real time), ...
        if fields.len() >= 6 && fields[0] == stressor {
            let number = |i: usize| -> Result<f64> {
                fields[i]
                    .parse()
                    .with_context(|| format!("bad number {:?} in {line:?}", fields[i]))
            };
            return Ok(Throughput {
                ops: number(1)?,
                seconds: number(2)?,
                ops_per_second: number(5)?,
            });
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
        assert_eq!(
            parse_metrics(OUTPUT_0_15, "fork").unwrap(),
            Throughput {
                ops: 7383.0,
                seconds: 2.0,
                ops_per_second: 3691.10
            }
        );
    }

    #[test]
    fn older_info_prefix() {
        let old = "stress-ng: info:  [77] fork  100  1.00  0.50  0.50  100.00  100.00\n";
        assert_eq!(parse_metrics(old, "fork").unwrap().ops_per_second, 100.0);
    }

    #[test]
    fn missing_stressor_is_an_error() {
        assert!(parse_metrics(OUTPUT_0_15, "exec").is_err());
        assert!(parse_metrics("stress-ng: info:  [1] dispatching hogs: 2 fork\n", "fork").is_err());
    }
}
