//! Boots one guest under QEMU and records its serial console.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::cmd;

/// What the guest's console marks its results with (see the init script).
pub const MARKER: &str = "PROCMON-VM: ";

pub struct Boot {
    pub wall: Duration,
    /// The guest was killed at the wall-clock limit.
    pub timed_out: bool,
}

/// Boots `vmlinuz` with `initrd`, writing the serial console to `console` and echoing the
/// marker lines to stderr (prefixed with `label`) as they arrive.
///
/// NB: TCG only: this machine's /dev/kvm is a paravirtual variant that cannot run stock
/// kernels (docs/kernels.md). `-cpu max` gives the guest the newest CPU features TCG emulates.
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    console: &Path,
    timeout: Duration,
    label: &str,
    single_tcg_thread: bool,
) -> Result<Boot> {
    let accel = if single_tcg_thread {
        "tcg,thread=single"
    } else {
        "tcg"
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", accel, "-cpu", "max", "-smp", "2", "-m", "2048M"])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // quiet keeps kernel chatter (printk below errors) from interleaving with the test
        // output; panic=-1 with -no-reboot turns a guest panic into a QEMU exit.
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        // A terminal on stdin would be switched to raw mode by -nographic.
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!("$ {}", cmd::display(&qemu));
    let start = Instant::now();
    let mut child = qemu
        .spawn()
        .context("cannot start qemu-system-x86_64: install qemu-system-x86")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut log =
        fs::File::create(console).with_context(|| format!("creating {}", console.display()))?;
    let label = label.to_string();
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        while stdout.read_until(b'\n', &mut line)? > 0 {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            writeln!(log, "{text}")?;
            if let Some(i) = text.find(MARKER) {
                eprintln!("[{label}] {}", &text[i..]);
            }
            line.clear();
        }
        log.flush()
    });
    let deadline = start + timeout;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall = start.elapsed();
    reader
        .join()
        .expect("console reader panicked")
        .with_context(|| format!("writing {}", console.display()))?;
    Ok(Boot { wall, timed_out })
}
