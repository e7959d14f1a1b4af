//! The controller's one error type: why a change or a read was refused or
//! failed, in words that say what to fix. It knows nothing of HTTP; the API
//! maps it to status codes in one place (`api::error`).

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// The database refused a write on its constraint `what` (e.g.
    /// `sites.ipv4`): a name, key or address someone else holds. A caller
    /// with a better message for it matches [`Error::is_taken`].
    #[error("already taken: {what}")]
    Taken { what: String },
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

impl Error {
    /// Whether this is the store refusing a write on constraint `what`.
    pub fn is_taken(&self, what: &str) -> bool {
        matches!(self, Error::Taken { what: w } if w == what)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { what } => Error::Taken { what },
            StoreError::Precondition(m) => Error::Precondition(m),
            e @ (StoreError::Unavailable(_) | StoreError::Commit(_)) => {
                tracing::error!(error = %e, "the database failed");
                Error::Unavailable(format!(
                    "the database failed ({e}); nothing was changed. Retry; if it keeps failing, \
                     check the controller's log and its database's disk"
                ))
            }
            other => Error::Internal(anyhow::Error::new(other)),
        }
    }
}
