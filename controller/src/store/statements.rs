//! The statements both stores run, built once from the row codec
//! ([`super::codec`]): every [`Write`] becomes the same statements on SQLite
//! and PostgreSQL, and every read the same query. Placeholders are written
//! `$1`, `$2`…; SQLite takes them as `?1`, `?2`… ([`sqlite`]). What differs
//! between the dialects (the change log's arrays, row locks, advisory
//! locks, `json_each` against `unnest`) stays in each store.

use std::sync::LazyLock;

use super::codec::{self, Value};
use super::{NewAudit, StoreError, Write};

/// One statement with its values.
#[derive(Debug)]
pub(crate) struct Statement {
    pub sql: &'static str,
    pub params: Vec<Value>,
    /// When set, the statement must touch exactly one row, or its batch
    /// fails with this precondition.
    pub exactly_one: Option<String>,
}

impl Statement {
    fn new(sql: &'static str, params: Vec<Value>) -> Self {
        Self {
            sql,
            params,
            exactly_one: None,
        }
    }

    fn exactly_one(mut self, otherwise: String) -> Self {
        self.exactly_one = Some(otherwise);
        self
    }
}

/// The statements of a batch, in order, up to a write that fails it on
/// purpose (test builds' fault injection): the statements before it run,
/// then the batch fails with the error, and the store rolls it all back.
pub(crate) fn for_batch(writes: &[Write]) -> (Vec<Statement>, Option<StoreError>) {
    let mut out = Vec::with_capacity(writes.len() + 1);
    for w in writes {
        if let Err(e) = push(w, &mut out) {
            return (out, Some(e));
        }
    }
    (out, None)
}

/// `col1, col2, …`.
pub(crate) fn columns(cols: &[&str]) -> String {
    cols.join(", ")
}

/// `$1, $2, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn insert(table: &str, cols: &[&str]) -> String {
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        columns(cols),
        placeholders(cols.len())
    )
}

static INSERT_REGION: LazyLock<String> = LazyLock::new(|| insert("regions", codec::REGION_COLUMNS));
static INSERT_SITE: LazyLock<String> = LazyLock::new(|| insert("sites", codec::SITE_COLUMNS));
static INSERT_ORG: LazyLock<String> = LazyLock::new(|| insert("orgs", codec::ORG_COLUMNS));
static INSERT_RULE: LazyLock<String> =
    LazyLock::new(|| insert("policy_rules", codec::RULE_COLUMNS));
static INSERT_SERVICE: LazyLock<String> =
    LazyLock::new(|| insert("policy_services", codec::SERVICE_COLUMNS));

/// The columns a site's replacement writes: all but its name (the key) and
/// what agents report.
fn site_update_columns() -> impl Iterator<Item = (usize, &'static str)> {
    codec::SITE_COLUMNS
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, c)| *i != 0 && !codec::SITE_REPORTED.contains(c))
}

/// `UPDATE sites SET region = $2, … WHERE name = $1`, numbered in the
/// order of [`site_update_columns`] (PostgreSQL refuses a placeholder no
/// statement uses, so the reported columns are left out, not skipped).
static UPDATE_SITE: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = site_update_columns()
        .enumerate()
        .map(|(n, (_, c))| format!("{c} = ${}", n + 2))
        .collect();
    format!("UPDATE sites SET {} WHERE name = $1", sets.join(", "))
});

fn site_update_values(s: &crate::model::Site) -> Vec<Value> {
    let mut all = codec::site_values(s);
    let mut out = vec![std::mem::replace(&mut all[0], Value::Null)];
    for (i, _) in site_update_columns() {
        out.push(std::mem::replace(&mut all[i], Value::Null));
    }
    out
}

fn push(w: &Write, out: &mut Vec<Statement>) -> Result<(), StoreError> {
    let st = match w {
        Write::InsertRegion(r) => Statement::new(&INSERT_REGION, codec::region_values(r)),
        Write::DeleteRegion(name) => {
            Statement::new("DELETE FROM regions WHERE name = $1", vec![name.into()])
        }
        Write::InsertSite(s) => Statement::new(&INSERT_SITE, codec::site_values(s)),
        Write::UpdateSite(s) => Statement::new(&UPDATE_SITE, site_update_values(s))
            .exactly_one(format!("site {} does not exist", s.name)),
        Write::DeleteSite(name) => {
            Statement::new("DELETE FROM sites WHERE name = $1", vec![name.into()])
        }
        Write::SetRevision {
            site,
            revision,
            fingerprint,
        } => Statement::new(
            "UPDATE sites SET revision = $2, render_fingerprint = $3 WHERE name = $1",
            vec![site.into(), (*revision).into(), fingerprint.clone().into()],
        ),
        Write::InsertEnrolToken {
            site,
            hash,
            created_at,
            expires_at,
        } => Statement::new(
            "INSERT INTO enrol_tokens (hash, site, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            vec![
                hash.as_str().into(),
                site.into(),
                (*created_at).into(),
                (*expires_at).into(),
            ],
        ),
        Write::DeleteEnrolTokens { site } => Statement::new(
            "DELETE FROM enrol_tokens WHERE site = $1 AND used_at IS NULL",
            vec![site.into()],
        ),
        Write::ConsumeEnrolToken {
            hash,
            site,
            now,
            sealed,
        } => Statement::new(
            "UPDATE enrol_tokens SET used_at = $3, sealed = $4
             WHERE hash = $1 AND site = $2 AND used_at IS NULL AND expires_at > $3",
            vec![
                hash.as_str().into(),
                site.into(),
                (*now).into(),
                sealed.as_str().into(),
            ],
        )
        .exactly_one("enrolment token already used or expired".into()),
        Write::SetNetwork(n) => Statement::new(
            "INSERT INTO network_settings (id, fingerprint, settings, set_at) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint,
                 settings = excluded.settings, set_at = excluded.set_at",
            vec![
                n.fingerprint.as_str().into(),
                n.settings.as_str().into(),
                n.set_at.into(),
            ],
        ),
        Write::Report {
            site,
            applied_revision,
            last_seen,
            health,
        } => Statement::new(
            // Replicas each persist what their own agents report: an older
            // report (an agent that moved on to another controller) never
            // overwrites a newer one.
            "UPDATE sites SET applied_revision = $2, last_seen = $3, health = $4
             WHERE name = $1 AND (last_seen IS NULL OR last_seen <= $3)",
            vec![
                site.into(),
                (*applied_revision).into(),
                (*last_seen).into(),
                health.as_ref().map_or(Value::Null, codec::json),
            ],
        ),
        Write::InsertAdminToken {
            id,
            hash,
            description,
            created_at,
            org,
        } => Statement::new(
            "INSERT INTO admin_tokens (id, hash, description, created_at, org) VALUES ($1, $2, $3, $4, $5)",
            vec![
                id.as_str().into(),
                hash.as_str().into(),
                description.as_str().into(),
                (*created_at).into(),
                org.as_ref().into(),
            ],
        ),
        Write::InsertOrg(o) => Statement::new(&INSERT_ORG, codec::org_values(o)),
        Write::DeleteOrg(name) => {
            Statement::new("DELETE FROM orgs WHERE name = $1", vec![name.into()])
        }
        Write::DescribeOrg { org, description } => Statement::new(
            "UPDATE orgs SET description = $2 WHERE name = $1",
            vec![org.into(), description.as_str().into()],
        ),
        Write::DelegateLans { org, prefixes } => Statement::new(
            "UPDATE orgs SET lan_delegated = $2 WHERE name = $1",
            vec![org.into(), codec::json(prefixes)],
        ),
        Write::InsertRule(r) => {
            out.push(Statement::new(&INSERT_RULE, codec::rule_values(r)));
            // Numbers only go up: the counter passes every number given.
            Statement::new(
                "UPDATE policy_counter
                 SET next_rule = CASE WHEN next_rule > $1 THEN next_rule ELSE $1 + 1 END
                 WHERE id = 1",
                vec![r.rule.id.into()],
            )
        }
        Write::DeleteRule(id) => {
            Statement::new("DELETE FROM policy_rules WHERE id = $1", vec![(*id).into()])
        }
        Write::InsertService(s) => Statement::new(&INSERT_SERVICE, codec::service_values(s)),
        Write::DeleteService { org, name } => Statement::new(
            "DELETE FROM policy_services WHERE org = $1 AND name = $2",
            vec![org.into(), name.into()],
        ),
        Write::Audit(NewAudit {
            at,
            actor,
            action,
            object,
            detail,
            org,
        }) => Statement::new(
            "INSERT INTO audit (at, actor, action, object, detail, org) VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                (*at).into(),
                actor.as_str().into(),
                action.as_str().into(),
                object.as_str().into(),
                detail.clone().into(),
                org.as_ref().into(),
            ],
        ),
        #[cfg(any(test, feature = "faults"))]
        Write::Fail(reason) => return Err(StoreError::Commit(reason.clone())),
    };
    out.push(st);
    Ok(())
}

// ----- reads ----------------------------------------------------------------

fn select(cols: &[&str], rest: &str) -> String {
    format!("SELECT {} {rest}", columns(cols))
}

pub(crate) static LOAD_REGIONS: LazyLock<String> =
    LazyLock::new(|| select(codec::REGION_COLUMNS, "FROM regions ORDER BY name"));
pub(crate) static LOAD_SITES: LazyLock<String> =
    LazyLock::new(|| select(codec::SITE_COLUMNS, "FROM sites ORDER BY name"));
pub(crate) static LOAD_RULES: LazyLock<String> =
    LazyLock::new(|| select(codec::RULE_COLUMNS, "FROM policy_rules ORDER BY id"));
pub(crate) static LOAD_SERVICES: LazyLock<String> = LazyLock::new(|| {
    select(
        codec::SERVICE_COLUMNS,
        "FROM policy_services ORDER BY org, name",
    )
});
pub(crate) const NEXT_RULE: &str = "SELECT next_rule FROM policy_counter WHERE id = 1";
pub(crate) const HEAD: &str = "SELECT seq FROM change_head WHERE id = 1";
pub(crate) static REPORTS_SINCE: LazyLock<String> =
    LazyLock::new(|| select(codec::REPORT_COLUMNS, "FROM sites WHERE last_seen >= $1"));
pub(crate) const NETWORK_SETTINGS: &str =
    "SELECT fingerprint, settings, set_at FROM network_settings WHERE id = 1";
pub(crate) static ENROL_TOKEN: LazyLock<String> = LazyLock::new(|| {
    select(
        codec::ENROL_TOKEN_COLUMNS,
        "FROM enrol_tokens WHERE hash = $1",
    )
});
pub(crate) static ADMIN_TOKEN: LazyLock<String> = LazyLock::new(|| {
    select(
        codec::ADMIN_TOKEN_COLUMNS,
        "FROM admin_tokens WHERE hash = $1",
    )
});
pub(crate) static ORGS: LazyLock<String> =
    LazyLock::new(|| select(codec::ORG_COLUMNS, "FROM orgs ORDER BY name"));
/// `$1`: below this id; `$2`: how many; `$3`: only this organisation's
/// (NULL: all).
pub(crate) static AUDIT: LazyLock<String> = LazyLock::new(|| {
    select(
        codec::AUDIT_COLUMNS,
        "FROM audit WHERE id < $1 AND (CAST($3 AS TEXT) IS NULL OR org = $3)
         ORDER BY id DESC LIMIT $2",
    )
});
pub(crate) const PRUNE_LOG: &str = "DELETE FROM change_log WHERE seq <= $1";
pub(crate) const SWEEP_TOKENS: &str = "DELETE FROM enrol_tokens WHERE expires_at < $1";

/// A statement's text for SQLite: `$n` placeholders as `?n`.
pub(crate) fn sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_update_leaves_the_reported_columns_and_numbers_what_it_binds() {
        let sql = UPDATE_SITE.as_str();
        for c in codec::SITE_REPORTED {
            assert!(!sql.contains(&format!("{c} =")), "{sql}");
        }
        let binds = sql.matches('$').count();
        assert_eq!(
            binds,
            codec::SITE_COLUMNS.len() - codec::SITE_REPORTED.len(),
            "{sql}"
        );
        assert!(sql.contains(&format!("${binds}")) && !sql.contains(&format!("${}", binds + 1)));
    }

    #[test]
    fn sqlite_placeholders_keep_their_numbers() {
        assert_eq!(
            sqlite("UPDATE t SET a = $2 WHERE b = $1"),
            "UPDATE t SET a = ?2 WHERE b = ?1"
        );
    }
}
