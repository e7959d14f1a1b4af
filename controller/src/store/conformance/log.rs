//! Cases on the change log, racing changes, upkeep and injected faults.

use std::sync::Arc;

use super::*;
use crate::store::*;
use wardnet_common::Name;

fn names<T>(v: &[(Name, Option<T>)]) -> Vec<String> {
    v.iter().map(|(n, _)| n.to_string()).collect()
}

/// The change log: a change commits only on top of the head it was built
/// on, every batch that changes regions or sites moves the head by one,
/// and `changes_since` gives the rows those changes named, deleted ones as
/// `None`.
pub(super) async fn the_change_log_orders_changes(s: &dyn Store) {
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
pub(super) async fn racing_changes_commit_one(stores: &[Arc<dyn Store>]) {
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
pub(super) async fn upkeep_prunes_the_log_and_sweeps_tokens(s: &dyn Store) {
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
pub(super) async fn injected_faults_store_nothing_and_heal(inner: Arc<dyn Store>) {
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
