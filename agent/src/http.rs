//! The agent's local HTTP endpoint: `/healthz` (the process is alive),
//! `/readyz` (a config is applied and the data plane runs) and
//! `/v1/status` (what `wardnet-agent status` prints) and `/metrics`
//! (Prometheus text format).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::daemon::Shared;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(s): State<Shared>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config applied yet\n",
        )
            .into_response()
    }
}

async fn status(State(s): State<Shared>) -> Response {
    match s.status().await {
        Some(st) => Json(st).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down\n",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
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

pub async fn serve(
    listen: SocketAddr,
    shared: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "agent HTTP endpoint (/healthz, /readyz, /v1/status, /metrics)");
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}
