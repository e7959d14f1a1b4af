//! The REST API under `/v1` (documented in `docs/openapi.yaml`), plus
//! `/healthz` and `/metrics`.

mod error;
mod extract;
mod handlers;
mod health;
mod metrics;
mod server;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::pipeline::Controller;

pub use extract::MAX_BODY_BYTES;
pub use server::Limits;

/// Every route the API serves, as (method, path). The OpenAPI document and
/// the router are both checked against this list by tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/v1/enroll"),
    ("GET", "/v1/agent/config"),
    ("POST", "/v1/agent/report"),
    ("GET", "/v1/orgs"),
    ("POST", "/v1/orgs"),
    ("GET", "/v1/orgs/{name}"),
    ("PATCH", "/v1/orgs/{name}"),
    ("DELETE", "/v1/orgs/{name}"),
    ("GET", "/v1/policy"),
    ("POST", "/v1/policy/rules"),
    ("GET", "/v1/policy/rules/{id}"),
    ("DELETE", "/v1/policy/rules/{id}"),
    ("POST", "/v1/policy/services"),
    ("GET", "/v1/policy/services/{name}"),
    ("DELETE", "/v1/policy/services/{name}"),
    ("GET", "/v1/policy/services/{org}/{name}"),
    ("DELETE", "/v1/policy/services/{org}/{name}"),
    ("GET", "/v1/policy/check"),
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
    ("POST", "/v1/sites/{name}/renumber"),
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
        .route("/v1/orgs", get(h::list_orgs).post(h::create_org))
        .route(
            "/v1/orgs/{name}",
            get(h::show_org).patch(h::update_org).delete(h::delete_org),
        )
        .route("/v1/policy", get(h::policy))
        .route("/v1/policy/rules", post(h::create_rule))
        .route(
            "/v1/policy/rules/{id}",
            get(h::show_rule).delete(h::delete_rule),
        )
        .route("/v1/policy/services", post(h::create_service))
        .route(
            "/v1/policy/services/{name}",
            get(h::show_service).delete(h::delete_service),
        )
        .route(
            "/v1/policy/services/{org}/{name}",
            get(h::show_org_service).delete(h::delete_org_service),
        )
        .route("/v1/policy/check", get(h::check_policy))
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
        .route("/v1/sites/{name}/renumber", post(h::renumber_site))
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
    let stale = Stale::default();
    let mut req = req;
    req.extensions_mut().insert(stale.clone());
    let mut resp = next.run(req).await;
    if let Some(why) = stale.0.get() {
        // Header values are visible ASCII: anything else reads as '?'.
        let clean: String = why
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = axum::http::HeaderValue::from_str(&clean) {
            resp.headers_mut().insert(STALE_HEADER, v);
        }
    }
    c.metrics
        .http_requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// The header of an admin answer given from a replica's own state because
/// the database did not answer: why, and as of which change.
pub const STALE_HEADER: &str = "wardnet-stale";

/// Set by the admin extractor when the request is answered from this
/// replica's state (see [`STALE_HEADER`]).
#[derive(Clone, Default)]
pub(crate) struct Stale(Arc<std::sync::OnceLock<String>>);

/// How the listener is wrapped.
pub enum Tls {
    Rustls(Arc<rustls::ServerConfig>),
    /// Plain HTTP (only when the config says so).
    None,
}

/// Why the API's certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {message}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// Load a PEM certificate chain and private key into a server config that
/// offers HTTP/2 and HTTP/1.1.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    crate::init_crypto();
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsFileError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let invalid = |what, path: &Path, message: String| TlsFileError::Invalid {
        what,
        path: path.to_owned(),
        message,
    };
    let cert_pem = read("TLS certificate", cert)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("TLS certificate", cert, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(
            "TLS certificate",
            cert,
            "holds no PEM CERTIFICATE block".into(),
        ));
    }
    let key_pem = read("TLS key", key)?;
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| invalid("TLS key", key, format!("not PEM: {e}")))?
        .ok_or_else(|| invalid("TLS key", key, "holds no PEM PRIVATE KEY block".into()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| invalid("TLS key", key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections the kernel queues for `accept` (capped by
/// net.core.somaxconn). After a controller restart every agent reconnects at
/// once; with the usual 128 most of that wave would be dropped and retried
/// seconds later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Bind the API's listening socket with [`LISTEN_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Serve the API on a bound listener until `shutdown` resolves, then stop
/// accepting, end every long-poll at once and finish in-flight requests.
pub async fn serve(
    listener: std::net::TcpListener,
    controller: Arc<Controller>,
    tls: Tls,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = router(controller.clone());
    let acceptor = match tls {
        Tls::Rustls(config) => Some(tokio_rustls::TlsAcceptor::from(config)),
        Tls::None => None,
    };
    server::run(listener, app, acceptor, limits, async move {
        shutdown.await;
        controller.begin_shutdown();
    })
    .await
}

/// Lets one log line through per period and counts the ones it held back,
/// so a flood (an attack, a descriptor shortage) is visible without
/// flooding the journal.
pub(crate) struct RateLimitedLog {
    every: Duration,
    state: parking_lot::Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            state: parking_lot::Mutex::new((None, 0)),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock();
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                s.0 = Some(now);
                Some(std::mem::take(&mut s.1))
            }
        }
    }
}
