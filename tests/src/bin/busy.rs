//! Workload for the live CPU-ratio tests: once released (a byte on stdin), forks one child
//! per argument, each running at that CPU duty in percent (default `100 50`): `100` spins,
//! `0` sleeps, anything between burns that share of CPU in every 20 ms period and sleeps to
//! the period's end. Prints {"pid":P,"children":[pid,...],"duties":[d,...]} and keeps the
//! children running until stdin closes, then kills and reaps them.

use std::time::Duration;

use procmon_tests::workload::{
    burn, die_with_parent, fork, monotonic_now, reap, sleep_until, timespec_add, wait_release,
    wait_stdin_eof,
};

const PERIOD: Duration = Duration::from_millis(20);

fn run_at(duty: u32) -> ! {
    match duty {
        0 => loop {
            // SAFETY: pause has no arguments or preconditions.
            unsafe { libc::pause() };
        },
        100.. => loop {
            std::hint::spin_loop();
        },
        _ => {
            let busy = PERIOD * duty / 100;
            let mut next = monotonic_now();
            loop {
                burn(busy);
                next = timespec_add(next, PERIOD);
                sleep_until(&next);
            }
        }
    }
}

fn main() {
    let duties: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("usage: busy [DUTY_PERCENT...]; got {a:?}"))
        })
        .collect();
    let duties = if duties.is_empty() {
        vec![100, 50]
    } else {
        duties
    };
    wait_release();
    // SAFETY: getpid has no arguments or preconditions.
    let parent = unsafe { libc::getpid() };
    let children: Vec<libc::pid_t> = duties
        .iter()
        .map(|&duty| {
            let pid = fork();
            if pid == 0 {
                die_with_parent(parent);
                run_at(duty);
            }
            pid
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "pid": parent, "children": children, "duties": duties })
    );
    wait_stdin_eof();
    for &c in &children {
        // SAFETY: kill takes no pointers; `c` is our own unreaped child, so its pid cannot
        // have been reused by another process.
        unsafe { libc::kill(c, libc::SIGKILL) };
        reap(c);
    }
}
