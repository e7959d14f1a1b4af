//! Persistent state behind a small trait, so SQLite (embedded default) and a
//! later PostgreSQL implementation share one conformance suite.
//!
//! Writes are batches: every [`Write`] of one [`Store::commit`] lands in one
//! transaction, durable before `commit` returns, or none does. Uniqueness
//! (names, keys, addresses, blocks) is a schema constraint; a violation comes
//! back as [`StoreError::Conflict`] naming the constraint, so callers can
//! retry (address allocation) or report the clash (409).

pub mod faulty;
mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use wardnet_common::wire::{AuditEntry, HealthSummary, UnixTime};
use wardnet_common::Name;

use crate::model::{Region, Site};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A UNIQUE or PRIMARY KEY constraint refused the write; `what` names it
    /// (e.g. `sites.ipv4`).
    #[error("conflict on {what}")]
    Conflict { what: String },
    /// A conditional write found its precondition false (e.g. the enrolment
    /// token was already used by a racing request).
    #[error("precondition failed: {0}")]
    Precondition(String),
    /// The database cannot be used now (cannot begin a transaction, locked,
    /// its writer stopped). Nothing of the batch is stored.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A write or the commit failed for a reason other than a constraint
    /// (I/O error, disk full). The transaction is rolled back: nothing of the
    /// batch is stored.
    #[error("the database failed to commit: {0}")]
    Commit(String),
    #[error(
        "the database is from a newer wardnet (schema version {found}, this build knows {known})"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot create or open {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// A stable label for metrics, from the variant (never the message).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "conflict",
            StoreError::Precondition(_) => "precondition",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Commit(_) => "commit",
            _ => "other",
        }
    }
}

/// One change inside a transaction.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert a region; its name and blocks must be new.
    InsertRegion(Region),
    DeleteRegion(Name),
    /// Insert a new site; name, key, addresses and credential must be new.
    InsertSite(Site),
    /// Replace the stored columns of an existing site, except what agents
    /// report (applied revision, last seen, health): those only `Report` writes.
    UpdateSite(Site),
    DeleteSite(Name),
    /// A site's config changed: its new revision, and the fingerprint of
    /// the rendering it was taken with (see `configs::fingerprint`).
    SetRevision {
        site: Name,
        revision: u64,
        fingerprint: Option<String>,
    },
    InsertEnrolToken {
        site: Name,
        hash: String,
        created_at: UnixTime,
        expires_at: UnixTime,
    },
    /// Forget a site's unused enrolment tokens (re-issue, revoke).
    DeleteEnrolTokens {
        site: Name,
    },
    /// Mark the token used; fails with `Precondition` unless it exists,
    /// belongs to `site`, is unused and unexpired at `now`. This is what
    /// makes a token single-use when two redemptions race, also across
    /// controller replicas.
    ConsumeEnrolToken {
        hash: String,
        site: Name,
        now: UnixTime,
    },
    /// What an agent reported with its sync.
    Report {
        site: Name,
        applied_revision: u64,
        last_seen: UnixTime,
        health: Option<HealthSummary>,
    },
    InsertAdminToken {
        id: String,
        hash: String,
        description: String,
        created_at: UnixTime,
    },
    Audit(NewAudit),
    /// Fails its batch with [`StoreError::Commit`] after the writes before it
    /// ran: fault injection for tests ([`faulty::FaultyStore`]), which checks
    /// that a store rolls back everything of a failed batch.
    Fail(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub at: UnixTime,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub detail: Option<String>,
}

/// An enrolment token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolToken {
    pub site: Name,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
}

/// An admin API token as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub id: String,
    pub description: String,
    pub created_at: UnixTime,
}

/// Everything the controller loads at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub regions: Vec<Region>,
    pub sites: Vec<Site>,
}

/// A queued batch; resolves once it is durable or has failed.
pub type Pending = futures::future::BoxFuture<'static, Result<(), StoreError>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// All regions and sites.
    async fn load(&self) -> Result<Snapshot, StoreError>;
    /// Queue every write of the batch for one durable transaction (all or
    /// none). Batches are applied in the order `submit` was called, so a
    /// caller can queue under its own lock and wait for durability after
    /// releasing it. The returned future resolves once the batch is durable.
    fn submit(&self, writes: Vec<Write>) -> Pending;
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.submit(writes).await
    }
    /// [`Store::submit`] for a writer that queues batches built on each
    /// other: once a batch of `chain` fails, every later batch of the same
    /// chain fails too without running ([`StoreError::Unavailable`]), so the
    /// database never holds a batch whose predecessor it lost. Another chain
    /// number starts clean.
    fn submit_chained(&self, writes: Vec<Write>, chain: u64) -> Pending;
    async fn enrol_token(&self, hash: &str) -> Result<Option<EnrolToken>, StoreError>;
    async fn admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError>;
    /// Audit entries, newest first, with id below `before` when given.
    async fn audit(&self, limit: u32, before: Option<i64>) -> Result<Vec<AuditEntry>, StoreError>;
}

#[cfg(test)]
mod conformance;
