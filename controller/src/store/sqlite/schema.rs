//! The SQLite schema: migrations, applied in order, each once. A new column
//! of a stored type is one more migration here and in the other store's
//! schema, and one line in each of [`super::super::codec`]'s lists.

/// Schema migrations, applied in order; the index + 1 is the version.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // The LAN address space the NOC delegates to each organisation (a
    // JSON list of prefixes; none until the NOC delegates some).
    r#"
ALTER TABLE orgs ADD COLUMN lan_delegated TEXT NOT NULL DEFAULT '[]';
"#,
    // A site moving into its organisation's overlay block: its old
    // addresses and the agents that must apply the new ones (JSON; NULL
    // when none is under way).
    r#"
ALTER TABLE sites ADD COLUMN renumber TEXT;
"#,
    // Services are named within their organisation, and rules name them
    // as ORG/NAME (a rule into a service is its organisation's).
    r#"
CREATE TABLE policy_services_by_org (
    name        TEXT NOT NULL,
    site        TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
    prefixes    TEXT NOT NULL,
    proto       TEXT NOT NULL,
    ports       TEXT NOT NULL,
    shared_with TEXT NOT NULL,
    description TEXT NOT NULL,
    org         TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (org, name)
);
INSERT INTO policy_services_by_org SELECT name, site, prefixes, proto, ports, shared_with, description, org, created_at FROM policy_services;
DROP TABLE policy_services;
ALTER TABLE policy_services_by_org RENAME TO policy_services;
UPDATE policy_rules SET target = 'service:' || org || '/' || substr(target, 9)
    WHERE target LIKE 'service:%' AND instr(target, '/') = 0;
"#,
    // A used enrolment token keeps the credential it gave, sealed with
    // the token: the same enrolment again gets the same answer.
    r#"
ALTER TABLE enrol_tokens ADD COLUMN sealed TEXT;
"#,
    // The [network] settings configs are rendered with (those of the
    // replica that started last): a replica with others knows it is out
    // of date.
    r#"
CREATE TABLE network_settings (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT NOT NULL,
    settings    TEXT NOT NULL,
    set_at      INTEGER NOT NULL
);
"#,
];
