//! The PostgreSQL schema: migrations, applied in order, each once. A new column
//! of a stored type is one more migration here and in the other store's
//! schema, and one line in each of [`super::super::codec`]'s lists.

/// Schema migrations, applied in order; the index + 1 is the version.
pub(super) const MIGRATIONS: &[&str] = &[
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
ALTER TABLE policy_services DROP CONSTRAINT "policy_services.name";
ALTER TABLE policy_services ADD CONSTRAINT "policy_services.name" PRIMARY KEY (org, name);
UPDATE policy_rules SET target = 'service:' || org || '/' || substr(target, 9)
    WHERE target LIKE 'service:%' AND strpos(target, '/') = 0;
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
    set_at      BIGINT NOT NULL
);
"#,
];
