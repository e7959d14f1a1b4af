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
    t.delegate("leeds-trust", &["10.1.0.0/16"]).await;
    t.delegate("gp-chapeltown", &["10.2.0.0/16"]).await;
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
    let (_, v) = check(
        &t,
        &practice,
        "from=gp-1&to=lth-1&proto=icmp&address=10.1.1.5",
    )
    .await;
    assert_eq!(decided(&v), (true, format!("rule {id}")));
    // Without an address, ICMP goes to the overlay address: a probe, as
    // the data plane has it.
    let (_, v) = check(&t, &practice, "from=gp-1&to=lth-1&proto=icmp").await;
    assert_eq!(
        decided(&v),
        (
            true,
            "ICMP to a site's overlay address is always allowed".into()
        )
    );
    // Of a site merely offered to it, a token learns no LAN: an address
    // outside the site is denied like any other, not refused as foreign.
    for address in ["10.1.1.77", "10.1.99.1"] {
        let (s, v) = check(
            &t,
            &practice,
            &format!("from=gp-1&to=lth-1&proto=tcp&port=104&address={address}"),
        )
        .await;
        assert_eq!(
            (s, decided(&v).0),
            (StatusCode::OK, false),
            "{address}: {v}"
        );
    }
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
        (
            json!({"from": "all", "to": "region:north"}),
            StatusCode::BAD_REQUEST,
        ),
        // Into every site: the NOC's.
        (json!({"from": "all", "to": "all"}), StatusCode::FORBIDDEN),
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

/// A site's overlay /32 from the answer to adding it.
fn overlay(created: &Value) -> String {
    created["site"]["addresses"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .find(|a| !a.contains(':'))
        })
        .expect("an IPv4 overlay address")
        .to_owned()
}

/// The one step a long-poll from `revision` brings (it must be deltas).
async fn one_step(t: &TestController, credential: &str, revision: u64) -> Value {
    let (s, v) = t.agent_update(credential, revision, 5).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "deltas", "{v}");
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{v}");
    steps[0].clone()
}

/// Whether any of `prefixes` holds all of `p`.
fn covered(prefixes: &[String], p: &str) -> bool {
    let p: ipnet::IpNet = p.parse().expect("prefix");
    prefixes.iter().any(|q| {
        let q: ipnet::IpNet = q.parse().expect("prefix");
        q.contains(&p)
    })
}

fn rule_sources(filter: &Value, by: &str, name: Option<Value>) -> Vec<String> {
    filter["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| {
            r["reason"]["by"] == by && name.as_ref().is_none_or(|n| &r["reason"]["name"] == n)
        })
        .map(|r| {
            r["from"]
                .as_array()
                .expect("from")
                .iter()
                .map(|p| p.as_str().expect("prefix").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Each filtered site's config carries its filter; a rule or a service
/// reaches the filters of the sites it admits traffic into as one delta
/// step, within the long-poll's wake-up, and leaves every other site's
/// revision where it was; sites of `default` have no filter.
#[tokio::test]
async fn policy_changes_reach_the_filters_of_the_sites_they_admit_into_as_deltas() {
    let t = TestController::start().await;
    for org in ["leeds-trust", "gp-chapeltown"] {
        t.org(org).await;
    }
    t.region("north", false).await;
    let hub = t
        .site(json!({"name": "hub-n", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"}))
        .await
        .expect("token");
    t.enrolled(&hub, Some("198.51.100.1:51820")).await;
    let mut credentials = std::collections::BTreeMap::new();
    let mut addresses = std::collections::BTreeMap::new();
    for (site, org, lan) in [
        ("lth-1", "leeds-trust", "10.1.1.0/24"),
        ("lth-2", "leeds-trust", "10.1.2.0/24"),
        ("gp-1", "gp-chapeltown", "10.1.3.0/24"),
        ("old-1", "default", "10.1.4.0/24"),
        ("old-2", "default", "10.1.5.0/24"),
    ] {
        let (s, created) = t
            .admin_post(
                "/v1/sites",
                json!({"name": site, "region": "north", "role": "spoke", "org": org, "lan_prefixes": [lan]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        addresses.insert(site, overlay(&created));
        let token = created["token"].as_str().expect("token");
        credentials.insert(site, t.enrolled(token, None).await);
    }
    let full = |site: &'static str| {
        let c = credentials[site].clone();
        let t = &t;
        async move {
            let (s, v) = t.agent_config(&c, 0, 0).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v
        }
    };
    let lth1 = full("lth-1").await;
    let filter = &lth1["filter"];
    let own = rule_sources(filter, "same_org", None);
    assert!(covered(&own, &addresses["lth-2"]), "{filter}");
    assert!(covered(&own, "10.1.2.0/24"), "{filter}");
    assert!(!covered(&own, &addresses["gp-1"]), "{filter}");
    assert!(!covered(&own, "10.1.3.0/24"), "{filter}");
    // A `default` site is filtered like any other: it admits its own
    // organisation's sites, and nothing of another.
    let old = full("old-1").await;
    let own = rule_sources(&old["filter"], "same_org", None);
    assert!(covered(&own, &addresses["old-1"]), "{old}");
    assert!(covered(&own, &addresses["old-2"]), "{old}");
    assert!(covered(&own, "10.1.5.0/24"), "{old}");
    for other in ["lth-1", "lth-2", "gp-1"] {
        assert!(
            !covered(&own, &addresses[other]),
            "{other} is not in default: {old}"
        );
    }
    assert_eq!(
        old["filter"]["rules"].as_array().map(Vec::len),
        Some(2),
        "same organisation, probes: {old}"
    );
    let local: Vec<String> = old["filter"]["local"]
        .as_array()
        .expect("local")
        .iter()
        .map(|v| v.as_str().expect("prefix").to_owned())
        .collect();
    assert!(covered(&local, &addresses["old-1"]), "{old}");
    let gp1 = full("gp-1").await;

    // A rule into lth-1 from the practice: lth-1's filter, one step.
    let (s, rule) = t
        .admin_post(
            "/v1/policy/rules",
            json!({"from": "org:gp-chapeltown", "to": "site:lth-1", "proto": "tcp", "ports": ["443"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rule}");
    let id = rule["rule"]["id"].clone();
    let r1 = lth1["revision"].as_u64().expect("revision");
    let step = one_step(&t, &credentials["lth-1"], r1).await;
    let admitted = rule_sources(&step["filter"], "rule", Some(id.clone()));
    assert!(covered(&admitted, &addresses["gp-1"]) && covered(&admitted, "10.1.3.0/24"));
    assert!(!covered(&admitted, &addresses["lth-2"]), "{step}");
    assert!(
        step.get("peers_set").is_none(),
        "only the filter changed: {step}"
    );
    let (_, v) = t.admin_get("/v1/sites/gp-1").await;
    assert_eq!(
        v["revision"], gp1["revision"],
        "nothing is admitted into gp-1: its config stays"
    );

    // Deleted: the next step takes it out again.
    let r2 = step["revision"].as_u64().expect("revision");
    let (s, v) = t
        .call(
            Method::DELETE,
            &format!("/v1/policy/rules/{id}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let step = one_step(&t, &credentials["lth-1"], r2).await;
    assert!(rule_sources(&step["filter"], "rule", Some(id)).is_empty());

    // A service behind lth-2 shared with the practice: lth-2's filter.
    let (_, v) = t.admin_get("/v1/sites/lth-2").await;
    let r = v["revision"].as_u64().expect("revision");
    let (s, v) = t
        .admin_post(
            "/v1/policy/services",
            json!({"name": "pacs", "site": "lth-2", "prefixes": ["10.1.2.0/26"], "proto": "tcp", "ports": ["104"], "shared_with": ["gp-chapeltown"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let step = one_step(&t, &credentials["lth-2"], r).await;
    let shared = rule_sources(&step["filter"], "service", Some(json!("pacs")));
    assert!(covered(&shared, &addresses["gp-1"]) && covered(&shared, "10.1.3.0/24"));
    assert!(!covered(&shared, &addresses["old-1"]), "{step}");

    // `policy check` says whether the destination enforces its answer;
    // `default` does, like any organisation.
    let (s, v) = check(&t, &t.admin, "from=gp-1&to=old-1&proto=tcp&port=22").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["allow"].clone(), v["enforced"].clone()),
        (json!(false), json!(true)),
        "{v}"
    );
    assert_eq!(v["decided_by"]["by"], "default");
    let (_, v) = check(&t, &t.admin, "from=gp-1&to=lth-1&proto=tcp&port=22").await;
    assert_eq!(
        (v["allow"].clone(), v["enforced"].clone()),
        (json!(false), json!(true)),
        "{v}"
    );
    let (_, v) = check(
        &t,
        &t.admin,
        &format!(
            "from=gp-1&to=lth-1&proto=icmp&address={}",
            addresses["lth-1"].trim_end_matches("/32")
        ),
    )
    .await;
    assert_eq!(v["decided_by"]["by"], "probe", "{v}");
}

/// What a rule or a check names must be a rule's traffic, from something
/// that exists: a source organisation or region that does not exist, port
/// 0, or a port with a protocol that has none, are refused with 422 and
/// nothing is stored.
#[tokio::test]
async fn rules_and_checks_refuse_sources_that_do_not_exist_and_traffic_a_rule_could_not_name() {
    let Network { t, trust, practice } = network().await;
    let (_, before) = t.as_token(&trust, Method::GET, "/v1/policy", None).await;
    for body in [
        json!({"from": "org:nope", "to": "org:leeds-trust", "proto": "tcp", "ports": ["443"]}),
        json!({"from": "region:south", "to": "site:lth-1"}),
    ] {
        let (s, v) = t
            .as_token(&trust, Method::POST, "/v1/policy/rules", Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        let msg = v["message"].as_str().expect("message");
        assert!(msg.starts_with("from: no "), "{msg}");
    }
    let (_, after) = t.as_token(&trust, Method::GET, "/v1/policy", None).await;
    assert_eq!(before, after, "nothing stored");
    // What exists is taken, as before.
    let (s, v) = t
        .as_token(
            &trust,
            Method::POST,
            "/v1/policy/rules",
            Some(json!({"from": "region:north", "to": "site:lth-1", "proto": "icmp"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    for query in [
        "from=gp-1&to=gp-1&proto=tcp&port=0",
        "from=gp-1&to=gp-1&proto=icmp&port=80",
    ] {
        let (s, v) = check(&t, &practice, query).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {v}");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("port: ")),
            "{v}"
        );
    }
    let (s, v) = check(&t, &practice, "from=gp-1&to=gp-1&proto=tcp&port=443").await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Rules are bound to the sites and services they name, not to the
/// names: a rule is made only from a site that exists (a scoped token
/// names only its own, so another organisation's site and a missing one
/// answer alike), it goes with the site or service it names (with an
/// audit entry), and a site or service that takes the name later starts
/// with no rule. An organisation or region that rules take traffic from
/// is not deleted under them.
#[tokio::test]
async fn rules_belong_to_the_sites_and_services_they_name_not_to_their_names() {
    let Network { t, trust, practice } = network().await;
    let noc = t.admin.clone();
    let rule =
        |from: &str, to: &str| json!({"from": from, "to": to, "proto": "tcp", "ports": ["22"]});

    // Made only from a site that exists, and a scoped token's own.
    let (s, v) = t
        .admin_post("/v1/policy/rules", rule("site:gp-9", "site:lth-1"))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let mut messages = Vec::new();
    for from in ["site:gp-1", "site:gp-nope"] {
        let (s, v) = t
            .as_token(
                &trust,
                Method::POST,
                "/v1/policy/rules",
                Some(rule(from, "site:lth-1")),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{from}: {v}");
        let m = v["message"].as_str().expect("message").to_owned();
        messages.push(m.replace(&from[5..], "NAME"));
    }
    assert_eq!(
        messages[0], messages[1],
        "another organisation's site reads as a missing one"
    );

    // gp-9, the practice's; a rule from it into lth-1, and one into a
    // service behind lth-1.
    t.site_as(
        &practice,
        json!({"name": "gp-9", "region": "north", "role": "spoke"}),
    )
    .await;
    let (s, r1) = t
        .admin_post("/v1/policy/rules", rule("site:gp-9", "site:lth-1"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r1}");
    let (s, _) = t
        .as_token(
            &trust,
            Method::POST,
            "/v1/policy/services",
            Some(json!({"name": "pacs", "site": "lth-1", "prefixes": ["10.1.1.0/24"], "proto": "tcp", "ports": ["104"], "shared_with": ["national"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, r2) = t
        .admin_post(
            "/v1/policy/rules",
            json!({"from": "org:gp-chapeltown", "to": "service:pacs"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r2}");
    let (_, v) = check(&t, &noc, "from=gp-9&to=lth-1&proto=tcp&port=22").await;
    assert!(decided(&v).0, "{v}");

    // gp-9 goes, and its rule with it; a new gp-9, of another
    // organisation, gets nothing of it.
    let (s, _) = t
        .as_token(&practice, Method::DELETE, "/v1/sites/gp-9", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let r1_path = format!("/v1/policy/rules/{}", r1["rule"]["id"]);
    let (s, _) = t.as_token(&noc, Method::GET, &r1_path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the rule went with its site");
    let (_, audit) = t.as_token(&trust, Method::GET, "/v1/audit", None).await;
    let entry = audit
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["action"] == "policy.rule.delete")
        .unwrap_or_else(|| panic!("the trust sees its rule's removal: {audit}"));
    assert!(
        entry["detail"]
            .as_str()
            .is_some_and(|d| d.contains("site gp-9")),
        "{entry}"
    );
    t.site(json!({"name": "gp-9", "region": "north", "role": "spoke", "org": "national"}))
        .await;
    let (_, v) = check(&t, &noc, "from=gp-9&to=lth-1&proto=tcp&port=22").await;
    assert!(!decided(&v).0, "the new gp-9 inherits nothing: {v}");

    // pacs goes, its rule with it; a new pacs starts with none.
    let (s, _) = t
        .as_token(&trust, Method::DELETE, "/v1/policy/services/pacs", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let r2_path = format!("/v1/policy/rules/{}", r2["rule"]["id"]);
    let (s, _) = t.as_token(&noc, Method::GET, &r2_path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the rule went with its service");

    // Organisations and regions that rules take traffic from stay.
    t.org("empty-org").await;
    t.region("south", false).await;
    for from in ["org:empty-org", "region:south"] {
        let (s, v) = t
            .admin_post("/v1/policy/rules", rule(from, "org:leeds-trust"))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let path = match from.split_once(':') {
            Some(("org", n)) => format!("/v1/orgs/{n}"),
            Some((_, n)) => format!("/v1/regions/{n}"),
            None => unreachable!(),
        };
        let (s, e) = t.as_token(&noc, Method::DELETE, &path, None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{from}: {e}");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("delete them first")),
            "{e}"
        );
        let rule_path = format!("/v1/policy/rules/{}", v["rule"]["id"]);
        let (s, _) = t.as_token(&noc, Method::DELETE, &rule_path, None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, e) = t.as_token(&noc, Method::DELETE, &path, None).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{from}: {e}");
    }
}

/// Services are named within their organisation: the practice may call
/// one `pacs` though the trust has one, and learns nothing of the trust's
/// from trying (what a name taken elsewhere answers is what a free one
/// does). A rule into `service:pacs` binds the one the asker may name,
/// stored as `ORG/NAME`, and admits traffic into that one only; where
/// several could be meant, the answer names only ones the asker sees.
#[tokio::test]
async fn service_names_are_each_organisations_own_and_reveal_nothing_of_others() {
    let Network { t, trust, practice } = network().await;
    let noc = t.admin.clone();
    let publish = |token: &String, site: &str, shared: Value| {
        let (token, body) = (
            token.clone(),
            json!({"name": "pacs", "site": site, "proto": "tcp", "ports": ["104"], "shared_with": shared}),
        );
        let t = &t;
        async move {
            t.as_token(&token, Method::POST, "/v1/policy/services", Some(body))
                .await
        }
    };

    // The trust's pacs is shared with no one; the practice publishes its
    // own pacs: created, as a name no one has would be.
    let (s, v) = publish(&trust, "lth-1", json!(["national"])).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = publish(&practice, "gp-1", json!("all")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["org"], "gp-chapeltown", "{v}");
    // Its own name again: refused, naming only its own organisation.
    let (s, v) = publish(&practice, "gp-1", json!("all")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let m = v["message"].as_str().expect("message");
    assert!(m.contains("gp-chapeltown") && !m.contains("leeds"), "{m}");

    // By name alone each token finds its own; the trust's under the
    // practice's token reads exactly as a service that does not exist.
    let (s, v) = t
        .as_token(&practice, Method::GET, "/v1/policy/services/pacs", None)
        .await;
    assert_eq!(
        (s, v["org"].clone()),
        (StatusCode::OK, json!("gp-chapeltown")),
        "{v}"
    );
    let (s, v) = t
        .as_token(&trust, Method::GET, "/v1/policy/services/pacs", None)
        .await;
    assert_eq!(
        (s, v["org"].clone()),
        (StatusCode::OK, json!("leeds-trust")),
        "{v}"
    );
    let mut answers = Vec::new();
    for path in [
        "/v1/policy/services/leeds-trust/pacs",
        "/v1/policy/services/leeds-trust/nothing",
        "/v1/policy/services/no-such-org/pacs",
    ] {
        for method in [Method::GET, Method::DELETE] {
            let (s, v) = t.as_token(&practice, method.clone(), path, None).await;
            let m = v["message"].as_str().expect("message");
            let (_, rest) = path.rsplit_once("services/").expect("path");
            answers.push((s, m.replace(rest, "X")));
        }
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, StatusCode::NOT_FOUND);

    // The NOC sees both: by name alone it is told to choose, by
    // ORG/NAME it gets the one.
    let (s, v) = t
        .as_token(&noc, Method::GET, "/v1/policy/services/pacs", None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let m = v["message"].as_str().expect("message");
    assert!(
        m.contains("gp-chapeltown/pacs") && m.contains("leeds-trust/pacs"),
        "{m}"
    );
    let (s, v) = t
        .admin_post(
            "/v1/policy/rules",
            json!({"from": "org:national", "to": "service:pacs", "proto": "tcp"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = t
        .as_token(
            &noc,
            Method::GET,
            "/v1/policy/services/leeds-trust/pacs",
            None,
        )
        .await;
    assert_eq!(
        (s, v["service"]["site"].clone()),
        (StatusCode::OK, json!("lth-1")),
        "{v}"
    );

    // A rule into `service:pacs` from the practice's token is into its
    // own, stored qualified; it admits into gp-1 and not into lth-1.
    t.org("visitors").await;
    t.site(json!({"name": "vis-1", "region": "north", "role": "spoke", "org": "visitors"}))
        .await;
    let (s, r) = t
        .as_token(
            &practice,
            Method::POST,
            "/v1/policy/rules",
            Some(json!({"from": "org:visitors", "to": "service:pacs", "proto": "tcp", "ports": ["104"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["rule"]["to"], "service:gp-chapeltown/pacs", "{r}");
    let (_, v) = check(&t, &noc, "from=vis-1&to=gp-1&proto=tcp&port=104").await;
    assert!(decided(&v).0, "{v}");
    let (_, v) = check(&t, &noc, "from=vis-1&to=lth-1&proto=tcp&port=104").await;
    assert!(
        !decided(&v).0,
        "the trust's pacs is not the practice's: {v}"
    );
    // National reaches the trust's pacs, shared with it, not the
    // practice's through the practice's rule.
    let (_, v) = check(&t, &noc, "from=spine-1&to=lth-1&proto=tcp&port=104").await;
    assert_eq!(decided(&v), (true, "service pacs".to_owned()), "{v}");
    assert_eq!(v["service"]["site"], "lth-1", "{v}");

    // The trust withdraws its pacs: the practice's rule stays.
    let (s, v) = t
        .as_token(&trust, Method::DELETE, "/v1/policy/services/pacs", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let path = format!("/v1/policy/rules/{}", r["rule"]["id"]);
    let (s, v) = t.as_token(&practice, Method::GET, &path, None).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "another organisation's pacs took no rule with it: {v}"
    );
    // The NOC withdraws the practice's by ORG/NAME, and its rule goes.
    let (s, v) = t
        .as_token(
            &noc,
            Method::DELETE,
            "/v1/policy/services/gp-chapeltown/pacs",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = t.as_token(&practice, Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the rule went with its service");
}

/// Infrastructure is a service, not an open door: a hub (here in
/// `default`) admits probes to its overlay address and nothing else by
/// default, from any organisation, `default` included; the NOC's
/// monitoring reaches every site through one rule `--to all`, which every
/// organisation sees and only the NOC can delete.
#[tokio::test]
async fn hubs_admit_only_probes_and_one_rule_to_all_admits_the_noc_everywhere() {
    let Network { t, trust, .. } = network().await;
    let noc = t.admin.clone();
    t.site(json!({"name": "hub-n", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820", "lan_prefixes": ["10.9.0.0/24"]}))
        .await;
    t.site(json!({"name": "old-1", "region": "north", "role": "spoke"}))
        .await;
    for (from, query, allow) in [
        ("gp-1", "proto=tcp&port=22", false),
        ("gp-1", "proto=tcp&port=22&address=10.9.0.5", false),
        ("old-1", "proto=tcp&port=3389", false),
        ("gp-1", "proto=icmp", true),
        ("old-1", "proto=icmp", true),
    ] {
        let (s, v) = check(&t, &noc, &format!("from={from}&to=hub-n&{query}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(decided(&v).0, allow, "{from} -> hub-n {query}: {v}");
    }

    // The NOC's monitoring (national) to every site's agent metrics.
    let (s, rule) = t
        .admin_post(
            "/v1/policy/rules",
            json!({"from": "org:national", "to": "all", "proto": "tcp", "ports": ["9586"], "description": "NOC monitoring"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rule}");
    let id = rule["rule"]["id"].as_u64().expect("id");
    for to in ["lth-1", "gp-1", "hub-n", "old-1"] {
        let (_, v) = check(
            &t,
            &noc,
            &format!("from=spine-1&to={to}&proto=tcp&port=9586"),
        )
        .await;
        assert!(decided(&v).0, "spine-1 -> {to}: {v}");
        let (_, v) = check(&t, &noc, &format!("from=spine-1&to={to}&proto=tcp&port=22")).await;
        assert!(!decided(&v).0, "spine-1 -> {to} tcp/22: {v}");
    }
    let (_, seen) = t.as_token(&trust, Method::GET, "/v1/policy", None).await;
    assert!(
        seen["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| r["rule"]["id"] == id),
        "a rule into all sites is seen by every organisation: {seen}"
    );
    let path = format!("/v1/policy/rules/{id}");
    let (s, _) = t.as_token(&trust, Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "only the NOC deletes it");
    let (s, _) = t.as_token(&noc, Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}
