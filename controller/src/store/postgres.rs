//! The PostgreSQL store, for several controller replicas on one database.
//!
//! - Every batch is one transaction on a pooled connection, its statements
//!   sent as one pipeline (one round trip for the lot, not one each).
//!   `synchronous_commit` is left as the server has it (on, by default): a
//!   batch is durable before it is answered.
//! - Uniqueness and single-use tokens are the schema's and conditional
//!   UPDATEs', exactly as in SQLite; constraint names are `table.column`, so
//!   a clash reads the same from either store.
//! - The change log (see the module docs of `store`): a change locks the
//!   one-row `change_head` (`SELECT … FOR UPDATE`), so replicas commit their
//!   changes one after another, each on top of the last; the head moves and
//!   one `NOTIFY wardnet_changes, '<seq>'` is sent with the commit.
//! - A listener connection turns those notifications into
//!   [`Store::heads`]; on every (re)connect and every few seconds it reads
//!   the head too, because notifications sent while it was away are lost.
//! - [`Store::maintain`] runs under `pg_try_advisory_xact_lock`: one replica
//!   at a time does it, the others skip the round.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls, Row};
use wardnet_common::wire::{AuditEntry, SiteState, UnixTime};
use wardnet_common::{Name, Role};

use super::{
    AdminToken, CatchUp, ChangeTx, Changes, EnrolToken, Maintenance, NewAudit, Pending, Snapshot,
    Store, StoreError, StoredPolicy, Write,
};
use crate::model::{Org, Region, Site};
use wardnet_common::policy::{RuleView, ServiceView};

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE regions (
    name        TEXT CONSTRAINT "regions.name" PRIMARY KEY,
    mesh        BOOLEAN NOT NULL,
    ipv4_block  TEXT NOT NULL CONSTRAINT "regions.ipv4_block" UNIQUE,
    ipv6_block  TEXT CONSTRAINT "regions.ipv6_block" UNIQUE,
    created_at  BIGINT NOT NULL
);
CREATE TABLE sites (
    name               TEXT CONSTRAINT "sites.name" PRIMARY KEY,
    region             TEXT NOT NULL CONSTRAINT "sites.region" REFERENCES regions(name),
    role               TEXT NOT NULL CHECK (role IN ('hub', 'spoke')),
    state              TEXT NOT NULL CHECK (state IN ('pending', 'active', 'revoked')),
    agentless          BOOLEAN NOT NULL,
    lan_prefixes       TEXT NOT NULL,
    endpoint           TEXT,
    public_key         TEXT CONSTRAINT "sites.public_key" UNIQUE,
    ipv4               TEXT NOT NULL CONSTRAINT "sites.ipv4" UNIQUE,
    ipv6               TEXT CONSTRAINT "sites.ipv6" UNIQUE,
    revision           BIGINT NOT NULL,
    render_fingerprint TEXT,
    applied_revision   BIGINT NOT NULL DEFAULT 0,
    created_at         BIGINT NOT NULL,
    enrolled_at        BIGINT,
    last_seen          BIGINT,
    health             TEXT,
    credential_hash    TEXT CONSTRAINT "sites.credential_hash" UNIQUE
);
CREATE INDEX sites_region ON sites(region);
CREATE TABLE enrol_tokens (
    hash        TEXT CONSTRAINT "enrol_tokens.hash" PRIMARY KEY,
    site        TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX enrol_tokens_site ON enrol_tokens(site);
CREATE TABLE admin_tokens (
    id          TEXT CONSTRAINT "admin_tokens.id" PRIMARY KEY,
    hash        TEXT NOT NULL CONSTRAINT "admin_tokens.hash" UNIQUE,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE audit (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    object  TEXT NOT NULL,
    detail  TEXT
);
CREATE TABLE change_log (
    seq     BIGINT PRIMARY KEY,
    at      BIGINT NOT NULL,
    regions TEXT[] NOT NULL,
    sites   TEXT[] NOT NULL
);
CREATE TABLE change_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO change_head (id, seq) VALUES (1, 0);
"#,
    // Organisations: every site belongs to one (the existing ones to
    // `default`), admin tokens may be scoped to one, and audit entries say
    // whose object they are about.
    r#"
CREATE TABLE orgs (
    name        TEXT CONSTRAINT "orgs.name" PRIMARY KEY,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
INSERT INTO orgs (name, description, created_at)
    VALUES ('default', 'sites added before organisations, and sites added without one', EXTRACT(EPOCH FROM now())::BIGINT);
ALTER TABLE sites ADD COLUMN org TEXT NOT NULL DEFAULT 'default' CONSTRAINT "sites.org" REFERENCES orgs(name);
CREATE INDEX sites_org ON sites(org);
ALTER TABLE admin_tokens ADD COLUMN org TEXT CONSTRAINT "admin_tokens.org" REFERENCES orgs(name);
ALTER TABLE audit ADD COLUMN org TEXT;
CREATE INDEX audit_org ON audit(org, id);
"#,
    // The policy between organisations: rules (each owned by the
    // organisation it admits traffic into) and services (published by
    // their site's organisation, gone with the site).
    r#"
CREATE TABLE policy_rules (
    id          BIGINT CONSTRAINT "policy_rules.id" PRIMARY KEY,
    source      TEXT NOT NULL,
    target      TEXT NOT NULL,
    proto       TEXT NOT NULL,
    ports       TEXT NOT NULL,
    description TEXT NOT NULL,
    org         TEXT NOT NULL CONSTRAINT "policy_rules.org" REFERENCES orgs(name),
    created_at  BIGINT NOT NULL
);
-- Rule numbers only go up: a deleted rule's number is never given again,
-- so "rule N" in the audit log names one rule for good.
CREATE TABLE policy_counter (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    next_rule BIGINT NOT NULL
);
INSERT INTO policy_counter (id, next_rule) VALUES (1, 1);
CREATE TABLE policy_services (
    name        TEXT CONSTRAINT "policy_services.name" PRIMARY KEY,
    site        TEXT NOT NULL CONSTRAINT "policy_services.site" REFERENCES sites(name) ON DELETE CASCADE,
    prefixes    TEXT NOT NULL,
    proto       TEXT NOT NULL,
    ports       TEXT NOT NULL,
    shared_with TEXT NOT NULL,
    description TEXT NOT NULL,
    org         TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
"#,
    // Policy changes are in the change log: a replica following it reads
    // the policy again.
    r#"
ALTER TABLE change_log ADD COLUMN policy BOOLEAN NOT NULL DEFAULT FALSE;
"#,
];

/// The channel changes are announced on.
const CHANNEL: &str = "wardnet_changes";
/// Advisory lock keys ("wardnet" in ASCII, and one more for migrations).
const LOCK_MAINTAIN: i64 = 0x0077_6172_6e65_7401;
const LOCK_MIGRATE: i64 = 0x0077_6172_6e65_7402;
/// How often the listener reads the head besides the notifications.
const HEAD_POLL: Duration = Duration::from_secs(5);

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// A libpq connection string or `postgres://` URL, without a password.
    pub url: String,
    /// The password, read from a file (or a systemd credential).
    pub password: Option<String>,
    /// Connections in the pool (the listener has its own).
    pub pool_size: usize,
}

impl PostgresSettings {
    fn pg_config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut c: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("database.url: {e}")))?;
        if let Some(p) = &self.password {
            c.password(p.as_bytes());
        }
        if c.get_application_name().is_none() {
            c.application_name("wardnet-controller");
        }
        c.connect_timeout(Duration::from_secs(10));
        Ok(c)
    }
}

pub struct PostgresStore {
    pool: Pool,
    heads: watch::Receiver<u64>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    classify(&e)
}

/// Turn a failed statement into a typed error: constraint violations into
/// `Conflict { what }` (the constraint's name is `table.column`), a lost or
/// refused connection into `Unavailable`, anything else into `Commit`.
fn classify(e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::FOREIGN_KEY_VIOLATION {
            let what = db
                .constraint()
                .map(str::to_owned)
                .unwrap_or_else(|| db.message().to_owned());
            return StoreError::Conflict { what };
        }
        if *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        {
            return StoreError::Unavailable(db.message().to_owned());
        }
        return StoreError::Commit(format!("{}: {}", code.code(), db.message()));
    }
    if e.is_closed() {
        return StoreError::Unavailable("the database connection closed".into());
    }
    StoreError::Unavailable(e.to_string())
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("cannot reach the database: {e}"))
}

impl PostgresStore {
    /// Connect, migrate (one replica at a time), and start listening for
    /// changes.
    pub async fn open(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let config = settings.pg_config()?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(2))
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("database pool: {e}")))?;
        migrate(&pool).await?;
        let head = {
            let c = pool.get().await.map_err(pool_error)?;
            let sync: String = c
                .query_one("SHOW synchronous_commit", &[])
                .await
                .map_err(pg)?
                .get(0);
            if sync == "off" {
                tracing::warn!(
                    "PostgreSQL has synchronous_commit = off: a change the API acknowledged can be lost \
                     if the database crashes; set it on (the default) for wardnet's database"
                );
            }
            read_head(&c).await?
        };
        let (tx, heads) = watch::channel(head);
        let listener = tokio::spawn(listen(config, tx));
        Ok(Self {
            pool,
            heads,
            listener,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Run one batch (see [`Store::submit_change`]); `base` checks the head.
    async fn run(pool: Pool, base: Option<u64>, writes: Vec<Write>) -> Result<u64, StoreError> {
        let mut client = pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(|e| {
            StoreError::Unavailable(format!("cannot begin a transaction: {}", pg(e)))
        })?;
        let (regions, sites) = super::changed_keys(&writes);
        let logged = !regions.is_empty() || !sites.is_empty() || super::changes_policy(&writes);
        let head = if base.is_some() || logged {
            // Changes commit one after another: the head row is the lock.
            lock_head(&tx).await?
        } else {
            0
        };
        if let Some(base) = base {
            if base != head {
                return Err(StoreError::Stale { base, head });
            }
        }
        let seq = write_batch(&tx, head, &writes).await?;
        tx.commit().await.map_err(|e| match pg(e) {
            StoreError::Conflict { what } => StoreError::Conflict { what },
            other => StoreError::Commit(other.to_string()),
        })?;
        Ok(seq)
    }
}

/// Take the change log's head and its lock (until the transaction ends).
async fn lock_head<C: GenericClient>(c: &C) -> Result<u64, StoreError> {
    let st = c
        .prepare_cached("SELECT seq FROM change_head WHERE id = 1 FOR UPDATE")
        .await
        .map_err(pg)?;
    let head: i64 = c.query_one(&st, &[]).await.map_err(pg)?.get(0);
    Ok(head as u64)
}

/// A batch's statements, and its log entry when it changes regions or
/// sites (the head must be locked at `head` then), sent as one pipeline
/// inside the caller's transaction. Answers the head after it. On error the
/// caller rolls back (a `Write::Fail` fails it after the writes before it).
async fn write_batch<C: GenericClient>(
    c: &C,
    head: u64,
    writes: &[Write],
) -> Result<u64, StoreError> {
    let (regions, sites) = super::changed_keys(writes);
    let policy = super::changes_policy(writes);
    let logged = !regions.is_empty() || !sites.is_empty() || policy;
    // Prepare each distinct statement (cached per connection), then send
    // every write as one pipeline.
    let mut items = Vec::with_capacity(writes.len() + 3);
    let mut failure = None;
    for w in writes {
        if let Write::Fail(reason) = w {
            failure = Some(reason.clone());
            break;
        }
        items.push(statement(w));
    }
    let seq = head + 1;
    if logged && failure.is_none() {
        let names = |v: &[Name]| v.iter().map(|n| n.to_string()).collect::<Vec<String>>();
        items.push(Item::new(
            "INSERT INTO change_log (seq, at, regions, sites, policy) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Box::new(seq as i64),
                Box::new(crate::now()),
                Box::new(names(&regions)),
                Box::new(names(&sites)),
                Box::new(policy),
            ],
            None,
        ));
        items.push(Item::new(
            "UPDATE change_head SET seq = $1 WHERE id = 1",
            vec![Box::new(seq as i64)],
            None,
        ));
        items.push(Item::new(
            "SELECT pg_notify($1, $2)",
            vec![Box::new(CHANNEL.to_owned()), Box::new(seq.to_string())],
            None,
        ));
    }
    let mut statements = Vec::with_capacity(items.len());
    for it in &items {
        statements.push(c.prepare_cached(it.sql).await.map_err(pg)?);
    }
    let results = futures::future::join_all(items.iter().zip(&statements).map(|(it, st)| {
        let params: Vec<&(dyn ToSql + Sync)> = it
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        async move { c.execute(st, &params).await }
    }))
    .await;
    for (it, r) in items.iter().zip(results) {
        let n = r.map_err(pg)?;
        if let Some(err) = &it.exactly_one {
            if n != 1 {
                return Err(StoreError::Precondition(err.clone()));
            }
        }
    }
    if let Some(reason) = failure {
        return Err(StoreError::Commit(reason));
    }
    Ok(if logged { seq } else { head })
}

/// A change holding the head's lock on its own connection (see
/// [`Store::begin_change`]). Plain `BEGIN`/`COMMIT` on a pooled connection
/// it owns; dropped without a commit, it is rolled back.
struct PgChange {
    client: Option<deadpool_postgres::Object>,
    head: u64,
}

impl PgChange {
    async fn begin(pool: &Pool) -> Result<Self, StoreError> {
        let client = pool.get().await.map_err(pool_error)?;
        client.batch_execute("BEGIN").await.map_err(|e| {
            StoreError::Unavailable(format!("cannot begin a transaction: {}", pg(e)))
        })?;
        let mut me = PgChange {
            client: Some(client),
            head: 0,
        };
        me.head = lock_head(me.client()?).await?;
        Ok(me)
    }

    fn client(&self) -> Result<&deadpool_postgres::Object, StoreError> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the change has ended".into()))
    }
}

impl Drop for PgChange {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // Not committed: roll back before the connection is reused.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(rollback(c));
                }
                // Cannot roll back here: the connection must not go back
                // to the pool inside a transaction; closing it ends that.
                Err(_) => drop(deadpool_postgres::Object::take(c)),
            }
        }
    }
}

/// End a change's transaction without committing. A connection whose
/// ROLLBACK fails is in an unknown state: it leaves the pool and closes.
async fn rollback(c: deadpool_postgres::Object) {
    if c.batch_execute("ROLLBACK").await.is_err() {
        drop(deadpool_postgres::Object::take(c));
    }
}

#[async_trait]
impl ChangeTx for PgChange {
    fn head(&self) -> u64 {
        self.head
    }

    async fn changes_since(&mut self, seq: u64) -> Result<CatchUp, StoreError> {
        changes_in(self.client()?, seq, self.head).await
    }

    async fn commit(mut self: Box<Self>, writes: Vec<Write>) -> Result<u64, StoreError> {
        let c = self
            .client
            .take()
            .ok_or_else(|| StoreError::Unavailable("the change has ended".into()))?;
        match write_batch(&c, self.head, &writes).await {
            Ok(seq) => match c.batch_execute("COMMIT").await {
                Ok(()) => Ok(seq),
                Err(e) => {
                    // The connection's state is unknown now: not reused.
                    drop(deadpool_postgres::Object::take(c));
                    Err(match pg(e) {
                        StoreError::Conflict { what } => StoreError::Conflict { what },
                        other => StoreError::Commit(other.to_string()),
                    })
                }
            },
            Err(e) => {
                rollback(c).await;
                Err(e)
            }
        }
    }
}

/// One statement of a pipeline.
struct Item {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
    /// When set, the statement must touch exactly one row, or the batch
    /// fails with this precondition.
    exactly_one: Option<String>,
}

impl Item {
    fn new(
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
        exactly_one: Option<String>,
    ) -> Self {
        Self {
            sql,
            params,
            exactly_one,
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialising plain data to JSON cannot fail")
}

fn site_params(s: &Site) -> Vec<Box<dyn ToSql + Sync + Send>> {
    vec![
        Box::new(s.name.to_string()),
        Box::new(s.region.to_string()),
        Box::new(s.role.as_str().to_owned()),
        Box::new(s.state.as_str().to_owned()),
        Box::new(s.agentless),
        Box::new(json(&s.lan_prefixes)),
        Box::new(s.endpoint.map(|e| e.to_string())),
        Box::new(s.public_key.map(|k| k.to_string())),
        Box::new(s.ipv4.to_string()),
        Box::new(s.ipv6.map(|a| a.to_string())),
        Box::new(s.revision as i64),
        Box::new(s.render_fingerprint.clone()),
        Box::new(s.applied_revision as i64),
        Box::new(s.created_at),
        Box::new(s.enrolled_at),
        Box::new(s.last_seen),
        Box::new(s.health.as_ref().map(json)),
        Box::new(s.credential_hash.clone()),
        Box::new(s.org.to_string()),
    ]
}

/// The statement for one write (never `Write::Fail`, handled by the caller).
fn statement(w: &Write) -> Item {
    match w {
        Write::InsertRegion(r) => Item::new(
            "INSERT INTO regions (name, mesh, ipv4_block, ipv6_block, created_at) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Box::new(r.name.to_string()),
                Box::new(r.mesh),
                Box::new(r.ipv4_block.to_string()),
                Box::new(r.ipv6_block.map(|b| b.to_string())),
                Box::new(r.created_at),
            ],
            None,
        ),
        Write::DeleteRegion(name) => Item::new(
            "DELETE FROM regions WHERE name = $1",
            vec![Box::new(name.to_string())],
            None,
        ),
        Write::InsertSite(s) => Item::new(
            "INSERT INTO sites (name, region, role, state, agentless, lan_prefixes, endpoint, public_key, ipv4, ipv6,
                revision, render_fingerprint, applied_revision, created_at, enrolled_at, last_seen, health, credential_hash, org)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
            site_params(s),
            None,
        ),
        Write::UpdateSite(s) => {
            // The reported columns ($13, $16, $17) are not the writer's.
            let mut p = site_params(s);
            p.truncate(15);
            p.push(Box::new(s.credential_hash.clone()));
            p.push(Box::new(s.org.to_string()));
            p.remove(12);
            Item::new(
                "UPDATE sites SET region = $2, role = $3, state = $4, agentless = $5, lan_prefixes = $6, endpoint = $7,
                    public_key = $8, ipv4 = $9, ipv6 = $10, revision = $11, render_fingerprint = $12,
                    created_at = $13, enrolled_at = $14, credential_hash = $15, org = $16
                 WHERE name = $1",
                p,
                Some(format!("site {} does not exist", s.name)),
            )
        }
        Write::DeleteSite(name) => Item::new(
            "DELETE FROM sites WHERE name = $1",
            vec![Box::new(name.to_string())],
            None,
        ),
        Write::SetRevision {
            site,
            revision,
            fingerprint,
        } => Item::new(
            "UPDATE sites SET revision = $2, render_fingerprint = $3 WHERE name = $1",
            vec![
                Box::new(site.to_string()),
                Box::new(*revision as i64),
                Box::new(fingerprint.clone()),
            ],
            None,
        ),
        Write::InsertEnrolToken {
            site,
            hash,
            created_at,
            expires_at,
        } => Item::new(
            "INSERT INTO enrol_tokens (hash, site, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            vec![
                Box::new(hash.clone()),
                Box::new(site.to_string()),
                Box::new(*created_at),
                Box::new(*expires_at),
            ],
            None,
        ),
        Write::DeleteEnrolTokens { site } => Item::new(
            "DELETE FROM enrol_tokens WHERE site = $1 AND used_at IS NULL",
            vec![Box::new(site.to_string())],
            None,
        ),
        Write::ConsumeEnrolToken { hash, site, now } => Item::new(
            "UPDATE enrol_tokens SET used_at = $3
             WHERE hash = $1 AND site = $2 AND used_at IS NULL AND expires_at > $3",
            vec![
                Box::new(hash.clone()),
                Box::new(site.to_string()),
                Box::new(*now),
            ],
            Some("enrolment token already used or expired".into()),
        ),
        Write::Report {
            site,
            applied_revision,
            last_seen,
            health,
        } => Item::new(
            // Replicas each persist what their own agents report: an older
            // report (an agent that moved on to another replica) never
            // overwrites a newer one.
            "UPDATE sites SET applied_revision = $2, last_seen = $3, health = $4
             WHERE name = $1 AND (last_seen IS NULL OR last_seen <= $3)",
            vec![
                Box::new(site.to_string()),
                Box::new(*applied_revision as i64),
                Box::new(*last_seen),
                Box::new(health.as_ref().map(json)),
            ],
            None,
        ),
        Write::InsertAdminToken {
            id,
            hash,
            description,
            created_at,
            org,
        } => Item::new(
            "INSERT INTO admin_tokens (id, hash, description, created_at, org) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Box::new(id.clone()),
                Box::new(hash.clone()),
                Box::new(description.clone()),
                Box::new(*created_at),
                Box::new(org.as_ref().map(Name::to_string)),
            ],
            None,
        ),
        Write::InsertOrg(o) => Item::new(
            "INSERT INTO orgs (name, description, created_at) VALUES ($1, $2, $3)",
            vec![
                Box::new(o.name.to_string()),
                Box::new(o.description.clone()),
                Box::new(o.created_at),
            ],
            None,
        ),
        Write::DeleteOrg(name) => Item::new(
            "DELETE FROM orgs WHERE name = $1",
            vec![Box::new(name.to_string())],
            None,
        ),
        Write::InsertRule(RuleView {
            rule,
            org,
            created_at,
        }) => Item::new(
            "WITH r AS (
                 INSERT INTO policy_rules (id, source, target, proto, ports, description, org, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id
             )
             UPDATE policy_counter SET next_rule = GREATEST(next_rule, (SELECT id FROM r) + 1)
             WHERE id = 1",
            vec![
                Box::new(rule.id as i64),
                Box::new(rule.from.to_string()),
                Box::new(rule.to.to_string()),
                Box::new(rule.proto.as_str().to_owned()),
                Box::new(super::ports_text(&rule.ports)),
                Box::new(rule.description.clone()),
                Box::new(org.to_string()),
                Box::new(*created_at),
            ],
            None,
        ),
        Write::DeleteRule(id) => Item::new(
            "DELETE FROM policy_rules WHERE id = $1",
            vec![Box::new(*id as i64)],
            None,
        ),
        Write::InsertService(ServiceView {
            service,
            org,
            created_at,
        }) => Item::new(
            "INSERT INTO policy_services (name, site, prefixes, proto, ports, shared_with, description, org, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            vec![
                Box::new(service.name.to_string()),
                Box::new(service.site.to_string()),
                Box::new(json(&service.prefixes)),
                Box::new(service.proto.as_str().to_owned()),
                Box::new(super::ports_text(&service.ports)),
                Box::new(json(&service.shared_with)),
                Box::new(service.description.clone()),
                Box::new(org.to_string()),
                Box::new(*created_at),
            ],
            None,
        ),
        Write::DeleteService(name) => Item::new(
            "DELETE FROM policy_services WHERE name = $1",
            vec![Box::new(name.to_string())],
            None,
        ),
        Write::Audit(NewAudit {
            at,
            actor,
            action,
            object,
            detail,
            org,
        }) => Item::new(
            "INSERT INTO audit (at, actor, action, object, detail, org) VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                Box::new(*at),
                Box::new(actor.clone()),
                Box::new(action.clone()),
                Box::new(object.clone()),
                Box::new(detail.clone()),
                Box::new(org.as_ref().map(Name::to_string)),
            ],
            None,
        ),
        Write::Fail(_) => unreachable!("the caller stops at Write::Fail"),
    }
}

/// Apply the migrations this database lacks, one replica at a time.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(pg)?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    let known = MIGRATIONS.len() as i64;
    if i64::from(current) > known {
        return Err(StoreError::SchemaTooNew {
            found: current.into(),
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&(i as i32 + 1), &crate::now()],
        )
        .await
        .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(())
}

async fn read_head(c: &tokio_postgres::Client) -> Result<u64, StoreError> {
    let head: i64 = c
        .query_one("SELECT seq FROM change_head WHERE id = 1", &[])
        .await
        .map_err(pg)?
        .get(0);
    Ok(head as u64)
}

/// Follow the change log's announcements into `tx`, reconnecting for as
/// long as anyone holds a receiver.
async fn listen(config: tokio_postgres::Config, tx: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match listen_once(&config, &tx).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "lost the database's change notifications; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if tx.is_closed() {
            return;
        }
    }
}

/// One listener connection: LISTEN, read the head (what was announced
/// while nobody listened), then forward every announcement, and read the
/// head again every few seconds. `Ok` when nobody listens any more.
async fn listen_once(
    config: &tokio_postgres::Config,
    tx: &watch::Sender<u64>,
) -> Result<(), StoreError> {
    use futures::StreamExt;
    let (client, mut connection) = config.connect(NoTls).await.map_err(pg)?;
    let (note_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if note_tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "change listener connection failed");
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(pg)?;
        let announce = |seq: u64| {
            tx.send_if_modified(|h| {
                if seq > *h {
                    *h = seq;
                    true
                } else {
                    false
                }
            });
        };
        announce(read_head(&client).await?);
        let mut poll = tokio::time::interval(HEAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(p) => match p.parse::<u64>() {
                        Ok(seq) => announce(seq),
                        Err(_) => tracing::warn!(payload = %p, "ignoring a change notification that is not a sequence number"),
                    },
                    None => return Err(StoreError::Unavailable("the listener connection closed".into())),
                },
                _ = poll.tick() => announce(read_head(&client).await?),
                () = tx.closed() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    result
}

const REGION_COLUMNS: &str = "name, mesh, ipv4_block, ipv6_block, created_at";
const SITE_COLUMNS: &str =
    "name, region, role, state, agentless, lan_prefixes, endpoint, public_key, ipv4, ipv6, revision,
     render_fingerprint, applied_revision, created_at, enrolled_at, last_seen, health, credential_hash, org";

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("{what} {s:?}: {e}")))
}

fn parse_opt<T: std::str::FromStr>(what: &str, s: Option<String>) -> Result<Option<T>, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.map(|s| parse(what, &s)).transpose()
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn region_row(r: &Row) -> Result<Region, StoreError> {
    Ok(Region {
        name: parse("region name", &get::<String>(r, 0)?)?,
        mesh: get(r, 1)?,
        ipv4_block: parse("ipv4 block", &get::<String>(r, 2)?)?,
        ipv6_block: parse_opt("ipv6 block", get(r, 3)?)?,
        created_at: get(r, 4)?,
    })
}

fn site_row(r: &Row) -> Result<Site, StoreError> {
    let lan: String = get(r, 5)?;
    let health: Option<String> = get(r, 16)?;
    Ok(Site {
        name: parse("site name", &get::<String>(r, 0)?)?,
        region: parse("region name", &get::<String>(r, 1)?)?,
        role: parse::<Role>("role", &get::<String>(r, 2)?)?,
        state: parse::<SiteState>("state", &get::<String>(r, 3)?)?,
        agentless: get(r, 4)?,
        lan_prefixes: serde_json::from_str(&lan)
            .map_err(|e| StoreError::Corrupt(format!("lan_prefixes: {e}")))?,
        endpoint: parse_opt("endpoint", get(r, 6)?)?,
        public_key: parse_opt("public key", get(r, 7)?)?,
        ipv4: parse("ipv4", &get::<String>(r, 8)?)?,
        ipv6: parse_opt("ipv6", get(r, 9)?)?,
        revision: get::<i64>(r, 10)? as u64,
        render_fingerprint: get(r, 11)?,
        applied_revision: get::<i64>(r, 12)? as u64,
        created_at: get(r, 13)?,
        enrolled_at: get(r, 14)?,
        last_seen: get(r, 15)?,
        health: health
            .map(|h| serde_json::from_str(&h))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("health: {e}")))?,
        credential_hash: get(r, 17)?,
        org: parse("organisation name", &get::<String>(r, 18)?)?,
    })
}

/// The policy, read through `c`.
async fn policy_in<C: GenericClient>(c: &C) -> Result<StoredPolicy, StoreError> {
    let (next, rules, services) = futures::try_join!(
        c.query_one("SELECT next_rule FROM policy_counter WHERE id = 1", &[]),
        c.query(
            "SELECT id, source, target, proto, ports, description, org, created_at
             FROM policy_rules ORDER BY id",
            &[],
        ),
        c.query(
            "SELECT name, site, prefixes, proto, ports, shared_with, description, org, created_at
             FROM policy_services ORDER BY name",
            &[],
        ),
    )
    .map_err(pg)?;
    Ok(StoredPolicy {
        next_rule_id: get::<i64>(&next, 0)? as u64,
        rules: rules
            .iter()
            .map(|r| {
                super::stored_rule(super::RuleColumns {
                    id: get(r, 0)?,
                    source: get(r, 1)?,
                    target: get(r, 2)?,
                    proto: get(r, 3)?,
                    ports: get(r, 4)?,
                    description: get(r, 5)?,
                    org: get(r, 6)?,
                    created_at: get(r, 7)?,
                })
            })
            .collect::<Result<_, StoreError>>()?,
        services: services
            .iter()
            .map(|r| {
                super::stored_service(super::ServiceColumns {
                    name: get(r, 0)?,
                    site: get(r, 1)?,
                    prefixes: get(r, 2)?,
                    proto: get(r, 3)?,
                    ports: get(r, 4)?,
                    shared_with: get(r, 5)?,
                    description: get(r, 6)?,
                    org: get(r, 7)?,
                    created_at: get(r, 8)?,
                })
            })
            .collect::<Result<_, StoreError>>()?,
    })
}

/// Everything, as of the head, inside `tx` (a repeatable-read snapshot, or
/// a transaction holding the head's lock).
async fn load_in<C: GenericClient>(tx: &C) -> Result<Snapshot, StoreError> {
    let seq: i64 = tx
        .query_one("SELECT seq FROM change_head WHERE id = 1", &[])
        .await
        .map_err(pg)?
        .get(0);
    let regions = tx
        .query(
            &format!("SELECT {REGION_COLUMNS} FROM regions ORDER BY name"),
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(region_row)
        .collect::<Result<_, _>>()?;
    let sites = tx
        .query(
            &format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY name"),
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(site_row)
        .collect::<Result<_, _>>()?;
    let policy = policy_in(tx).await?;
    Ok(Snapshot {
        seq: seq as u64,
        regions,
        sites,
        policy,
    })
}

/// What changed after `seq`, as of `head` (the caller's snapshot or lock
/// holds the head there).
async fn changes_in<C: GenericClient>(c: &C, seq: u64, head: u64) -> Result<CatchUp, StoreError> {
    if head <= seq {
        return Ok(CatchUp::Changes(Changes {
            head,
            ..Default::default()
        }));
    }
    // Three queries in one pipeline (one round trip): where the log
    // starts, and every region and site the changes after `seq` named,
    // with its row now (none: deleted).
    let from = seq as i64;
    let region_sql = format!(
        "SELECT {REGION_COLUMNS}, w.n FROM
           (SELECT DISTINCT unnest(regions) AS n FROM change_log WHERE seq > $1) w
           LEFT JOIN regions ON regions.name = w.n"
    );
    let site_sql = format!(
        "SELECT {SITE_COLUMNS}, w.n FROM
           (SELECT DISTINCT unnest(sites) AS n FROM change_log WHERE seq > $1) w
           LEFT JOIN sites ON sites.name = w.n"
    );
    let params: [&(dyn ToSql + Sync); 1] = [&from];
    let (first, region_rows, site_rows, policy_changed) = futures::try_join!(
        c.query_one("SELECT MIN(seq) FROM change_log", &[]),
        c.query(&region_sql, &params),
        c.query(&site_sql, &params),
        c.query_one(
            "SELECT COALESCE(bool_or(policy), FALSE) FROM change_log WHERE seq > $1",
            &params
        ),
    )
    .map_err(pg)?;
    let first: Option<i64> = get(&first, 0)?;
    if first.is_none_or(|f| f as u64 > seq + 1) {
        return Ok(CatchUp::Reload(load_in(c).await?));
    }
    let wanted = |r: &Row, i: usize| -> Result<(Name, bool), StoreError> {
        let name: String = get(r, i)?;
        let found: Option<String> = get(r, 0)?;
        Ok((parse("name", &name)?, found.is_some()))
    };
    let mut regions = Vec::with_capacity(region_rows.len());
    for r in &region_rows {
        let (name, found) = wanted(r, 5)?;
        regions.push((name, found.then(|| region_row(r)).transpose()?));
    }
    let mut sites = Vec::with_capacity(site_rows.len());
    for r in &site_rows {
        let (name, found) = wanted(r, 19)?;
        sites.push((name, found.then(|| site_row(r)).transpose()?));
    }
    regions.sort_by(|a, b| a.0.cmp(&b.0));
    sites.sort_by(|a, b| a.0.cmp(&b.0));
    let policy = if get::<bool>(&policy_changed, 0)? {
        Some(policy_in(c).await?)
    } else {
        None
    };
    Ok(CatchUp::Changes(Changes {
        head,
        policy,
        regions,
        sites,
    }))
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let snap = load_in(&tx).await?;
        tx.commit().await.map_err(pg)?;
        Ok(snap)
    }

    fn submit(&self, writes: Vec<Write>) -> Pending {
        let pool = self.pool.clone();
        Box::pin(async move { Self::run(pool, None, writes).await.map(|_| ()) })
    }

    fn submit_change(&self, base: u64, writes: Vec<Write>) -> Pending<u64> {
        let pool = self.pool.clone();
        Box::pin(Self::run(pool, Some(base), writes))
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        read_head(&c).await
    }

    async fn changes_since(&self, seq: u64) -> Result<CatchUp, StoreError> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let head: i64 = tx
            .query_one("SELECT seq FROM change_head WHERE id = 1", &[])
            .await
            .map_err(pg)?
            .get(0);
        let out = changes_in(&tx, seq, head as u64).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn begin_change(&self) -> Result<Box<dyn ChangeTx>, StoreError> {
        Ok(Box::new(PgChange::begin(&self.pool).await?))
    }

    fn heads(&self) -> Option<watch::Receiver<u64>> {
        Some(self.heads.clone())
    }

    async fn maintain(&self, now: UnixTime, keep: u64) -> Result<Option<Maintenance>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_MAINTAIN])
            .await
            .map_err(pg)?
            .get(0);
        if !locked {
            return Ok(None);
        }
        let head: i64 = tx
            .query_one("SELECT seq FROM change_head WHERE id = 1", &[])
            .await
            .map_err(pg)?
            .get(0);
        let pruned = tx
            .execute(
                "DELETE FROM change_log WHERE seq <= $1",
                &[&(head - keep.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(pg)?;
        let swept = tx
            .execute(
                "DELETE FROM enrol_tokens WHERE expires_at < $1",
                &[&(now - super::TOKEN_SWEEP_AFTER_SECS)],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Some(Maintenance {
            log_entries_pruned: pruned,
            tokens_swept: swept,
        }))
    }

    async fn reports_since(&self, since: UnixTime) -> Result<Vec<super::StoredReport>, StoreError> {
        let c = self.client().await?;
        c.query(
            "SELECT name, applied_revision, last_seen, health FROM sites WHERE last_seen >= $1",
            &[&since],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| {
            let health: Option<String> = get(r, 3)?;
            Ok(super::StoredReport {
                site: parse("site name", &get::<String>(r, 0)?)?,
                applied_revision: get::<i64>(r, 1)? as u64,
                last_seen: get(r, 2)?,
                health: health
                    .map(|h| serde_json::from_str(&h))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("health: {e}")))?,
            })
        })
        .collect()
    }

    async fn enrol_token(&self, hash: &str) -> Result<Option<EnrolToken>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT site, created_at, expires_at, used_at FROM enrol_tokens WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(pg)?;
        row.map(|r| {
            Ok(EnrolToken {
                site: parse("site name", &get::<String>(&r, 0)?)?,
                created_at: get(&r, 1)?,
                expires_at: get(&r, 2)?,
                used_at: get(&r, 3)?,
            })
        })
        .transpose()
    }

    async fn admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT id, description, created_at, org FROM admin_tokens WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(pg)?;
        row.map(|r| {
            Ok(AdminToken {
                id: get(&r, 0)?,
                description: get(&r, 1)?,
                created_at: get(&r, 2)?,
                org: parse_opt("organisation name", get(&r, 3)?)?,
            })
        })
        .transpose()
    }

    async fn orgs(&self) -> Result<Vec<Org>, StoreError> {
        let c = self.client().await?;
        c.query(
            "SELECT name, description, created_at FROM orgs ORDER BY name",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| {
            Ok(Org {
                name: parse("organisation name", &get::<String>(r, 0)?)?,
                description: get(r, 1)?,
                created_at: get(r, 2)?,
            })
        })
        .collect()
    }

    async fn audit(
        &self,
        limit: u32,
        before: Option<i64>,
        org: Option<&Name>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.client().await?;
        let org = org.map(Name::to_string);
        c.query(
            "SELECT id, at, actor, action, object, detail FROM audit
             WHERE id < $1 AND ($3::TEXT IS NULL OR org = $3) ORDER BY id DESC LIMIT $2",
            &[&before.unwrap_or(i64::MAX), &i64::from(limit), &org],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                id: get(r, 0)?,
                at: get(r, 1)?,
                actor: get(r, 2)?,
                action: get(r, 3)?,
                object: get(r, 4)?,
                detail: get(r, 5)?,
            })
        })
        .collect()
    }
}

/// A password file's content: its first line, without the line ending.
pub fn read_password_file(path: &std::path::Path) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
        path: PathBuf::from(path),
        source,
    })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}
