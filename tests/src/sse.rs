//! A minimal Server-Sent Events client over a raw socket (HTTP/1.0, so the body is the bare
//! stream up to the close), for the `/events` tests.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One SSE message: `id:`, `event:` and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: String,
}

pub struct SseClient {
    reader: BufReader<TcpStream>,
}

impl SseClient {
    /// Connects and sends `GET path`; `extra_headers` are complete header lines.
    pub fn connect(addr: SocketAddr, path: &str, extra_headers: &[&str]) -> SseClient {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let headers: String = extra_headers.iter().map(|h| format!("{h}\r\n")).collect();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n")
            .expect("sending the request");
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .expect("reading the status line");
        assert!(status.contains(" 200 "), "GET {path}: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("reading headers");
            if line.trim().is_empty() {
                break;
            }
        }
        SseClient { reader }
    }

    pub fn set_timeout(&self, timeout: Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
    }

    /// The next message (comments skipped); None at the end of the stream or on timeout.
    pub fn next_message(&mut self) -> Option<Message> {
        let mut msg = Message {
            id: None,
            event: None,
            data: String::new(),
        };
        let mut data_lines: Vec<String> = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if data_lines.is_empty() {
                    continue; // after a comment
                }
                msg.data = data_lines.join("\n");
                return Some(msg);
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => msg.id = value.parse().ok(),
                "event" => msg.event = Some(value.to_string()),
                "data" => data_lines.push(value.to_string()),
                _ => {}
            }
        }
    }
}
