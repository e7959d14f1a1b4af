//! The embedded SQLite store: WAL, `synchronous=FULL`, versioned migrations.
//!
//! One writer thread owns the write connection and does group commit: it
//! takes every batch waiting in its queue, runs each inside its own
//! SAVEPOINT (so one batch's conflict rolls back only that batch), commits
//! them with one fsync, then answers each caller. Under load this turns N
//! fsyncs into one without weakening "durable before the API answers".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, ErrorCode};
use tokio::sync::{mpsc, oneshot};
use wardnet_common::wire::{AuditEntry, UnixTime};
use wardnet_common::Name;

use super::codec::{self, Value};
use super::statements::{self, Statement};
use super::{AdminToken, EnrolToken, Pending, Snapshot, Store, StoreError, StoredPolicy, Write};
use crate::model::{Org, Region, Site};

mod schema;
mod writer;

use schema::MIGRATIONS;
use writer::{queue, writer_loop, Batch, SqliteChange};

pub struct SqliteStore {
    writer: mpsc::UnboundedSender<Batch>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteStore {
    /// Open (creating the file and its directory on first start) and migrate.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let mut conn = open_conn(path)?;
        migrate(&mut conn)?;
        let reader = open_conn(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("wardnet-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_owned(),
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock())).await?
    }
}

/// Create the database's directory (0700) and file (0600) if they are
/// missing, whatever the umask, and take group and world access away from an
/// existing file: it holds token and credential hashes. SQLite gives its WAL
/// and shared-memory files the database file's mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| StoreError::Io { path: p, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    let mode = file.metadata().map_err(io(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
            .map_err(io(path))?;
    }
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before it returns, also in WAL mode.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoints journal the pages they touch; in memory, not a temp file
    // (half the writer's system time otherwise). And a page cache that
    // holds the sites table of a national network (64 MiB).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -65536)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![i as i64 + 1, crate::now()],
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn read_head(c: &Connection) -> Result<u64, StoreError> {
    let head: i64 = c
        .prepare_cached(statements::HEAD)
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(classify)?;
    Ok(head as u64)
}

/// Turn a failed write into a typed error: constraint violations into
/// `Conflict { what }`, a busy or locked database into `Unavailable`, and
/// anything else (I/O, disk full) into `Commit`.
fn classify(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        match f.code {
            ErrorCode::ConstraintViolation => {
                // "UNIQUE constraint failed: sites.ipv4"
                let msg = msg.as_deref().unwrap_or("constraint");
                let what = msg.rsplit(": ").next().unwrap_or(msg).to_owned();
                return StoreError::Conflict { what };
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return StoreError::Unavailable(e.to_string())
            }
            _ => return StoreError::Commit(e.to_string()),
        }
    }
    StoreError::Sqlite(e)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialising plain data to JSON cannot fail")
}

/// Every row of a query, through `f`.
fn rows<T>(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare(&statements::sqlite(sql))?;
    let mut rows = stmt.query(p)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// Regions and sites as of the head, in one read transaction.
fn load_all(conn: &Connection) -> Result<Snapshot, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let seq = read_head(&tx)?;
    let regions = rows(&tx, &statements::LOAD_REGIONS, [], |r| codec::region(r))?;
    let sites = rows(&tx, &statements::LOAD_SITES, [], |r| codec::site(r))?;
    let policy = load_policy(&tx)?;
    Ok(Snapshot {
        seq,
        regions,
        sites,
        policy,
    })
}

/// The policy, inside `tx`.
fn load_policy(tx: &Connection) -> Result<StoredPolicy, StoreError> {
    let next_rule_id: i64 = tx.query_row(statements::NEXT_RULE, [], |r| r.get(0))?;
    let orgs = rows(tx, &statements::ORGS, [], |r| codec::org(r))?;
    Ok(StoredPolicy {
        rules: rows(tx, &statements::LOAD_RULES, [], |r| codec::rule(r))?,
        services: rows(tx, &statements::LOAD_SERVICES, [], |r| codec::service(r))?,
        next_rule_id: next_rule_id as u64,
        delegated: super::delegated(orgs),
    })
}

/// See [`Store::changes_since`].
fn changes_since(conn: &Connection, seq: u64) -> Result<super::CatchUp, StoreError> {
    use std::collections::BTreeSet;
    let tx = conn.unchecked_transaction()?;
    let head = read_head(&tx)?;
    if head <= seq {
        return Ok(super::CatchUp::Changes(super::Changes {
            head,
            ..Default::default()
        }));
    }
    let first: Option<i64> = tx.query_row("SELECT MIN(seq) FROM change_log", [], |r| r.get(0))?;
    if first.is_none_or(|f| f as u64 > seq + 1) {
        drop(tx);
        return Ok(super::CatchUp::Reload(load_all(conn)?));
    }
    let mut region_names = BTreeSet::new();
    let mut site_names = BTreeSet::new();
    let mut policy_changed = false;
    for (r, s, p) in rows(
        &tx,
        "SELECT regions, sites, policy FROM change_log WHERE seq > ?1 ORDER BY seq",
        [seq as i64],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
            ))
        },
    )? {
        policy_changed |= p;
        let names = |j: &str| -> Result<Vec<String>, StoreError> {
            serde_json::from_str(j).map_err(|e| StoreError::Corrupt(format!("change log: {e}")))
        };
        region_names.extend(names(&r)?);
        site_names.extend(names(&s)?);
    }
    let list = |n: &BTreeSet<String>| json(&n.iter().collect::<Vec<_>>());
    let mut regions: Vec<(wardnet_common::Name, Option<Region>)> = Vec::new();
    let found = rows(
        &tx,
        &format!(
            "SELECT {} FROM regions WHERE name IN (SELECT value FROM json_each(?1))",
            statements::columns(codec::REGION_COLUMNS)
        ),
        [list(&region_names)],
        |r| codec::region(r),
    )?;
    for n in &region_names {
        let name = codec::name("region name", n)?;
        let row = found.iter().find(|r| r.name == name).cloned();
        regions.push((name, row));
    }
    let mut found: std::collections::HashMap<String, Site> = rows(
        &tx,
        &format!(
            "SELECT {} FROM sites WHERE name IN (SELECT value FROM json_each(?1))",
            statements::columns(codec::SITE_COLUMNS)
        ),
        [list(&site_names)],
        |r| codec::site(r),
    )?
    .into_iter()
    .map(|s| (s.name.to_string(), s))
    .collect();
    let mut sites = Vec::with_capacity(site_names.len());
    for n in &site_names {
        sites.push((codec::name("site name", n)?, found.remove(n)));
    }
    let policy = policy_changed.then(|| load_policy(&tx)).transpose()?;
    Ok(super::CatchUp::Changes(super::Changes {
        head,
        regions,
        sites,
        policy,
    }))
}

impl SqliteStore {
    fn queue(&self, writes: Vec<Write>, base: Option<u64>) -> Pending<u64> {
        queue(&self.writer, writes, base)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.read(load_all).await
    }

    fn submit(&self, writes: Vec<Write>) -> Pending {
        let p = self.queue(writes, None);
        Box::pin(async move { p.await.map(|_| ()) })
    }

    fn submit_change(&self, base: u64, writes: Vec<Write>) -> Pending<u64> {
        self.queue(writes, Some(base))
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.read(read_head).await
    }

    async fn begin_change(&self) -> Result<Box<dyn super::ChangeTx>, StoreError> {
        Ok(Box::new(SqliteChange {
            writer: self.writer.clone(),
            reader: self.reader.clone(),
            head: self.head().await?,
        }))
    }

    async fn changes_since(&self, seq: u64) -> Result<super::CatchUp, StoreError> {
        self.read(move |c| changes_since(c, seq)).await
    }

    async fn maintain(
        &self,
        now: UnixTime,
        keep: u64,
    ) -> Result<Option<super::Maintenance>, StoreError> {
        // One process owns an SQLite file: no lock to take. Its own
        // connection, so the writer thread's queue is not held up.
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = open_conn(&path)?;
            let tx = conn.transaction()?;
            let head = read_head(&tx)?;
            let pruned = tx.execute(
                &statements::sqlite(statements::PRUNE_LOG),
                [head.saturating_sub(keep) as i64],
            )?;
            let swept = tx.execute(
                &statements::sqlite(statements::SWEEP_TOKENS),
                [now - super::TOKEN_SWEEP_AFTER_SECS],
            )?;
            tx.commit()?;
            Ok(Some(super::Maintenance {
                log_entries_pruned: pruned as u64,
                tokens_swept: swept as u64,
            }))
        })
        .await?
    }

    async fn reports_since(&self, since: UnixTime) -> Result<Vec<super::StoredReport>, StoreError> {
        self.read(move |c| rows(c, &statements::REPORTS_SINCE, [since], |r| codec::report(r)))
            .await
    }

    async fn enrol_token(&self, hash: &str) -> Result<Option<EnrolToken>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |c| {
            one(c, &statements::ENROL_TOKEN, [hash], |r| {
                codec::enrol_token(r)
            })
        })
        .await
    }

    async fn network_settings(&self) -> Result<Option<super::StoredNetwork>, StoreError> {
        self.read(|c| one(c, statements::NETWORK_SETTINGS, [], |r| codec::network(r)))
            .await
    }

    async fn admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |c| {
            one(c, &statements::ADMIN_TOKEN, [hash], |r| {
                codec::admin_token(r)
            })
        })
        .await
    }

    async fn orgs(&self) -> Result<Vec<Org>, StoreError> {
        self.read(|c| rows(c, &statements::ORGS, [], |r| codec::org(r)))
            .await
    }

    async fn audit(
        &self,
        limit: u32,
        before: Option<i64>,
        org: Option<&Name>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let params = [
            Value::Int(before.unwrap_or(i64::MAX)),
            Value::Int(i64::from(limit)),
            org.into(),
        ];
        self.read(move |c| {
            rows(
                c,
                &statements::AUDIT,
                rusqlite::params_from_iter(params),
                |r| codec::audit_entry(r),
            )
        })
        .await
    }
}

/// The one row a query finds, if any.
fn one<T>(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(&statements::sqlite(sql))?;
    let mut rows = stmt.query(p)?;
    rows.next()?.map(f).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written before organisations existed: its sites move
    /// into `default`, its admin tokens stay network-wide.
    #[tokio::test]
    async fn sites_from_before_organisations_move_into_the_default_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let conn = open_conn(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .expect("table");
            for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
                conn.execute_batch(sql).expect("an old migration");
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
                    [i as i64 + 1],
                )
                .expect("version");
            }
            conn.execute_batch(
                "INSERT INTO regions (name, mesh, ipv4_block, created_at) VALUES ('north', 0, '100.64.0.0/20', 1);
                 INSERT INTO sites (name, region, role, state, agentless, lan_prefixes, ipv4, revision, created_at)
                     VALUES ('gp-old', 'north', 'spoke', 'pending', 0, '[]', '100.64.0.5', 0, 1);
                 INSERT INTO admin_tokens (id, hash, description, created_at) VALUES ('tok-old', 'h', 'ops', 1);",
            )
            .expect("old rows");
        }
        let s = SqliteStore::open(&path).expect("migrate");
        let loaded = s.load().await.expect("load");
        assert_eq!(loaded.sites.len(), 1);
        assert_eq!(loaded.sites[0].org, crate::model::default_org());
        assert_eq!(
            s.admin_token("h").await.expect("token").map(|t| t.org),
            Some(None),
            "a token from before stays network-wide"
        );
        let orgs: Vec<String> = s
            .orgs()
            .await
            .expect("orgs")
            .into_iter()
            .map(|o| o.name.to_string())
            .collect();
        assert_eq!(orgs, ["default"]);
    }
}
