//! `--events FILE|-`: JSON lines. The writer never slows the reader: it consumes a bounded
//! broadcast channel, and what it falls behind on is counted as lost, not waited for.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt, BufWriter},
    sync::broadcast::{error::RecvError, error::TryRecvError, Receiver},
};

use crate::events::{EventKind, EventMsg};

/// Writes events of `kinds` until the stream ends (the reader stopped), then flushes.
pub async fn write_json_lines(
    mut rx: Receiver<EventMsg>,
    out: impl AsyncWrite + Unpin,
    kinds: Vec<EventKind>,
    lagged: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    loop {
        // Flush only when caught up: one write per burst, not per event.
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Empty) => {
                out.flush().await?;
                match rx.recv().await {
                    Ok(msg) => msg,
                    Err(RecvError::Closed) => break,
                    Err(RecvError::Lagged(n)) => {
                        lagged.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            Err(TryRecvError::Closed) => break,
            Err(TryRecvError::Lagged(n)) => {
                lagged.fetch_add(n, Ordering::Relaxed);
                continue;
            }
        };
        if kinds.contains(&msg.kind) {
            out.write_all(&msg.json).await?;
            out.write_all(b"\n").await?;
        }
    }
    out.flush().await
}
