//! The change pipeline: durable first, deltas, a failing database.

mod common;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use common::{settings, ManualClock, TestController};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wardnet_common::delta::ConfigUpdate;
use wardnet_common::SiteConfig;
use wardnet_controller::store::faulty::{Fault, FaultyStore};
use wardnet_controller::store::{SqliteStore, Store};

/// A region with an enrolled hub; returns the hub's credential.
async fn region_with_hub(t: &TestController) -> String {
    t.region("north", false).await;
    let tok = t
        .site(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"}))
        .await
        .expect("token");
    t.enrolled(&tok, None).await
}

async fn spoke(t: &TestController, name: &str) -> String {
    t.site(json!({"name": name, "region": "north", "role": "spoke"}))
        .await
        .expect("token")
}

async fn full_config(t: &TestController, cred: &str) -> SiteConfig {
    let (s, v) = t.agent_update(cred, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    match serde_json::from_value(v).expect("update") {
        ConfigUpdate::Full { config } => config,
        other => panic!("expected a full config, got {other:?}"),
    }
}

async fn sites(t: &TestController) -> Value {
    let (s, v) = t.admin_get("/v1/sites").await;
    assert_eq!(s, StatusCode::OK);
    v
}

async fn audit_len(t: &TestController) -> usize {
    let (s, v) = t.admin_get("/v1/audit?limit=1000").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_failing_database_answers_503_publishes_nothing_and_stores_nothing() {
    for fault in [Fault::Begin, Fault::Write, Fault::Commit] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("wardnet.db");
        let faulty = Arc::new(FaultyStore::new(Arc::new(
            SqliteStore::open(&db).expect("open"),
        )));
        let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000)));
        let mut t = TestController::start_with(
            faulty.clone() as Arc<dyn Store>,
            settings(),
            db.clone(),
            clock.clone(),
            None,
        )
        .await;
        let hub = region_with_hub(&t).await;
        let token = spoke(&t, "gp-a").await;
        let hub_cfg = full_config(&t, &hub).await;
        let before_sites = sites(&t).await;
        let before_audit = audit_len(&t).await;

        faulty.set(fault);
        let (s, v) = t
            .admin_post(
                "/v1/sites",
                json!({"name": "gp-b", "region": "north", "role": "spoke"}),
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}: {v}");
        assert_eq!(v["error"], "unavailable");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("database")),
            "{v}"
        );
        let (s, v) = t.enroll(&token, None).await;
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "{fault:?}: an enrolment the database did not store is not 'token already used': {v}"
        );
        let (s, v) = t
            .call(
                Method::PATCH,
                "/v1/sites/hub-north",
                Some(&t.admin.clone()),
                Some(json!({"endpoint": "198.51.100.9:51820"})),
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}: {v}");

        // Nothing was published: same sites, same hub config, no wake-up.
        assert_eq!(sites(&t).await, before_sites, "{fault:?}");
        let (s, v) = t.agent_update(&hub, hub_cfg.revision, 1).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{fault:?}: {v}");
        assert_eq!(full_config(&t, &hub).await, hub_cfg);

        // Healed, the controller keeps serving, and the token still works.
        faulty.set(Fault::None);
        assert_eq!(audit_len(&t).await, before_audit, "{fault:?}");
        let cred = t.enrolled(&token, None).await;
        let cfg = full_config(&t, &cred).await;
        assert_eq!(cfg.peers.len(), 1);
        let (s, v) = t.agent_update(&hub, hub_cfg.revision, 5).await;
        assert_eq!(s, StatusCode::OK, "{v}");

        // Nothing half-stored: a restart sees exactly what was answered.
        let after_sites = sites(&t).await;
        t.stop().await;
        drop(t);
        let t = TestController::start_on(db, clock, None).await;
        let reloaded = sites(&t).await;
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .expect("list")
                .iter()
                .map(|s| format!("{} {} {}", s["name"], s["state"], s["endpoint"]))
                .collect()
        };
        assert_eq!(names(&reloaded), names(&after_sites), "{fault:?}");
        drop(dir);
    }
}

#[tokio::test]
async fn agents_get_steps_and_one_too_far_behind_gets_the_full_config() {
    let t = TestController::start().await;
    let hub = region_with_hub(&t).await;
    let tok = spoke(&t, "gp-a").await;
    let _gp = t.enrolled(&tok, None).await;
    let start = full_config(&t, &hub).await;

    // One change: one step, applying to exactly the new config.
    let (s, v) = t
        .call(
            Method::PATCH,
            "/v1/sites/gp-a",
            Some(&t.admin.clone()),
            Some(json!({"endpoint": "203.0.113.7:51820"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.agent_update(&hub, start.revision, 5).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "deltas", "{v}");
    assert_eq!(v["steps"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(v["steps"][0].get("peers_set").is_some(), "{v}");
    let ConfigUpdate::Deltas { steps } = serde_json::from_value(v).expect("update") else {
        unreachable!()
    };
    let mut cfg = start.clone();
    cfg.apply_deltas(&steps).expect("chains");
    assert_eq!(cfg, full_config(&t, &hub).await);

    // An agent that skipped many revisions (more than are kept) is sent
    // the full config; one that is a little behind gets the steps.
    for port in 0..80 {
        let (s, v) = t
            .call(
                Method::PATCH,
                "/v1/sites/gp-a",
                Some(&t.admin.clone()),
                Some(json!({"endpoint": format!("203.0.113.7:{}", 40000 + port)})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let latest = full_config(&t, &hub).await;
    assert!(latest.revision >= start.revision + 81);
    let (s, v) = t.agent_update(&hub, start.revision, 0).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["kind"], "full", "{v}");
    let (s, v) = t.agent_update(&hub, latest.revision - 3, 0).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["kind"], "deltas");
    assert_eq!(v["steps"].as_array().map(Vec::len), Some(3));

    // Agents from before deltas still get bare full configs.
    let (s, v) = t.agent_config(&hub, start.revision, 0).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["revision"], latest.revision);
}

#[tokio::test]
async fn revisions_stay_monotonic_across_restarts_and_a_settings_change_bumps_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("wardnet.db");
    let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000)));
    let mut t = TestController::start_on(db.clone(), clock.clone(), None).await;
    let hub = region_with_hub(&t).await;
    let tok = spoke(&t, "gp-a").await;
    let gp = t.enrolled(&tok, None).await;
    let first = full_config(&t, &hub).await;
    let admin = t.admin.clone();
    t.stop().await;
    drop(t);

    // Same settings: same revisions, and the next change goes on from them.
    let mut t = TestController::start_on(db.clone(), clock.clone(), Some(admin.clone())).await;
    assert_eq!(full_config(&t, &hub).await.revision, first.revision);
    let (s, _) = t.agent_update(&hub, first.revision, 1).await;
    assert_eq!(
        s,
        StatusCode::NO_CONTENT,
        "a restart alone is no new revision"
    );
    let (s, v) = t
        .call(
            Method::PATCH,
            "/v1/sites/gp-a",
            Some(&admin),
            Some(json!({"endpoint": "203.0.113.7:51820"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let second = full_config(&t, &hub).await;
    assert_eq!(second.revision, first.revision + 1);
    // The step recorded after the restart chains from the revision before it.
    let (_, v) = t.agent_update(&hub, first.revision, 0).await;
    assert_eq!(v["kind"], "deltas", "{v}");
    let gp_rev = full_config(&t, &gp).await.revision;
    t.stop().await;
    drop(t);

    // Another MTU: every site gets one new revision, and the full config.
    let mut other = settings();
    other.network.mtu = 1380;
    let store = Arc::new(SqliteStore::open(&db).expect("open")) as Arc<dyn Store>;
    let t = TestController::start_with(store, other, db.clone(), clock, Some(admin)).await;
    let third = full_config(&t, &hub).await;
    assert_eq!(third.revision, second.revision + 1);
    assert_eq!(third.interface.mtu, 1380);
    assert_eq!(full_config(&t, &gp).await.revision, gp_rev + 1);
    let (_, v) = t.agent_update(&hub, second.revision, 0).await;
    assert_eq!(v["kind"], "full", "no step survives a restart: {v}");
}

#[tokio::test]
async fn racing_enrolments_for_one_token_never_serve_the_losers_key() {
    let t = TestController::start().await;
    let hub = region_with_hub(&t).await;
    for i in 0..20 {
        let name = format!("gp-{i}");
        let tok = spoke(&t, &name).await;
        let keys: Vec<wardnet_common::PublicKey> = (0..2)
            .map(|_| wardnet_common::PrivateKey::generate().public_key())
            .collect();
        let enrol = |k: wardnet_common::PublicKey| {
            t.call(
                Method::POST,
                "/v1/enroll",
                None,
                Some(json!({"token": tok, "public_key": k.to_string()})),
            )
        };
        let (a, b) = tokio::join!(enrol(keys[0]), enrol(keys[1]));
        let won: Vec<usize> = [&a, &b]
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| *s == StatusCode::CREATED)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(won.len(), 1, "exactly one wins: {a:?} {b:?}");
        let lost = &[&a, &b][1 - won[0]];
        assert_eq!(lost.0, StatusCode::CONFLICT, "{lost:?}");
        assert!(
            lost.1["message"]
                .as_str()
                .is_some_and(|m| m.contains("already used")),
            "{lost:?}"
        );
        let (winner, loser) = (keys[won[0]], keys[1 - won[0]]);
        let cfg = full_config(&t, &hub).await;
        let served: Vec<_> = cfg.peers.iter().map(|p| p.public_key).collect();
        assert!(served.contains(&winner));
        assert!(!served.contains(&loser), "the loser's key reached the hub");
        let (_, v) = t.admin_get(&format!("/v1/sites/{name}")).await;
        assert_eq!(v["public_key"], winner.to_string());
    }
    let (_, m) = t.call(Method::GET, "/metrics", None, None).await;
    let m = m.as_str().unwrap_or_default().to_owned();
    assert!(
        m.contains(r#"wardnet_controller_enrolments_total{result="token_reused"} 20"#),
        "{m}"
    );
}
