//! The agent's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, and the
//! `/events` stream (sse.rs).

use std::{sync::Arc, time::Duration};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    events::{sink::SinkHealth, sse},
    metrics::Metrics,
};

pub fn router(metrics: Arc<Metrics>, sse: sse::SseState, sink: Arc<SinkHealth>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
        .route("/healthz", get(healthz))
        .with_state(sink)
        .merge(sse::routes(sse))
}

/// `ok`, or `degraded: ...` naming what fails. Still 200: a liveness probe must not restart
/// an agent whose disk is full (a restart fixes nothing and loses the tree).
async fn healthz(State(sink): State<Arc<SinkHealth>>) -> String {
    match sink.failing() {
        None => "ok\n".into(),
        Some(why) => format!("degraded: writing events fails: {why}\n"),
    }
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// How long a connection may take to send a request's headers, and how long a kept-alive
/// connection may sit idle before its next request: slowloris and idle connections are
/// closed after it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once at most; past it new ones are closed at once (counted).
const MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept for the agent itself (BPF links and maps, /proc reads, the events
/// file): HTTP connections never take them.
const RESERVED_FDS: u64 = 256;

/// The connection cap under the open-files limit: connections may use what the agent does
/// not need itself.
pub fn connection_cap(fd_limit: u64) -> usize {
    (fd_limit.saturating_sub(RESERVED_FDS) as usize).clamp(16, MAX_CONNECTIONS)
}

/// The soft open-files limit.
fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Raises the soft open-files limit to the hard one (systemd starts services at 1024):
/// each HTTP connection holds one. Only the agent does this: `procmon run` leaves its
/// command's limits as they were. Returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    sse: sse::SseState,
    sink: Arc<SinkHealth>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let refused = metrics.http_refused.clone();
    let app = router(metrics, sse, sink);
    let slots = Arc::new(Semaphore::new(connection_cap(fd_limit())));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut accept_failing = false;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_failing = false;
                    stream
                }
                Err(e) => {
                    // Out of fds (EMFILE) or the like: wait for connections to close instead
                    // of spinning.
                    if !accept_failing {
                        log::warn!("cannot accept HTTP connections: {e}");
                        accept_failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            drop(stream);
            continue;
        };
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    // Responses in flight finish; /events streams end as the hub closes. The caller bounds
    // the wait.
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_never_take_the_agents_own_fds() {
        assert_eq!(connection_cap(1024), 768);
        assert_eq!(connection_cap(1_048_576), MAX_CONNECTIONS);
        assert_eq!(connection_cap(100), 16);
    }
}
