//! The agent's controller client: enrolment, the config long-poll and
//! reports, with errors that tell a site admin what to do.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use wardnet_common::delta::ConfigUpdate;
use wardnet_common::wire::{AgentReport, EnrollRequest, EnrollResponse, ErrorBody};

use crate::config::check_url;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach the controller at {url}: {detail}. Check the URL, the network path and that the controller runs")]
    Unreachable { url: String, detail: String },
    #[error("cannot talk to the controller at {url}: {hint}")]
    Tls { url: String, hint: String },
    /// The controller refused; `message` is its explanation.
    #[error("the controller refused: {message} (HTTP {status})")]
    Refused { status: StatusCode, message: String },
    #[error("unexpected answer from the controller at {url}: {detail}")]
    Protocol { url: String, detail: String },
}

impl ClientError {
    /// Whether retrying later can help (as opposed to a refused credential).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ClientError::Setup(_) => false,
            _ => true,
        }
    }
}

/// A connection sending nothing for this long is PINGed (HTTP/2); only a
/// waiting long-poll's connection is ever this quiet.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// An unanswered PING closes the connection after this: with the first
/// retry's backoff (at most 1 s), an agent leaves a silent controller
/// within 10 s.
pub const PING_TIMEOUT: Duration = Duration::from_secs(4);

/// A client of one or several controllers (replicas of one fleet). It talks
/// to one at a time; when that one cannot be reached or answers that it
/// cannot serve (5xx, 429), the call fails as before (the caller backs off
/// and retries) and the next call goes to the next controller in the list.
/// No controller is preferred: the client stays on one while it works.
/// Clones share which controller is in use.
#[derive(Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    bases: Arc<[String]>,
    current: Arc<AtomicUsize>,
    ca_cert: Option<PathBuf>,
}

impl ControllerClient {
    pub fn new(
        url: &str,
        ca_cert: Option<&Path>,
        allow_plain_http: bool,
    ) -> Result<Self, ClientError> {
        Self::with_urls(&[url.to_owned()], ca_cert, allow_plain_http)
    }

    /// A client of the controllers at `urls`, used in turn. Needs a
    /// controller that speaks HTTP/2 (over plain HTTP too: this version or
    /// later).
    pub fn with_urls(
        urls: &[String],
        ca_cert: Option<&Path>,
        allow_plain_http: bool,
    ) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::Setup(
                "no controller URL: set controller.url or controller.urls".into(),
            ));
        }
        for url in urls {
            check_url(url, allow_plain_http).map_err(ClientError::Setup)?;
        }
        crate::init_crypto();
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30))
            // HTTP/2 (negotiated over TLS, with prior knowledge over plain
            // HTTP), for its PINGs: a controller that stops answering (its
            // process paused, its host cut off) leaves a long-poll waiting
            // on an open connection; an unanswered PING closes it, and the
            // agent moves to the next controller within LIVENESS.
            .http2_prior_knowledge()
            .http2_keep_alive_interval(PING_EVERY)
            .http2_keep_alive_timeout(PING_TIMEOUT)
            .user_agent(concat!("wardnet-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::Setup(format!(
                    "cannot read the CA certificate {}: {e}",
                    path.display()
                ))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                ClientError::Setup(format!("{} is not a PEM certificate: {e}", path.display()))
            })?;
            b = b.tls_certs_only([cert]);
        }
        let http = b
            .build()
            .map_err(|e| ClientError::Setup(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            http,
            bases: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            current: Arc::new(AtomicUsize::new(0)),
            ca_cert: ca_cert.map(Path::to_owned),
        })
    }

    /// The controller in use now.
    pub fn url(&self) -> String {
        self.base().1.to_owned()
    }

    fn base(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len();
        (i, &self.bases[i])
    }

    /// After a failure at controller `i`: the next call goes to the next
    /// one (unless another call moved on already).
    fn after<T>(&self, i: usize, r: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(e) = &r {
            if e.is_transient() && self.bases.len() > 1 {
                let next = (i + 1) % self.bases.len();
                if self
                    .current
                    .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    tracing::info!(
                        from = %self.bases[i],
                        to = %self.bases[next],
                        "moving to the next controller"
                    );
                }
            }
        }
        r
    }

    fn transport_error(&self, base: &str, e: reqwest::Error) -> ClientError {
        let mut chain = Vec::new();
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = src {
            chain.push(s.to_string());
            src = s.source();
        }
        let detail = chain.join(": ");
        if let Some(hint) = wardnet_service::tls::explain(&e, base, self.ca_cert.as_deref()) {
            return ClientError::Tls {
                url: base.to_owned(),
                hint,
            };
        }
        ClientError::Unreachable {
            url: base.to_owned(),
            detail,
        }
    }

    async fn refused(resp: reqwest::Response) -> ClientError {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.message)
            .unwrap_or_else(|_| {
                if text.is_empty() {
                    status.to_string()
                } else {
                    text
                }
            });
        ClientError::Refused { status, message }
    }

    /// Enrol at the first controller that answers (each is tried once; a
    /// refusal such as an unknown token is final).
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.first_that_answers(|base| Box::pin(async move { self.enroll_at(&base, req).await }))
            .await
    }

    /// `call` at the controller in use, then at the next ones while they
    /// cannot be reached or cannot serve; each is tried once.
    async fn first_that_answers<'a, T>(
        &self,
        call: impl Fn(String) -> Pin<Box<dyn Future<Output = Result<T, ClientError>> + Send + 'a>>,
    ) -> Result<T, ClientError> {
        let mut result = Err(ClientError::Setup("no controller URL".into()));
        for _ in 0..self.bases.len() {
            let (i, base) = self.base();
            result = self.after(i, call(base.to_owned()).await);
            if !matches!(&result, Err(e) if e.is_transient()) {
                break;
            }
        }
        result
    }

    async fn enroll_at(
        &self,
        base: &str,
        req: &EnrollRequest,
    ) -> Result<EnrollResponse, ClientError> {
        let resp = self
            .http
            .post(format!("{base}/v1/enroll"))
            .timeout(Duration::from_secs(30))
            .json(req)
            .send()
            .await
            .map_err(|e| self.transport_error(base, e))?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp).await);
        }
        resp.json().await.map_err(|e| ClientError::Protocol {
            url: base.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Long-poll for a change after `revision`: the steps since it, or the
    /// full config when the agent is new (revision 0) or too far behind.
    /// None when nothing changed within `wait`.
    pub async fn config(
        &self,
        credential: &str,
        revision: u64,
        wait: Duration,
    ) -> Result<Option<ConfigUpdate>, ClientError> {
        let (i, base) = self.base();
        let r = self.config_at(base, credential, revision, wait).await;
        self.after(i, r)
    }

    async fn config_at(
        &self,
        base: &str,
        credential: &str,
        revision: u64,
        wait: Duration,
    ) -> Result<Option<ConfigUpdate>, ClientError> {
        let resp = self
            .http
            .get(format!(
                "{base}/v1/agent/config?revision={revision}&wait={}&deltas=true",
                wait.as_secs()
            ))
            .bearer_auth(credential)
            .timeout(wait + Duration::from_secs(15))
            .send()
            .await
            .map_err(|e| self.transport_error(base, e))?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            s if s.is_success() => resp
                .json()
                .await
                .map(Some)
                .map_err(|e| ClientError::Protocol {
                    url: base.to_owned(),
                    detail: e.to_string(),
                }),
            _ => Err(Self::refused(resp).await),
        }
    }

    /// Report to the controller in use, or the next that answers (a report
    /// is short; the long-poll after it then goes to the same controller).
    pub async fn report(&self, credential: &str, report: &AgentReport) -> Result<(), ClientError> {
        self.first_that_answers(|base| {
            Box::pin(async move { self.report_at(&base, credential, report).await })
        })
        .await
    }

    async fn report_at(
        &self,
        base: &str,
        credential: &str,
        report: &AgentReport,
    ) -> Result<(), ClientError> {
        let resp = self
            .http
            .post(format!("{base}/v1/agent/report"))
            .bearer_auth(credential)
            .timeout(Duration::from_secs(15))
            .json(report)
            .send()
            .await
            .map_err(|e| self.transport_error(base, e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::refused(resp).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback URL where nothing listens.
    fn closed() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    }

    /// A loopback HTTP server (HTTP/1.1 and HTTP/2, as the controller)
    /// that answers every request with `status`.
    async fn answering(status: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let code: u16 = status[..3].parse().expect("status");
        let app = axum::Router::new().fallback(move || async move {
            (
                axum::http::StatusCode::from_u16(code).expect("status"),
                [("content-type", "application/json")],
                r#"{"error":"x","message":"said no"}"#,
            )
        });
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        url
    }

    async fn poll(c: &ControllerClient) -> Result<Option<ConfigUpdate>, ClientError> {
        c.config("wna_x", 0, Duration::from_secs(0)).await
    }

    #[tokio::test]
    async fn a_failing_controller_sends_the_next_call_to_the_next_one() {
        let (a, b) = (closed(), answering("503 Service Unavailable").await);
        let c = ControllerClient::with_urls(&[a.clone(), b.clone()], None, true).expect("client");
        assert_eq!(c.url(), a);
        let e = poll(&c).await.expect_err("nothing listens");
        assert!(
            matches!(&e, ClientError::Unreachable { url, .. } if *url == a),
            "{e}"
        );
        assert_eq!(c.url(), b, "moved on");
        let shared = c.clone();
        let e = poll(&shared).await.expect_err("503");
        assert!(e.is_transient(), "{e}");
        assert_eq!(c.url(), a, "round the list; clones share where they are");
    }

    #[tokio::test]
    async fn a_refusal_is_final_and_stays_on_its_controller() {
        let (a, b) = (answering("401 Unauthorized").await, closed());
        let c = ControllerClient::with_urls(&[a.clone(), b], None, true).expect("client");
        let e = poll(&c).await.expect_err("401");
        assert!(
            matches!(&e, ClientError::Refused { status, message } if *status == StatusCode::UNAUTHORIZED && message == "said no"),
            "{e}"
        );
        assert_eq!(
            c.url(),
            a,
            "a refused credential is not the controller's fault"
        );
    }

    #[tokio::test]
    async fn enrolment_tries_each_controller_until_one_answers() {
        let (a, b) = (closed(), answering("401 Unauthorized").await);
        let c = ControllerClient::with_urls(&[a, b.clone()], None, true).expect("client");
        let req = EnrollRequest {
            token: "wne_x".into(),
            public_key: wardnet_common::keys::PrivateKey::generate().public_key(),
            endpoint: None,
        };
        let e = c.enroll(&req).await.expect_err("refused by the second");
        assert!(matches!(&e, ClientError::Refused { .. }), "{e}");
        assert_eq!(c.url(), b);
        assert!(ControllerClient::with_urls(&[], None, true).is_err());
    }
}
