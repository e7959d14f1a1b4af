//! The one place where controller errors become HTTP answers. Clients get a
//! stable kind and a message that says what to fix; internal errors are
//! logged with their source chain and answered without details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wardnet_common::wire::ErrorBody;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Well-formed, but not acceptable (a prefix with host bits set, a LAN
    /// outside the routed prefixes, a hub without an endpoint).
    #[error("{0}")]
    Unprocessable(String),
    /// A conditional write lost a race (the database's answer; e.g. an
    /// enrolment token redeemed by a concurrent request).
    #[error("{0}")]
    Precondition(String),
    /// The database failed; nothing of the change was stored or published.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Precondition(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Precondition(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// How a store conflict reads once it is an API error (`what`: the
/// constraint, e.g. `sites.org`).
fn conflict_message(what: &str) -> String {
    format!("already taken: {what}")
}

impl ApiError {
    /// Whether this is the store refusing a write on constraint `what`
    /// (for a caller that has a better message for it).
    pub fn is_conflict_on(&self, what: &str) -> bool {
        matches!(self, ApiError::Conflict(m) if *m == conflict_message(what))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { what } => ApiError::Conflict(conflict_message(&what)),
            StoreError::Precondition(m) => ApiError::Precondition(m),
            e @ (StoreError::Unavailable(_) | StoreError::Commit(_)) => {
                tracing::error!(error = %e, "the database failed; the change is not stored");
                ApiError::Unavailable(format!(
                    "the database failed ({e}); nothing was changed. Retry; if it keeps failing, \
                     check the controller's log and its database's disk"
                ))
            }
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error answering a request");
                "internal error; the controller log has the details".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: self.kind().to_owned(),
            message,
        };
        (self.status(), Json(body)).into_response()
    }
}
