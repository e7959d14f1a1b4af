//! The agent's controller client: enrolment, the config long-poll and
//! reports, with errors that tell a site admin what to do.

use std::path::{Path, PathBuf};
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

#[derive(Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    base: String,
    ca_cert: Option<PathBuf>,
}

impl ControllerClient {
    pub fn new(
        url: &str,
        ca_cert: Option<&Path>,
        allow_plain_http: bool,
    ) -> Result<Self, ClientError> {
        check_url(url, allow_plain_http).map_err(ClientError::Setup)?;
        crate::init_crypto();
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30))
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
            base: url.trim_end_matches('/').to_owned(),
            ca_cert: ca_cert.map(Path::to_owned),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        let mut chain = Vec::new();
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = src {
            chain.push(s.to_string());
            src = s.source();
        }
        let detail = chain.join(": ");
        if let Some(hint) = wardnet_service::tls::explain(&e, &self.base, self.ca_cert.as_deref()) {
            return ClientError::Tls {
                url: self.base.clone(),
                hint,
            };
        }
        ClientError::Unreachable {
            url: self.base.clone(),
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

    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/enroll", self.base))
            .timeout(Duration::from_secs(30))
            .json(req)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp).await);
        }
        resp.json().await.map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
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
        let resp = self
            .http
            .get(format!(
                "{}/v1/agent/config?revision={revision}&wait={}&deltas=true",
                self.base,
                wait.as_secs()
            ))
            .bearer_auth(credential)
            .timeout(wait + Duration::from_secs(15))
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            s if s.is_success() => resp
                .json()
                .await
                .map(Some)
                .map_err(|e| ClientError::Protocol {
                    url: self.base.clone(),
                    detail: e.to_string(),
                }),
            _ => Err(Self::refused(resp).await),
        }
    }

    pub async fn report(&self, credential: &str, report: &AgentReport) -> Result<(), ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/agent/report", self.base))
            .bearer_auth(credential)
            .timeout(Duration::from_secs(15))
            .json(report)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::refused(resp).await)
        }
    }
}
