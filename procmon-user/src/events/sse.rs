//! `GET /events`: the event stream as Server-Sent Events.
//!
//! One JSON event per message: `id:` is the event's sequence number, `event:` its kind.
//! `?kind=oom_kill,crash` filters; `?since=SEQ` (or a `Last-Event-ID` header, which browsers
//! send on reconnect) first replays the kept history after SEQ. A client that falls more than
//! the buffer behind gets `event: dropped` with `{"dropped":N}` in place of what it lost;
//! other clients and the agent never wait for it. Its losses are counted in
//! `procmon_sse_dropped_events_total` as they happen (hub.rs), also while it stalls.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use serde::Deserialize;

use crate::{
    events::hub::{Hub, Receiver, RecvError},
    events::{EventKind, EventMsg},
};

/// Idle connections get a comment this often, so proxies keep them and dead peers surface.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct SseState {
    pub hub: Arc<Hub>,
    pub dropped: IntCounter,
    pub clients: IntGauge,
    /// Clients served at once at most (`--max-sse-clients`); more are refused, counted.
    pub max_clients: usize,
    pub refused: IntCounter,
}

/// Replayed history is fetched this many events at a time: a client asking for a large
/// history holds one chunk, never a copy of all of it.
const REPLAY_CHUNK: usize = 256;

pub fn routes(state: SseState) -> Router {
    Router::new()
        .route("/events", get(events))
        .with_state(state)
}

#[derive(Deserialize)]
struct Params {
    kind: Option<String>,
    since: Option<u64>,
}

async fn events(
    State(state): State<SseState>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let kinds = match params.kind.as_deref().map(EventKind::parse_list) {
        Some(Ok(k)) => k,
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        None => Vec::new(),
    };
    let since = params.since.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    if state.clients.get() >= state.max_clients as i64 {
        state.refused.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many /events clients ({}, --max-sse-clients); try again later\n",
                state.max_clients
            ),
        )
            .into_response();
    }
    let Some(sub) = state.hub.subscribe(since, Some(state.dropped.clone())) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    state.clients.inc();
    let client = Client {
        hub: state.hub.clone(),
        replay: VecDeque::new(),
        replay_after: sub.replay_after,
        replay_until: sub.replay_until,
        missed: 0,
        rx: sub.rx,
        kinds,
        last_seq: 0,
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
        _connected: Connected(state.clients),
        greeted: false,
    };
    let stream = futures_util::stream::unfold(client, |mut c| async move {
        let frame = c.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), c))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // Reverse proxies (nginx) must not buffer the stream.
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

/// Decrements the connected-clients gauge when the stream is dropped (client gone or
/// agent shutting down).
struct Connected(IntGauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Client {
    hub: Arc<Hub>,
    /// The current chunk of the replay.
    replay: VecDeque<EventMsg>,
    /// Replay is due for sequence numbers in (replay_after, replay_until].
    replay_after: u64,
    replay_until: u64,
    missed: u64,
    rx: Receiver,
    /// Empty: every kind.
    kinds: Vec<EventKind>,
    /// Newest event sent, so the live stream never repeats the replay.
    last_seq: u64,
    keepalive: tokio::time::Interval,
    _connected: Connected,
    greeted: bool,
}

impl Client {
    fn wants(&self, m: &EventMsg) -> bool {
        m.seq > self.last_seq && (self.kinds.is_empty() || self.kinds.contains(&m.kind))
    }

    /// The next bytes for this client; `None` ends the stream (the agent is shutting down).
    async fn next_frame(&mut self) -> Option<Bytes> {
        if !self.greeted {
            // Sent at once, so clients (and tests) see the stream open before any event.
            self.greeted = true;
            return Some(Bytes::from_static(b": procmon events\n\n"));
        }
        loop {
            if self.replay.is_empty() && self.replay_after < self.replay_until {
                let chunk = self
                    .hub
                    .replay(self.replay_after, self.replay_until, REPLAY_CHUNK);
                // Events of the range no longer kept (evicted meanwhile, or never kept).
                self.missed += chunk.missed;
                self.replay_after = chunk.events.last().map_or(self.replay_until, |m| m.seq);
                self.replay = chunk.events.into();
            }
            if self.missed > 0 {
                // Asked for history that is no longer kept.
                return Some(dropped_frame(std::mem::take(&mut self.missed)));
            }
            let Some(m) = self.replay.pop_front() else {
                break;
            };
            if self.wants(&m) {
                self.last_seq = m.seq;
                return Some(frame(&m));
            }
        }
        loop {
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(m) if self.wants(&m) => {
                        self.last_seq = m.seq;
                        return Some(frame(&m));
                    }
                    Ok(_) => continue,
                    // Counted by the hub when they were lost.
                    Err(RecvError::Lagged(n)) => return Some(dropped_frame(n)),
                    Err(RecvError::Closed) => return None,
                },
                _ = self.keepalive.tick() => return Some(Bytes::from_static(b": keepalive\n\n")),
            }
        }
    }
}

/// One SSE message for `msg`. JSON never holds a raw line break (serde_json escapes control
/// characters in strings), but every line break is still split into its own `data:` line,
/// which SSE clients join back with `\n`, so no payload can ever end a message early or
/// forge a field.
pub fn frame(msg: &EventMsg) -> Bytes {
    let mut out = Vec::with_capacity(msg.json.len() + 48);
    out.extend_from_slice(format!("id: {}\nevent: {}\n", msg.seq, msg.kind.as_str()).as_bytes());
    push_data(&mut out, &msg.json);
    out.push(b'\n');
    Bytes::from(out)
}

/// `event: dropped` telling a client how many events it lost. It has no `id:`, so a
/// reconnecting client resumes after the last event it really got.
pub fn dropped_frame(n: u64) -> Bytes {
    Bytes::from(format!("event: dropped\ndata: {{\"dropped\":{n}}}\n\n"))
}

/// `data:` lines for `payload`, split at CR, LF and CRLF (SSE's line terminators).
fn push_data(out: &mut Vec<u8>, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            return;
        }
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{render, ForkEvent};

    /// Parses SSE text the way the spec's event-stream interpretation does: messages end at
    /// a blank line; `data:` lines are joined with `\n`.
    fn parse(stream: &str) -> Vec<(Option<String>, Option<String>, String)> {
        let mut out = Vec::new();
        let (mut id, mut event, mut data): (_, _, Vec<String>) = (None, None, Vec::new());
        for line in stream.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    out.push((id.take(), event.take(), data.join("\n")));
                }
                data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "id" => id = Some(value),
                "event" => event = Some(value),
                "data" => data.push(value),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn hostile_json_stays_one_message() {
        let comm = "evil\n\nevent: oom_kill\r\ndata: {}\r\rid: 99";
        let mut msg = render(
            EventKind::Fork,
            &ForkEvent {
                kind: EventKind::Fork,
                time: "t",
                pid: 1,
                ppid: 0,
                comm,
            },
        );
        msg.seq = 7;
        let text = String::from_utf8(frame(&msg).to_vec()).unwrap();
        let messages = parse(&text);
        assert_eq!(messages.len(), 1, "{text:?}");
        let (id, event, data) = &messages[0];
        assert_eq!((id.as_deref(), event.as_deref()), (Some("7"), Some("fork")));
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["comm"], comm);
    }

    #[test]
    fn raw_line_breaks_become_data_lines() {
        let msg = EventMsg {
            kind: EventKind::Crash,
            seq: 3,
            json: Bytes::from_static(b"a\nb\r\nc\rd\n"),
        };
        let text = String::from_utf8(frame(&msg).to_vec()).unwrap();
        assert_eq!(
            text,
            "id: 3\nevent: crash\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
        );
        assert_eq!(parse(&text)[0].2, "a\nb\nc\nd\n");
    }

    #[tokio::test]
    async fn lagging_client_is_told_and_counted() {
        let hub = Arc::new(Hub::new(4, 8));
        let dropped = IntCounter::new("d", "d").unwrap();
        let clients = IntGauge::new("c", "c").unwrap();
        let sub = hub.subscribe(Some(0), Some(dropped.clone())).unwrap();
        clients.inc();
        let mut c = Client {
            hub: hub.clone(),
            replay: VecDeque::new(),
            replay_after: sub.replay_after,
            replay_until: sub.replay_until,
            missed: 0,
            rx: sub.rx,
            kinds: vec![EventKind::Exit],
            last_seq: 0,
            keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
            _connected: Connected(clients.clone()),
            greeted: false,
        };
        let ev = |kind| EventMsg {
            kind,
            seq: 0,
            json: Bytes::from_static(b"{}"),
        };
        for _ in 0..10 {
            hub.publish(ev(EventKind::Exit));
        }
        hub.publish(ev(EventKind::Fork));
        assert_eq!(dropped.get(), 7, "counted before the client reads");
        hub.close();
        let mut text = String::new();
        while let Some(f) = c.next_frame().await {
            text.push_str(std::str::from_utf8(&f).unwrap());
        }
        // 11 events, 4 buffered: 7 lost (the fork among the kept ones is filtered out).
        assert!(
            text.contains("event: dropped\ndata: {\"dropped\":7}\n\n"),
            "{text}"
        );
        let ids: Vec<_> = parse(&text).into_iter().filter_map(|m| m.0).collect();
        assert_eq!(ids, ["8", "9", "10"]);
        assert_eq!(dropped.get(), 7);
        drop(c);
        assert_eq!(clients.get(), 0);
    }
}
