//! The last N events, so a client that connects late (or reconnects with `Last-Event-ID`)
//! can catch up on what it missed.

use std::collections::VecDeque;

use crate::events::EventMsg;

#[derive(Debug)]
pub struct History {
    capacity: usize,
    events: VecDeque<EventMsg>,
}

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
        Self {
            capacity,
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
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(msg);
    }

    /// Events after sequence number `since`, given that `last` is the newest one published.
    /// A `since` ahead of `last` (an id from an earlier run of the agent) replays nothing.
    pub fn since(&self, since: u64, last: u64) -> Replay {
        if since >= last {
            return Replay::default();
        }
        let oldest_kept = self.events.front().map_or(last + 1, |m| m.seq);
        let missed = oldest_kept.saturating_sub(since + 1);
        let events = self
            .events
            .iter()
            .skip_while(|m| m.seq <= since)
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
    fn disabled_history_reports_everything_as_missed() {
        let mut h = History::new(0);
        h.push(msg(1));
        h.push(msg(2));
        let r = h.since(0, 2);
        assert_eq!((seqs(&r), r.missed), (vec![], 2));
    }
}
