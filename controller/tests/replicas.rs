//! Several controllers (replicas) on one PostgreSQL database, in process:
//! any replica serves any admin and any agent, a change made through one
//! wakes long-polls on the others, and concurrent changes through several
//! replicas all succeed with distinct addresses.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{settings, ManualClock, TestController};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wardnet_controller::store::{PostgresSettings, PostgresStore, Store};

/// `n` replicas on one throwaway database; the first creates the admin
/// token the others share. `None` when PostgreSQL is not installed (and
/// not in CI).
async fn replicas(
    test: &str,
    n: usize,
) -> Option<(wardnet_pgtest::TempPostgres, Vec<TestController>)> {
    let pg = wardnet_pgtest::start_or_skip(test)?;
    let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000)));
    let mut out: Vec<TestController> = Vec::new();
    for _ in 0..n {
        let admin = out.first().map(|t| t.admin.clone());
        out.push(replica(&pg, settings(), clock.clone(), admin).await);
    }
    Some((pg, out))
}

/// One replica on `pg`'s database, with `settings`, sharing `clock` and
/// (when given) the admin token of a replica started before.
async fn replica(
    pg: &wardnet_pgtest::TempPostgres,
    settings: wardnet_controller::ServiceSettings,
    clock: Arc<ManualClock>,
    admin: Option<String>,
) -> TestController {
    let store = PostgresStore::open(&PostgresSettings {
        url: pg.url("postgres"),
        password: None,
        pool_size: 8,
    })
    .await
    .expect("open");
    TestController::start_with(
        Arc::new(store) as Arc<dyn Store>,
        settings,
        "unused-with-postgres".into(),
        clock,
        admin,
    )
    .await
}

async fn sites(t: &TestController) -> Vec<Value> {
    let (s, v) = t.admin_get("/v1/sites").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// What every replica must agree on about a site (not health or last-seen,
/// which each replica keeps for its own agents).
fn stored_view(v: &[Value]) -> Vec<Value> {
    v.iter()
        .map(|s| {
            json!([
                s["name"],
                s["state"],
                s["addresses"],
                s["public_key"],
                s["revision"],
                s["lan_prefixes"],
                s["endpoint"]
            ])
        })
        .collect()
}

/// Wait until `t` holds `n` long-polls (the one a test just sent is
/// waiting there, so a change made next must wake it, not precede it).
async fn waiting(t: &TestController, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, status) = t.admin_get("/v1/status").await;
        assert_eq!(s, StatusCode::OK, "{status}");
        if status["long_poll_waiters"].as_u64() >= Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} long-polls never waited: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The full config `t` serves the agent with `credential`, asked as an agent
/// does: "newer than `known`?" (a replica still catching up answers once
/// it has it).
async fn newer_config(t: &TestController, credential: &str, known: u64) -> String {
    reqwest::Client::new()
        .get(format!("{}/v1/agent/config?revision={known}&wait=5", t.url))
        .bearer_auth(credential)
        .send()
        .await
        .expect("config")
        .text()
        .await
        .expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_wakes_a_long_poll_on_another() {
    let Some((_pg, r)) = replicas(
        "a_change_through_one_replica_wakes_a_long_poll_on_another",
        3,
    )
    .await
    else {
        return;
    };
    let (a, b, c) = (&r[0], &r[1], &r[2]);
    a.region("north", false).await;
    // Created through A, enrolled through B: the region and the site must
    // be known there at once.
    let tok = b
        .site(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"}))
        .await
        .expect("token");
    let hub = c.enrolled(&tok, None).await;
    let (s, first) = b.agent_update(&hub, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let known = first["config"]["revision"].as_u64().expect("revision");

    // The hub's agent long-polls B; a spoke is added and enrolled through A.
    let poll = {
        let hub = hub.clone();
        let url = b.url.clone();
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(format!(
                    "{url}/v1/agent/config?revision={known}&wait=30&deltas=true"
                ))
                .bearer_auth(hub)
                .send()
                .await
                .expect("long-poll");
            let answered = Instant::now();
            (r.status(), r.json::<Value>().await.expect("json"), answered)
        })
    };
    waiting(b, 1).await;
    let tok = a
        .site(json!({"name": "gp-a", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    let committed = Instant::now();
    a.enrolled(&tok, None).await;
    let (status, update, answered) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::OK, "{update}");
    let waited = answered.saturating_duration_since(committed);
    eprintln!("a change through A reached the long-poll on B after {waited:?}");
    assert!(
        waited < Duration::from_secs(1),
        "the long-poll on B answered {waited:?} after the change through A"
    );
    let text = update.to_string();
    assert!(text.contains("gp-a"), "{update}");

    // Every replica serves the same config at the same revision (asked as
    // an agent does: "newer than the one before the change?", so a replica
    // still catching up answers once it has it).
    let full = |t| newer_config(t, &hub, known);
    let (fa, fb, fc) = tokio::join!(full(a), full(b), full(c));
    if fa != fb || fb != fc {
        // What each replica holds now, to tell a lagging read from one
        // that went backwards.
        for t in [a, b, c] {
            let (_, v) = t.admin_get("/v1/sites/hub-north").await;
            eprintln!(
                "{}: stored revision {}, config now {}",
                t.url,
                v["revision"],
                full(t).await
            );
        }
        eprintln!("the long-poll on B answered {update}");
    }
    assert_eq!(fa, fb);
    assert_eq!(fb, fc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_through_three_replicas_all_succeed() {
    let Some((_pg, r)) = replicas("concurrent_changes_through_three_replicas_all_succeed", 3).await
    else {
        return;
    };
    r[0].region("north", false).await;
    let tok = r[1]
        .site(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"}))
        .await
        .expect("token");
    r[2].enrolled(&tok, None).await;
    // 90 spokes added at once, spread over the replicas, then each
    // enrolled through the next replica: every one succeeds.
    let adds = (0..90).map(|i| {
        let t = &r[i % 3];
        async move {
            let (s, v) = t
                .admin_post(
                    "/v1/sites",
                    json!({"name": format!("gp-{i}"), "region": "north", "role": "spoke",
                           "lan_prefixes": [format!("10.{}.{}.0/24", 20 + i / 200, i % 200)]}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "gp-{i}: {v}");
            v["token"].as_str().expect("token").to_owned()
        }
    });
    let tokens = futures::future::join_all(adds).await;
    let enrols = tokens.iter().enumerate().map(|(i, tok)| {
        let t = &r[(i + 1) % 3];
        async move {
            let (s, v) = t.enroll(tok, None).await;
            assert_eq!(s, StatusCode::CREATED, "gp-{i}: {v}");
            v["addresses"].to_string()
        }
    });
    let given = futures::future::join_all(enrols).await;
    let distinct: BTreeSet<_> = given.iter().collect();
    assert_eq!(
        distinct.len(),
        90,
        "an address was handed out twice: {given:?}"
    );

    // A token redeemed through one replica is refused through another.
    let (s, v) = r[2].enroll(&tokens[0], None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // Every replica converges on the same sites as the database.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let views = futures::future::join_all(r.iter().map(sites)).await;
        let (x, y, z) = (
            stored_view(&views[0]),
            stored_view(&views[1]),
            stored_view(&views[2]),
        );
        if x == y && y == z && x.len() == 91 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas disagree after 10 s:\n{x:?}\n{y:?}\n{z:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a change through any replica still applies on the newest state.
    let (s, v) = r[1]
        .call(
            Method::PATCH,
            "/v1/sites/gp-7",
            Some(&r[1].admin),
            Some(json!({"lan_prefixes": ["10.99.0.0/24"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = r[2].admin_get("/v1/sites/gp-7").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["lan_prefixes"], json!(["10.99.0.0/24"]), "{v}");
}

/// `online` of a site in a replica's fleet health.
async fn online(t: &TestController, site: &str) -> bool {
    let (s, v) = t.admin_get("/v1/health").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["sites"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == site))
        .is_some_and(|x| x["online"] == true)
}

/// An agent waiting on replica B shows online on replica A too, once B has
/// written its presence and A has read it (each persist round), although A
/// never saw the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_waiting_on_one_replica_is_online_on_the_others() {
    let Some((_pg, r)) =
        replicas("an_agent_waiting_on_one_replica_is_online_on_the_others", 2).await
    else {
        return;
    };
    let (a, b) = (&r[0], &r[1]);
    a.region("north", false).await;
    let tok = a
        .site(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"}))
        .await
        .expect("token");
    let hub = a.enrolled(&tok, None).await;
    let (s, first) = b.agent_update(&hub, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let known = first["config"]["revision"].as_u64().expect("revision");
    // Long after the enrolment (the clock moves on), the agent waits on B.
    a.clock
        .0
        .fetch_add(3600, std::sync::atomic::Ordering::SeqCst);
    assert!(!online(a, "hub-north").await, "not seen for an hour");
    let poll = {
        let url = b.url.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!(
                    "{url}/v1/agent/config?revision={known}&wait=20&deltas=true"
                ))
                .bearer_auth(hub)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !online(b, "hub-north").await {
        assert!(
            Instant::now() < deadline,
            "B does not show its own agent online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!online(a, "hub-north").await, "A cannot know yet");
    // One persist round on each: B writes, A reads.
    b.controller.persist_reports().await;
    a.controller.persist_reports().await;
    assert!(online(a, "hub-north").await, "A shows B's agent online");
    poll.abort();
}

/// The answer to an enrolment through replica A is lost; the agent sends
/// it again to B at once: B answers as A did, and the credential works on
/// both. Another key at B is refused as the token's reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_sent_again_to_another_replica_gets_the_same_answer() {
    let Some((_pg, r)) = replicas(
        "an_enrolment_sent_again_to_another_replica_gets_the_same_answer",
        2,
    )
    .await
    else {
        return;
    };
    let (a, b) = (&r[0], &r[1]);
    a.region("north", false).await;
    for i in 0..10 {
        let name = format!("gp-{i}");
        let tok = a
            .site(json!({"name": name, "region": "north", "role": "spoke"}))
            .await
            .expect("token");
        let key = wardnet_common::PrivateKey::generate().public_key();
        let body = json!({"token": tok, "public_key": key.to_string()});
        let (s, lost) = a
            .call(Method::POST, "/v1/enroll", None, Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{lost}");
        let (s, again) = b.call(Method::POST, "/v1/enroll", None, Some(body)).await;
        assert_eq!((s, &again), (StatusCode::CREATED, &lost), "{name}");
        let cred = again["credential"].as_str().expect("credential");
        for t in [a, b] {
            let (s, v) = t.agent_config(cred, 0, 0).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        let other = wardnet_common::PrivateKey::generate().public_key();
        let (s, v) = b
            .call(
                Method::POST,
                "/v1/enroll",
                None,
                Some(json!({"token": tok, "public_key": other.to_string()})),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
    }
}

/// PostgreSQL goes away: a replica keeps answering admin reads from its
/// own state, marked stale (the `wardnet-stale` header says why and as
/// of which change), and agents' long-polls; writes answer 503 naming the
/// database; a token it never saw confirmed is not taken on its word.
/// When the database is back, answers are fresh again and writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_away_reads_are_answered_stale_and_writes_say_why_they_fail() {
    let Some((mut pg, r)) = replicas(
        "with_the_database_away_reads_are_answered_stale_and_writes_say_why_they_fail",
        2,
    )
    .await
    else {
        return;
    };
    let (a, b) = (&r[0], &r[1]);
    a.region("north", false).await;
    let tok = a
        .site(json!({"name": "gp-1", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    let cred = a.enrolled(&tok, None).await;
    let (_, fresh) = b.admin_get("/v1/sites").await;
    let get = |t: &TestController, path: &str, token: &str| {
        let (url, token) = (format!("{}{path}", t.url), token.to_owned());
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("answer");
            let stale = r
                .headers()
                .get("wardnet-stale")
                .map(|v| v.to_str().expect("ascii").to_owned());
            (
                r.status(),
                stale,
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, stale, _) = get(b, "/v1/sites", &b.admin).await;
    assert_eq!((s, stale), (StatusCode::OK, None), "fresh while it answers");

    pg.stop().expect("stop postgres");
    for path in [
        "/v1/sites",
        "/v1/sites/gp-1",
        "/v1/status",
        "/v1/policy",
        "/v1/health",
    ] {
        let (s, stale, v) = get(b, path, &b.admin).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        let why = stale.unwrap_or_else(|| panic!("{path}: not marked stale"));
        assert!(
            why.contains("database") && why.contains("as of change"),
            "{why}"
        );
        if path == "/v1/sites" {
            assert_eq!(v, fresh, "what it had");
        }
    }
    for path in ["/v1/audit", "/v1/orgs"] {
        let (s, _, v) = get(b, path, &b.admin).await;
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "only the database has it: {v}"
        );
    }
    let (s, v) = b.agent_config(&cred, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "an agent is answered: {v}");
    let (s, v) = b
        .admin_post(
            "/v1/sites",
            json!({"name": "gp-2", "region": "north", "role": "spoke"}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("database")),
        "{v}"
    );
    let (s, _, v) = get(b, "/v1/sites", "wnt_never-seen").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("has not seen this admin token")),
        "{v}"
    );

    pg.restart().expect("restart postgres");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, stale, _) = get(b, "/v1/sites", &b.admin).await;
        if s == StatusCode::OK && stale.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "still {s} {stale:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = b
        .admin_post(
            "/v1/sites",
            json!({"name": "gp-2", "region": "north", "role": "spoke"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// A replica started with other `[network]` settings (another MTU) takes
/// over: every site gets a new revision rendered with them. The replica
/// still running with the old ones finds itself out of date: it answers
/// agents and changes 503 saying why (agents move to the other), so no
/// agent is served two configs at one revision; reads still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_other_network_settings_takes_over_and_the_old_one_stands_aside() {
    let Some((pg, r)) = replicas(
        "a_replica_with_other_network_settings_takes_over_and_the_old_one_stands_aside",
        1,
    )
    .await
    else {
        return;
    };
    let a = &r[0];
    a.region("north", false).await;
    let tok = a
        .site(json!({"name": "gp-1", "region": "north", "role": "spoke"}))
        .await
        .expect("token");
    let cred = a.enrolled(&tok, None).await;
    let (s, before) = a.agent_config(&cred, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{before}");

    let mut other = settings();
    other.network.mtu = 1380;
    let b = replica(&pg, other, a.clock.clone(), Some(a.admin.clone())).await;
    let (s, now) = b.agent_config(&cred, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{now}");
    assert_eq!(now["interface"]["mtu"], 1380, "{now}");
    assert!(now["revision"].as_u64() > before["revision"].as_u64());

    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        let (s, v) = a.agent_config(&cred, 0, 0).await;
        if s == StatusCode::SERVICE_UNAVAILABLE {
            break v;
        }
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(
            Instant::now() < deadline,
            "A still serves its own configs: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let m = refusal["message"].as_str().expect("message");
    assert!(m.contains("out of date") && m.contains("1380"), "{m}");
    let (s, v) = a
        .admin_post(
            "/v1/sites",
            json!({"name": "gp-2", "region": "north", "role": "spoke"}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (s, v) = a.admin_get("/v1/sites/gp-1").await;
    assert_eq!(s, StatusCode::OK, "reads still work: {v}");
    let (s, v) = b
        .admin_post(
            "/v1/sites",
            json!({"name": "gp-2", "region": "north", "role": "spoke"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// A rule added through one replica reaches the filter of a site whose
/// agent long-polls another, and every replica then serves the same
/// config and lists the same policy; a site deleted through one replica
/// takes its services with it on the others too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_through_one_replica_reaches_filters_served_by_another() {
    let Some((_pg, r)) = replicas(
        "a_policy_change_through_one_replica_reaches_filters_served_by_another",
        2,
    )
    .await
    else {
        return;
    };
    let (a, b) = (&r[0], &r[1]);
    a.region("north", false).await;
    for org in ["leeds-trust", "gp-chapeltown"] {
        a.org(org).await;
    }
    let mut credentials = Vec::new();
    for (site, org) in [("lth-1", "leeds-trust"), ("gp-1", "gp-chapeltown")] {
        let tok = a
            .site(json!({"name": site, "region": "north", "role": "spoke", "org": org}))
            .await
            .expect("token");
        credentials.push(b.enrolled(&tok, None).await);
    }
    let lth = credentials[0].clone();
    let (s, first) = b.agent_update(&lth, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let known = first["config"]["revision"].as_u64().expect("revision");

    let poll = {
        let url = b.url.clone();
        let lth = lth.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!(
                    "{url}/v1/agent/config?revision={known}&wait=30&deltas=true"
                ))
                .bearer_auth(lth)
                .send()
                .await
                .expect("long-poll")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    waiting(b, 1).await;
    let (s, rule) = a
        .admin_post(
            "/v1/policy/rules",
            json!({"from": "org:gp-chapeltown", "to": "site:lth-1", "proto": "tcp", "ports": ["443"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rule}");
    let update = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long-poll on B answered")
        .expect("poll task");
    assert_eq!(update["kind"], "deltas", "{update}");
    let filter = &update["steps"][0]["filter"];
    assert!(
        filter["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| r["reason"] == json!({"by": "rule", "name": rule["rule"]["id"]})),
        "B's step carries the rule made through A: {update}"
    );

    // Both replicas serve one config and list one policy.
    let (ca, cb) = tokio::join!(newer_config(a, &lth, known), newer_config(b, &lth, known));
    assert_eq!(ca, cb);
    let (s, v) = a
        .admin_post(
            "/v1/policy/services",
            json!({"name": "pacs", "site": "lth-1", "shared_with": "all"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let until_same = || async {
        for _ in 0..50 {
            let ((sa, pa), (sb, pb)) =
                tokio::join!(a.admin_get("/v1/policy"), b.admin_get("/v1/policy"));
            assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK), "{pa} {pb}");
            if pa == pb {
                return pa;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the replicas list different policies");
    };
    let p = until_same().await;
    assert_eq!(p["services"].as_array().map(Vec::len), Some(1), "{p}");

    // The site goes through A: its service goes on B too.
    let (s, v) = a
        .call(Method::DELETE, "/v1/sites/lth-1", Some(&a.admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let p = until_same().await;
    assert_eq!(p["services"], json!([]), "{p}");
}
