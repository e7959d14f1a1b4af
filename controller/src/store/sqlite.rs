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
use wardnet_common::wire::{AuditEntry, SiteState, UnixTime};
use wardnet_common::{Name, Role};

use super::{
    AdminToken, EnrolToken, NewAudit, Pending, Snapshot, Store, StoreError, StoredPolicy, Write,
};
use crate::model::{Org, Region, Site};
use wardnet_common::policy::{RuleView, ServiceView};

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
    // The change log (see the store's module docs): one entry per batch
    // that changes regions or sites, and its head.
    r#"
CREATE TABLE change_log (
    seq     INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    regions TEXT NOT NULL,
    sites   TEXT NOT NULL
);
CREATE TABLE change_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO change_head (id, seq) VALUES (1, 0);
"#,
    // Organisations: every site belongs to one (the existing ones to
    // `default`), admin tokens may be scoped to one, and audit entries say
    // whose object they are about. SQLite cannot add a column with a
    // foreign key and a default, so triggers keep the references whole
    // (raising constraint errors named like PostgreSQL's constraints).
    r#"
CREATE TABLE orgs (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
INSERT INTO orgs (name, description, created_at)
    VALUES ('default', 'sites added before organisations, and sites added without one', CAST(strftime('%s', 'now') AS INTEGER));
ALTER TABLE sites ADD COLUMN org TEXT NOT NULL DEFAULT 'default';
CREATE INDEX sites_org ON sites(org);
ALTER TABLE admin_tokens ADD COLUMN org TEXT;
ALTER TABLE audit ADD COLUMN org TEXT;
CREATE INDEX audit_org ON audit(org, id);
CREATE TRIGGER sites_org_insert BEFORE INSERT ON sites
    WHEN NOT EXISTS (SELECT 1 FROM orgs WHERE name = NEW.org)
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: sites.org'); END;
CREATE TRIGGER sites_org_update BEFORE UPDATE OF org ON sites
    WHEN NOT EXISTS (SELECT 1 FROM orgs WHERE name = NEW.org)
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: sites.org'); END;
CREATE TRIGGER admin_tokens_org_insert BEFORE INSERT ON admin_tokens
    WHEN NEW.org IS NOT NULL AND NOT EXISTS (SELECT 1 FROM orgs WHERE name = NEW.org)
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: admin_tokens.org'); END;
CREATE TRIGGER orgs_delete_sites BEFORE DELETE ON orgs
    WHEN EXISTS (SELECT 1 FROM sites WHERE org = OLD.name)
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: sites.org'); END;
CREATE TRIGGER orgs_delete_tokens BEFORE DELETE ON orgs
    WHEN EXISTS (SELECT 1 FROM admin_tokens WHERE org = OLD.name)
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: admin_tokens.org'); END;
"#,
    // The policy between organisations: rules (each owned by the
    // organisation it admits traffic into) and services (published by
    // their site's organisation, gone with the site).
    r#"
CREATE TABLE policy_rules (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    target      TEXT NOT NULL,
    proto       TEXT NOT NULL,
    ports       TEXT NOT NULL,
    description TEXT NOT NULL,
    org         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE policy_services (
    name        TEXT PRIMARY KEY,
    site        TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
    prefixes    TEXT NOT NULL,
    proto       TEXT NOT NULL,
    ports       TEXT NOT NULL,
    shared_with TEXT NOT NULL,
    description TEXT NOT NULL,
    org         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
-- Rule numbers only go up: a deleted rule's number is never given again,
-- so "rule N" in the audit log names one rule for good.
CREATE TABLE policy_counter (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    next_rule INTEGER NOT NULL
);
INSERT INTO policy_counter (id, next_rule) VALUES (1, 1);
CREATE TRIGGER policy_rules_org_insert BEFORE INSERT ON policy_rules
    WHEN NOT EXISTS (SELECT 1 FROM orgs WHERE name = NEW.org)
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: policy_rules.org'); END;
CREATE TRIGGER orgs_delete_rules BEFORE DELETE ON orgs
    WHEN EXISTS (SELECT 1 FROM policy_rules WHERE org = OLD.name)
    BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: policy_rules.org'); END;
"#,
    // Policy changes are in the change log: a replica following it reads
    // the policy again.
    r#"
ALTER TABLE change_log ADD COLUMN policy INTEGER NOT NULL DEFAULT 0;
"#,
];

type Reply = oneshot::Sender<Result<u64, StoreError>>;

/// A batch for the writer thread: its writes, whom to answer, and the
/// change it was built on (for [`Store::submit_change`]).
struct Batch {
    writes: Vec<Write>,
    reply: Reply,
    base: Option<u64>,
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
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 512 {
                break;
            }
        }
        let results = commit_group(&mut conn, &batch);
        for (b, result) in batch.into_iter().zip(results) {
            // The caller may have gone away (client disconnected); the write stands.
            let _ = b.reply.send(result);
        }
    }
}

/// Run each batch in a savepoint inside one transaction and commit once.
/// Each answers the log's head after it.
fn commit_group(conn: &mut Connection, batch: &[Batch]) -> Vec<Result<u64, StoreError>> {
    let mut tx = match conn.transaction() {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("cannot begin a transaction: {e}");
            return batch
                .iter()
                .map(|_| Err(StoreError::Unavailable(msg.clone())))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for b in batch {
        let r = if batch.len() == 1 {
            // Alone in the transaction: it is the unit, no savepoint needed.
            apply_batch(&tx, b)
        } else {
            (|| {
                // Dropping an uncommitted savepoint rolls back just this batch.
                let sp = tx.savepoint().map_err(classify)?;
                let head = apply_batch(&sp, b)?;
                sp.commit().map_err(classify)?;
                Ok::<u64, StoreError>(head)
            })()
        };
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
        return batch
            .iter()
            .map(|_| Err(StoreError::Commit(msg.clone())))
            .collect();
    }
    results
}

fn read_head(c: &Connection) -> Result<u64, StoreError> {
    let head: i64 = c
        .prepare_cached("SELECT seq FROM change_head WHERE id = 1")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(classify)?;
    Ok(head as u64)
}

/// One batch: check its base against the head, run its writes, and log it
/// when it changes regions or sites. Answers the head after it.
fn apply_batch(tx: &Connection, b: &Batch) -> Result<u64, StoreError> {
    let head = read_head(tx)?;
    if let Some(base) = b.base {
        if base != head {
            return Err(StoreError::Stale { base, head });
        }
    }
    for w in &b.writes {
        apply(tx, w)?;
    }
    let (regions, sites) = super::changed_keys(&b.writes);
    let policy = super::changes_policy(&b.writes);
    if regions.is_empty() && sites.is_empty() && !policy {
        return Ok(head);
    }
    let seq = head + 1;
    let names =
        |v: &[wardnet_common::Name]| json(&v.iter().map(|n| n.as_str()).collect::<Vec<_>>());
    tx.prepare_cached(
        "INSERT INTO change_log (seq, at, regions, sites, policy) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq as i64,
            crate::now(),
            names(&regions),
            names(&sites),
            policy
        ])
    })
    .map_err(classify)?;
    tx.prepare_cached("UPDATE change_head SET seq = ?1 WHERE id = 1")
        .and_then(|mut st| st.execute([seq as i64]))
        .map_err(classify)?;
    Ok(seq)
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
                    revision, render_fingerprint, applied_revision, created_at, enrolled_at, last_seen, health, credential_hash, org)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                &site_params(s).iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
            )?;
        }
        Write::UpdateSite(s) => {
            let n = run(
                "UPDATE sites SET region = ?2, role = ?3, state = ?4, agentless = ?5, lan_prefixes = ?6, endpoint = ?7,
                    public_key = ?8, ipv4 = ?9, ipv6 = ?10, revision = ?11, render_fingerprint = ?12,
                    created_at = ?14, enrolled_at = ?15, credential_hash = ?18, org = ?19
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
                // An older report (an agent that moved on to another
                // controller) never overwrites a newer one.
                "UPDATE sites SET applied_revision = ?2, last_seen = ?3, health = ?4
                 WHERE name = ?1 AND (last_seen IS NULL OR last_seen <= ?3)",
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
            org,
        } => {
            run(
                "INSERT INTO admin_tokens (id, hash, description, created_at, org) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[id, hash, description, created_at, &org.as_ref().map(Name::as_str)],
            )?;
        }
        Write::InsertOrg(o) => {
            run(
                "INSERT INTO orgs (name, description, created_at) VALUES (?1, ?2, ?3)",
                &[&o.name.as_str(), &o.description, &o.created_at],
            )?;
        }
        Write::DeleteOrg(name) => {
            run("DELETE FROM orgs WHERE name = ?1", &[&name.as_str()])?;
        }
        Write::InsertRule(RuleView {
            rule,
            org,
            created_at,
        }) => {
            run(
                "INSERT INTO policy_rules (id, source, target, proto, ports, description, org, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                &[
                    &(rule.id as i64),
                    &rule.from.to_string(),
                    &rule.to.to_string(),
                    &rule.proto.as_str(),
                    &super::ports_text(&rule.ports),
                    &rule.description,
                    &org.as_str(),
                    created_at,
                ],
            )?;
            run(
                "UPDATE policy_counter SET next_rule = MAX(next_rule, ?1 + 1) WHERE id = 1",
                &[&(rule.id as i64)],
            )?;
        }
        Write::DeleteRule(id) => {
            run("DELETE FROM policy_rules WHERE id = ?1", &[&(*id as i64)])?;
        }
        Write::InsertService(ServiceView {
            service,
            org,
            created_at,
        }) => {
            run(
                "INSERT INTO policy_services (name, site, prefixes, proto, ports, shared_with, description, org, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                &[
                    &service.name.as_str(),
                    &service.site.as_str(),
                    &json(&service.prefixes),
                    &service.proto.as_str(),
                    &super::ports_text(&service.ports),
                    &json(&service.shared_with),
                    &service.description,
                    &org.as_str(),
                    created_at,
                ],
            )?;
        }
        Write::DeleteService(name) => {
            run(
                "DELETE FROM policy_services WHERE name = ?1",
                &[&name.as_str()],
            )?;
        }
        Write::Audit(NewAudit {
            at,
            actor,
            action,
            object,
            detail,
            org,
        }) => {
            run(
                "INSERT INTO audit (at, actor, action, object, detail, org) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[at, actor, action, object, detail, &org.as_ref().map(Name::as_str)],
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
        Box::new(s.org.to_string()),
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

const REGION_COLUMNS: &str = "name, mesh, ipv4_block, ipv6_block, created_at";
const SITE_COLUMNS: &str =
    "name, region, role, state, agentless, lan_prefixes, endpoint, public_key, ipv4, ipv6, revision,
     render_fingerprint, applied_revision, created_at, enrolled_at, last_seen, health, credential_hash, org";

fn region_row(r: &rusqlite::Row<'_>) -> Result<Region, StoreError> {
    Ok(Region {
        name: parse("region name", &r.get::<_, String>(0)?)?,
        mesh: r.get(1)?,
        ipv4_block: parse("ipv4 block", &r.get::<_, String>(2)?)?,
        ipv6_block: parse_opt("ipv6 block", r.get(3)?)?,
        created_at: r.get(4)?,
    })
}

fn site_row(r: &rusqlite::Row<'_>) -> Result<Site, StoreError> {
    let lan: String = r.get(5)?;
    let health: Option<String> = r.get(16)?;
    Ok(Site {
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
        org: parse("organisation name", &r.get::<_, String>(18)?)?,
    })
}

/// Every row of a query, through `f`.
fn rows<T>(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
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
    let regions = rows(
        &tx,
        &format!("SELECT {REGION_COLUMNS} FROM regions ORDER BY name"),
        [],
        region_row,
    )?;
    let sites = rows(
        &tx,
        &format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY name"),
        [],
        site_row,
    )?;
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
    let rules = rows(
        tx,
        "SELECT id, source, target, proto, ports, description, org, created_at
         FROM policy_rules ORDER BY id",
        [],
        |r| {
            super::stored_rule(super::RuleColumns {
                id: r.get(0)?,
                source: r.get(1)?,
                target: r.get(2)?,
                proto: r.get(3)?,
                ports: r.get(4)?,
                description: r.get(5)?,
                org: r.get(6)?,
                created_at: r.get(7)?,
            })
        },
    )?;
    let services = rows(
        tx,
        "SELECT name, site, prefixes, proto, ports, shared_with, description, org, created_at
         FROM policy_services ORDER BY name",
        [],
        |r| {
            super::stored_service(super::ServiceColumns {
                name: r.get(0)?,
                site: r.get(1)?,
                prefixes: r.get(2)?,
                proto: r.get(3)?,
                ports: r.get(4)?,
                shared_with: r.get(5)?,
                description: r.get(6)?,
                org: r.get(7)?,
                created_at: r.get(8)?,
            })
        },
    )?;
    let next_rule_id: i64 = tx.query_row(
        "SELECT next_rule FROM policy_counter WHERE id = 1",
        [],
        |r| r.get(0),
    )?;
    Ok(StoredPolicy {
        rules,
        services,
        next_rule_id: next_rule_id as u64,
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
            "SELECT {REGION_COLUMNS} FROM regions WHERE name IN (SELECT value FROM json_each(?1))"
        ),
        [list(&region_names)],
        region_row,
    )?;
    for n in &region_names {
        let name = parse("region name", n)?;
        let row = found.iter().find(|r| r.name == name).cloned();
        regions.push((name, row));
    }
    let mut found: std::collections::HashMap<String, Site> = rows(
        &tx,
        &format!(
            "SELECT {SITE_COLUMNS} FROM sites WHERE name IN (SELECT value FROM json_each(?1))"
        ),
        [list(&site_names)],
        site_row,
    )?
    .into_iter()
    .map(|s| (s.name.to_string(), s))
    .collect();
    let mut sites = Vec::with_capacity(site_names.len());
    for n in &site_names {
        sites.push((parse("site name", n)?, found.remove(n)));
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

/// A change on SQLite: one process owns the file, so the head it read
/// cannot move under it; the writer thread still checks it at commit.
struct SqliteChange {
    writer: mpsc::UnboundedSender<Batch>,
    reader: Arc<Mutex<Connection>>,
    head: u64,
}

#[async_trait]
impl super::ChangeTx for SqliteChange {
    fn head(&self) -> u64 {
        self.head
    }

    async fn changes_since(&mut self, seq: u64) -> Result<super::CatchUp, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || changes_since(&reader.lock(), seq)).await?
    }

    async fn commit(self: Box<Self>, writes: Vec<Write>) -> Result<u64, StoreError> {
        queue(&self.writer, writes, Some(self.head)).await
    }
}

fn queue(
    writer: &mpsc::UnboundedSender<Batch>,
    writes: Vec<Write>,
    base: Option<u64>,
) -> Pending<u64> {
    {
        let (tx, rx) = oneshot::channel();
        let sent = writer
            .send(Batch {
                writes,
                reply: tx,
                base,
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
                "DELETE FROM change_log WHERE seq <= ?1",
                [head.saturating_sub(keep) as i64],
            )?;
            let swept = tx.execute(
                "DELETE FROM enrol_tokens WHERE expires_at < ?1",
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
        self.read(move |c| {
            rows(
                c,
                "SELECT name, applied_revision, last_seen, health FROM sites WHERE last_seen >= ?1",
                [since],
                |r| {
                    let health: Option<String> = r.get(3)?;
                    Ok(super::StoredReport {
                        site: parse("site name", &r.get::<_, String>(0)?)?,
                        applied_revision: r.get::<_, i64>(1)? as u64,
                        last_seen: r.get(2)?,
                        health: health
                            .map(|h| serde_json::from_str(&h))
                            .transpose()
                            .map_err(|e| StoreError::Corrupt(format!("health: {e}")))?,
                    })
                },
            )
        })
        .await
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
            c.query_row(
                "SELECT id, description, created_at, org FROM admin_tokens WHERE hash = ?1",
                [&hash],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?
            .map(|(id, description, created_at, org)| {
                Ok::<_, StoreError>(AdminToken {
                    id,
                    description,
                    created_at,
                    org: parse_opt("organisation name", org)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn orgs(&self) -> Result<Vec<Org>, StoreError> {
        self.read(|c| {
            rows(
                c,
                "SELECT name, description, created_at FROM orgs ORDER BY name",
                [],
                |r| {
                    Ok(Org {
                        name: parse("organisation name", &r.get::<_, String>(0)?)?,
                        description: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
            )
        })
        .await
    }

    async fn audit(
        &self,
        limit: u32,
        before: Option<i64>,
        org: Option<&Name>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let org = org.map(Name::to_string);
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, at, actor, action, object, detail FROM audit
                 WHERE id < ?1 AND (?3 IS NULL OR org = ?3) ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before.unwrap_or(i64::MAX), limit, org], |r| {
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
