//! Fleet health over the API: agents' reports make `GET /v1/health` and the
//! Prometheus target list (`GET /v1/prometheus/targets`).

mod common;

use common::TestController;
use reqwest::StatusCode;
use serde_json::json;

/// Region north with its hub; the hub's enrolment token.
async fn hub_north(t: &TestController) -> String {
    t.region("north", false).await;
    t.site(
        json!({"name": "hub-north", "region": "north", "role": "hub",
                 "endpoint": "198.51.100.1:51820"}),
    )
    .await
    .expect("token")
}

#[tokio::test]
async fn reports_make_health_and_prometheus_targets() {
    let t = TestController::start().await;
    let hub = hub_north(&t).await;
    let spoke = t
        .site(json!({"name": "gp-a", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    t.site(json!({"name": "gp-b", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    let hub_cred = t.enrolled(&hub, None).await;
    let spoke_cred = t.enrolled(&spoke, None).await;

    // The hub reports a reachable metrics address and a down peer; the
    // spoke reports none (metrics on loopback).
    let (s, v) = t.agent_config(&hub_cred, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rev = v["revision"].as_u64().expect("revision");
    let (s, v) = t
        .call(
            reqwest::Method::POST,
            "/v1/agent/report",
            Some(&hub_cred),
            Some(json!({"applied_revision": rev, "health": {
                "peers_up": 0, "peers_total": 1, "worst_peer": "gp-a",
                "metrics_address": "198.51.100.1:9586"}})),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let (s, v) = t
        .call(
            reqwest::Method::POST,
            "/v1/agent/report",
            Some(&spoke_cred),
            Some(json!({"applied_revision": 0, "health": {"peers_up": 0, "peers_total": 1}})),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");

    let (s, targets) = t.admin_get("/v1/prometheus/targets").await;
    assert_eq!(s, StatusCode::OK, "{targets}");
    assert_eq!(
        targets,
        json!([{"targets": ["198.51.100.1:9586"],
                "labels": {"site": "hub-north", "site_region": "north", "site_role": "hub"}}])
    );

    let (s, fleet) = t.admin_get("/v1/health").await;
    assert_eq!(s, StatusCode::OK, "{fleet}");
    let site = |n: &str| {
        fleet["sites"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == n))
            .cloned()
            .expect("site listed")
    };
    assert_eq!(site("hub-north")["online"], true);
    assert_eq!(site("hub-north")["health"]["worst_peer"], "gp-a");
    assert_eq!(site("gp-a")["online"], true);
    // Never enrolled, never seen.
    assert_eq!(site("gp-b")["online"], false);
    assert!(fleet["online_window_seconds"].as_u64().expect("window") > 0);

    // Admin only.
    let (s, _) = t
        .call(
            reqwest::Method::GET,
            "/v1/prometheus/targets",
            Some(&hub_cred),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// A waiting long-poll is presence: the site stays online however long it
/// waits, and is seen until the moment its poll ended; then it goes offline
/// after the online window.
#[tokio::test]
async fn a_waiting_long_poll_keeps_its_site_online() {
    use std::sync::atomic::Ordering;
    let t = TestController::start().await;
    let hub = hub_north(&t).await;
    let cred = t.enrolled(&hub, None).await;
    let (s, v) = t.agent_update(&cred, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rev = v["config"]["revision"].as_u64().expect("revision");
    let online = |fleet: &serde_json::Value| {
        let hub = &fleet["sites"][0];
        (
            hub["online"].as_bool(),
            hub["last_seen"].as_str().map(str::to_owned),
        )
    };
    let window = t.controller.online_window_secs();
    let at = wardnet_common::time::format_rfc3339;

    // The agent waits; the clock moves far past the online window.
    let waiting = {
        let (url, http, cred) = (t.url.clone(), t.http.clone(), cred.clone());
        tokio::spawn(async move {
            http.get(format!(
                "{url}/v1/agent/config?revision={rev}&wait=30&deltas=true"
            ))
            .bearer_auth(cred)
            .send()
            .await
        })
    };
    for _ in 0..100 {
        if t.controller
            .status(&wardnet_controller::Actor::local())
            .long_poll_waiters
            == 1
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let t0 = t.clock.0.load(Ordering::SeqCst);
    t.clock.0.store(t0 + 10 * window, Ordering::SeqCst);
    let (_, fleet) = t.admin_get("/v1/health").await;
    assert_eq!(
        online(&fleet),
        (Some(true), Some(at(t0 + 10 * window))),
        "{fleet}"
    );

    // The agent goes away mid-wait: seen until then, online for the window.
    waiting.abort();
    for _ in 0..100 {
        if t.controller
            .status(&wardnet_controller::Actor::local())
            .long_poll_waiters
            == 0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        t.controller
            .status(&wardnet_controller::Actor::local())
            .long_poll_waiters,
        0,
        "the closed poll ended"
    );
    let left = t0 + 10 * window;
    t.clock.0.store(left + window, Ordering::SeqCst);
    let (_, fleet) = t.admin_get("/v1/health").await;
    assert_eq!(online(&fleet), (Some(true), Some(at(left))), "{fleet}");
    t.clock.0.store(left + window + 1, Ordering::SeqCst);
    let (_, fleet) = t.admin_get("/v1/health").await;
    assert_eq!(online(&fleet), (Some(false), Some(at(left))), "{fleet}");
}
