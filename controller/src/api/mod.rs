//! The REST API under `/v1` (documented in `docs/openapi.yaml`), plus
//! `/healthz` and `/metrics`.

mod extract;
mod handlers;
mod health;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::service::Controller;

pub use extract::MAX_BODY_BYTES;

/// Every route the API serves, as (method, path). The OpenAPI document and
/// the router are both checked against this list by tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/v1/enroll"),
    ("GET", "/v1/agent/config"),
    ("POST", "/v1/agent/report"),
    ("GET", "/v1/regions"),
    ("POST", "/v1/regions"),
    ("GET", "/v1/regions/{name}"),
    ("DELETE", "/v1/regions/{name}"),
    ("GET", "/v1/sites"),
    ("POST", "/v1/sites"),
    ("GET", "/v1/sites/{name}"),
    ("PATCH", "/v1/sites/{name}"),
    ("DELETE", "/v1/sites/{name}"),
    ("POST", "/v1/sites/{name}/revoke"),
    ("POST", "/v1/sites/{name}/token"),
    ("GET", "/v1/sites/{name}/config"),
    ("GET", "/v1/sites/{name}/wg-quick"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/status"),
    ("GET", "/v1/health"),
    ("GET", "/v1/prometheus/targets"),
];

pub fn router(controller: Arc<Controller>) -> Router {
    use handlers as h;
    Router::new()
        .route("/healthz", get(h::healthz))
        .route("/metrics", get(h::metrics))
        .route("/v1/enroll", post(h::enroll))
        .route("/v1/agent/config", get(h::agent_config))
        .route("/v1/agent/report", post(h::agent_report))
        .route("/v1/regions", get(h::list_regions).post(h::create_region))
        .route(
            "/v1/regions/{name}",
            get(h::show_region).delete(h::delete_region),
        )
        .route("/v1/sites", get(h::list_sites).post(h::create_site))
        .route(
            "/v1/sites/{name}",
            get(h::show_site)
                .patch(h::update_site)
                .delete(h::delete_site),
        )
        .route("/v1/sites/{name}/revoke", post(h::revoke_site))
        .route("/v1/sites/{name}/token", post(h::issue_token))
        .route("/v1/sites/{name}/config", get(h::site_config))
        .route("/v1/sites/{name}/wg-quick", get(h::wg_quick))
        .route("/v1/audit", get(h::audit))
        .route("/v1/status", get(h::status))
        .route("/v1/health", get(health::fleet))
        .route("/v1/prometheus/targets", get(health::targets))
        .fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            controller.clone(),
            observe,
        ))
        .with_state(controller)
}

/// Record every request's duration by method, route template and status.
async fn observe(State(c): State<Arc<Controller>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    c.metrics
        .http_requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// How the listener is wrapped.
pub enum Tls {
    Rustls(axum_server::tls_rustls::RustlsConfig),
    /// Plain HTTP (only when the config says so).
    None,
}

/// Serve the API on a bound listener until `shutdown` resolves, then stop
/// accepting, end every long-poll at once and finish in-flight requests.
pub async fn serve(
    listener: std::net::TcpListener,
    controller: Arc<Controller>,
    tls: Tls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let app = router(controller.clone());
    match tls {
        Tls::None => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    controller.begin_shutdown();
                })
                .await
        }
        Tls::Rustls(config) => {
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                controller.begin_shutdown();
                h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(listener, config)?
                .handle(handle)
                .serve(app.into_make_service())
                .await
        }
    }
}
