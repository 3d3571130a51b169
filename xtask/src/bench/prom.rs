//! Reading Prometheus endpoints (procmon's and process-exporter's) with the end-to-end tests'
//! HTTP client and exposition parser (`procmon_tests::{http, prom}`), so the benches and the
//! tests read /metrics the same way.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
pub use procmon_tests::{
    http::Response,
    prom::{Histogram, Metrics},
};

/// A 10k-process scrape of process-exporter takes seconds on a loaded VM.
const TIMEOUT: Duration = Duration::from_secs(30);

/// GET on a fresh connection, timed from connect to the last byte ([`Response::elapsed`]);
/// any status is an answer.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    procmon_tests::http::get(addr, path, TIMEOUT)
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// A whole /metrics page, parsed.
pub fn parse(body: &str) -> Result<Metrics> {
    Metrics::parse(body)
        .map_err(anyhow::Error::msg)
        .context("unparsable /metrics page")
}

/// Histogram `name` of a page; None when the page does not carry it.
pub fn histogram(metrics: &Metrics, name: &str) -> Result<Option<Histogram>> {
    metrics.histogram(name).map_err(anyhow::Error::msg)
}
