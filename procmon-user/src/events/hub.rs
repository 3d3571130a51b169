//! Where rendered events go: numbered, kept in the [`History`], and broadcast to every
//! consumer (the `--events` writer, each `/events` client).
//!
//! Each consumer holds a bounded `tokio::sync::broadcast` receiver: the publisher never
//! waits, and a consumer that falls more than the buffer behind loses the oldest events and
//! is told how many (`RecvError::Lagged`), without affecting anyone else.
//!
//! Publishing and subscribing take the same lock, so a subscriber's history replay and its
//! live stream neither overlap nor leave a gap.

use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::{
    events::history::{History, Replay},
    events::EventMsg,
};

pub struct Hub {
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` once closed: receivers then see the end of the stream.
    tx: Option<broadcast::Sender<EventMsg>>,
    history: History,
    /// The sequence number of the last published event (0: none yet).
    last_seq: u64,
}

pub struct Subscription {
    /// Replay history after this sequence number (none when it equals `replay_until`)...
    pub replay_after: u64,
    /// ...up to this one, the newest published when subscribing; `rx` brings what follows.
    pub replay_until: u64,
    pub rx: broadcast::Receiver<EventMsg>,
}

impl Hub {
    /// `buffer`: events each consumer may fall behind before it loses some.
    /// `history`: events kept for late subscribers (0: none).
    pub fn new(buffer: usize, history: usize) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Self {
            inner: Mutex::new(Inner {
                tx: Some(tx),
                history: History::new(history),
                last_seq: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether publishing is worth rendering events for: someone listens, or history is kept.
    pub fn wants_events(&self) -> bool {
        let inner = self.lock();
        inner.history.capacity() > 0 || inner.tx.as_ref().is_some_and(|t| t.receiver_count() > 0)
    }

    /// Numbers `msg`, keeps it, and sends it to every consumer; never waits for them.
    pub fn publish(&self, mut msg: EventMsg) {
        let mut inner = self.lock();
        if inner.tx.is_none() {
            return;
        }
        inner.last_seq += 1;
        msg.seq = inner.last_seq;
        inner.history.push(msg.clone());
        if let Some(tx) = &inner.tx {
            // Err only means nobody listens right now.
            let _ = tx.send(msg);
        }
    }

    /// A live subscription; `since` also replays the kept events after that sequence
    /// number, fetched in chunks with [`Hub::replay`]. `None` once the hub is closed.
    pub fn subscribe(&self, since: Option<u64>) -> Option<Subscription> {
        let inner = self.lock();
        let rx = inner.tx.as_ref()?.subscribe();
        let until = inner.last_seq;
        Some(Subscription {
            replay_after: since.map_or(until, |s| s.min(until)),
            replay_until: until,
            rx,
        })
    }

    /// A chunk of a subscription's replay: see [`History::range`].
    pub fn replay(&self, after: u64, until: u64, max: usize) -> Replay {
        self.lock().history.range(after, until, max)
    }

    /// Ends every consumer's stream once it has read what was sent (shutdown).
    pub fn close(&self) {
        self.lock().tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use tokio::sync::broadcast::error::TryRecvError;

    fn msg(n: u32) -> EventMsg {
        EventMsg {
            kind: EventKind::Fork,
            seq: 0,
            json: bytes::Bytes::from(format!("{{\"pid\":{n}}}")),
        }
    }

    #[test]
    fn numbers_replays_and_streams_without_gaps_or_overlap() {
        let hub = Hub::new(16, 2);
        assert!(hub.wants_events(), "history alone is a reason to render");
        for n in 1..=3 {
            hub.publish(msg(n));
        }
        let mut sub = hub.subscribe(Some(0)).unwrap();
        let replay = hub.replay(sub.replay_after, sub.replay_until, 10);
        let replayed: Vec<u64> = replay.events.iter().map(|m| m.seq).collect();
        assert_eq!((replayed, replay.missed), (vec![2, 3], 1));
        hub.publish(msg(4));
        assert_eq!(sub.rx.try_recv().unwrap().seq, 4);
        hub.close();
        assert!(matches!(sub.rx.try_recv(), Err(TryRecvError::Closed)));
        assert!(hub.subscribe(None).is_none());
    }

    #[test]
    fn a_stalled_consumer_lags_alone() {
        let hub = Hub::new(4, 0);
        let mut stalled = hub.subscribe(None).unwrap().rx;
        let mut reader = hub.subscribe(None).unwrap().rx;
        for n in 1..=10 {
            hub.publish(msg(n));
            assert_eq!(reader.try_recv().unwrap().seq, n as u64);
        }
        assert!(matches!(stalled.try_recv(), Err(TryRecvError::Lagged(6))));
        assert_eq!(stalled.try_recv().unwrap().seq, 7);
    }
}
