//! The policy between organisations through the API: who manages which
//! rules and services, and `check` naming what decided, for a trust with
//! two sites, a GP practice and a national service.

mod common;

use common::TestController;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Network {
    t: TestController,
    trust: String,
    practice: String,
}

/// Organisations `leeds-trust` (sites lth-1, lth-2), `gp-chapeltown`
/// (gp-1) and `national` (spine-1, LAN 10.200.0.0/24), each site added by
/// its organisation's own token (the national one by the NOC).
async fn network() -> Network {
    let t = TestController::start().await;
    for org in ["leeds-trust", "gp-chapeltown", "national"] {
        t.org(org).await;
    }
    t.region("north", false).await;
    let trust = t.scoped_token("leeds-trust").await.1;
    let practice = t.scoped_token("gp-chapeltown").await.1;
    for (tok, site, lan) in [
        (&trust, "lth-1", "10.1.1.0/24"),
        (&trust, "lth-2", "10.1.2.0/24"),
        (&practice, "gp-1", "10.2.1.0/24"),
    ] {
        t.site_as(
            tok,
            json!({"name": site, "region": "north", "role": "spoke", "lan_prefixes": [lan]}),
        )
        .await;
    }
    t.site(json!({"name": "spine-1", "region": "north", "role": "spoke", "org": "national", "lan_prefixes": ["10.200.0.0/24"]}))
        .await;
    Network { t, trust, practice }
}

async fn check(t: &TestController, token: &str, query: &str) -> (StatusCode, Value) {
    t.as_token(
        token,
        Method::GET,
        &format!("/v1/policy/check?{query}"),
        None,
    )
    .await
}

fn decided(v: &Value) -> (bool, String) {
    assert!(v["allow"].is_boolean(), "not an answer: {v}");
    (
        v["allow"].as_bool().expect("allow"),
        v["because"].as_str().expect("because").to_owned(),
    )
}

#[tokio::test]
async fn rules_and_services_decide_flows_between_organisations_and_check_names_the_decider() {
    let Network { t, trust, practice } = network().await;
    let noc = t.admin.clone();

    // Nothing yet: within the trust yes, between organisations no.
    let (_, v) = check(&t, &noc, "from=lth-1&to=lth-2&proto=tcp&port=22").await;
    assert_eq!(decided(&v), (true, "same organisation".into()));
    let (_, v) = check(&t, &noc, "from=gp-1&to=lth-1&proto=tcp&port=443").await;
    assert_eq!(
        decided(&v),
        (false, "default: deny between organisations".into())
    );

    // The trust admits the practice into lth-1 on 443.
    let (s, rule) = t.as_token(&trust,
        Method::POST,
        "/v1/policy/rules",
        Some(json!({"from": "org:gp-chapeltown", "to": "site:lth-1", "proto": "tcp", "ports": ["443"], "description": "referrals"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{rule}");
    assert_eq!(rule["org"], "leeds-trust");
    let id = rule["rule"]["id"].as_u64().expect("id");
    let (_, v) = check(&t, &practice, "from=gp-1&to=lth-1&proto=tcp&port=443").await;
    assert_eq!(decided(&v), (true, format!("rule {id}")));
    assert_eq!(v["rule"]["description"], "referrals", "{v}");
    let (_, v) = check(&t, &noc, "from=gp-1&to=lth-1&proto=tcp&port=22").await;
    assert!(!decided(&v).0, "another port: {v}");
    let (_, v) = check(&t, &noc, "from=gp-1&to=lth-2&proto=tcp&port=443").await;
    assert!(!decided(&v).0, "another site of the trust: {v}");
    let (_, v) = check(&t, &noc, "from=lth-1&to=gp-1&proto=tcp&port=443").await;
    assert!(!decided(&v).0, "rules are directional: {v}");

    // The national organisation publishes the spine to the trust only.
    let (s, v) = t
        .admin_post(
            "/v1/policy/services",
            json!({"name": "spine", "site": "spine-1", "prefixes": ["10.200.0.0/28"], "proto": "tcp", "ports": ["443"], "shared_with": ["leeds-trust"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = check(
        &t,
        &trust,
        "from=lth-2&to=spine-1&proto=tcp&port=443&address=10.200.0.5",
    )
    .await;
    assert_eq!(decided(&v), (true, "service spine".into()));
    let (_, v) = check(
        &t,
        &noc,
        "from=lth-2&to=spine-1&proto=tcp&port=443&address=10.200.0.99",
    )
    .await;
    assert!(!decided(&v).0, "outside the published prefix: {v}");
    let (_, v) = check(
        &t,
        &noc,
        "from=gp-1&to=spine-1&proto=tcp&port=443&address=10.200.0.5",
    )
    .await;
    assert!(!decided(&v).0, "not shared with the practice: {v}");
    let (s, v) = check(
        &t,
        &noc,
        "from=gp-1&to=spine-1&proto=tcp&port=443&address=10.9.9.9",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "not the site's: {v}");

    // Deleting the rule closes the practice's way in again.
    let (s, _) = t
        .as_token(
            &trust,
            Method::DELETE,
            &format!("/v1/policy/rules/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = check(&t, &noc, "from=gp-1&to=lth-1&proto=tcp&port=443").await;
    assert!(!decided(&v).0, "{v}");
    // Its number is not given again: "rule N" in the audit log names one rule.
    let (s, next) = t
        .as_token(
            &trust,
            Method::POST,
            "/v1/policy/rules",
            Some(json!({"from": "org:gp-chapeltown", "to": "site:lth-2", "proto": "icmp"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{next}");
    assert_eq!(next["rule"]["id"].as_u64(), Some(id + 1), "{next}");

    // Both changes are audited with the rule before and after.
    let (_, audit) = t.as_token(&trust, Method::GET, "/v1/audit", None).await;
    let details: Vec<String> = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["object"] == format!("rule {id}"))
        .filter_map(|e| e["detail"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        details,
        [
            "before: from org:gp-chapeltown to site:lth-1 tcp/443: referrals",
            "after: from org:gp-chapeltown to site:lth-1 tcp/443: referrals"
        ]
    );
}

#[tokio::test]
async fn an_organisation_manages_only_what_admits_traffic_into_its_own_sites() {
    let Network { t, trust, practice } = network().await;

    // Into another organisation's sites: as if they did not exist.
    for to in ["site:lth-1", "org:leeds-trust"] {
        let (s, v) = t
            .as_token(
                &practice,
                Method::POST,
                "/v1/policy/rules",
                Some(json!({"from": "all", "to": to})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{to}: {v}");
    }
    let (s, v) = t
        .as_token(
            &practice,
            Method::POST,
            "/v1/policy/services",
            Some(json!({"name": "x", "site": "lth-1", "shared_with": "all"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // The trust's own rule and service.
    let (s, rule) = t
        .as_token(
            &trust,
            Method::POST,
            "/v1/policy/rules",
            Some(json!({"from": "region:north", "to": "org:leeds-trust", "proto": "icmp"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rule}");
    let id = rule["rule"]["id"].as_u64().expect("id");
    let (s, v) = t.as_token(&trust,
        Method::POST,
        "/v1/policy/services",
        Some(json!({"name": "pacs", "site": "lth-2", "prefixes": ["10.1.2.0/26"], "proto": "tcp", "ports": ["104"], "shared_with": ["gp-chapeltown"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // The practice sees the service shared with it, not the trust's rule,
    // and can change neither.
    let (_, p) = t.as_token(&practice, Method::GET, "/v1/policy", None).await;
    assert_eq!(p["rules"], json!([]), "{p}");
    assert_eq!(p["services"][0]["service"]["name"], "pacs", "{p}");
    for path in [
        format!("/v1/policy/rules/{id}"),
        "/v1/policy/services/pacs".to_owned(),
    ] {
        let (s, v) = t.as_token(&practice, Method::DELETE, &path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
    }
    let (s, _) = t
        .as_token(
            &practice,
            Method::GET,
            &format!("/v1/policy/rules/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // It may check its way to the shared service, not into the trust's
    // other site.
    let (s, v) = check(
        &t,
        &practice,
        "from=gp-1&to=lth-2&proto=tcp&port=104&address=10.1.2.9",
    )
    .await;
    assert_eq!(
        (s, decided(&v)),
        (StatusCode::OK, (true, "service pacs".into()))
    );
    // lth-1 is offered to it by the rule from its region (ICMP only).
    let (s, v) = check(&t, &practice, "from=gp-1&to=lth-1&proto=tcp&port=104").await;
    assert_eq!((s, decided(&v).0), (StatusCode::OK, false), "{v}");
    let (_, v) = check(&t, &practice, "from=gp-1&to=lth-1&proto=icmp").await;
    assert_eq!(decided(&v), (true, format!("rule {id}")));
    let (s, _) = check(&t, &practice, "from=gp-1&to=spine-1&proto=tcp&port=443").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "nothing offers spine-1 to the practice"
    );
    let (s, _) = check(&t, &practice, "from=lth-1&to=gp-1&proto=tcp&port=104").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "from another organisation's site");

    // Bad input: clear answers, nothing stored.
    for (body, status) in [
        (
            json!({"from": "everyone", "to": "org:leeds-trust"}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"from": "all", "to": "all"}), StatusCode::BAD_REQUEST),
        (
            json!({"from": "all", "to": "org:leeds-trust", "proto": "icmp", "ports": ["80"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"from": "all", "to": "org:leeds-trust", "proto": "tcp", "ports": ["90-80"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"from": "all", "to": "org:leeds-trust", "proto": "tcp", "ports": ["0"]}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, v) = t
            .as_token(&trust, Method::POST, "/v1/policy/rules", Some(body.clone()))
            .await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["message"].is_string(), "{v}");
    }
    let (s, v) = t.as_token(&trust,
        Method::POST,
        "/v1/policy/services",
        Some(json!({"name": "wide", "site": "lth-1", "prefixes": ["10.0.0.0/8"], "shared_with": "all"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (_, p) = t.as_token(&trust, Method::GET, "/v1/policy", None).await;
    assert_eq!(p["rules"].as_array().map(Vec::len), Some(1), "{p}");
    assert_eq!(p["services"].as_array().map(Vec::len), Some(1), "{p}");

    // A rule holds its organisation in place; a site's services go with it.
    let (s, v) = t
        .call(
            Method::DELETE,
            "/v1/orgs/leeds-trust",
            Some(&t.admin.clone()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = t
        .as_token(&trust, Method::DELETE, "/v1/sites/lth-2", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, p) = t.as_token(&trust, Method::GET, "/v1/policy", None).await;
    assert_eq!(p["services"], json!([]), "{p}");
}
