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
use wardnet_common::wire::{AuditEntry, UnixTime};
use wardnet_common::Name;

use super::codec::{self, Value};
use super::statements::{self, Statement};
use super::{
    AdminToken, CatchUp, ChangeTx, Changes, EnrolToken, Maintenance, Pending, Snapshot, Store,
    StoreError, StoredPolicy, Write,
};
use crate::model::Org;

mod change;
mod listen;
mod schema;

use change::{lock_head, write_batch, PgChange};
use listen::listen;
use schema::MIGRATIONS;

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
    StoreError::Unavailable(reason(e))
}

/// An error with its causes ("db error" alone says nothing: the server's
/// own message, such as a missing pg_hba.conf entry, is its cause).
pub(super) fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string().replace('\n', "; ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    let (why, refused) = match &e {
        deadpool_postgres::PoolError::Backend(b) => (reason(b), refuses(b)),
        other => (reason(other), false),
    };
    if refused {
        // Waiting would not help: the server answered, and said no.
        return StoreError::Postgres(format!("the database refused the connection: {why}"));
    }
    StoreError::Unavailable(format!("cannot reach the database: {why}"))
}

/// Whether the server refused the connection for good: authentication (a
/// wrong password, no pg_hba.conf entry), a database that does not exist,
/// no privilege.
fn refuses(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        code.starts_with("28") || code == "3D000" || code == "42501"
    })
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
    let head: i64 = c.query_one(statements::HEAD, &[]).await.map_err(pg)?.get(0);
    Ok(head as u64)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// Every row of a query through `f`.
async fn rows<C: GenericClient, T>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    f: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    c.query(sql, params)
        .await
        .map_err(pg)?
        .iter()
        .map(f)
        .collect()
}

/// The policy, read through `c`.
async fn policy_in<C: GenericClient>(c: &C) -> Result<StoredPolicy, StoreError> {
    let (next, rules, services, orgs) = futures::try_join!(
        async { c.query_one(statements::NEXT_RULE, &[]).await.map_err(pg) },
        rows(c, &statements::LOAD_RULES, &[], codec::rule),
        rows(c, &statements::LOAD_SERVICES, &[], codec::service),
        rows(c, &statements::ORGS, &[], codec::org),
    )?;
    Ok(StoredPolicy {
        next_rule_id: get::<i64>(&next, 0)? as u64,
        rules,
        services,
        delegated: super::delegated(orgs),
    })
}

/// Everything, as of the head, inside `tx` (a repeatable-read snapshot, or
/// a transaction holding the head's lock).
async fn load_in<C: GenericClient>(tx: &C) -> Result<Snapshot, StoreError> {
    let seq: i64 = tx
        .query_one(statements::HEAD, &[])
        .await
        .map_err(pg)?
        .get(0);
    let regions = rows(tx, &statements::LOAD_REGIONS, &[], codec::region).await?;
    let sites = rows(tx, &statements::LOAD_SITES, &[], codec::site).await?;
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
        "SELECT {}, w.n FROM
           (SELECT DISTINCT unnest(regions) AS n FROM change_log WHERE seq > $1) w
           LEFT JOIN regions ON regions.name = w.n",
        statements::columns(codec::REGION_COLUMNS)
    );
    let site_sql = format!(
        "SELECT {}, w.n FROM
           (SELECT DISTINCT unnest(sites) AS n FROM change_log WHERE seq > $1) w
           LEFT JOIN sites ON sites.name = w.n",
        statements::columns(codec::SITE_COLUMNS)
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
        Ok((codec::name("name", &name)?, found.is_some()))
    };
    let mut regions = Vec::with_capacity(region_rows.len());
    for r in &region_rows {
        let (name, found) = wanted(r, codec::REGION_COLUMNS.len())?;
        regions.push((name, found.then(|| codec::region(r)).transpose()?));
    }
    let mut sites = Vec::with_capacity(site_rows.len());
    for r in &site_rows {
        let (name, found) = wanted(r, codec::SITE_COLUMNS.len())?;
        sites.push((name, found.then(|| codec::site(r)).transpose()?));
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
            .query_one(statements::HEAD, &[])
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
            .query_one(statements::HEAD, &[])
            .await
            .map_err(pg)?
            .get(0);
        let pruned = tx
            .execute(
                statements::PRUNE_LOG,
                &[&(head - keep.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(pg)?;
        let swept = tx
            .execute(
                statements::SWEEP_TOKENS,
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
        rows(&c, &statements::REPORTS_SINCE, &[&since], |r| {
            codec::report(r)
        })
        .await
    }

    async fn enrol_token(&self, hash: &str) -> Result<Option<EnrolToken>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(statements::ENROL_TOKEN.as_str(), &[&hash])
            .await
            .map_err(pg)?;
        row.as_ref().map(codec::enrol_token).transpose()
    }

    async fn network_settings(&self) -> Result<Option<super::StoredNetwork>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(statements::NETWORK_SETTINGS, &[])
            .await
            .map_err(pg)?;
        row.as_ref().map(codec::network).transpose()
    }

    async fn admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(statements::ADMIN_TOKEN.as_str(), &[&hash])
            .await
            .map_err(pg)?;
        row.as_ref().map(codec::admin_token).transpose()
    }

    async fn orgs(&self) -> Result<Vec<Org>, StoreError> {
        let c = self.client().await?;
        rows(&c, &statements::ORGS, &[], codec::org).await
    }

    async fn audit(
        &self,
        limit: u32,
        before: Option<i64>,
        org: Option<&Name>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.client().await?;
        let params = [
            Value::Int(before.unwrap_or(i64::MAX)),
            Value::Int(i64::from(limit)),
            org.into(),
        ];
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        rows(&c, &statements::AUDIT, &params, codec::audit_entry).await
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
