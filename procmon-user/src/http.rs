//! The agent's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, and the
//! `/events` stream (sse.rs).

use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use tokio::net::TcpListener;

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

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    sse: sse::SseState,
    sink: Arc<SinkHealth>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, sse, sink))
        .with_graceful_shutdown(shutdown)
        .await
}
