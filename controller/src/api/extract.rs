//! Extractors that turn bad input into clear 400/401/413 answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::RateLimitedLog;
use crate::error::Error;
use crate::ops::{Actor, AgentIdentity};
use crate::pipeline::Controller;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `Json<T>` whose rejections are [`Error`]s naming the problem.
pub(super) struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|m| {
                m.eq_ignore_ascii_case("application/json")
                    || (m.len() > 5 && m[m.len() - 5..].eq_ignore_ascii_case("+json"))
            });
        if !json {
            return Err(Error::BadRequest(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge(format!(
                    "request body is larger than {MAX_BODY_BYTES} bytes"
                ))
            } else {
                Error::BadRequest(format!("cannot read the request body: {}", r.body_text()))
            }
        })?;
        // Every request body is an object; serde would also fill a struct
        // from an array (`[null, null]`), which the API does not accept.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Error::BadRequest(
                "request body must be a JSON object ({...})".into(),
            ));
        }
        match axum::Json::<T>::from_bytes(&body) {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(json_error(r)),
        }
    }
}

fn json_error(r: JsonRejection) -> Error {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Error::PayloadTooLarge(format!(
            "request body is larger than {MAX_BODY_BYTES} bytes"
        ));
    }
    let msg = match &r {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with `Content-Type: application/json`".to_owned()
        }
        JsonRejection::JsonSyntaxError(_) => {
            format!("request body is not valid JSON: {}", r.body_text())
        }
        _ => format!("invalid request body: {}", r.body_text()),
    };
    Error::BadRequest(msg)
}

/// `Query<T>` with clear errors.
pub(super) struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(r) => Err(query_error(r)),
        }
    }
}

fn query_error(r: QueryRejection) -> Error {
    Error::BadRequest(format!("invalid query string: {}", r.body_text()))
}

/// The bearer token of the `Authorization` header, if any.
pub(super) struct Bearer(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        let Some(v) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(Bearer(None));
        };
        let v = v
            .to_str()
            .map_err(|_| Error::Unauthorized("the Authorization header is not text".into()))?;
        // The scheme is case-insensitive (RFC 7235 section 2.1).
        let token = v
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        match token {
            Some(t) if !t.is_empty() => Ok(Bearer(Some(t.to_owned()))),
            _ => Err(Error::Unauthorized(
                "the Authorization header must be `Bearer <token>`".into(),
            )),
        }
    }
}

/// An authenticated admin. As an extractor it runs before the body is read,
/// so a request without valid credentials is answered 401 whatever its body.
pub(super) struct Admin(pub Actor);

impl FromRequestParts<Arc<Controller>> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Controller>) -> Result<Self, Error> {
        let result = match Bearer::from_request_parts(parts, c).await {
            Ok(b) => c.authenticate_admin(b.0.as_deref()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok((token, stale)) => {
                if let (Some(why), Some(note)) = (stale, parts.extensions.get::<super::Stale>()) {
                    let _ = note.0.set(why);
                }
                Ok(Admin(Actor {
                    id: token.id,
                    org: token.org,
                }))
            }
            Err(e) => Err(refused(parts, "admin", e)),
        }
    }
}

/// An authenticated agent (its site), checked before the body is read.
pub(super) struct Agent(pub AgentIdentity);

impl FromRequestParts<Arc<Controller>> for Agent {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Controller>) -> Result<Self, Error> {
        let result = match Bearer::from_request_parts(parts, c).await {
            Ok(b) => c.authenticate_agent(b.0.as_deref()).await,
            Err(e) => Err(e),
        };
        result.map(Agent).map_err(|e| refused(parts, "agent", e))
    }
}

/// Refused credentials are logged, at most one line per period with a count
/// of the rest, so an operator sees an attack without the journal drowning.
/// Never the secret itself.
static REFUSED: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(10));

fn refused(parts: &Parts, who: &str, e: Error) -> Error {
    if matches!(e, Error::Unauthorized(_)) {
        if let Some(more) = REFUSED.allow() {
            let peer = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
            tracing::warn!(
                %peer,
                credential = who,
                method = %parts.method,
                path = %parts.uri.path(),
                reason = %e,
                refused_since_last_line = more,
                "refused a request's credentials"
            );
        }
    }
    e
}
