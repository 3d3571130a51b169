//! The agent's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, and the
//! `/events` stream (sse.rs).

use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use tokio::net::TcpListener;

use crate::{events::sse, metrics::Metrics};

pub fn router(metrics: Arc<Metrics>, sse: sse::SseState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics)
        .merge(sse::routes(sse))
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
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, sse))
        .with_graceful_shutdown(shutdown)
        .await
}
