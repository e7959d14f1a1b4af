//! The row codec both stores share: what each stored type's row holds, in
//! which columns and in which order, and how a value is written and read
//! back. SQLite and PostgreSQL differ only in how a statement is run
//! ([`super::statements`] builds them, each store runs them); a new column
//! is one line in a column list, one in the encoder and one in the decoder
//! here, beside each other, and one migration per store.
//!
//! Values are plain (text, 64-bit integers, booleans, NULL): prefixes, keys
//! and names as their text forms, sets and health as JSON text, times as
//! Unix seconds. Both schemas declare exactly these types, so a row reads
//! the same from either database.

use std::str::FromStr;

use wardnet_common::policy::{Rule, RuleView, Service, ServiceView, Target};
use wardnet_common::wire::{AuditEntry, SiteState};
use wardnet_common::{Name, Role};

use super::{AdminToken, EnrolToken, StoreError, StoredReport};
use crate::model::{Org, Region, Site, SiteInputs};

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u64> for Value {
    /// Revisions and rule numbers: stored as BIGINT, far below 2^63.
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<&Name> for Value {
    fn from(v: &Name) -> Self {
        Value::Text(v.to_string())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A value as its text form (addresses, prefixes, keys, endpoints).
fn text(v: impl ToString) -> Value {
    Value::Text(v.to_string())
}

/// A value as JSON text (sets of prefixes, health).
pub(crate) fn json<T: serde::Serialize>(v: &T) -> Value {
    Value::Text(serde_json::to_string(v).expect("serialising plain data to JSON cannot fail"))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as V};
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(V::Null),
            Value::Int(i) => ToSqlOutput::from(*i),
            Value::Bool(b) => ToSqlOutput::from(*b),
            Value::Text(s) => ToSqlOutput::from(s.as_str()),
        })
    }
}

impl tokio_postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, ToSql};
        // Each variant checks its own column type: `accepts` cannot, it
        // does not see the value.
        let wrong = || format!("a {self:?} cannot be stored in a column of type {ty}").into();
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) if <i64 as ToSql>::accepts(ty) => i.to_sql(ty, out),
            Value::Bool(b) if <bool as ToSql>::accepts(ty) => b.to_sql(ty, out),
            Value::Text(s) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            _ => Err(wrong()),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A row as either database hands it over, read column by column.
pub(crate) trait Row {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn boolean(&self, i: usize) -> Result<bool, StoreError>;
}

fn column_error(i: usize, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("column {i}: {e}"))
}

impl Row for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.get(i).map_err(|e| column_error(i, e))
    }
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.get(i).map_err(|e| column_error(i, e))
    }
    fn boolean(&self, i: usize) -> Result<bool, StoreError> {
        self.get(i).map_err(|e| column_error(i, e))
    }
}

impl Row for tokio_postgres::Row {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.try_get(i).map_err(|e| column_error(i, e))
    }
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(i).map_err(|e| column_error(i, e))
    }
    fn boolean(&self, i: usize) -> Result<bool, StoreError> {
        self.try_get(i).map_err(|e| column_error(i, e))
    }
}

/// Reads a row's columns in order, each named for the error it gives.
struct Reader<'r, R: ?Sized> {
    row: &'r R,
    at: usize,
}

impl<'r, R: Row + ?Sized> Reader<'r, R> {
    fn new(row: &'r R) -> Self {
        Self { row, at: 0 }
    }

    fn next(&mut self) -> usize {
        self.at += 1;
        self.at - 1
    }

    fn opt_text(&mut self) -> Result<Option<String>, StoreError> {
        let i = self.next();
        self.row.text(i)
    }

    fn text(&mut self, what: &str) -> Result<String, StoreError> {
        self.opt_text()?
            .ok_or_else(|| StoreError::Corrupt(format!("{what} is NULL")))
    }

    fn parse<T: FromStr>(&mut self, what: &str) -> Result<T, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        parse(what, &self.text(what)?)
    }

    fn parse_opt<T: FromStr>(&mut self, what: &str) -> Result<Option<T>, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        self.opt_text()?.map(|s| parse(what, &s)).transpose()
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<T, StoreError> {
        from_json(what, &self.text(what)?)
    }

    fn json_opt<T: serde::de::DeserializeOwned>(
        &mut self,
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        self.opt_text()?.map(|s| from_json(what, &s)).transpose()
    }

    fn opt_int(&mut self) -> Result<Option<i64>, StoreError> {
        let i = self.next();
        self.row.int(i)
    }

    fn int(&mut self, what: &str) -> Result<i64, StoreError> {
        self.opt_int()?
            .ok_or_else(|| StoreError::Corrupt(format!("{what} is NULL")))
    }

    fn boolean(&mut self) -> Result<bool, StoreError> {
        let i = self.next();
        self.row.boolean(i)
    }
}

fn parse<T: FromStr>(what: &str, s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("{what} {s:?}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A name read from a column that holds one (a change-log entry, a join).
pub(crate) fn name(what: &str, s: &str) -> Result<Name, StoreError> {
    parse(what, s)
}

// ----- regions ------------------------------------------------------------

pub(crate) const REGION_COLUMNS: &[&str] =
    &["name", "mesh", "ipv4_block", "ipv6_block", "created_at"];

pub(crate) fn region_values(r: &Region) -> Vec<Value> {
    vec![
        (&r.name).into(),
        r.mesh.into(),
        text(r.ipv4_block),
        r.ipv6_block.map(|b| b.to_string()).into(),
        r.created_at.into(),
    ]
}

pub(crate) fn region(row: &(impl Row + ?Sized)) -> Result<Region, StoreError> {
    let mut r = Reader::new(row);
    Ok(Region {
        name: r.parse("region name")?,
        mesh: r.boolean()?,
        ipv4_block: r.parse("ipv4 block")?,
        ipv6_block: r.parse_opt("ipv6 block")?,
        created_at: r.int("region created_at")?,
    })
}

// ----- sites ----------------------------------------------------------------

/// The `sites` table's columns: first the site's inputs (what configs are
/// rendered from, [`SiteInputs`]), then the revision and what agents report.
pub(crate) const SITE_COLUMNS: &[&str] = &[
    "name",
    "region",
    "org",
    "role",
    "state",
    "agentless",
    "lan_prefixes",
    "endpoint",
    "public_key",
    "ipv4",
    "ipv6",
    "credential_hash",
    "created_at",
    "enrolled_at",
    "renumber",
    "revision",
    "render_fingerprint",
    "applied_revision",
    "last_seen",
    "health",
];

/// The columns only an agent's report writes (`Write::Report`); replacing
/// a site leaves them as they are.
pub(crate) const SITE_REPORTED: &[&str] = &["applied_revision", "last_seen", "health"];

/// A site's row, in [`SITE_COLUMNS`] order.
pub(crate) fn site_values(s: &Site) -> Vec<Value> {
    let i: &SiteInputs = s;
    vec![
        (&i.name).into(),
        (&i.region).into(),
        (&i.org).into(),
        i.role.as_str().into(),
        i.state.as_str().into(),
        i.agentless.into(),
        json(&i.lan_prefixes),
        i.endpoint.map(|e| e.to_string()).into(),
        i.public_key.map(|k| k.to_string()).into(),
        text(i.ipv4),
        i.ipv6.map(|a| a.to_string()).into(),
        i.credential_hash.clone().into(),
        i.created_at.into(),
        i.enrolled_at.into(),
        i.renumber.as_ref().map_or(Value::Null, json),
        s.revision.into(),
        s.render_fingerprint.clone().into(),
        s.applied_revision.into(),
        s.last_seen.into(),
        s.health.as_ref().map_or(Value::Null, json),
    ]
}

pub(crate) fn site(row: &(impl Row + ?Sized)) -> Result<Site, StoreError> {
    let mut r = Reader::new(row);
    let inputs = SiteInputs {
        name: r.parse("site name")?,
        region: r.parse("region name")?,
        org: r.parse("organisation name")?,
        role: r.parse::<Role>("role")?,
        state: r.parse::<SiteState>("state")?,
        agentless: r.boolean()?,
        lan_prefixes: r.json("lan_prefixes")?,
        endpoint: r.parse_opt("endpoint")?,
        public_key: r.parse_opt("public key")?,
        ipv4: r.parse("ipv4")?,
        ipv6: r.parse_opt("ipv6")?,
        credential_hash: r.opt_text()?,
        created_at: r.int("site created_at")?,
        enrolled_at: r.opt_int()?,
        renumber: r.json_opt("renumber")?,
    };
    Ok(Site {
        inputs,
        revision: r.int("revision")? as u64,
        render_fingerprint: r.opt_text()?,
        applied_revision: r.int("applied_revision")? as u64,
        last_seen: r.opt_int()?,
        health: r.json_opt("health")?,
    })
}

/// What an agent last reported: `name, applied_revision, last_seen, health`.
pub(crate) const REPORT_COLUMNS: &[&str] = &["name", "applied_revision", "last_seen", "health"];

pub(crate) fn report(row: &(impl Row + ?Sized)) -> Result<StoredReport, StoreError> {
    let mut r = Reader::new(row);
    Ok(StoredReport {
        site: r.parse("site name")?,
        applied_revision: r.int("applied_revision")? as u64,
        last_seen: r.int("last_seen")?,
        health: r.json_opt("health")?,
    })
}

// ----- tokens, organisations, audit ---------------------------------------

pub(crate) const ENROL_TOKEN_COLUMNS: &[&str] =
    &["site", "created_at", "expires_at", "used_at", "sealed"];

pub(crate) fn enrol_token(row: &(impl Row + ?Sized)) -> Result<EnrolToken, StoreError> {
    let mut r = Reader::new(row);
    Ok(EnrolToken {
        site: r.parse("site name")?,
        created_at: r.int("token created_at")?,
        expires_at: r.int("token expires_at")?,
        used_at: r.opt_int()?,
        sealed: r.opt_text()?,
    })
}

pub(crate) fn network(row: &(impl Row + ?Sized)) -> Result<super::StoredNetwork, StoreError> {
    let mut r = Reader::new(row);
    Ok(super::StoredNetwork {
        fingerprint: r.text("network fingerprint")?,
        settings: r.text("network settings")?,
        set_at: r.int("network set_at")?,
    })
}

pub(crate) const ADMIN_TOKEN_COLUMNS: &[&str] = &["id", "description", "created_at", "org"];

pub(crate) fn admin_token(row: &(impl Row + ?Sized)) -> Result<AdminToken, StoreError> {
    let mut r = Reader::new(row);
    Ok(AdminToken {
        id: r.text("token id")?,
        description: r.text("token description")?,
        created_at: r.int("token created_at")?,
        org: r.parse_opt("organisation name")?,
    })
}

pub(crate) const ORG_COLUMNS: &[&str] = &["name", "description", "created_at", "lan_delegated"];

pub(crate) fn org_values(o: &Org) -> Vec<Value> {
    vec![
        (&o.name).into(),
        o.description.as_str().into(),
        o.created_at.into(),
        json(&o.delegated),
    ]
}

pub(crate) fn org(row: &(impl Row + ?Sized)) -> Result<Org, StoreError> {
    let mut r = Reader::new(row);
    Ok(Org {
        name: r.parse("organisation name")?,
        description: r.text("organisation description")?,
        created_at: r.int("organisation created_at")?,
        delegated: r.json("organisation lan_delegated")?,
    })
}

pub(crate) const AUDIT_COLUMNS: &[&str] = &["id", "at", "actor", "action", "object", "detail"];

pub(crate) fn audit_entry(row: &(impl Row + ?Sized)) -> Result<AuditEntry, StoreError> {
    let mut r = Reader::new(row);
    Ok(AuditEntry {
        id: r.int("audit id")?,
        at: r.int("audit at")?,
        actor: r.text("audit actor")?,
        action: r.text("audit action")?,
        object: r.text("audit object")?,
        detail: r.opt_text()?,
    })
}

// ----- policy ---------------------------------------------------------------

/// `443,8000-8080` (empty: all ports).
fn ports(ports: &[wardnet_common::policy::PortRange]) -> Value {
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    Value::Text(ports.join(","))
}

fn parse_ports(text: &str) -> Result<Vec<wardnet_common::policy::PortRange>, StoreError> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| parse("policy ports", p))
        .collect()
}

pub(crate) const RULE_COLUMNS: &[&str] = &[
    "id",
    "source",
    "target",
    "proto",
    "ports",
    "description",
    "org",
    "created_at",
];

pub(crate) fn rule_values(v: &RuleView) -> Vec<Value> {
    let r = &v.rule;
    vec![
        r.id.into(),
        text(&r.from),
        text(&r.to),
        r.proto.as_str().into(),
        ports(&r.ports),
        r.description.as_str().into(),
        (&v.org).into(),
        v.created_at.into(),
    ]
}

pub(crate) fn rule(row: &(impl Row + ?Sized)) -> Result<RuleView, StoreError> {
    let mut r = Reader::new(row);
    let mut v = RuleView {
        rule: Rule {
            id: r.int("rule id")? as u64,
            from: r.parse("rule source")?,
            to: r.parse("rule target")?,
            proto: r.parse("rule protocol")?,
            ports: parse_ports(&r.text("rule ports")?)?,
            description: r.text("rule description")?,
        },
        org: r.parse("rule organisation")?,
        created_at: r.int("rule created_at")?,
    };
    // A rule into a service is its organisation's: one written by an older
    // controller (names were unique network-wide) names it unqualified.
    if let Target::Service(s) = &mut v.rule.to {
        s.org.get_or_insert_with(|| v.org.clone());
    }
    Ok(v)
}

pub(crate) const SERVICE_COLUMNS: &[&str] = &[
    "name",
    "site",
    "prefixes",
    "proto",
    "ports",
    "shared_with",
    "description",
    "org",
    "created_at",
];

pub(crate) fn service_values(v: &ServiceView) -> Vec<Value> {
    let s = &v.service;
    vec![
        (&s.name).into(),
        (&s.site).into(),
        json(&s.prefixes),
        s.proto.as_str().into(),
        ports(&s.ports),
        json(&s.shared_with),
        s.description.as_str().into(),
        (&v.org).into(),
        v.created_at.into(),
    ]
}

pub(crate) fn service(row: &(impl Row + ?Sized)) -> Result<ServiceView, StoreError> {
    let mut r = Reader::new(row);
    Ok(ServiceView {
        service: Service {
            name: r.parse("service name")?,
            site: r.parse("service site")?,
            prefixes: r.json("service prefixes")?,
            proto: r.parse("service protocol")?,
            ports: parse_ports(&r.text("service ports")?)?,
            shared_with: r.json("service sharing")?,
            description: r.text("service description")?,
        },
        org: r.parse("service organisation")?,
        created_at: r.int("service created_at")?,
    })
}
