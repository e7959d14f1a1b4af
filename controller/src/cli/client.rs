//! A small REST client for the admin commands.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wardnet_common::wire::ErrorBody;

use super::ApiArgs;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller answered with an error; `message` says what to fix.
    #[error("{message} (HTTP {status}, {kind})")]
    Api {
        status: StatusCode,
        kind: String,
        message: String,
    },
    #[error("cannot reach the controller at {url} (check --url/WARDNET_URL and that the controller runs)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot talk to the controller at {url}: {message}")]
    Tls { url: String, message: String },
    #[error("missing admin token: set WARDNET_TOKEN (create one with `wardnet-controller admin-token create` on the controller host)")]
    NoToken,
}

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    ca_cert: Option<std::path::PathBuf>,
}

impl ApiClient {
    pub fn new(args: &ApiArgs) -> Result<Self> {
        let token = args.token.clone().ok_or(ClientError::NoToken)?;
        Self::with_token(&args.url, Some(token), args.ca_cert.as_deref())
    }

    pub fn with_token(
        url: &str,
        token: Option<String>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self> {
        crate::init_crypto();
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("failed to read CA certificate {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            b = b.tls_certs_only([cert]);
        }
        Ok(Self {
            http: b.build().context("failed to set up the HTTP client")?,
            base: url.trim_end_matches('/').to_owned(),
            token,
            ca_cert: ca_cert.map(ToOwned::to_owned),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| {
            match wardnet_service::tls::explain(&source, &self.base, self.ca_cert.as_deref()) {
                Some(message) => ClientError::Tls {
                    url: self.base.clone(),
                    message,
                },
                None => ClientError::Unreachable {
                    url: self.base.clone(),
                    source,
                },
            }
        })?;
        if let Some(why) = resp.headers().get("wardnet-stale") {
            // On standard error: standard output stays the answer (JSON
            // included), and a person sees that it may be behind.
            eprintln!(
                "warning: this answer may be out of date: {}",
                String::from_utf8_lossy(why.as_bytes())
            );
        }
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let err = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ClientError::Api {
                status,
                kind: b.error,
                message: b.message,
            },
            Err(_) => ClientError::Api {
                status,
                kind: "unexpected".into(),
                message: text,
            },
        };
        Err(err.into())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.send(Method::GET, path, None).await?;
        r.json()
            .await
            .context("the controller's answer was not the expected JSON")
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        let r = self.send(Method::GET, path, None).await?;
        r.text()
            .await
            .context("failed to read the controller's answer")
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let r = self
            .send(Method::POST, path, Some(serde_json::to_value(body)?))
            .await?;
        r.json()
            .await
            .context("the controller's answer was not the expected JSON")
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let r = self
            .send(Method::PATCH, path, Some(serde_json::to_value(body)?))
            .await?;
        r.json()
            .await
            .context("the controller's answer was not the expected JSON")
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send(Method::DELETE, path, None).await?;
        Ok(())
    }
}
