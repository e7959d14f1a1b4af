//! Behaviour every `Store` must have, run against SQLite and against
//! PostgreSQL (a throwaway server per test, `wardnet_pgtest`).

use std::collections::BTreeSet;
use std::sync::Arc;

use wardnet_common::wire::SiteState;
use wardnet_common::{PrivateKey, Role};

use super::*;
use crate::model::{Region, Site};
use wardnet_common::Name;

fn region(name: &str, block: &str) -> Region {
    Region {
        name: name.parse().expect("valid name"),
        mesh: false,
        ipv4_block: block.parse().expect("valid block"),
        ipv6_block: None,
        created_at: 1,
    }
}

fn site(name: &str, region: &str, ip: &str) -> Site {
    Site {
        inputs: crate::model::SiteInputs {
            name: name.parse().expect("valid name"),
            region: region.parse().expect("valid name"),
            org: crate::model::default_org(),
            role: Role::Spoke,
            state: SiteState::Pending,
            agentless: false,
            lan_prefixes: BTreeSet::new(),
            endpoint: None,
            public_key: None,
            ipv4: ip.parse().expect("valid address"),
            ipv6: None,
            created_at: 2,
            enrolled_at: None,
            credential_hash: None,
        },
        revision: 0,
        render_fingerprint: None,
        applied_revision: 0,
        last_seen: None,
        health: None,
    }
}

async fn unique_constraints_name_the_clash(s: &dyn Store) {
    s.commit(vec![Write::InsertRegion(region("north", "100.64.0.0/20"))])
        .await
        .expect("first region");
    let e = s
        .commit(vec![Write::InsertRegion(region("south", "100.64.0.0/20"))])
        .await
        .expect_err("same block");
    assert!(
        matches!(&e, StoreError::Conflict { what } if what.contains("ipv4_block")),
        "{e:?}"
    );
    s.commit(vec![Write::InsertSite(site("a", "north", "100.64.0.1"))])
        .await
        .expect("first site");
    let e = s
        .commit(vec![Write::InsertSite(site("b", "north", "100.64.0.1"))])
        .await
        .expect_err("same address");
    assert!(
        matches!(&e, StoreError::Conflict { what } if what == "sites.ipv4"),
        "{e:?}"
    );
    let key = PrivateKey::generate().public_key();
    let mut a = site("a", "north", "100.64.0.1");
    a.public_key = Some(key);
    s.commit(vec![Write::UpdateSite(a)]).await.expect("key a");
    let mut c = site("c", "north", "100.64.0.3");
    c.public_key = Some(key);
    let e = s
        .commit(vec![Write::InsertSite(c)])
        .await
        .expect_err("same key");
    assert!(
        matches!(&e, StoreError::Conflict { what } if what == "sites.public_key"),
        "{e:?}"
    );
}

async fn a_failed_batch_leaves_nothing_behind(s: &dyn Store) {
    s.commit(vec![Write::InsertRegion(region("north", "100.64.0.0/20"))])
        .await
        .expect("region");
    let e = s
        .commit(vec![
            Write::InsertSite(site("a", "north", "100.64.0.1")),
            Write::InsertSite(site("b", "north", "100.64.0.1")),
        ])
        .await;
    assert!(e.is_err());
    let snap = s.load().await.expect("load");
    assert!(
        snap.sites.is_empty(),
        "half a batch was stored: {:?}",
        snap.sites
    );
}

async fn concurrent_batches_fail_independently(s: Arc<dyn Store>) {
    s.commit(vec![Write::InsertRegion(region("north", "100.64.0.0/20"))])
        .await
        .expect("region");
    // 50 good batches and 50 that conflict with them, all queued at once
    // so the writer groups them.
    let mut pending = Vec::new();
    for i in 0..50u8 {
        let ip = format!("100.64.0.{}", i + 1);
        pending.push((
            true,
            s.submit(vec![Write::InsertSite(site(
                &format!("ok-{i}"),
                "north",
                &ip,
            ))]),
        ));
        pending.push((
            false,
            s.submit(vec![Write::InsertSite(site(
                &format!("dup-{i}"),
                "north",
                &ip,
            ))]),
        ));
    }
    for (ok, p) in pending {
        assert_eq!(p.await.is_ok(), ok);
    }
    assert_eq!(s.load().await.expect("load").sites.len(), 50);
}

async fn tokens_are_single_use_and_expire(s: &dyn Store) {
    s.commit(vec![
        Write::InsertRegion(region("north", "100.64.0.0/20")),
        Write::InsertSite(site("a", "north", "100.64.0.1")),
        Write::InsertEnrolToken {
            site: "a".parse().expect("name"),
            hash: "h1".into(),
            created_at: 10,
            expires_at: 100,
        },
    ])
    .await
    .expect("setup");
    let t = s.enrol_token("h1").await.expect("read").expect("exists");
    assert_eq!(t.used_at, None);
    let consume = |now| Write::ConsumeEnrolToken {
        hash: "h1".into(),
        site: "a".parse().expect("name"),
        now,
    };
    assert!(
        matches!(
            s.commit(vec![consume(100)]).await,
            Err(StoreError::Precondition(_))
        ),
        "expired"
    );
    let (a, b) = tokio::join!(s.submit(vec![consume(50)]), s.submit(vec![consume(51)]));
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one racing redemption wins: {a:?} {b:?}"
    );
    assert!(s
        .enrol_token("h1")
        .await
        .expect("read")
        .expect("exists")
        .used_at
        .is_some());
    assert!(s.enrol_token("nope").await.expect("read").is_none());
}

/// Organisations: `default` exists from the migration; sites and scoped
/// tokens must name an existing one and hold it in place; audit entries
/// filter by it.
async fn organisations_are_referred_to_and_held(s: &dyn Store) {
    let org = |n: &str| crate::model::Org {
        name: n.parse().expect("name"),
        description: format!("{n} trust"),
        created_at: 3,
    };
    let names = |orgs: Vec<crate::model::Org>| -> Vec<String> {
        orgs.into_iter().map(|o| o.name.to_string()).collect()
    };
    assert_eq!(names(s.orgs().await.expect("orgs")), ["default"]);
    s.commit(vec![
        Write::InsertOrg(org("trust-a")),
        Write::InsertRegion(region("north", "100.64.0.0/20")),
    ])
    .await
    .expect("org");
    let dup = s.commit(vec![Write::InsertOrg(org("trust-a"))]).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");

    let mut lost = site("gp-lost", "north", "100.64.0.9");
    lost.org = "no-such-org".parse().expect("name");
    match s.commit(vec![Write::InsertSite(lost)]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "sites.org"),
        other => panic!("a site in a missing organisation: {other:?}"),
    }
    let mut gp = site("gp-a", "north", "100.64.0.10");
    gp.org = "trust-a".parse().expect("name");
    s.commit(vec![Write::InsertSite(gp.clone())])
        .await
        .expect("site");
    let loaded = s.load().await.expect("load");
    assert_eq!(loaded.sites, vec![gp.clone()], "the organisation is stored");
    match s.commit(vec![Write::DeleteOrg(gp.org.clone())]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "sites.org"),
        other => panic!("deleting an organisation with sites: {other:?}"),
    }
    s.commit(vec![
        Write::DeleteSite(gp.name.clone()),
        Write::InsertAdminToken {
            id: "tok-a".into(),
            hash: "scoped".into(),
            description: "trust-a IT".into(),
            created_at: 4,
            org: Some(gp.org.clone()),
        },
        Write::Audit(NewAudit {
            at: 4,
            actor: "local".into(),
            action: "token.create".into(),
            object: "tok-a".into(),
            detail: None,
            org: Some(gp.org.clone()),
        }),
        Write::Audit(NewAudit {
            at: 5,
            actor: "local".into(),
            action: "region.create".into(),
            object: "north".into(),
            detail: None,
            org: None,
        }),
    ])
    .await
    .expect("token");
    assert_eq!(
        s.admin_token("scoped")
            .await
            .expect("read")
            .and_then(|t| t.org),
        Some(gp.org.clone())
    );
    let bad = s
        .commit(vec![Write::InsertAdminToken {
            id: "tok-x".into(),
            hash: "x".into(),
            description: "x".into(),
            created_at: 4,
            org: Some("no-such-org".parse().expect("name")),
        }])
        .await;
    assert!(
        matches!(&bad, Err(StoreError::Conflict { what }) if what == "admin_tokens.org"),
        "{bad:?}"
    );
    let theirs = s.audit(10, None, Some(&gp.org)).await.expect("audit");
    assert_eq!(
        theirs.iter().map(|e| e.object.as_str()).collect::<Vec<_>>(),
        ["tok-a"]
    );
    assert_eq!(s.audit(10, None, None).await.expect("audit").len(), 2);
    match s.commit(vec![Write::DeleteOrg(gp.org.clone())]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "admin_tokens.org"),
        other => panic!("deleting an organisation with a token: {other:?}"),
    }
    s.commit(vec![Write::InsertOrg(org("empty"))])
        .await
        .expect("org");
    s.commit(vec![Write::DeleteOrg("empty".parse().expect("name"))])
        .await
        .expect("an unused organisation goes");
    assert_eq!(names(s.orgs().await.expect("orgs")), ["default", "trust-a"]);
}

/// Policy rules and services: ids and names are unique, a rule holds its
/// organisation, a service goes with its site, and both read back as
/// written.
async fn policy_rules_and_services(s: &dyn Store) {
    use wardnet_common::policy::{Rule, Service, SharedWith};
    let org: Name = "trust-a".parse().expect("name");
    s.commit(vec![
        Write::InsertOrg(crate::model::Org {
            name: org.clone(),
            description: String::new(),
            created_at: 1,
        }),
        Write::InsertRegion(region("north", "100.64.0.0/20")),
        Write::InsertSite(site("lth-1", "north", "100.64.0.10")),
    ])
    .await
    .expect("setup");
    let rule = RuleView {
        rule: Rule {
            id: 1,
            from: "region:north".parse().expect("source"),
            to: "org:trust-a".parse().expect("target"),
            proto: "tcp".parse().expect("proto"),
            ports: vec![
                "443".parse().expect("port"),
                "8000-8080".parse().expect("range"),
            ],
            description: "referrals".into(),
        },
        org: org.clone(),
        created_at: 2,
    };
    let service = ServiceView {
        service: Service {
            name: "pacs".parse().expect("name"),
            site: "lth-1".parse().expect("name"),
            prefixes: ["100.64.0.10/32".parse().expect("prefix")].into(),
            proto: "any".parse().expect("proto"),
            ports: Vec::new(),
            shared_with: SharedWith::Orgs(["gp-b".parse().expect("name")].into()),
            description: String::new(),
        },
        org: "default".parse().expect("name"),
        created_at: 3,
    };
    s.commit(vec![
        Write::InsertRule(rule.clone()),
        Write::InsertService(service.clone()),
    ])
    .await
    .expect("policy");
    let p = s.load().await.expect("read").policy;
    assert_eq!(p.rules, vec![rule.clone()]);
    assert_eq!(p.next_rule_id, 2);
    assert_eq!(p.services, vec![service.clone()]);
    match s.commit(vec![Write::InsertRule(rule.clone())]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "policy_rules.id"),
        other => panic!("a second rule 1: {other:?}"),
    }
    let mut stray = rule.clone();
    stray.rule.id = 2;
    stray.org = "no-such-org".parse().expect("name");
    match s.commit(vec![Write::InsertRule(stray)]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "policy_rules.org"),
        other => panic!("a rule for a missing organisation: {other:?}"),
    }
    let dup = s.commit(vec![Write::InsertService(service.clone())]).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    match s.commit(vec![Write::DeleteOrg(org.clone())]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "policy_rules.org"),
        other => panic!("deleting an organisation a rule admits into: {other:?}"),
    }
    s.commit(vec![
        Write::DeleteSite("lth-1".parse().expect("name")),
        Write::DeleteRule(1),
    ])
    .await
    .expect("delete");
    let after = s.load().await.expect("read").policy;
    assert_eq!((after.rules.len(), after.services.len()), (0, 0));
    assert_eq!(after.next_rule_id, 2, "rule 1's number is not given again");
    s.commit(vec![Write::DeleteOrg(org)])
        .await
        .expect("nothing holds it now");
}

async fn audit_and_admin_tokens(s: &dyn Store) {
    s.commit(vec![
        Write::InsertAdminToken {
            id: "tok-1".into(),
            hash: "ah".into(),
            description: "ops".into(),
            created_at: 5,
            org: None,
        },
        Write::Audit(NewAudit {
            at: 6,
            actor: "tok-1".into(),
            action: "region.create".into(),
            object: "north".into(),
            detail: None,
            org: None,
        }),
        Write::Audit(NewAudit {
            at: 7,
            actor: "tok-1".into(),
            action: "region.delete".into(),
            object: "north".into(),
            detail: Some("x".into()),
            org: None,
        }),
    ])
    .await
    .expect("write");
    assert_eq!(
        s.admin_token("ah").await.expect("read").map(|t| t.id),
        Some("tok-1".into())
    );
    assert!(s.admin_token("other").await.expect("read").is_none());
    let log = s.audit(10, None, None).await.expect("audit");
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["region.delete", "region.create"]
    );
    let older = s.audit(10, Some(log[0].id), None).await.expect("audit");
    assert_eq!(older.len(), 1);
}

async fn reports_do_not_clobber_and_are_not_clobbered(s: &dyn Store) {
    s.commit(vec![
        Write::InsertRegion(region("north", "100.64.0.0/20")),
        Write::InsertSite(site("a", "north", "100.64.0.1")),
    ])
    .await
    .expect("setup");
    s.commit(vec![Write::Report {
        site: "a".parse().expect("name"),
        applied_revision: 3,
        last_seen: 99,
        health: None,
    }])
    .await
    .expect("report");
    // An admin update with a stale copy of the site keeps the report.
    let mut a = site("a", "north", "100.64.0.1");
    a.lan_prefixes
        .insert("10.9.0.0/24".parse().expect("prefix"));
    s.commit(vec![
        Write::UpdateSite(a),
        Write::SetRevision {
            site: "a".parse().expect("name"),
            revision: 4,
            fingerprint: Some("x".into()),
        },
    ])
    .await
    .expect("update");
    let got = &s.load().await.expect("load").sites[0];
    assert_eq!(
        (got.applied_revision, got.last_seen, got.revision),
        (3, Some(99), 4)
    );
    assert_eq!(got.lan_prefixes.len(), 1);
    // An older report (an agent that moved to another replica, whose old
    // replica persists late) does not move the newer one back.
    s.commit(vec![Write::Report {
        site: "a".parse().expect("name"),
        applied_revision: 2,
        last_seen: 50,
        health: None,
    }])
    .await
    .expect("late report");
    let got = &s.load().await.expect("load").sites[0];
    assert_eq!((got.applied_revision, got.last_seen), (3, Some(99)));
}

fn names<T>(v: &[(Name, Option<T>)]) -> Vec<String> {
    v.iter().map(|(n, _)| n.to_string()).collect()
}

/// The change log: a change commits only on top of the head it was built
/// on, every batch that changes regions or sites moves the head by one,
/// and `changes_since` gives the rows those changes named, deleted ones as
/// `None`.
async fn the_change_log_orders_changes(s: &dyn Store) {
    assert_eq!(s.head().await.expect("head"), 0);
    assert_eq!(s.load().await.expect("load").seq, 0);
    let seq = s
        .submit_change(
            0,
            vec![Write::InsertRegion(region("north", "100.64.0.0/20"))],
        )
        .await
        .expect("first change");
    assert_eq!(seq, 1);
    let e = s
        .submit_change(
            0,
            vec![Write::InsertRegion(region("south", "100.64.16.0/20"))],
        )
        .await
        .expect_err("built on an old head");
    assert!(matches!(e, StoreError::Stale { base: 0, head: 1 }), "{e:?}");
    assert_eq!(e.kind(), "stale");
    assert_eq!(
        s.load().await.expect("load").regions.len(),
        1,
        "the stale change left nothing"
    );
    // A plain batch that changes a site is logged too.
    s.commit(vec![
        Write::InsertSite(site("a", "north", "100.64.0.1")),
        Write::InsertSite(site("b", "north", "100.64.0.2")),
    ])
    .await
    .expect("sites");
    // One that changes neither is not.
    s.commit(vec![Write::InsertAdminToken {
        id: "t".into(),
        hash: "h".into(),
        description: "d".into(),
        created_at: 1,
        org: None,
    }])
    .await
    .expect("token");
    assert_eq!(s.head().await.expect("head"), 2);
    let CatchUp::Changes(c) = s.changes_since(0).await.expect("changes") else {
        panic!("the log reaches back to 0");
    };
    assert_eq!(c.head, 2);
    assert_eq!(names(&c.regions), ["north"]);
    assert_eq!(names(&c.sites), ["a", "b"]);
    assert!(c.sites.iter().all(|(_, row)| row.is_some()));
    // Another change of site a, then its deletion: as of the head, gone.
    let mut a = site("a", "north", "100.64.0.1");
    a.lan_prefixes
        .insert("10.1.0.0/24".parse().expect("prefix"));
    assert_eq!(
        s.submit_change(2, vec![Write::UpdateSite(a)])
            .await
            .expect("update"),
        3
    );
    assert_eq!(
        s.submit_change(3, vec![Write::DeleteSite("a".parse().expect("name"))])
            .await
            .expect("delete"),
        4
    );
    let CatchUp::Changes(c) = s.changes_since(2).await.expect("changes") else {
        panic!("the log reaches back to 2");
    };
    assert_eq!((c.head, names(&c.sites)), (4, vec!["a".to_owned()]));
    assert!(c.sites[0].1.is_none(), "deleted");
    assert!(c.regions.is_empty());
    let CatchUp::Changes(c) = s.changes_since(4).await.expect("changes") else {
        panic!("at the head");
    };
    assert_eq!(c.head, 4);
    assert!(c.sites.is_empty() && c.regions.is_empty());
}

/// Many changes built on the same head at once (replicas racing): exactly
/// one commits, the others are stale and store nothing.
async fn racing_changes_commit_one(stores: &[Arc<dyn Store>]) {
    let head = stores[0].head().await.expect("head");
    let mut pending = Vec::new();
    for i in 0..20u8 {
        let s = &stores[usize::from(i) % stores.len()];
        pending.push(s.submit_change(
            head,
            vec![Write::InsertRegion(region(
                &format!("r{i}"),
                &format!("100.{}.0.0/16", 64 + i),
            ))],
        ));
    }
    let results = futures::future::join_all(pending).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, StoreError::Stale { .. })));
    assert_eq!(stores[0].load().await.expect("load").regions.len(), 1);
    assert_eq!(stores[0].head().await.expect("head"), head + 1);
}

/// Upkeep prunes the log to its last entries; a reader behind them is told
/// to load everything, one at the kept part gets changes. Long-expired
/// enrolment tokens go.
async fn upkeep_prunes_the_log_and_sweeps_tokens(s: &dyn Store) {
    s.commit(vec![Write::InsertRegion(region("north", "100.64.0.0/20"))])
        .await
        .expect("region");
    for i in 1..=4u8 {
        s.commit(vec![
            Write::InsertSite(site(&format!("s{i}"), "north", &format!("100.64.0.{i}"))),
            Write::InsertEnrolToken {
                site: format!("s{i}").parse().expect("name"),
                hash: format!("h{i}"),
                created_at: 0,
                expires_at: i64::from(i) * 10,
            },
        ])
        .await
        .expect("site");
    }
    assert_eq!(s.head().await.expect("head"), 5);
    // Tokens that expired before now - TOKEN_SWEEP_AFTER_SECS go: h1, h2.
    let now = TOKEN_SWEEP_AFTER_SECS + 25;
    let m = s.maintain(now, 2).await.expect("upkeep");
    assert_eq!(
        m,
        Some(Maintenance {
            log_entries_pruned: 3,
            tokens_swept: 2,
        })
    );
    assert!(s.enrol_token("h2").await.expect("read").is_none());
    assert!(s.enrol_token("h3").await.expect("read").is_some());
    match s.changes_since(1).await.expect("changes") {
        CatchUp::Reload(snap) => {
            assert_eq!((snap.seq, snap.sites.len()), (5, 4));
        }
        CatchUp::Changes(c) => panic!("pruned entries were given: {c:?}"),
    }
    match s.changes_since(3).await.expect("changes") {
        CatchUp::Changes(c) => assert_eq!(names(&c.sites), ["s3", "s4"]),
        CatchUp::Reload(_) => panic!("the log still reaches back to 3"),
    }
}

/// Wrapped in a fault injector, a store fails each way on demand with the
/// typed error callers map to 503, keeps nothing of the failed batch (not
/// even the writes that ran before the failing one), and works again once
/// healed.
async fn injected_faults_store_nothing_and_heal(inner: Arc<dyn Store>) {
    use super::faulty::{Fault, FaultyStore};
    let s = FaultyStore::new(inner);
    s.commit(vec![Write::InsertRegion(region("north", "100.64.0.0/20"))])
        .await
        .expect("healthy");
    for (i, fault) in [Fault::Begin, Fault::Write, Fault::Commit]
        .into_iter()
        .enumerate()
    {
        s.set(fault);
        let name = format!("gp-{i}");
        let batch = vec![
            Write::InsertSite(site(&name, "north", &format!("100.64.0.{}", i + 10))),
            Write::InsertEnrolToken {
                site: name.parse().expect("name"),
                hash: format!("h{i}"),
                created_at: 1,
                expires_at: 100,
            },
            Write::Audit(NewAudit {
                at: 1,
                actor: "t".into(),
                action: "site.create".into(),
                object: name.clone(),
                detail: None,
                org: None,
            }),
        ];
        let err = s.commit(batch.clone()).await.expect_err("injected");
        assert!(
            matches!(err, StoreError::Unavailable(_) | StoreError::Commit(_)),
            "{fault:?}: {err:?}"
        );
        assert!(matches!(err.kind(), "unavailable" | "commit"));
        let snap = s.load().await.expect("load");
        assert!(snap.sites.is_empty(), "{fault:?} left a site behind");
        assert_eq!(s.enrol_token(&format!("h{i}")).await.expect("read"), None);
        // One audit entry per earlier, healed round; none from this one.
        assert_eq!(s.audit(10, None, None).await.expect("audit").len(), i);
        s.set(Fault::None);
        s.commit(batch).await.expect("healed");
        s.commit(vec![Write::DeleteSite(name.parse().expect("name"))])
            .await
            .expect("healed");
        assert_eq!(s.audit(10, None, None).await.expect("audit").len(), i + 1);
    }
}

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(&dir.path().join("sub/wardnet.db")).expect("open");
    (dir, Arc::new(s))
}

#[tokio::test]
async fn sqlite_unique_constraints_name_the_clash() {
    let (_d, s) = sqlite();
    unique_constraints_name_the_clash(&*s).await;
}

#[tokio::test]
async fn sqlite_failed_batch_leaves_nothing() {
    let (_d, s) = sqlite();
    a_failed_batch_leaves_nothing_behind(&*s).await;
}

#[tokio::test]
async fn sqlite_concurrent_batches_fail_independently() {
    let (_d, s) = sqlite();
    concurrent_batches_fail_independently(s).await;
}

#[tokio::test]
async fn sqlite_injected_faults_store_nothing_and_heal() {
    let (_d, s) = sqlite();
    injected_faults_store_nothing_and_heal(s).await;
}

#[tokio::test]
async fn sqlite_tokens_single_use() {
    let (_d, s) = sqlite();
    tokens_are_single_use_and_expire(&*s).await;
}

#[tokio::test]
async fn sqlite_organisations() {
    let (_d, s) = sqlite();
    organisations_are_referred_to_and_held(&*s).await;
}

#[tokio::test]
async fn sqlite_policy() {
    let (_d, s) = sqlite();
    policy_rules_and_services(&*s).await;
}

#[tokio::test]
async fn sqlite_audit_and_admin_tokens() {
    let (_d, s) = sqlite();
    audit_and_admin_tokens(&*s).await;
}

#[tokio::test]
async fn sqlite_reports_are_separate_from_updates() {
    let (_d, s) = sqlite();
    reports_do_not_clobber_and_are_not_clobbered(&*s).await;
}

#[tokio::test]
async fn sqlite_reopen_keeps_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.db");
    {
        let s = SqliteStore::open(&path).expect("open");
        s.commit(vec![Write::InsertRegion(region("north", "100.64.0.0/20"))])
            .await
            .expect("write");
    }
    let s = SqliteStore::open(&path).expect("reopen");
    assert_eq!(s.load().await.expect("load").regions.len(), 1);
}

#[tokio::test]
async fn sqlite_the_change_log_orders_changes() {
    let (_d, s) = sqlite();
    the_change_log_orders_changes(&*s).await;
}

#[tokio::test]
async fn sqlite_racing_changes_commit_one() {
    let (_d, s) = sqlite();
    racing_changes_commit_one(&[s]).await;
}

#[tokio::test]
async fn sqlite_upkeep_prunes_the_log_and_sweeps_tokens() {
    let (_d, s) = sqlite();
    upkeep_prunes_the_log_and_sweeps_tokens(&*s).await;
}

/// A throwaway PostgreSQL server and a store on it (`None`: skipped).
async fn postgres(test: &str) -> Option<(wardnet_pgtest::TempPostgres, Arc<dyn Store>)> {
    let pg = wardnet_pgtest::start_or_skip(test)?;
    let s = PostgresStore::open(&pg_settings(&pg)).await.expect("open");
    Some((pg, Arc::new(s)))
}

fn pg_settings(pg: &wardnet_pgtest::TempPostgres) -> PostgresSettings {
    PostgresSettings {
        url: pg.url("postgres"),
        password: None,
        pool_size: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unique_constraints_name_the_clash() {
    let Some((_pg, s)) = postgres("postgres_unique_constraints_name_the_clash").await else {
        return;
    };
    unique_constraints_name_the_clash(&*s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failed_batch_leaves_nothing() {
    let Some((_pg, s)) = postgres("postgres_failed_batch_leaves_nothing").await else {
        return;
    };
    a_failed_batch_leaves_nothing_behind(&*s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_batches_fail_independently() {
    let Some((_pg, s)) = postgres("postgres_concurrent_batches_fail_independently").await else {
        return;
    };
    concurrent_batches_fail_independently(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_injected_faults_store_nothing_and_heal() {
    let Some((_pg, s)) = postgres("postgres_injected_faults_store_nothing_and_heal").await else {
        return;
    };
    injected_faults_store_nothing_and_heal(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tokens_single_use() {
    let Some((_pg, s)) = postgres("postgres_tokens_single_use").await else {
        return;
    };
    tokens_are_single_use_and_expire(&*s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_organisations() {
    let Some((_pg, s)) = postgres("postgres_organisations").await else {
        return;
    };
    organisations_are_referred_to_and_held(&*s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_policy() {
    let Some((_pg, s)) = postgres("postgres_policy").await else {
        return;
    };
    policy_rules_and_services(&*s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_audit_and_admin_tokens() {
    let Some((_pg, s)) = postgres("postgres_audit_and_admin_tokens").await else {
        return;
    };
    audit_and_admin_tokens(&*s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reports_are_separate_from_updates() {
    let Some((_pg, s)) = postgres("postgres_reports_are_separate_from_updates").await else {
        return;
    };
    reports_do_not_clobber_and_are_not_clobbered(&*s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_change_log_orders_changes() {
    let Some((_pg, s)) = postgres("postgres_the_change_log_orders_changes").await else {
        return;
    };
    the_change_log_orders_changes(&*s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upkeep_prunes_the_log_and_sweeps_tokens() {
    let Some((_pg, s)) = postgres("postgres_upkeep_prunes_the_log_and_sweeps_tokens").await else {
        return;
    };
    upkeep_prunes_the_log_and_sweeps_tokens(&*s).await;
}

/// Three stores on one database (three replicas): racing changes commit
/// one; a change through one is announced to the others' `heads`; two
/// upkeeps at once run once (the advisory lock); and migrations run by
/// several openers at once apply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_share_one_log() {
    let Some(pg) = wardnet_pgtest::start_or_skip("postgres_replicas_share_one_log") else {
        return;
    };
    let settings = pg_settings(&pg);
    let (a, b, c) = tokio::join!(
        PostgresStore::open(&settings),
        PostgresStore::open(&settings),
        PostgresStore::open(&settings)
    );
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(a.expect("open a")),
        Arc::new(b.expect("open b")),
        Arc::new(c.expect("open c")),
    ];
    racing_changes_commit_one(&stores).await;
    let mut heads = stores[2].heads().expect("PostgreSQL announces heads");
    let seq = stores[0]
        .submit_change(
            1,
            vec![Write::InsertRegion(region("far", "100.100.0.0/16"))],
        )
        .await
        .expect("change through a");
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        heads.wait_for(|h| *h >= seq),
    )
    .await
    .expect("announced within 2 s")
    .expect("listener alive");
    let (x, y) = tokio::join!(stores[0].maintain(1, 10), stores[1].maintain(1, 10));
    let ran = [x.expect("upkeep a"), y.expect("upkeep b")];
    assert!(ran.iter().any(Option::is_some), "{ran:?}");
}
