//! In-process API tests: the controller on port 0 with a temporary SQLite
//! store, driven over HTTP as agents and the admin CLI would.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{peer_names, TestController};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn hub_and_spokes(t: &TestController) -> (String, String, String) {
    t.region("north", false).await;
    let hub = t
        .site(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820", "lan_prefixes": ["10.1.0.0/24"]}))
        .await
        .expect("token");
    let a = t
        .site(json!({"name": "gp-a", "region": "north", "role": "spoke", "lan_prefixes": ["10.1.1.0/24"]}))
        .await
        .expect("token");
    let b = t
        .site(json!({"name": "gp-b", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    (
        t.enrolled(&hub, None).await,
        t.enrolled(&a, None).await,
        t.enrolled(&b, None).await,
    )
}

#[tokio::test]
async fn enrolment_happy_path_gives_addresses_and_a_config() {
    let t = TestController::start().await;
    t.region("north", false).await;
    t.site(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"}))
        .await;
    let token = t
        .site(json!({"name": "gp-a", "region": "north", "role": "spoke", "lan_prefixes": ["10.1.1.0/24"]}))
        .await
        .expect("pending site has a token");
    assert!(token.starts_with("wne_"));
    let (status, v) = t.enroll(&token, None).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["site"], "gp-a");
    assert_eq!(v["role"], "spoke");
    let addrs: Vec<&str> = v["addresses"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(addrs.len(), 2, "IPv4 and IPv6: {addrs:?}");
    assert!(
        addrs
            .iter()
            .any(|a| a.starts_with("100.64.") && a.ends_with("/32")),
        "{addrs:?}"
    );
    let cred = v["credential"].as_str().expect("credential");

    let (s, site) = t.admin_get("/v1/sites/gp-a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(site["state"], "active");
    assert!(
        !site.to_string().contains(cred),
        "the credential is never shown again"
    );

    // The hub is pending (not enrolled): the spoke has no peer yet.
    let (s, cfg) = t.agent_config(cred, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{cfg}");
    assert_eq!(cfg["site"], "gp-a");
    assert!(cfg["revision"].as_u64().expect("revision") >= 1);
    assert!(peer_names(&cfg).is_empty());
    // Up to date: a zero wait answers 204 at once.
    let rev = cfg["revision"].as_u64().expect("revision");
    let (s, _) = t.agent_config(cred, rev, 0).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

/// An agent whose enrolment answer was lost sends it again: the same
/// token with the same key gets the same answer, and its credential
/// works; another key gets 409 saying what to do. Once the site's
/// credential changed (a new token enrolled it), the old token gives
/// nothing, with any key.
#[tokio::test]
async fn the_same_enrolment_again_gets_the_same_answer_another_key_is_told_what_to_do() {
    let t = TestController::start().await;
    t.region("north", false).await;
    let token = t
        .site(json!({"name": "gp-a", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    let key = wardnet_common::PrivateKey::generate().public_key();
    let enrol = |token: &str, key: wardnet_common::PublicKey| {
        t.call(
            Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": token, "public_key": key.to_string()})),
        )
    };
    let (s, first) = enrol(&token, key).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let (s, again) = enrol(&token, key).await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    assert_eq!(again, first, "the same answer, credential included");
    let cred = again["credential"].as_str().expect("credential");
    let (s, cfg) = t.agent_config(cred, 0, 0).await;
    assert_eq!(
        (s, cfg["site"].clone()),
        (StatusCode::OK, json!("gp-a")),
        "{cfg}"
    );

    let other = wardnet_common::PrivateKey::generate().public_key();
    let (s, v) = enrol(&token, other).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let m = v["message"].as_str().expect("message");
    assert!(
        m.contains("another key") && m.contains("sites token gp-a") && m.contains("enroll --force"),
        "{m}"
    );
    assert!(!m.contains("Unix time"), "times read as RFC 3339: {m}");
    let (_, site) = t.admin_get("/v1/sites/gp-a").await;
    assert_eq!(
        site["public_key"],
        key.to_string(),
        "nothing changed: {site}"
    );

    // A new token re-enrols the gateway with a new key: the first token
    // now gives nothing, not even with the key it enrolled.
    let (s, v) = t.admin_post("/v1/sites/gp-a/token", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let fresh = v["token"].as_str().expect("token").to_owned();
    let (s, v) = enrol(&fresh, other).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = enrol(&token, key).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = t.agent_config(cred, 0, 0).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the first credential is gone");
    let (_, m) = t.call(Method::GET, "/metrics", None, None).await;
    let m = m.as_str().unwrap_or_default().to_owned();
    assert!(
        m.contains(r#"wardnet_controller_enrolments_total{result="repeated"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn token_reuse_is_rejected_also_when_two_redemptions_race() {
    let t = TestController::start().await;
    t.region("north", false).await;
    let token = t
        .site(json!({"name": "gp-a", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    t.enrolled(&token, None).await;
    let (s, v) = t.enroll(&token, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("already used"),
        "{v}"
    );

    for i in 0..10 {
        let name = format!("race-{i}");
        let token = t
            .site(json!({"name": name, "region": "north", "role": "spoke"}))
            .await
            .expect("token");
        let (a, b) = tokio::join!(t.enroll(&token, None), t.enroll(&token, None));
        let created = [a.0, b.0]
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(
            created, 1,
            "exactly one of two racing redemptions wins: {a:?} {b:?}"
        );
        let loser = if a.0 == StatusCode::CREATED { b } else { a };
        assert_eq!(loser.0, StatusCode::CONFLICT, "{loser:?}");
    }
}

#[tokio::test]
async fn expired_and_unknown_tokens_are_rejected() {
    let t = TestController::start().await;
    t.region("north", false).await;
    let token = t
        .site(json!({"name": "gp-a", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    t.clock
        .0
        .fetch_add(3601, std::sync::atomic::Ordering::SeqCst);
    let (s, v) = t.enroll(&token, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["message"].as_str().expect("message").contains("expired"),
        "{v}"
    );
    // Re-issuing gives a token that works.
    let (s, v) = t.admin_post("/v1/sites/gp-a/token", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    t.enrolled(v["token"].as_str().expect("token"), None).await;

    let (s, v) = t.enroll("wne_not-a-real-token", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("not recognised"),
        "{v}"
    );
}

#[tokio::test]
async fn an_agent_reads_only_its_own_config() {
    let t = TestController::start().await;
    let (_hub, a, b) = hub_and_spokes(&t).await;
    let (_, ca) = t.agent_config(&a, 0, 0).await;
    let (_, cb) = t.agent_config(&b, 0, 0).await;
    assert_eq!(ca["site"], "gp-a");
    assert_eq!(cb["site"], "gp-b");
    // An agent credential is not an admin token.
    for path in [
        "/v1/sites/gp-b/config",
        "/v1/sites/gp-b",
        "/v1/sites",
        "/v1/sites/gp-b/wg-quick",
    ] {
        let (s, v) = t.call(Method::GET, path, Some(&a), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {v}");
    }
    // An admin token is not an agent credential.
    let (s, _) = t.agent_config(&t.admin.clone(), 0, 0).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = t.call(Method::GET, "/v1/agent/config", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn revoking_a_spoke_wakes_the_hubs_long_poll_without_it() {
    let t = TestController::start().await;
    let (hub, a, _b) = hub_and_spokes(&t).await;
    let (_, cfg) = t.agent_config(&hub, 0, 0).await;
    assert_eq!(peer_names(&cfg), ["gp-a", "gp-b"]);
    let rev = cfg["revision"].as_u64().expect("revision");

    let waiting = {
        let url = t.url.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let r = reqwest::Client::new()
                .get(format!("{url}/v1/agent/config?revision={rev}&wait=25"))
                .bearer_auth(hub)
                .send()
                .await
                .expect("long-poll");
            (
                start.elapsed(),
                r.status(),
                r.json::<serde_json::Value>().await.ok(),
            )
        })
    };
    // Poll, with a deadline, until the long-poll is waiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.controller.long_poll_waiters() != 1 {
        assert!(
            Instant::now() < deadline,
            "the hub's long-poll never started waiting"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // gp-a's agent is seen (a poll) just before the revocation.
    let (s, _) = t.agent_config(&a, 0, 0).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = t.admin_post("/v1/sites/gp-a/revoke", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "revoked");
    let (elapsed, status, body) = waiting.await.expect("join");
    assert_eq!(status, StatusCode::OK);
    assert!(elapsed < Duration::from_secs(5), "woke after {elapsed:?}");
    let body = body.expect("json");
    assert_eq!(peer_names(&body), ["gp-b"]);
    assert!(body["revision"].as_u64().expect("revision") > rev);

    // The revoked site's credential is refused at once.
    let (s, _) = t.agent_config(&a, 0, 0).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // And the controller does not show it online, although its agent was
    // seen a moment ago.
    let (s, v) = t.admin_get("/v1/health").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let gp_a = v["sites"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "gp-a"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(gp_a["online"], false, "{gp_a}");
    let (_, status) = t.admin_get("/v1/status").await;
    let active_online = v["sites"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|x| x["online"] == true).count());
    assert_eq!(
        status["agents_online"].as_u64(),
        Some(active_online as u64),
        "{status}"
    );
}

#[tokio::test]
async fn a_change_bumps_only_the_sites_it_affects() {
    let t = TestController::start().await;
    let (hub, a, b) = hub_and_spokes(&t).await;
    t.region("south", false).await;
    let south = t
        .site(json!({"name": "gp-s", "region": "south", "role": "spoke"}))
        .await
        .expect("token");
    let s_cred = t.enrolled(&south, None).await;
    let rev = |c: &serde_json::Value| c["revision"].as_u64().expect("revision");
    let (_, h0) = t.agent_config(&hub, 0, 0).await;
    let (_, a0) = t.agent_config(&a, 0, 0).await;
    let (_, b0) = t.agent_config(&b, 0, 0).await;
    let (_, s0) = t.agent_config(&s_cred, 0, 0).await;
    // gp-a's endpoint changes: gp-a's own config doesn't list itself, the hub's does.
    let (s, v) = t
        .call(
            Method::PATCH,
            "/v1/sites/gp-a",
            Some(&t.admin.clone()),
            Some(json!({"endpoint": "203.0.113.5:51820"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, h1) = t.agent_config(&hub, 0, 0).await;
    let (_, a1) = t.agent_config(&a, 0, 0).await;
    let (_, b1) = t.agent_config(&b, 0, 0).await;
    let (_, s1) = t.agent_config(&s_cred, 0, 0).await;
    assert!(rev(&h1) > rev(&h0), "the hub carries gp-a's endpoint");
    assert_eq!(rev(&a1), rev(&a0), "gp-a's own config did not change");
    assert_eq!(
        rev(&b1),
        rev(&b0),
        "a spoke of a non-mesh region is not affected"
    );
    assert_eq!(rev(&s1), rev(&s0), "another region is not affected");
}

#[tokio::test]
async fn overlapping_lan_prefixes_are_a_409_naming_the_clash() {
    let t = TestController::start().await;
    t.region("north", false).await;
    t.site(json!({"name": "gp-a", "region": "north", "role": "spoke", "lan_prefixes": ["10.1.0.0/16"]}))
        .await;
    for (lan, expect) in [
        ("10.1.2.0/24", "10.1.0.0/16, a LAN prefix of site gp-a"),
        ("10.0.0.0/8", "10.1.0.0/16, a LAN prefix of site gp-a"),
        ("100.64.0.0/24", "overlay"),
        ("fd7a:6e65::/64", "overlay"),
    ] {
        let (s, v) = t
            .admin_post(
                "/v1/sites",
                json!({"name": "gp-b", "region": "north", "role": "spoke", "lan_prefixes": [lan]}),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{lan}: {v}");
        assert!(
            v["message"].as_str().expect("message").contains(expect),
            "{lan}: {v}"
        );
    }
    let (s, v) = t.admin_get("/v1/sites").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v.as_array().expect("list").len(),
        1,
        "nothing half-stored: {v}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let t = TestController::start().await;
    t.region("north", false).await;
    let admin = t.admin.clone();
    let raw = |body: &'static str| {
        let t = &t;
        let admin = admin.clone();
        async move {
            let r = t
                .http
                .post(format!("{}/v1/sites", t.url))
                .bearer_auth(admin)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("request");
            let s = r.status();
            (
                s,
                r.json::<serde_json::Value>()
                    .await
                    .expect("error body is JSON"),
            )
        }
    };
    let (s, v) = raw("{not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"].as_str().expect("m").contains("not valid JSON"),
        "{v}"
    );
    // serde fills a struct from an array too; the API takes objects only.
    for body in [r#"["gp-a", "north", "spoke"]"#, "[null, null]", "  42", ""] {
        let (s, v) = raw(body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["message"].as_str().expect("m").contains("JSON object"),
            "{body}: {v}"
        );
    }
    let (s, v) =
        raw(r#"{"name":"gp-a","region":"north","role":"spoke","lan":["10.0.0.0/24"]}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .expect("m")
            .contains("unknown field `lan`"),
        "{v}"
    );
    let (s, v) =
        raw(r#"{"name":"gp-a","region":"north","role":"spoke","lan_prefixes":"10.0.0.0/24"}"#)
            .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"].as_str().expect("m").contains("lan_prefixes"),
        "{v}"
    );
    let (s, v) = raw(r#"{"name":"gp-a","region":"north","role":"router"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().expect("m").contains("role"), "{v}");
    let (s, v) = raw(r#"{"name":"gp-a","region":"north","role":"spoke","public_key":"abc"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"].as_str().expect("m").contains("public_key"),
        "{v}"
    );
    let (s, v) =
        raw(r#"{"name":"gp-a","region":"north","role":"spoke","lan_prefixes":["10.0.0.1/24"]}"#)
            .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["message"]
            .as_str()
            .expect("m")
            .contains("did you mean 10.0.0.0/24"),
        "{v}"
    );

    // Oversized body.
    let big = format!(
        r#"{{"name":"gp-a","region":"north","role":"spoke","x":"{}"}}"#,
        "a".repeat(100_000)
    );
    let r = t
        .http
        .post(format!("{}/v1/sites", t.url))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Credentials.
    let (s, _) = t.call(Method::GET, "/v1/sites", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = t
        .call(Method::GET, "/v1/sites", Some("wnt_wrong"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let r = t
        .http
        .get(format!("{}/v1/sites", t.url))
        .header("authorization", "Basic abc")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Unknown objects and routes.
    let (s, _) = t.admin_get("/v1/sites/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.admin_get("/v1/sites/NOT%20A%20NAME").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = t
        .admin_post(
            "/v1/sites",
            json!({"name": "gp-a", "region": "nowhere", "role": "spoke"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = t.admin_get("/v1/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .call(
            Method::GET,
            "/v1/agent/config?revision=banana",
            Some("x"),
            None,
        )
        .await;
    // Credentials are checked before the query or body.
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Conflicts.
    let (s, _) = t.admin_post("/v1/regions", json!({"name": "north"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = t
        .admin_post(
            "/v1/sites",
            json!({"name": "hub-x", "region": "north", "role": "hub"}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a hub without an endpoint: {v}"
    );

    let (_, v) = t.admin_get("/v1/sites").await;
    assert_eq!(
        v.as_array().expect("list").len(),
        0,
        "no bad request stored anything"
    );
}

#[tokio::test]
async fn a_restart_keeps_sites_tokens_and_revisions() {
    let mut t = TestController::start().await;
    let (hub, a, _b) = hub_and_spokes(&t).await;
    let pending = t
        .site(json!({"name": "gp-p", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    let used = t
        .site(json!({"name": "gp-u", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    t.enrolled(&used, None).await;
    // The config request is the hub's heartbeat (last seen): list after it.
    let (_, hub_cfg) = t.agent_config(&hub, 0, 0).await;
    let (_, before_sites) = t.admin_get("/v1/sites").await;
    let (_, audit_before) = t.admin_get("/v1/audit?limit=1000").await;
    let admin = t.admin.clone();
    let clock = t.clock.clone();
    let db = t.db.clone();
    let dir = t.stop().await;

    let t2 = TestController::start_on(db, clock, Some(admin)).await;
    let (_, after_sites) = t2.admin_get("/v1/sites").await;
    assert_eq!(
        before_sites, after_sites,
        "every site, address and revision survives"
    );
    let (_, hub_cfg2) = t2.agent_config(&hub, 0, 0).await;
    assert_eq!(hub_cfg, hub_cfg2, "same config at the same revision");
    let rev = hub_cfg["revision"].as_u64().expect("revision");
    let (s, _) = t2.agent_config(&hub, rev, 0).await;
    assert_eq!(
        s,
        StatusCode::NO_CONTENT,
        "no spurious revision bump on restart"
    );
    let (s, _) = t2.agent_config(&a, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "credentials survive");
    let (s, _) = t2.enroll(&used, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "a used token stays used");
    let (s, v) = t2.enroll(&pending, None).await;
    assert_eq!(s, StatusCode::CREATED, "an unused token stays usable: {v}");
    let (_, audit_after) = t2.admin_get("/v1/audit?limit=1000").await;
    assert!(
        audit_after.as_array().expect("list").len() > audit_before.as_array().expect("list").len()
    );
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_enrolments_get_distinct_addresses() {
    let t = Arc::new(TestController::start().await);
    t.region("north", false).await;
    let mut tokens = Vec::new();
    for i in 0..500 {
        tokens.push(
            t.site(json!({"name": format!("gp-{i}"), "region": "north", "role": "spoke"}))
                .await
                .expect("token"),
        );
    }
    let mut tasks = Vec::new();
    for token in tokens {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { t.enroll(&token, None).await }));
    }
    let mut addresses = BTreeSet::new();
    for task in tasks {
        let (s, v) = task.await.expect("join");
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for a in v["addresses"].as_array().expect("addresses") {
            assert!(
                addresses.insert(a.as_str().expect("text").to_owned()),
                "duplicate address {a}"
            );
        }
    }
    assert_eq!(addresses.len(), 1000, "500 IPv4 + 500 IPv6");
    let (_, sites) = t.admin_get("/v1/sites?state=active").await;
    assert_eq!(sites.as_array().expect("list").len(), 500);
}

#[tokio::test]
async fn agentless_site_exports_wg_quick() {
    let t = TestController::start().await;
    t.region("north", false).await;
    t.site(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"}))
        .await;
    let key = wardnet_common::PrivateKey::generate().public_key();
    let token = t
        .site(json!({"name": "appliance", "region": "north", "role": "spoke", "public_key": key.to_string()}))
        .await;
    assert!(token.is_none(), "agentless sites have no token");
    let (s, v) = t.admin_get("/v1/sites/appliance").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "active");
    assert_eq!(v["agentless"], true);
    let r = t
        .http
        .get(format!("{}/v1/sites/appliance/wg-quick", t.url))
        .bearer_auth(&t.admin)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("text");
    assert!(
        text.contains("[Interface]") && text.contains("Address = 100.64."),
        "{text}"
    );
}

#[tokio::test]
async fn audit_log_records_every_admin_change() {
    let t = TestController::start().await;
    hub_and_spokes(&t).await;
    t.admin_post("/v1/sites/gp-b/revoke", json!({})).await;
    let (s, v) = t
        .call(
            Method::DELETE,
            "/v1/sites/gp-b",
            Some(&t.admin.clone()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, log) = t.admin_get("/v1/audit").await;
    let actions: Vec<&str> = log
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "region.create",
        "site.create",
        "site.enrol",
        "site.revoke",
        "site.delete",
        "token.create",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let first = &log[0];
    assert_eq!(first["action"], "site.delete");
    assert!(
        first["actor"].as_str().expect("actor").starts_with("tok-"),
        "{first}"
    );
}

#[tokio::test]
async fn metrics_and_health() {
    let t = TestController::start().await;
    let (hub, _, _) = hub_and_spokes(&t).await;
    // The hub applies its current config and says so: one apply-latency sample.
    let (_, cfg) = t.agent_config(&hub, 0, 0).await;
    let rev = cfg["revision"].as_u64().expect("revision");
    let (s, v) = t
        .call(
            Method::POST,
            "/v1/agent/report",
            Some(&hub),
            Some(json!({"applied_revision": rev})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    // A metrics address becomes a Prometheus target: only IP:PORT.
    for bad in [
        "not an address",
        "198.51.100.7",
        "198.51.100.7:0",
        "http://x/metrics",
    ] {
        let (s, v) = t
            .call(
                Method::POST,
                "/v1/agent/report",
                Some(&hub),
                Some(json!({"applied_revision": rev, "health": {"peers_up": 1, "peers_total": 1, "metrics_address": bad}})),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("metrics_address")),
            "{v}"
        );
    }
    let r = t
        .http
        .get(format!("{}/healthz", t.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    let text = t
        .http
        .get(format!("{}/metrics", t.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        r#"wardnet_controller_sites{region="north",role="spoke",state="active"} 2"#,
        r#"wardnet_controller_enrolments_total{result="success"} 3"#,
        "wardnet_controller_long_poll_waiters 0",
        "wardnet_controller_http_request_duration_seconds_bucket",
        "wardnet_controller_config_apply_duration_seconds_count 1",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

#[test]
fn openapi_document_lists_exactly_the_routes() {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
            .expect("spec");
    let mut documented = BTreeSet::new();
    let mut path = None;
    for line in spec.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = Some(format!("/{p}"));
        } else if let (Some(p), Some(m)) = (
            &path,
            line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')),
        ) {
            if ["get", "post", "put", "patch", "delete"].contains(&m) {
                documented.insert((m.to_uppercase(), p.clone()));
            }
        } else if !line.starts_with(' ') {
            path = None;
        }
    }
    let routes: BTreeSet<(String, String)> = wardnet_controller::api::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, routes,
        "docs/openapi.yaml and api::ROUTES differ"
    );
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let t = TestController::start().await;
    for (m, p) in wardnet_controller::api::ROUTES {
        let path = p.replace("{name}", "x");
        let r = t
            .http
            .request(m.parse().expect("method"), format!("{}{}", t.url, path))
            .send()
            .await
            .expect("request");
        assert_ne!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
        if r.status() == StatusCode::NOT_FOUND {
            let body: serde_json::Value = r.json().await.expect("json");
            assert!(
                !body["message"]
                    .as_str()
                    .expect("m")
                    .contains("no such route"),
                "{m} {p} is not routed"
            );
        }
    }
}

/// Credentials are checked before anything else: a request without a valid
/// token gets 401 whatever its body (not 400 for the body, not 413 for its
/// size), and the scheme word is case-insensitive (RFC 7235).
#[tokio::test]
async fn authentication_comes_first_and_the_scheme_is_case_insensitive() {
    let t = TestController::start().await;
    let big = "x".repeat(wardnet_controller::api::MAX_BODY_BYTES + 10);
    for (method, path) in [
        (Method::POST, "/v1/sites"),
        (Method::PATCH, "/v1/sites/gp-a"),
        (Method::POST, "/v1/regions"),
        (Method::POST, "/v1/agent/report"),
    ] {
        for body in ["not json", "{\"name\": 7}", big.as_str()] {
            for auth in [None, Some("Bearer wnt_wrong")] {
                let mut req = t
                    .http
                    .request(method.clone(), format!("{}{path}", t.url))
                    .header("content-type", "application/json")
                    .body(body.to_owned());
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let r = req.send().await.expect("request");
                assert_eq!(
                    r.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} auth {auth:?} body of {} bytes",
                    body.len()
                );
            }
        }
    }
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let r = t
            .http
            .get(format!("{}/v1/regions", t.url))
            .header("authorization", format!("{scheme} {}", t.admin))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK, "scheme {scheme}");
    }
}

/// A LAN outside `network.routed_prefixes` would be reachable from its own
/// region but not from spokes elsewhere (they route only those prefixes to
/// their hub): it is refused, naming the setting, and nothing is stored.
#[tokio::test]
async fn a_lan_outside_the_routed_prefixes_is_refused_naming_them() {
    let t = TestController::start().await;
    t.region("north", false).await;
    let (s, v) = t
        .admin_post(
            "/v1/sites",
            json!({"name": "gp-x", "region": "north", "role": "spoke", "lan_prefixes": ["172.16.7.0/24"]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("routed_prefixes") && msg.contains("10.0.0.0/8"),
        "{msg}"
    );
    let (s, _) = t.admin_get("/v1/sites/gp-x").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was stored");

    let (s, v) = t
        .admin_post(
            "/v1/sites",
            json!({"name": "gp-y", "region": "north", "role": "spoke", "lan_prefixes": ["10.7.0.0/24"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .call(
            Method::PATCH,
            "/v1/sites/gp-y",
            Some(&t.admin.clone()),
            Some(json!({"lan_prefixes": ["10.7.0.0/24", "192.168.9.0/24"]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (_, v) = t.admin_get("/v1/sites/gp-y").await;
    assert_eq!(v["lan_prefixes"], json!(["10.7.0.0/24"]), "unchanged");
}
