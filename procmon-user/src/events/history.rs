//! The last N events, so a client that connects late (or reconnects with `Last-Event-ID`)
//! can catch up on what it missed.

use std::collections::VecDeque;

use crate::events::EventMsg;

#[derive(Debug)]
pub struct History {
    capacity: usize,
    /// Bound on the JSON bytes kept: a large `--history` of large events (crash events with
    /// their ancestry and flight record) must not grow the agent without bound.
    max_bytes: usize,
    bytes: usize,
    events: VecDeque<EventMsg>,
}

/// Bytes of JSON the history keeps at most, whatever `--history` says.
pub const MAX_BYTES: usize = 64 << 20;

/// What a client that last saw `since` can get back.
#[derive(Debug, Default)]
pub struct Replay {
    /// Kept events after `since`, oldest first.
    pub events: Vec<EventMsg>,
    /// Events after `since` that are no longer kept.
    pub missed: u64,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, MAX_BYTES)
    }

    pub fn with_max_bytes(capacity: usize, max_bytes: usize) -> Self {
        Self {
            capacity,
            max_bytes,
            bytes: 0,
            events: VecDeque::with_capacity(capacity.min(4096)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps `msg`, forgetting the oldest event past the capacity. Sequence numbers must
    /// increase by one per push (the hub assigns them).
    pub fn push(&mut self, msg: EventMsg) {
        if self.capacity == 0 {
            return;
        }
        self.bytes += msg.json.len();
        self.events.push_back(msg);
        while self.events.len() > self.capacity || self.bytes > self.max_bytes {
            match self.events.pop_front() {
                Some(old) => self.bytes -= old.json.len(),
                None => break,
            }
        }
    }

    /// Events after sequence number `since`, given that `last` is the newest one published.
    /// A `since` ahead of `last` (an id from an earlier run of the agent) replays nothing.
    #[cfg(test)]
    pub fn since(&self, since: u64, last: u64) -> Replay {
        self.range(since, last, usize::MAX)
    }

    /// At most `max` kept events with sequence numbers in `(after, until]`, oldest first,
    /// and how many in that range are no longer kept. Clients replay in such chunks, so a
    /// client asking for a large history never holds a copy of it.
    pub fn range(&self, after: u64, until: u64, max: usize) -> Replay {
        if after >= until {
            return Replay::default();
        }
        let oldest_kept = self.events.front().map_or(until + 1, |m| m.seq);
        let missed = oldest_kept.min(until + 1).saturating_sub(after + 1);
        // Sequence numbers increase by one per event: the first wanted is found by offset.
        let skip = (after + 1).saturating_sub(oldest_kept) as usize;
        let events = self
            .events
            .iter()
            .skip(skip)
            .take_while(|m| m.seq <= until)
            .take(max)
            .cloned()
            .collect();
        Replay { events, missed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn msg(seq: u64) -> EventMsg {
        EventMsg {
            kind: EventKind::Exit,
            seq,
            json: bytes::Bytes::from(format!("{{\"n\":{seq}}}")),
        }
    }

    fn seqs(r: &Replay) -> Vec<u64> {
        r.events.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn keeps_the_last_n_and_reports_what_fell_out() {
        let mut h = History::new(3);
        for seq in 1..=5 {
            h.push(msg(seq));
        }
        let r = h.since(0, 5);
        assert_eq!((seqs(&r), r.missed), (vec![3, 4, 5], 2));
        let r = h.since(3, 5);
        assert_eq!((seqs(&r), r.missed), (vec![4, 5], 0));
        let r = h.since(5, 5);
        assert_eq!((seqs(&r), r.missed), (vec![], 0));
        let r = h.since(99, 5);
        assert_eq!(
            (seqs(&r), r.missed),
            (vec![], 0),
            "an id from an earlier run"
        );
    }

    #[test]
    fn bounded_in_bytes_and_replayed_in_chunks() {
        // Each test event is 8 bytes of JSON ({"n":1}..{"n":9}): 3 fit in 24 bytes.
        let mut h = History::with_max_bytes(100, 24);
        for seq in 1..=9 {
            h.push(msg(seq));
        }
        let r = h.since(0, 9);
        assert_eq!((seqs(&r), r.missed), (vec![7, 8, 9], 6));
        let mut h = History::new(100);
        for seq in 1..=10 {
            h.push(msg(seq));
        }
        let first = h.range(2, 9, 4);
        assert_eq!((seqs(&first), first.missed), (vec![3, 4, 5, 6], 0));
        let next = h.range(6, 9, 4);
        assert_eq!(seqs(&next), vec![7, 8, 9], "up to `until`, not past it");
    }

    #[test]
    fn disabled_history_reports_everything_as_missed() {
        let mut h = History::new(0);
        h.push(msg(1));
        h.push(msg(2));
        let r = h.since(0, 2);
        assert_eq!((seqs(&r), r.missed), (vec![], 2));
    }
}
