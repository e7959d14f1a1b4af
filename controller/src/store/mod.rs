//! Persistent state behind a small trait: SQLite (the embedded default, one
//! controller) and PostgreSQL (several replicas) share one conformance
//! suite.
//!
//! Writes are batches: every [`Write`] of one [`Store::commit`] lands in one
//! transaction, durable before `commit` returns, or none does. Uniqueness
//! (names, keys, addresses, blocks) is a schema constraint; a violation comes
//! back as [`StoreError::Conflict`] naming the constraint, so callers can
//! retry (address allocation) or report the clash (409).
//!
//! The change log: every batch that changes a region or a site (what the
//! controllers hold in memory) is also one entry of a log numbered by a
//! sequence, written in the same transaction. A controller knows the
//! sequence its memory is at; it commits its next change only on top of the
//! log's head ([`Store::submit_change`]), and follows changes other replicas
//! committed with [`Store::changes_since`].

mod codec;
#[cfg(any(test, feature = "faults"))]
pub mod faulty;
mod postgres;
mod sqlite;
mod statements;

pub use postgres::{read_password_file, PostgresSettings, PostgresStore};
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use wardnet_common::policy::{RuleView, ServiceView};
use wardnet_common::wire::{AuditEntry, HealthSummary, UnixTime};
use wardnet_common::Name;

pub use crate::model::StoredPolicy;
use crate::model::{Org, Region, Site};

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
    /// The change was built on change `base` of the log, but another
    /// controller committed after it (the head is `head`): nothing is
    /// stored; catch up and build it again.
    #[error("the change log moved on (built on {base}, the head is {head})")]
    Stale { base: u64, head: u64 },
    #[error(
        "the database is from a newer wardnet (schema version {found}, this build knows {known})"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(String),
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
            StoreError::Stale { .. } => "stale",
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
        /// The credential it gave, sealed with the token
        /// (`wardnet_common::token::Secret::seal`).
        sealed: String,
    },
    /// The `[network]` settings the configs are rendered with now.
    SetNetwork(StoredNetwork),
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
        /// The organisation the token is scoped to; `None`: network-wide.
        org: Option<Name>,
    },
    /// Insert an organisation; its name must be new.
    InsertOrg(Org),
    /// Delete an organisation; fails with `Conflict` (`sites.org`,
    /// `admin_tokens.org` or `policy_rules.org`) while a site, an admin
    /// token or a policy rule refers to it.
    DeleteOrg(Name),
    /// Replace an organisation's description.
    DescribeOrg {
        org: Name,
        description: String,
    },
    /// Replace the LAN space delegated to an organisation.
    DelegateLans {
        org: Name,
        prefixes: std::collections::BTreeSet<ipnet::IpNet>,
    },
    /// Insert a policy rule; its id must be new (`policy_rules.id`).
    InsertRule(RuleView),
    DeleteRule(u64),
    /// Insert a service; its name must be new in its organisation
    /// (`policy_services.name`). It goes with its site.
    InsertService(ServiceView),
    DeleteService {
        org: Name,
        name: Name,
    },
    Audit(NewAudit),
    /// Fails its batch with [`StoreError::Commit`] after the writes before it
    /// ran: fault injection for tests (`faulty::FaultyStore`), which checks
    /// that a store rolls back everything of a failed batch. Only in test
    /// builds (the `faults` feature).
    #[cfg(any(test, feature = "faults"))]
    Fail(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub at: UnixTime,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub detail: Option<String>,
    /// The organisation the object belongs to (its admins see the entry);
    /// `None` for network-wide objects (regions, organisations, tokens).
    pub org: Option<Name>,
}

/// An enrolment token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolToken {
    pub site: Name,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
    /// Once used: the credential it gave, sealed with the token.
    pub sealed: Option<String>,
}

/// The `[network]` settings configs are rendered with, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNetwork {
    /// `site_configs::fingerprint` of the settings (and render version).
    pub fingerprint: String,
    /// The settings, for people (what differs).
    pub settings: String,
    pub set_at: UnixTime,
}

/// An admin API token as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub id: String,
    pub description: String,
    pub created_at: UnixTime,
    /// The organisation the token is scoped to; `None`: network-wide.
    pub org: Option<Name>,
}

/// Everything the controller loads at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The change log's head: the rows are as of this change.
    pub seq: u64,
    pub regions: Vec<Region>,
    pub sites: Vec<Site>,
    pub policy: StoredPolicy,
}

/// What changed after a sequence number, as the rows are at `head`.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub head: u64,
    /// Every region named by a change after the asked sequence: its row
    /// now, or `None` when it was deleted.
    pub regions: Vec<(Name, Option<Region>)>,
    /// The same for sites.
    pub sites: Vec<(Name, Option<Site>)>,
    /// The whole policy as of `head`, when a change after the asked
    /// sequence changed it.
    pub policy: Option<StoredPolicy>,
}

/// The answer to [`Store::changes_since`].
#[derive(Debug, Clone)]
pub enum CatchUp {
    Changes(Changes),
    /// The log no longer reaches back that far (pruned): load everything.
    Reload(Snapshot),
}

/// Whether a batch changes the policy (a change-log entry says so, and
/// other replicas then read the policy again).
pub fn changes_policy(writes: &[Write]) -> bool {
    writes.iter().any(|w| {
        matches!(
            w,
            Write::InsertRule(_)
                | Write::DeleteRule(_)
                | Write::InsertService(_)
                | Write::DeleteService { .. }
                | Write::DeleteOrg(_)
                | Write::DelegateLans { .. }
        ) || matches!(w, Write::InsertOrg(o) if !o.delegated.is_empty())
    })
}

/// The organisations' delegated LAN space, as the policy keeps it (only
/// organisations with some).
pub(crate) fn delegated(orgs: Vec<Org>) -> crate::model::Delegations {
    orgs.into_iter()
        .filter(|o| !o.delegated.is_empty())
        .map(|o| (o.name, o.delegated))
        .collect()
}

/// The regions and sites a batch changes: what a change-log entry names.
pub fn changed_keys(writes: &[Write]) -> (Vec<Name>, Vec<Name>) {
    let mut regions = std::collections::BTreeSet::new();
    let mut sites = std::collections::BTreeSet::new();
    for w in writes {
        match w {
            Write::InsertRegion(r) => {
                regions.insert(r.name.clone());
            }
            Write::DeleteRegion(n) => {
                regions.insert(n.clone());
            }
            Write::InsertSite(s) | Write::UpdateSite(s) => {
                sites.insert(s.name.clone());
            }
            Write::DeleteSite(n) | Write::SetRevision { site: n, .. } => {
                sites.insert(n.clone());
            }
            _ => {}
        }
    }
    (regions.into_iter().collect(), sites.into_iter().collect())
}

/// What an agent last reported, as stored (see [`Store::reports_since`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    pub site: Name,
    pub applied_revision: u64,
    pub last_seen: UnixTime,
    pub health: Option<HealthSummary>,
}

/// What the periodic maintenance did (see [`Store::maintain`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub log_entries_pruned: u64,
    pub tokens_swept: u64,
}

/// A change being built on the log's head, holding the head (other
/// controllers' changes wait) until it commits or is dropped (rolled back).
/// The writer catches up under it, prepares its group on the newest state
/// and commits: no change of another replica can land in between.
#[async_trait]
pub trait ChangeTx: Send {
    /// The log's head as of the lock.
    fn head(&self) -> u64;
    /// What changed after `seq` up to the head.
    async fn changes_since(&mut self, seq: u64) -> Result<CatchUp, StoreError>;
    /// Commit `writes` as the next change (all or none); its sequence.
    async fn commit(self: Box<Self>, writes: Vec<Write>) -> Result<u64, StoreError>;
}

/// A queued batch; resolves once it is durable or has failed.
pub type Pending<T = ()> = futures::future::BoxFuture<'static, Result<T, StoreError>>;

/// Expired enrolment tokens are swept this long after they expired.
pub const TOKEN_SWEEP_AFTER_SECS: i64 = 30 * 24 * 3600;

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
    /// Commit a batch built on change `base` of the log as the next change,
    /// and answer its sequence number. When the log's head is not `base`
    /// (another controller committed since, or an earlier batch of this one
    /// was lost), nothing is stored and the answer is
    /// [`StoreError::Stale`]. A batch that changes no region or site is
    /// still checked against the head, and does not move it.
    fn submit_change(&self, base: u64, writes: Vec<Write>) -> Pending<u64>;
    /// Take the log's head for a change (see [`ChangeTx`]); waits while
    /// another controller holds it.
    async fn begin_change(&self) -> Result<Box<dyn ChangeTx>, StoreError>;
    /// The log's head now.
    async fn head(&self) -> Result<u64, StoreError>;
    /// The rows every change after `seq` named, as they are at the head
    /// (read in one snapshot), or everything when the log was pruned past
    /// `seq`.
    async fn changes_since(&self, seq: u64) -> Result<CatchUp, StoreError>;
    /// Heads announced by other controllers committing, for a controller
    /// that shares its database; `None` when this process is the only
    /// writer (SQLite). Announcements can be lost (a listener reconnecting):
    /// the receiver also sees the head read on every reconnect and
    /// periodically.
    fn heads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Periodic upkeep that must run once however many controllers share
    /// the database: prune the change log to its last `keep` entries and
    /// sweep enrolment tokens expired more than [`TOKEN_SWEEP_AFTER_SECS`]
    /// before `now`. `None` when another controller is doing it now.
    async fn maintain(&self, now: UnixTime, keep: u64) -> Result<Option<Maintenance>, StoreError>;
    /// Agents' reports stored with a last-seen time at or after `since`
    /// (replicas learn of each other's agents this way).
    async fn reports_since(&self, since: UnixTime) -> Result<Vec<StoredReport>, StoreError>;
    async fn enrol_token(&self, hash: &str) -> Result<Option<EnrolToken>, StoreError>;
    /// The `[network]` settings the network's configs are rendered with:
    /// those of the controller that started last (`None` before any).
    async fn network_settings(&self) -> Result<Option<StoredNetwork>, StoreError>;
    async fn admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError>;
    /// Every organisation, by name.
    async fn orgs(&self) -> Result<Vec<Org>, StoreError>;
    /// Audit entries, newest first, with id below `before` when given;
    /// with `org`, only the entries about that organisation's objects.
    async fn audit(
        &self,
        limit: u32,
        before: Option<i64>,
        org: Option<&Name>,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

#[cfg(test)]
mod conformance;
