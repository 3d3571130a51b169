//! Keeps every CPU out of its idle state with a SCHED_IDLE spinner per CPU, for the overhead
//! benchmark. On this VM a CPU that goes idle halts, and waking it costs an exit to the
//! hypervisor, so a load that blocks and wakes a lot (pipe ping-pong, fork+wait) ran up to
//! twice as fast whenever any other process was around to keep the CPUs warm: a tracer's
//! threads did that, so "no tracer" came out slowest (switch storm with no tracer: 64,000
//! msgs/s alone, 115,000 with idle spinners). SCHED_IDLE threads run only when nothing else
//! wants the CPU, so they take no time from the load or the tracer, and every arm now runs
//! on CPUs that never halt.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
};

use anyhow::{bail, Result};

pub struct NoIdle {
    stop: Arc<AtomicBool>,
    spinners: Vec<JoinHandle<()>>,
}

impl NoIdle {
    pub fn start(cpus: u32) -> Result<NoIdle> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut no_idle = NoIdle {
            stop: stop.clone(),
            spinners: Vec::new(),
        };
        for _ in 0..cpus {
            let (stop, (ready_tx, ready_rx)) = (stop.clone(), std::sync::mpsc::channel());
            no_idle.spinners.push(thread::spawn(move || {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: sets this thread's own policy from a live sched_param.
                let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                let _ = ready_tx.send(if set == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                });
                if set != 0 {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }));
            if let Ok(Err(e)) = ready_rx.recv() {
                bail!("cannot make a SCHED_IDLE spinner: {e}");
            }
        }
        Ok(no_idle)
    }
}

impl Drop for NoIdle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for spinner in self.spinners.drain(..) {
            let _ = spinner.join();
        }
    }
}
