//! The agent's HTTP endpoints: `/healthz` (the process is alive),
//! `/readyz` (a config is applied and the data plane runs), `/v1/status`
//! (what `wardnet-agent status` prints; local endpoint only) and `/metrics`
//! (Prometheus text format). The local one listens on `metrics_listen`
//! (loopback by default); the overlay one on the site's overlay address, so
//! the NOC's Prometheus scrapes through the encrypted tunnels and nothing
//! new listens on the underlay.

use std::future::Future;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::handle::AgentHandle;

/// The local endpoint (`metrics_listen`): everything, the status included.
pub fn router(agent: AgentHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(agent)
}

/// The overlay endpoint (the site's overlay address, `metrics_overlay_port`):
/// what Prometheus scrapes through the tunnels. Not the status, which names
/// the controller and its errors.
pub fn overlay_router(agent: AgentHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(agent)
}

async fn readyz(State(s): State<AgentHandle>) -> Response {
    if s.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config applied yet\n",
        )
            .into_response()
    }
}

async fn status(State(s): State<AgentHandle>) -> Response {
    match s.status().await {
        Some(st) => Json(st).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down\n",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AgentHandle>) -> Response {
    match s.metrics().await {
        Some(text) => (
            [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down\n",
        )
            .into_response(),
    }
}

/// Serve [`router`] on a bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: AgentHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(agent))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serve [`overlay_router`] on a listener already bound to the overlay address.
pub async fn serve_overlay(
    listener: tokio::net::TcpListener,
    agent: AgentHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, overlay_router(agent))
        .with_graceful_shutdown(shutdown)
        .await
}
