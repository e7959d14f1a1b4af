//! Behaviour every `Store` must have, run against SQLite and against
//! PostgreSQL (a throwaway server per test, `wardnet_pgtest`).

mod log;
mod rows;

use std::collections::BTreeSet;
use std::sync::Arc;

use wardnet_common::wire::SiteState;
use wardnet_common::Role;

use super::*;
use crate::model::{Region, Site};

use log::*;
use rows::*;

pub(super) fn region(name: &str, block: &str) -> Region {
    Region {
        name: name.parse().expect("valid name"),
        mesh: false,
        ipv4_block: block.parse().expect("valid block"),
        ipv6_block: None,
        created_at: 1,
    }
}

pub(super) fn site(name: &str, region: &str, ip: &str) -> Site {
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
            renumber: None,
            credential_hash: None,
        },
        revision: 0,
        render_fingerprint: None,
        applied_revision: 0,
        last_seen: None,
        health: None,
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

/// A database from before services were named within organisations: its
/// rules into services name them unqualified. They read qualified with
/// the rule's organisation (the service's), and the migration rewrites
/// them so; the services themselves are kept.
#[tokio::test]
async fn sqlite_rules_into_services_from_an_older_schema_read_qualified() {
    use wardnet_common::policy::Target;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.db");
    {
        let s = SqliteStore::open(&path).expect("open");
        policy_with_a_service(&s).await;
    }
    let sql = |q: &str| {
        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute_batch(q))
            .expect("sql");
    };
    let target = |p: &crate::model::StoredPolicy| p.rules[0].rule.to.clone();
    let qualified: Target = "service:default/pacs".parse().expect("target");
    // Written unqualified (as an older controller did): read qualified.
    sql("UPDATE policy_rules SET target = 'service:pacs'");
    let s = SqliteStore::open(&path).expect("reopen");
    let p = s.load().await.expect("load").policy;
    assert_eq!((target(&p), p.services.len()), (qualified.clone(), 1));
    drop(s);
    // The migration from that schema rewrites it, and keeps the service.
    // (Back to schema 8: undo 10 and 11, which added a column and a
    // table, and 9 is rerun on the table as it is.)
    sql("DELETE FROM schema_migrations WHERE version >= 9;
         ALTER TABLE enrol_tokens DROP COLUMN sealed;
         DROP TABLE network_settings;
         UPDATE policy_rules SET target = 'service:pacs'");
    let s = SqliteStore::open(&path).expect("migrate");
    let p = s.load().await.expect("load").policy;
    assert_eq!((target(&p), p.services.len()), (qualified, 1));
    let stored: String = rusqlite::Connection::open(&path)
        .and_then(|c| c.query_row("SELECT target FROM policy_rules", [], |r| r.get(0)))
        .expect("read");
    assert_eq!(stored, "service:default/pacs");
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

/// What the server said is in the error: a database that does not exist
/// (as a missing pg_hba.conf entry) read only "db error" before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_errors_say_what_the_server_said() {
    let Some(pg) =
        wardnet_pgtest::start_or_skip("postgres_connection_errors_say_what_the_server_said")
    else {
        return;
    };
    let mut settings = pg_settings(&pg);
    settings.url = pg.url("no-such-db");
    let e = match PostgresStore::open(&settings).await {
        Ok(_) => panic!("opened a database that does not exist"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("no-such-db") && e.contains("does not exist"),
        "{e}"
    );
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
