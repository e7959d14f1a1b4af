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
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use wardnet_common::wire::{AuditEntry, SiteState};
use wardnet_common::Role;

use super::{AdminToken, EnrolToken, NewAudit, Pending, Snapshot, Store, StoreError, Write};
use crate::model::{Region, Site};

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE regions (
    name        TEXT PRIMARY KEY,
    mesh        INTEGER NOT NULL,
    ipv4_block  TEXT NOT NULL UNIQUE,
    ipv6_block  TEXT UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE TABLE sites (
    name             TEXT PRIMARY KEY,
    region           TEXT NOT NULL REFERENCES regions(name),
    role             TEXT NOT NULL CHECK (role IN ('hub', 'spoke')),
    state            TEXT NOT NULL CHECK (state IN ('pending', 'active', 'revoked')),
    agentless        INTEGER NOT NULL,
    lan_prefixes     TEXT NOT NULL,
    endpoint         TEXT,
    public_key       TEXT UNIQUE,
    ipv4             TEXT NOT NULL UNIQUE,
    ipv6             TEXT UNIQUE,
    revision         INTEGER NOT NULL,
    render_fingerprint      TEXT,
    applied_revision INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    enrolled_at      INTEGER,
    last_seen        INTEGER,
    health           TEXT,
    credential_hash  TEXT UNIQUE
);
CREATE INDEX sites_region ON sites(region);
CREATE TABLE enrol_tokens (
    hash        TEXT PRIMARY KEY,
    site        TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX enrol_tokens_site ON enrol_tokens(site);
CREATE TABLE admin_tokens (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    object  TEXT NOT NULL,
    detail  TEXT
);
"#,
    // Configs are kept incrementally and no longer hashed whole: a site's
    // revision records what it was rendered with instead (old values differ
    // from every fingerprint, so each site gets one new revision).
    r#"
ALTER TABLE sites RENAME COLUMN render_fingerprint TO render_fingerprint;
"#,
];

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A batch for the writer thread: its writes, whom to answer, its chain.
struct Batch {
    writes: Vec<Write>,
    reply: Reply,
    chain: Option<u64>,
}

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

    pub fn path(&self) -> &Path {
        &self.path
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

fn writer_loop(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Batch>) {
    // The chain whose batch failed last: its later batches are refused.
    let mut failed: Option<u64> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 512 {
                break;
            }
        }
        let results = commit_group(&mut conn, &batch, &mut failed);
        for (b, result) in batch.into_iter().zip(results) {
            // The caller may have gone away (client disconnected); the write stands.
            let _ = b.reply.send(result);
        }
    }
}

/// Run each batch in a savepoint inside one transaction and commit once.
/// A batch of a chain that failed before is refused without running.
fn commit_group(
    conn: &mut Connection,
    batch: &[Batch],
    failed: &mut Option<u64>,
) -> Vec<Result<(), StoreError>> {
    let poison = |failed: &mut Option<u64>, b: &Batch| {
        if b.chain.is_some() {
            *failed = b.chain;
        }
    };
    let mut tx = match conn.transaction() {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("cannot begin a transaction: {e}");
            for b in batch {
                poison(failed, b);
            }
            return batch
                .iter()
                .map(|_| Err(StoreError::Unavailable(msg.clone())))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for b in batch {
        if b.chain.is_some() && *failed == b.chain {
            results.push(Err(StoreError::Unavailable(
                "an earlier batch of this chain failed".into(),
            )));
            continue;
        }
        let r = if batch.len() == 1 {
            // Alone in the transaction: it is the unit, no savepoint needed.
            b.writes.iter().try_for_each(|w| apply(&tx, w))
        } else {
            (|| {
                // Dropping an uncommitted savepoint rolls back just this batch.
                let sp = tx.savepoint().map_err(classify)?;
                for w in &b.writes {
                    apply(&sp, w)?;
                }
                sp.commit().map_err(classify)?;
                Ok::<(), StoreError>(())
            })()
        };
        if r.is_err() {
            poison(failed, b);
        }
        results.push(r);
    }
    if batch.len() == 1 && results.iter().any(Result::is_err) {
        // The lone batch failed without a savepoint: roll it all back.
        drop(tx);
        return results;
    }
    if let Err(e) = tx.commit() {
        tracing::error!(error = %e, "database commit failed; no change of this group is stored");
        let msg = e.to_string();
        for b in batch {
            poison(failed, b);
        }
        return batch
            .iter()
            .map(|_| Err(StoreError::Commit(msg.clone())))
            .collect();
    }
    results
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

fn apply(tx: &Connection, w: &Write) -> Result<(), StoreError> {
    // Cached: the same few statements run thousands of times.
    let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
        tx.prepare_cached(sql)
            .and_then(|mut st| st.execute(p))
            .map_err(classify)
    };
    match w {
        Write::InsertRegion(r) => {
            run(
                "INSERT INTO regions (name, mesh, ipv4_block, ipv6_block, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    &r.name.as_str(),
                    &r.mesh,
                    &r.ipv4_block.to_string(),
                    &r.ipv6_block.map(|b| b.to_string()),
                    &r.created_at,
                ],
            )?;
        }
        Write::DeleteRegion(name) => {
            run("DELETE FROM regions WHERE name = ?1", &[&name.as_str()])?;
        }
        Write::InsertSite(s) => {
            run(
                "INSERT INTO sites (name, region, role, state, agentless, lan_prefixes, endpoint, public_key, ipv4, ipv6,
                    revision, render_fingerprint, applied_revision, created_at, enrolled_at, last_seen, health, credential_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                &site_params(s).iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
            )?;
        }
        Write::UpdateSite(s) => {
            let n = run(
                "UPDATE sites SET region = ?2, role = ?3, state = ?4, agentless = ?5, lan_prefixes = ?6, endpoint = ?7,
                    public_key = ?8, ipv4 = ?9, ipv6 = ?10, revision = ?11, render_fingerprint = ?12,
                    created_at = ?14, enrolled_at = ?15, credential_hash = ?18
                 WHERE name = ?1",
                &site_params(s).iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
            )?;
            if n != 1 {
                return Err(StoreError::Precondition(format!(
                    "site {} does not exist",
                    s.name
                )));
            }
        }
        Write::DeleteSite(name) => {
            run("DELETE FROM sites WHERE name = ?1", &[&name.as_str()])?;
        }
        Write::SetRevision {
            site,
            revision,
            fingerprint,
        } => {
            run(
                "UPDATE sites SET revision = ?2, render_fingerprint = ?3 WHERE name = ?1",
                &[&site.as_str(), &(*revision as i64), fingerprint],
            )?;
        }
        Write::Fail(reason) => return Err(StoreError::Commit(reason.clone())),
        Write::InsertEnrolToken {
            site,
            hash,
            created_at,
            expires_at,
        } => {
            run(
                "INSERT INTO enrol_tokens (hash, site, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                &[hash, &site.as_str(), created_at, expires_at],
            )?;
        }
        Write::DeleteEnrolTokens { site } => {
            run(
                "DELETE FROM enrol_tokens WHERE site = ?1 AND used_at IS NULL",
                &[&site.as_str()],
            )?;
        }
        Write::ConsumeEnrolToken { hash, site, now } => {
            let n = run(
                "UPDATE enrol_tokens SET used_at = ?3
                 WHERE hash = ?1 AND site = ?2 AND used_at IS NULL AND expires_at > ?3",
                &[hash, &site.as_str(), now],
            )?;
            if n != 1 {
                return Err(StoreError::Precondition(
                    "enrolment token already used or expired".into(),
                ));
            }
        }
        Write::Report {
            site,
            applied_revision,
            last_seen,
            health,
        } => {
            run(
                "UPDATE sites SET applied_revision = ?2, last_seen = ?3, health = ?4 WHERE name = ?1",
                &[
                    &site.as_str(),
                    &(*applied_revision as i64),
                    last_seen,
                    &health.as_ref().map(json),
                ],
            )?;
        }
        Write::InsertAdminToken {
            id,
            hash,
            description,
            created_at,
        } => {
            run(
                "INSERT INTO admin_tokens (id, hash, description, created_at) VALUES (?1, ?2, ?3, ?4)",
                &[id, hash, description, created_at],
            )?;
        }
        Write::Audit(NewAudit {
            at,
            actor,
            action,
            object,
            detail,
        }) => {
            run(
                "INSERT INTO audit (at, actor, action, object, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[at, actor, action, object, detail],
            )?;
        }
    }
    Ok(())
}

fn site_params(s: &Site) -> Vec<Box<dyn rusqlite::ToSql>> {
    vec![
        Box::new(s.name.to_string()),
        Box::new(s.region.to_string()),
        Box::new(s.role.as_str()),
        Box::new(s.state.as_str()),
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
    ]
}

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

fn load_all(conn: &Connection) -> Result<Snapshot, StoreError> {
    let mut regions = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT name, mesh, ipv4_block, ipv6_block, created_at FROM regions ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        regions.push(Region {
            name: parse("region name", &r.get::<_, String>(0)?)?,
            mesh: r.get(1)?,
            ipv4_block: parse("ipv4 block", &r.get::<_, String>(2)?)?,
            ipv6_block: parse_opt("ipv6 block", r.get(3)?)?,
            created_at: r.get(4)?,
        });
    }
    let mut sites = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT name, region, role, state, agentless, lan_prefixes, endpoint, public_key, ipv4, ipv6, revision,
                render_fingerprint, applied_revision, created_at, enrolled_at, last_seen, health, credential_hash
         FROM sites ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let lan: String = r.get(5)?;
        let health: Option<String> = r.get(16)?;
        sites.push(Site {
            name: parse("site name", &r.get::<_, String>(0)?)?,
            region: parse("region name", &r.get::<_, String>(1)?)?,
            role: parse::<Role>("role", &r.get::<_, String>(2)?)?,
            state: parse::<SiteState>("state", &r.get::<_, String>(3)?)?,
            agentless: r.get(4)?,
            lan_prefixes: serde_json::from_str(&lan)
                .map_err(|e| StoreError::Corrupt(format!("lan_prefixes: {e}")))?,
            endpoint: parse_opt("endpoint", r.get(6)?)?,
            public_key: parse_opt("public key", r.get(7)?)?,
            ipv4: parse("ipv4", &r.get::<_, String>(8)?)?,
            ipv6: parse_opt("ipv6", r.get(9)?)?,
            revision: r.get::<_, i64>(10)? as u64,
            render_fingerprint: r.get(11)?,
            applied_revision: r.get::<_, i64>(12)? as u64,
            created_at: r.get(13)?,
            enrolled_at: r.get(14)?,
            last_seen: r.get(15)?,
            health: health
                .map(|h| serde_json::from_str(&h))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("health: {e}")))?,
            credential_hash: r.get(17)?,
        });
    }
    Ok(Snapshot { regions, sites })
}

impl SqliteStore {
    fn queue(&self, writes: Vec<Write>, chain: Option<u64>) -> Pending {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .writer
            .send(Batch {
                writes,
                reply: tx,
                chain,
            })
            .is_ok();
        Box::pin(async move {
            let stopped = || StoreError::Unavailable("the database writer has stopped".into());
            if !sent {
                return Err(stopped());
            }
            rx.await.map_err(|_| stopped())?
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.read(load_all).await
    }

    fn submit(&self, writes: Vec<Write>) -> Pending {
        self.queue(writes, None)
    }

    fn submit_chained(&self, writes: Vec<Write>, chain: u64) -> Pending {
        self.queue(writes, Some(chain))
    }

    async fn enrol_token(&self, hash: &str) -> Result<Option<EnrolToken>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT site, created_at, expires_at, used_at FROM enrol_tokens WHERE hash = ?1",
                    [&hash],
                    |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            row.map(|(site, created_at, expires_at, used_at)| {
                Ok(EnrolToken {
                    site: parse("site name", &site)?,
                    created_at,
                    expires_at,
                    used_at,
                })
            })
            .transpose()
        })
        .await
    }

    async fn admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT id, description, created_at FROM admin_tokens WHERE hash = ?1",
                [&hash],
                |r| {
                    Ok(AdminToken {
                        id: r.get(0)?,
                        description: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn audit(&self, limit: u32, before: Option<i64>) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, at, actor, action, object, detail FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before.unwrap_or(i64::MAX), limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    object: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
