//! The agent's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, and the
//! `/events` stream (sse.rs), served plain or, with `--web-config`, over TLS and behind
//! basic auth (web_config.rs, tls.rs, auth.rs).

pub mod auth;
mod tls;
pub mod web_config;

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use prometheus::IntCounterVec;
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    events::{sink::SinkHealth, sse},
    metrics::Metrics,
};

pub fn router(
    metrics: Arc<Metrics>,
    sse: sse::SseState,
    sink: Arc<SinkHealth>,
    security: Arc<Security>,
) -> Router {
    let guard = Guard {
        security,
        failures: metrics.http_auth_failures.clone(),
    };
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
        .route("/healthz", get(healthz))
        .with_state(sink)
        .merge(sse::routes(sse))
        // Every route, /healthz and /events included: a probe that may not authenticate
        // should use the TLS layer alone (or a config without basic_auth_users).
        .layer(middleware::from_fn_with_state(guard, authorize))
}

/// The web config in force, swapped whole on SIGHUP: a connection takes the TLS settings
/// current when it is accepted, a request the users current when it arrives.
pub struct Security {
    /// The `--web-config` file, re-read on reload; `None` serves plain HTTP to anyone.
    source: Option<PathBuf>,
    current: RwLock<Arc<web_config::Loaded>>,
}

impl Security {
    /// Plain HTTP, no auth: the default without `--web-config`.
    pub fn plain() -> Self {
        Security {
            source: None,
            current: RwLock::default(),
        }
    }

    /// Reads and loads the web config file; any problem in it is an error naming the key.
    pub fn load(path: PathBuf) -> Result<Self, web_config::WebConfigError> {
        let loaded = web_config::WebConfig::load(&path)?;
        Ok(Security {
            source: Some(path),
            current: RwLock::new(Arc::new(loaded)),
        })
    }

    pub fn current(&self) -> Arc<web_config::Loaded> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `https` or `http`, for the ready message.
    pub fn scheme(&self) -> &'static str {
        if self.current().tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// SIGHUP: re-reads the web config (rotated certificates, changed users). A file that no
    /// longer loads leaves the previous config serving, with a warning: a typo during a
    /// rotation must not take the endpoint down or open it.
    pub fn reload(&self) {
        let Some(path) = &self.source else {
            return;
        };
        match web_config::WebConfig::load(path) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
                log::info!("reloaded web config {}", path.display());
            }
            Err(e) => log::warn!(
                "web config {}: {e}; still serving with the previous one",
                path.display()
            ),
        }
    }
}

#[derive(Clone)]
struct Guard {
    security: Arc<Security>,
    failures: IntCounterVec,
}

/// Basic auth (when the web config has users), then the configured response headers.
async fn authorize(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let loaded = guard.security.current();
    if let Some(users) = &loaded.auth {
        let verdict = users.check(req.headers().get(header::AUTHORIZATION)).await;
        let reason = match verdict {
            auth::Verdict::Allowed => None,
            auth::Verdict::NoCredentials => Some("no_credentials"),
            auth::Verdict::WrongCredentials => Some("wrong_credentials"),
        };
        if let Some(reason) = reason {
            guard.failures.with_label_values(&[reason]).inc();
            let mut refused = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"procmon\", charset=\"UTF-8\""),
            );
            return with_headers(refused, &loaded.headers);
        }
    }
    with_headers(next.run(req).await, &loaded.headers)
}

fn with_headers(
    mut response: Response,
    headers: &[(axum::http::HeaderName, HeaderValue)],
) -> Response {
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
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
/// closed after it. A TLS handshake gets the same time, so that a client that opens a
/// connection and never finishes its hello holds a slot no longer than one that never
/// finishes its headers.
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
    security: Arc<Security>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let refused = metrics.http_refused.clone();
    let handshake_failures = metrics.http_tls_handshake_failures.clone();
    let app = router(metrics, sse, sink, security.clone());
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
        let service = TowerToHyperService::new(app.clone());
        let Some(tls) = security.current().tls.clone() else {
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                let _ = conn.await;
                drop(slot);
            });
            continue;
        };
        // The handshake runs in the connection's own task, holding its slot: the cap counts
        // handshaking connections too.
        let (http, watcher, failures) =
            (http.clone(), graceful.watcher(), handshake_failures.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await;
                }
                Ok(Err(e)) => {
                    failures.inc();
                    log::debug!("TLS handshake failed: {e}");
                }
                Err(_) => {
                    failures.inc();
                    log::debug!("TLS handshake not finished within {HEADER_TIMEOUT:?}");
                }
            }
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
