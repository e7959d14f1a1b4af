//! Behaviour every `Store` must have. Run here against SQLite; a PostgreSQL
//! store runs the same functions.

use std::collections::BTreeSet;
use std::sync::Arc;

use wardnet_common::wire::SiteState;
use wardnet_common::{PrivateKey, Role};

use super::*;
use crate::model::{Region, Site};

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
        name: name.parse().expect("valid name"),
        region: region.parse().expect("valid name"),
        role: Role::Spoke,
        state: SiteState::Pending,
        agentless: false,
        lan_prefixes: BTreeSet::new(),
        endpoint: None,
        public_key: None,
        ipv4: ip.parse().expect("valid address"),
        ipv6: None,
        revision: 0,
        render_fingerprint: None,
        applied_revision: 0,
        created_at: 2,
        enrolled_at: None,
        last_seen: None,
        health: None,
        credential_hash: None,
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

async fn audit_and_admin_tokens(s: &dyn Store) {
    s.commit(vec![
        Write::InsertAdminToken {
            id: "tok-1".into(),
            hash: "ah".into(),
            description: "ops".into(),
            created_at: 5,
        },
        Write::Audit(NewAudit {
            at: 6,
            actor: "tok-1".into(),
            action: "region.create".into(),
            object: "north".into(),
            detail: None,
        }),
        Write::Audit(NewAudit {
            at: 7,
            actor: "tok-1".into(),
            action: "region.delete".into(),
            object: "north".into(),
            detail: Some("x".into()),
        }),
    ])
    .await
    .expect("write");
    assert_eq!(
        s.admin_token("ah").await.expect("read").map(|t| t.id),
        Some("tok-1".into())
    );
    assert!(s.admin_token("other").await.expect("read").is_none());
    let log = s.audit(10, None).await.expect("audit");
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["region.delete", "region.create"]
    );
    let older = s.audit(10, Some(log[0].id)).await.expect("audit");
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
        assert_eq!(s.audit(10, None).await.expect("audit").len(), i);
        s.set(Fault::None);
        s.commit(batch).await.expect("healed");
        s.commit(vec![Write::DeleteSite(name.parse().expect("name"))])
            .await
            .expect("healed");
        assert_eq!(s.audit(10, None).await.expect("audit").len(), i + 1);
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
