//! Where rendered events go: numbered, kept in the [`History`], and handed to every consumer
//! (the `--events` writer, each `/events` client).
//!
//! Consumers read from one shared queue of the newest events, each at its own position (a
//! cursor kept here): the publisher never waits, an event is freed once every consumer has
//! read it, and the queue never holds more than `buffer` events. A consumer that falls
//! further behind loses its oldest unread events *when they are evicted*: they are counted
//! at that moment (its `dropped` counter, e.g. `procmon_sse_dropped_events_total`), even
//! though the consumer, stalled on a socket that does not drain, reads nothing; it is told
//! how many on its next read (`Lagged`). With `tokio::sync::broadcast` the count only
//! surfaced on that next read, so a stalled client's losses were invisible while it stalled.
//!
//! Publishing, reading and subscribing take the same lock: a subscriber's history replay and
//! its live stream neither overlap nor leave a gap, and a loss is counted exactly once.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use prometheus::IntCounter;
use tokio::sync::Notify;

pub use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::{
    events::history::{History, Replay},
    events::EventMsg,
};

pub struct Hub {
    inner: Mutex<Inner>,
    /// Woken on every publish and on close.
    published: Notify,
}

struct Inner {
    /// false once closed: receivers then see the end of the stream after what is queued.
    open: bool,
    /// Events some receiver has yet to read, oldest first, at most `buffer` of them.
    queue: VecDeque<EventMsg>,
    buffer: usize,
    cursors: HashMap<u64, Cursor>,
    next_cursor: u64,
    history: History,
    /// The sequence number of the last published event (0: none yet).
    last_seq: u64,
}

/// One receiver's place in the stream.
struct Cursor {
    /// The sequence number it reads next.
    next: u64,
    /// Events it lost and has not been told of yet.
    lagged: u64,
    /// Counts its losses as they happen.
    dropped: Option<IntCounter>,
}

pub struct Subscription {
    /// Replay history after this sequence number (none when it equals `replay_until`)...
    pub replay_after: u64,
    /// ...up to this one, the newest published when subscribing; `rx` brings what follows.
    pub replay_until: u64,
    pub rx: Receiver,
}

/// A consumer's end: like a `broadcast::Receiver`, but its losses are counted by the hub
/// when they happen.
pub struct Receiver {
    hub: Arc<Hub>,
    id: u64,
}

impl Hub {
    /// `buffer`: events each consumer may fall behind before it loses some.
    /// `history`: events kept for late subscribers (0: none).
    pub fn new(buffer: usize, history: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                open: true,
                queue: VecDeque::new(),
                buffer: buffer.max(1),
                cursors: HashMap::new(),
                next_cursor: 0,
                history: History::new(history),
                last_seq: 0,
            }),
            published: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether publishing is worth rendering events for: someone listens, or history is kept.
    pub fn wants_events(&self) -> bool {
        let inner = self.lock();
        inner.history.capacity() > 0 || !inner.cursors.is_empty()
    }

    /// Numbers `msg`, keeps it, and queues it for every consumer; never waits for them.
    pub fn publish(&self, mut msg: EventMsg) {
        {
            let mut inner = self.lock();
            if !inner.open {
                return;
            }
            inner.last_seq += 1;
            msg.seq = inner.last_seq;
            inner.history.push(msg.clone());
            if !inner.cursors.is_empty() {
                inner.queue.push_back(msg);
                inner.trim();
            }
        }
        self.published.notify_waiters();
    }

    /// A live subscription; `since` also replays the kept events after that sequence
    /// number, fetched in chunks with [`Hub::replay`]. `dropped` counts the events it loses
    /// by falling behind, as they are lost. `None` once the hub is closed.
    pub fn subscribe(
        self: &Arc<Self>,
        since: Option<u64>,
        dropped: Option<IntCounter>,
    ) -> Option<Subscription> {
        let mut inner = self.lock();
        if !inner.open {
            return None;
        }
        let until = inner.last_seq;
        let id = inner.next_cursor;
        inner.next_cursor += 1;
        inner.cursors.insert(
            id,
            Cursor {
                next: until + 1,
                lagged: 0,
                dropped,
            },
        );
        Some(Subscription {
            replay_after: since.map_or(until, |s| s.min(until)),
            replay_until: until,
            rx: Receiver {
                hub: self.clone(),
                id,
            },
        })
    }

    /// A chunk of a subscription's replay: see [`History::range`].
    pub fn replay(&self, after: u64, until: u64, max: usize) -> Replay {
        self.lock().history.range(after, until, max)
    }

    /// Ends every consumer's stream once it has read what was queued (shutdown).
    pub fn close(&self) {
        self.lock().open = false;
        self.published.notify_waiters();
    }
}

impl Inner {
    /// Frees the events every receiver has read, and evicts the oldest past `buffer`: a
    /// receiver that had not read an evicted event loses it, counted now.
    fn trim(&mut self) {
        let mut oldest_unread = self.cursors.values().map(|c| c.next).min();
        while let Some(front) = self.queue.front() {
            let seq = front.seq;
            let unread = oldest_unread.is_some_and(|n| n <= seq);
            if unread && self.queue.len() <= self.buffer {
                break;
            }
            self.queue.pop_front();
            if unread {
                for c in self.cursors.values_mut().filter(|c| c.next <= seq) {
                    c.next = seq + 1;
                    c.lagged += 1;
                    if let Some(dropped) = &c.dropped {
                        dropped.inc();
                    }
                }
                oldest_unread = Some(seq + 1);
            }
        }
    }
}

impl Receiver {
    /// The next event, `Lagged(n)` once after losing n, `Empty` when caught up, `Closed` when
    /// caught up with a closed hub.
    pub fn try_recv(&mut self) -> Result<EventMsg, TryRecvError> {
        let mut guard = self.hub.lock();
        let inner = &mut *guard;
        let cursor = inner
            .cursors
            .get_mut(&self.id)
            .expect("a receiver's cursor lives as long as it");
        if cursor.lagged > 0 {
            return Err(TryRecvError::Lagged(std::mem::take(&mut cursor.lagged)));
        }
        // Trimming keeps every cursor at or after the queue's front.
        let found = inner
            .queue
            .front()
            .and_then(|front| inner.queue.get((cursor.next - front.seq) as usize));
        match found {
            Some(msg) => {
                cursor.next += 1;
                Ok(msg.clone())
            }
            None if inner.open => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Closed),
        }
    }

    /// [`Receiver::try_recv`], waiting while caught up. Cancel safe: an event is taken only
    /// when returned.
    pub async fn recv(&mut self) -> Result<EventMsg, RecvError> {
        let hub = self.hub.clone();
        loop {
            let published = hub.published.notified();
            tokio::pin!(published);
            // Registered before looking, so a publish in between is not missed.
            published.as_mut().enable();
            match self.try_recv() {
                Ok(msg) => return Ok(msg),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => published.await,
            }
        }
    }

    /// Events published and not read yet (lost ones included).
    pub fn pending(&self) -> usize {
        let inner = self.hub.lock();
        let cursor = &inner.cursors[&self.id];
        (inner.last_seq + 1 - cursor.next + cursor.lagged) as usize
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.cursors.remove(&self.id);
        // What only this receiver still needed is freed now, not at the next publish.
        inner.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn msg(n: u32) -> EventMsg {
        EventMsg {
            kind: EventKind::Fork,
            seq: 0,
            json: bytes::Bytes::from(format!("{{\"pid\":{n}}}")),
        }
    }

    #[test]
    fn numbers_replays_and_streams_without_gaps_or_overlap() {
        let hub = Arc::new(Hub::new(16, 2));
        assert!(hub.wants_events(), "history alone is a reason to render");
        for n in 1..=3 {
            hub.publish(msg(n));
        }
        let mut sub = hub.subscribe(Some(0), None).unwrap();
        let replay = hub.replay(sub.replay_after, sub.replay_until, 10);
        let replayed: Vec<u64> = replay.events.iter().map(|m| m.seq).collect();
        assert_eq!((replayed, replay.missed), (vec![2, 3], 1));
        hub.publish(msg(4));
        assert_eq!(sub.rx.try_recv().unwrap().seq, 4);
        assert!(matches!(sub.rx.try_recv(), Err(TryRecvError::Empty)));
        hub.close();
        assert!(matches!(sub.rx.try_recv(), Err(TryRecvError::Closed)));
        assert!(hub.subscribe(None, None).is_none());
    }

    #[test]
    fn a_stalled_consumer_lags_alone_and_its_losses_count_as_they_happen() {
        let hub = Arc::new(Hub::new(4, 0));
        let dropped = IntCounter::new("d", "d").unwrap();
        let mut stalled = hub.subscribe(None, Some(dropped.clone())).unwrap().rx;
        let mut reader = hub.subscribe(None, None).unwrap().rx;
        for n in 1..=10 {
            hub.publish(msg(n));
            assert_eq!(reader.try_recv().unwrap().seq, n as u64);
            // Counted while the stalled consumer reads nothing.
            assert_eq!(dropped.get(), (n as u64).saturating_sub(4));
        }
        assert_eq!(hub.lock().queue.len(), 4, "bounded by the buffer");
        assert_eq!(stalled.pending(), 10);
        assert!(matches!(stalled.try_recv(), Err(TryRecvError::Lagged(6))));
        assert_eq!(stalled.try_recv().unwrap().seq, 7);
        assert_eq!(dropped.get(), 6, "told, not counted again");
    }

    #[test]
    fn events_every_consumer_read_are_freed() {
        let hub = Arc::new(Hub::new(1024, 0));
        let mut a = hub.subscribe(None, None).unwrap().rx;
        for n in 1..=100 {
            hub.publish(msg(n));
        }
        while a.try_recv().is_ok() {}
        hub.publish(msg(101));
        assert_eq!(hub.lock().queue.len(), 1, "only what is unread stays");
        let b = hub.subscribe(None, None).unwrap().rx;
        hub.publish(msg(102));
        drop(a);
        assert_eq!(
            hub.lock().queue.len(),
            1,
            "the leaver's unread event is freed"
        );
        drop(b);
        assert!(hub.lock().queue.is_empty());
        hub.publish(msg(103));
        assert!(
            hub.lock().queue.is_empty(),
            "nobody listens: nothing queued"
        );
        assert!(!hub.wants_events());
    }

    #[tokio::test]
    async fn recv_waits_for_the_next_event_and_sees_the_close() {
        let hub = Arc::new(Hub::new(4, 0));
        let mut rx = hub.subscribe(None, None).unwrap().rx;
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                hub.publish(msg(1));
                hub.close();
            })
        };
        assert_eq!(rx.recv().await.unwrap().seq, 1);
        assert!(matches!(rx.recv().await, Err(RecvError::Closed)));
        publisher.await.unwrap();
    }
}
