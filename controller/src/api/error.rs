//! The one place where controller errors become HTTP answers. Clients get a
//! stable kind and a message that says what to fix; internal errors are
//! logged with their source chain and answered without details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wardnet_common::wire::ErrorBody;

use crate::error::Error;

fn status(e: &Error) -> StatusCode {
    match e {
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) | Error::Taken { .. } | Error::Precondition(_) => StatusCode::CONFLICT,
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The `error` field of the answer's body: stable, for scripts.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::BadRequest(_) => "bad_request",
        Error::Unauthorized(_) => "unauthorized",
        Error::Forbidden(_) => "forbidden",
        Error::NotFound(_) => "not_found",
        Error::Conflict(_) | Error::Taken { .. } | Error::Precondition(_) => "conflict",
        Error::PayloadTooLarge(_) => "payload_too_large",
        Error::Unprocessable(_) => "unprocessable",
        Error::Unavailable(_) => "unavailable",
        Error::Internal(_) => "internal",
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = match &self {
            Error::Internal(e) => {
                tracing::error!(error = ?e, "internal error answering a request");
                "internal error; the controller log has the details".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: kind(&self).to_owned(),
            message,
        };
        (status(&self), Json(body)).into_response()
    }
}
