//! Plain-HTTP GETs over loopback with `ureq`, shared by the end-to-end tests and the benches
//! (`cargo xtask bench` scrapes procmon and process-exporter through [`get`]).
//!
//! NB: `/events` is read by [`crate::sse`] over a raw socket instead: its tests change the
//! read timeout between messages and keep reading after a timed-out read, and ureq fixes
//! timeouts per request and ends the body on the first one.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long [`http_get`] (the tests' GET) may take from connect to the last byte.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer, whatever its status.
pub struct Response {
    pub status: u16,
    /// Lossily decoded: a bad byte shows as U+FFFD in an assertion message instead of hiding
    /// the rest of the page.
    pub body: String,
    /// From before connecting to the last byte of the body: what a Prometheus server waits
    /// per scrape.
    pub elapsed: Duration,
}

/// `GET http://{addr}{path}` on a connection of its own, bounded by `timeout` as a whole.
///
/// A fresh connection per GET (no pool), no proxy from the environment (the target is on
/// loopback), no gzip (the ureq feature is off, so the latency is the server's rendering,
/// not its compressor's) and any status answered as a [`Response`], not an error.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .max_idle_connections(0)
        .build()
        .into();
    let started = Instant::now();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .call()
        .map_err(ureq::Error::into_io)?;
    // ureq caps bodies at 10 MB by default; a 10,000-process scrape of process-exporter is
    // larger, and the servers here are our own.
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(ureq::Error::into_io)?;
    let elapsed = started.elapsed();
    Ok(Response {
        status: response.status().as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed,
    })
}

/// [`get`] with the tests' timeout: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    get(addr, path, TEST_TIMEOUT).map(|r| (r.status, r.body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves `answer` to one connection on loopback; returns what the client sent.
    fn serve_once(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).expect("reading the request");
                assert!(n > 0, "client closed before the end of its headers");
                request.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).expect("answering");
            String::from_utf8(request).unwrap()
        });
        (addr, server)
    }

    #[test]
    fn status_and_chunked_body() {
        let (addr, server) = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n",
        );
        let r = get(addr, "/healthz", Duration::from_secs(5)).expect("GET");
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "request line: {request:?}"
        );
        assert!(
            !request
                .to_ascii_lowercase()
                .contains("accept-encoding: gzip"),
            "asked for gzip: {request:?}"
        );
    }

    #[test]
    fn body_up_to_close() {
        let (addr, server) = serve_once(b"HTTP/1.0 200 OK\r\n\r\nx 1\n");
        assert_eq!(http_get(addr, "/metrics").unwrap(), (200, "x 1\n".into()));
        server.join().unwrap();
    }

    #[test]
    fn refused_is_an_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(http_get(addr, "/").is_err());
    }
}
