//! `--events FILE|-`: JSON lines. The writer never slows the reader: it consumes a bounded
//! queue (hub.rs), and what it falls behind on is counted as lost, not waited for.
//!
//! A write that fails (a full disk, a FIFO whose reader went away) never goes unnoticed:
//! the events it held are counted (`reason="sink_error"`), the cause is logged once and
//! again when writing works again, and `/healthz` says `degraded` meanwhile. The file is
//! reopened on SIGHUP (log rotation). Stdout closed under the agent (`| head`) ends the
//! agent: nobody can read its events any more.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::Context;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::watch,
};

use crate::events::{
    hub::{Receiver, RecvError, TryRecvError},
    EventKind,
};

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    pub fn from_arg(path: &Path) -> Self {
        if path.as_os_str() == "-" {
            Target::Stdout
        } else {
            Target::File(path.to_path_buf())
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("stdout"),
            Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

/// Opens the target. A FIFO is opened without blocking: with no reader, opening it for
/// writing would hang the agent's start with nothing said.
pub async fn open(target: &Target) -> anyhow::Result<Output> {
    let path = match target {
        Target::Stdout => return Ok(Box::new(tokio::io::stdout())),
        Target::File(p) => p.clone(),
    };
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .await
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ENXIO) {
                anyhow::anyhow!(
                    "events file {} is a FIFO that nobody reads; start its reader first",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!(
                    "cannot open events file {}; check the path and permissions",
                    path.display()
                ))
            }
        })?;
    // Writes then block, in tokio's blocking pool, rather than fail with EAGAIN while a
    // FIFO's reader is slow.
    set_blocking(&file).with_context(|| format!("cannot set up events file {}", path.display()))?;
    Ok(Box::new(file))
}

fn set_blocking(file: &tokio::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor the file owns and keeps open; no memory is
    // passed.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How the writer is doing, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct SinkHealth {
    /// Events skipped because the writer fell behind the reader.
    pub lagged: AtomicU64,
    /// Events lost to write errors.
    pub errors: AtomicU64,
    /// Events the writer held (buffered or queued) when it was last seen; what is lost if it
    /// must be abandoned at shutdown.
    pub pending: AtomicU64,
    /// Events not written because the writer did not finish in time at shutdown.
    pub unflushed: AtomicU64,
    /// The current write error, while writing fails.
    failing: Mutex<Option<String>>,
}

impl SinkHealth {
    /// `Some(why)` while writing fails.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_failing(&self, why: Option<String>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

/// Stdout was closed: nobody can read the events any more.
#[derive(Debug, thiserror::Error)]
#[error("the events output ({target}) was closed ({cause}); stopping, since nothing can read the events any more")]
pub struct SinkClosed {
    target: Target,
    cause: std::io::Error,
}

/// Bytes collected before a write: one write per burst, not per event.
const BURST_BYTES: usize = 64 * 1024;

/// Writes events of `kinds` until the stream ends (the reader stopped), then flushes.
/// `reopen` changes on SIGHUP.
pub async fn write_json_lines(
    mut rx: Receiver,
    target: Target,
    mut out: Output,
    kinds: Vec<EventKind>,
    health: Arc<SinkHealth>,
    mut reopen: watch::Receiver<u64>,
) -> Result<(), SinkClosed> {
    let mut w = Writer {
        target,
        buf: Vec::with_capacity(BURST_BYTES),
        events: 0,
        torn: false,
        health,
    };
    loop {
        let msg = match rx.try_recv() {
            Ok(msg) => Some(msg),
            Err(TryRecvError::Empty) => {
                // Caught up: write the burst, then wait.
                w.health
                    .pending
                    .store(w.events + rx.pending() as u64, Ordering::Relaxed);
                w.flush(&mut out).await?;
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Ok(msg) => Some(msg),
                        Err(RecvError::Closed) => break,
                        Err(RecvError::Lagged(n)) => {
                            w.health.lagged.fetch_add(n, Ordering::Relaxed);
                            None
                        }
                    },
                    changed = reopen.changed() => {
                        if changed.is_ok() {
                            out = w.reopen(out).await;
                        }
                        None
                    }
                }
            }
            Err(TryRecvError::Closed) => break,
            Err(TryRecvError::Lagged(n)) => {
                w.health.lagged.fetch_add(n, Ordering::Relaxed);
                None
            }
        };
        if let Some(msg) = msg.filter(|m| kinds.contains(&m.kind)) {
            w.buf.extend_from_slice(&msg.json);
            w.buf.push(b'\n');
            w.events += 1;
            if w.buf.len() >= BURST_BYTES {
                w.flush(&mut out).await?;
            }
        }
    }
    w.flush(&mut out).await?;
    w.health.pending.store(0, Ordering::Relaxed);
    Ok(())
}

struct Writer {
    target: Target,
    buf: Vec<u8>,
    /// Events in `buf`.
    events: u64,
    /// A write failed part-way: the file may end in half a line.
    torn: bool,
    health: Arc<SinkHealth>,
}

impl Writer {
    async fn flush(&mut self, out: &mut Output) -> Result<(), SinkClosed> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.torn {
            // End whatever half line a failed write left, so the next line parses.
            self.buf.insert(0, b'\n');
        }
        let result = match out.write_all(&self.buf).await {
            Ok(()) => out.flush().await,
            Err(e) => Err(e),
        };
        let events = std::mem::take(&mut self.events);
        self.buf.clear();
        match result {
            Ok(()) => {
                self.torn = false;
                if self.health.failing().is_some() {
                    self.health.set_failing(None);
                    log::info!("writing events to {} again", self.target);
                }
                Ok(())
            }
            Err(e)
                if self.target == Target::Stdout && e.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                self.health.errors.fetch_add(events, Ordering::Relaxed);
                Err(SinkClosed {
                    target: self.target.clone(),
                    cause: e,
                })
            }
            Err(e) => {
                self.torn = true;
                self.health.errors.fetch_add(events, Ordering::Relaxed);
                if self.health.failing().is_none() {
                    log::error!(
                        "cannot write events to {}: {e}; they are counted in procmon_events_lost_total{{reason=\"sink_error\"}} until writing works again",
                        self.target
                    );
                }
                self.health.set_failing(Some(e.to_string()));
                Ok(())
            }
        }
    }

    /// SIGHUP: a rotated log file is reopened by name; stdout stays as it is.
    async fn reopen(&mut self, out: Output) -> Output {
        let Target::File(path) = &self.target else {
            log::info!("SIGHUP: events go to stdout; nothing to reopen");
            return out;
        };
        match open(&self.target).await {
            Ok(new) => {
                log::info!("SIGHUP: reopened events file {}", path.display());
                self.torn = false;
                new
            }
            Err(e) => {
                log::error!("SIGHUP: {e:#}; still writing to the file opened before");
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{hub::Hub, EventMsg};
    use bytes::Bytes;

    fn event(n: u32) -> EventMsg {
        EventMsg {
            kind: EventKind::Exit,
            seq: 0,
            json: Bytes::from(format!("{{\"n\":{n}}}")),
        }
    }

    /// A writer that fails while `fail` says so, and keeps what it accepted.
    struct Flaky {
        fail: Arc<std::sync::atomic::AtomicBool>,
        kept: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncWrite for Flaky {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.fail.load(Ordering::Relaxed) {
                return std::task::Poll::Ready(Err(std::io::Error::from_raw_os_error(
                    libc::ENOSPC,
                )));
            }
            self.kept.lock().unwrap().extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn write_errors_are_counted_reported_and_recovered_from() {
        let hub = Arc::new(Hub::new(1024, 0));
        let rx = hub.subscribe(None, None).unwrap().rx;
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let kept = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(SinkHealth::default());
        let (_reopen_tx, reopen) = watch::channel(0);
        let writer = tokio::spawn(write_json_lines(
            rx,
            Target::File("/test".into()),
            Box::new(Flaky {
                fail: fail.clone(),
                kept: kept.clone(),
            }),
            EventKind::ALL.to_vec(),
            health.clone(),
            reopen,
        ));
        for n in 0..3 {
            hub.publish(event(n));
        }
        for _ in 0..500 {
            if health.errors.load(Ordering::Relaxed) == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(health.errors.load(Ordering::Relaxed), 3);
        assert!(health.failing().unwrap().contains("No space left"));
        fail.store(false, Ordering::Relaxed);
        hub.publish(event(3));
        hub.close();
        writer.await.unwrap().unwrap();
        assert!(health.failing().is_none(), "recovered");
        let text = String::from_utf8(kept.lock().unwrap().clone()).unwrap();
        // A newline first ends whatever half line the failed write may have left.
        assert_eq!(text, "\n{\"n\":3}\n");
        assert_eq!(
            health.errors.load(Ordering::Relaxed),
            3,
            "nothing else lost"
        );
    }
}
