//! Organisations and scoped administration, endpoint by endpoint: a token
//! scoped to one organisation cannot read, list, change or export another
//! organisation's sites (404, as if they did not exist), cannot change
//! what belongs to the whole network (403), and loses nothing of what
//! others stored by trying; the network-wide token can do all of it.

mod common;

use common::TestController;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wardnet_controller::Actor;

/// The answer is `status` and its message says `needle`.
fn refused((s, v): (StatusCode, Value), status: StatusCode, needle: &str) {
    assert_eq!(s, status, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains(needle)),
        "the message should say {needle:?}: {v}"
    );
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .filter_map(|x| x[key].as_str().map(str::to_owned))
        .collect()
}

/// Two trusts with a token each, a shared region and hub (the NOC's), one
/// site per trust added by its own token, one of them enrolled.
struct World {
    t: TestController,
    a: (String, String),
    b: (String, String),
}

async fn world() -> World {
    let t = TestController::start().await;
    t.org("trust-a").await;
    t.org("practice-b").await;
    t.delegate("trust-a", &["10.1.0.0/16"]).await;
    t.delegate("practice-b", &["10.2.0.0/16"]).await;
    t.region("north", false).await;
    t.site(json!({"name": "hub-north", "region": "north", "role": "hub", "endpoint": "198.51.100.1:51820"}))
        .await;
    let a = t.scoped_token("trust-a").await;
    let b = t.scoped_token("practice-b").await;
    for (token, site, lan) in [
        (&a.1, "a-main", "10.1.0.0/24"),
        (&b.1, "b-surgery", "10.2.0.0/24"),
    ] {
        let v = t
            .site_as(
                token,
                json!({"name": site, "region": "north", "role": "spoke", "lan_prefixes": [lan]}),
            )
            .await;
        let enrol = v["token"].as_str().expect("enrolment token");
        t.enrolled(enrol, None).await;
    }
    World { t, a, b }
}

#[tokio::test]
async fn a_scoped_token_cannot_reach_another_organisations_sites_by_any_endpoint() {
    let World { t, a, b: _ } = world().await;
    let (_, before) = t.admin_get("/v1/sites/b-surgery").await;
    assert_eq!(
        before["org"], "practice-b",
        "created in its token's organisation"
    );
    let a = a.1.as_str();

    // Every route that names a site: 404, the same answer as a site that
    // does not exist, with nothing in it about the other organisation.
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/sites/b-surgery".into(), None),
        (
            Method::PATCH,
            "/v1/sites/b-surgery".into(),
            Some(json!({"lan_prefixes": ["10.9.0.0/24"]})),
        ),
        (Method::DELETE, "/v1/sites/b-surgery".into(), None),
        (
            Method::POST,
            "/v1/sites/b-surgery/revoke".into(),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/sites/b-surgery/token".into(),
            Some(json!({})),
        ),
        (Method::GET, "/v1/sites/b-surgery/config".into(), None),
        (Method::GET, "/v1/sites/b-surgery/wg-quick".into(), None),
        (Method::GET, "/v1/orgs/practice-b".into(), None),
    ];
    for (method, path, body) in routes {
        let (s, v) = t.as_token(a, method.clone(), &path, body.clone()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert!(
            !v.to_string().contains("practice-b") || path.contains("practice-b"),
            "{method} {path} names the other organisation: {v}"
        );
        let missing = path.replace("b-surgery", "no-such-site");
        let (s2, _) = t.as_token(a, method.clone(), &missing, body).await;
        assert_eq!(s2, s, "{method} {path}: same answer as for a missing site");
    }

    // Adding a site into the other organisation: as if it did not exist.
    let (s, v) = t
        .as_token(
            a,
            Method::POST,
            "/v1/sites",
            Some(
                json!({"name": "sneaky", "region": "north", "role": "spoke", "org": "practice-b"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Lists, health, targets, audit, status: only its own.
    let (_, sites) = t.as_token(a, Method::GET, "/v1/sites", None).await;
    assert_eq!(names(&sites, "name"), ["a-main"]);
    let (_, health) = t.as_token(a, Method::GET, "/v1/health", None).await;
    assert_eq!(names(&health["sites"], "name"), ["a-main"]);
    let (_, targets) = t
        .as_token(a, Method::GET, "/v1/prometheus/targets", None)
        .await;
    assert!(!targets.to_string().contains("b-surgery"), "{targets}");
    let (_, orgs) = t.as_token(a, Method::GET, "/v1/orgs", None).await;
    assert_eq!(names(&orgs, "name"), ["trust-a"]);
    let (_, audit) = t
        .as_token(a, Method::GET, "/v1/audit?limit=1000", None)
        .await;
    let objects = names(&audit, "object");
    assert!(objects.contains(&"a-main".to_owned()), "{objects:?}");
    assert!(
        !objects
            .iter()
            .any(|o| o == "b-surgery" || o == "hub-north" || o == "practice-b"),
        "{objects:?}"
    );
    let (_, status) = t.as_token(a, Method::GET, "/v1/status", None).await;
    assert_eq!(status["sites_active"], 1, "{status}");
    assert_eq!(status["hubs"], 0, "the hub is the network's: {status}");
    let (_, regions) = t.as_token(a, Method::GET, "/v1/regions", None).await;
    assert_eq!(
        regions[0]["sites"], 1,
        "counts only its own sites: {regions}"
    );

    // What belongs to the whole network: 403, naming the token's scope.
    let network: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::POST, "/v1/orgs", Some(json!({"name": "trust-c"}))),
        (Method::DELETE, "/v1/orgs/practice-b", None),
        (Method::POST, "/v1/regions", Some(json!({"name": "south"}))),
        (Method::DELETE, "/v1/regions/north", None),
        (
            Method::POST,
            "/v1/sites",
            Some(
                json!({"name": "hub-2", "region": "north", "role": "hub", "endpoint": "198.51.100.2:51820"}),
            ),
        ),
    ];
    for (method, path, body) in network {
        refused(
            t.as_token(a, method, path, body).await,
            StatusCode::FORBIDDEN,
            "network-wide",
        );
    }

    // Nothing of the other organisation changed.
    let (_, after) = t.admin_get("/v1/sites/b-surgery").await;
    assert_eq!(after, before);
    let (s, _) = t.admin_get("/v1/regions/north").await;
    assert_eq!(s, StatusCode::OK);

    // The network-wide token sees and reaches everything.
    let (_, all) = t.admin_get("/v1/sites").await;
    let mut all = names(&all, "name");
    all.sort();
    assert_eq!(all, ["a-main", "b-surgery", "hub-north"]);
    for path in [
        "/v1/sites/b-surgery",
        "/v1/sites/b-surgery/config",
        "/v1/orgs/practice-b",
    ] {
        let (s, v) = t.admin_get(path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let (_, orgs) = t.admin_get("/v1/orgs").await;
    assert_eq!(names(&orgs, "name"), ["default", "practice-b", "trust-a"]);
    let (s, v) = t
        .call(
            Method::PATCH,
            "/v1/sites/b-surgery",
            Some(&t.admin.clone()),
            Some(json!({"lan_prefixes": ["10.2.1.0/24"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn a_scoped_token_administers_its_own_sites_and_the_audit_log_names_it_with_before_and_after()
{
    let World { t, a, b } = world().await;
    let (a_id, a) = (a.0.as_str(), a.1.as_str());

    let (s, v) = t
        .as_token(
            a,
            Method::PATCH,
            "/v1/sites/a-main",
            Some(json!({"lan_prefixes": ["10.1.0.0/23"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for path in ["/v1/sites/a-main/config", "/v1/sites/a-main"] {
        let (s, v) = t.as_token(a, Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let (s, v) = t
        .as_token(a, Method::POST, "/v1/sites/a-main/token", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .as_token(a, Method::POST, "/v1/sites/a-main/revoke", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t
        .as_token(a, Method::DELETE, "/v1/sites/a-main", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");

    let (_, audit) = t
        .as_token(a, Method::GET, "/v1/audit?limit=1000", None)
        .await;
    let entries = audit.as_array().expect("entries");
    let update = entries
        .iter()
        .find(|e| e["action"] == "site.update")
        .expect("the update is in its own audit log");
    assert_eq!(update["actor"], a_id, "the audit log names the token");
    let detail = update["detail"].as_str().expect("detail");
    assert!(
        detail.contains("before: org trust-a")
            && detail.contains("lan [10.1.0.0/24]")
            && detail.contains("after: org trust-a")
            && detail.contains("lan [10.1.0.0/23]"),
        "{detail}"
    );
    let delete = entries
        .iter()
        .find(|e| e["action"] == "site.delete")
        .expect("the delete is audited");
    assert!(
        delete["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("before: org trust-a")),
        "{delete}"
    );
    // The other organisation's token does not see any of it.
    let (_, theirs) = t
        .as_token(&b.1, Method::GET, "/v1/audit?limit=1000", None)
        .await;
    assert!(
        !names(&theirs, "object").contains(&"a-main".to_owned()),
        "{theirs}"
    );
}

#[tokio::test]
async fn organisations_are_created_listed_and_deleted_only_when_nothing_refers_to_them() {
    let World { t, a: _, b: _ } = world().await;
    let delete = |path: &'static str| {
        let t = &t;
        async move {
            t.call(Method::DELETE, path, Some(&t.admin.clone()), None)
                .await
        }
    };

    refused(
        t.admin_post("/v1/orgs", json!({"name": "trust-a"})).await,
        StatusCode::CONFLICT,
        "already exists",
    );
    refused(
        t.admin_post("/v1/orgs", json!({"name": "Not A Name"}))
            .await,
        StatusCode::BAD_REQUEST,
        "name",
    );
    refused(
        t.admin_post(
            "/v1/sites",
            json!({"name": "lost", "region": "north", "role": "spoke", "org": "no-such-org"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "orgs add",
    );

    // A site added without an organisation by the network-wide token goes
    // to `default`; `default` itself cannot go.
    t.site(json!({"name": "legacy", "region": "north", "role": "spoke"}))
        .await;
    let (_, legacy) = t.admin_get("/v1/sites/legacy").await;
    assert_eq!(legacy["org"], "default");
    refused(
        delete("/v1/orgs/default").await,
        StatusCode::CONFLICT,
        "cannot be deleted",
    );

    // Sites, then admin tokens, hold an organisation in place.
    refused(
        delete("/v1/orgs/trust-a").await,
        StatusCode::CONFLICT,
        "sites",
    );
    assert_eq!(delete("/v1/sites/a-main").await.0, StatusCode::NO_CONTENT);
    refused(
        delete("/v1/orgs/trust-a").await,
        StatusCode::CONFLICT,
        "admin tokens",
    );
    let (_, still) = t.admin_get("/v1/orgs/trust-a").await;
    assert_eq!(still["sites"], 0, "{still}");

    t.org("empty-trust").await;
    assert_eq!(
        delete("/v1/orgs/empty-trust").await.0,
        StatusCode::NO_CONTENT
    );
    let (s, _) = t.admin_get("/v1/orgs/empty-trust").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A token for an organisation that does not exist is refused.
    let e = t
        .controller
        .create_admin_token(
            &Actor::local(),
            "x",
            Some(&"no-such-org".parse().expect("name")),
        )
        .await
        .expect_err("no such organisation");
    assert!(
        e.to_string().contains("no organisation named no-such-org"),
        "{e}"
    );
}

/// A clash with another organisation's site names nothing of it (a LAN
/// prefix, a public key), while the NOC's answer still says whose it is;
/// and a scoped token's status counts only its own sites' long-polls.
#[tokio::test]
async fn clashes_and_counts_reveal_nothing_of_other_organisations() {
    let World { t, a, b } = world().await;
    let (a, b) = (a.1.as_str(), b.1.as_str());

    // b-surgery holds 10.2.0.0/24, in practice-b's delegated space: to
    // trust-a that is space outside its own, like any other.
    let mut answers = Vec::new();
    for lan in ["10.2.0.0/16", "10.2.0.0/24", "10.77.0.0/24"] {
        let (s, v) = t
            .as_token(
                a,
                Method::POST,
                "/v1/sites",
                Some(json!({"name": "a-annex", "region": "north", "role": "spoke", "lan_prefixes": [lan]})),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        let msg = v["message"].as_str().expect("message");
        assert!(
            msg.contains("delegated to organisation trust-a (10.1.0.0/16)"),
            "{msg}"
        );
        for secret in ["b-surgery", "practice-b", "10.2.0.0/16"] {
            if lan != secret {
                assert!(!msg.contains(secret), "names {secret}: {msg}");
            }
        }
        answers.push(msg.replace(lan, "LAN"));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let (s, v) = t
        .admin_post(
            "/v1/sites",
            json!({"name": "noc-annex", "region": "north", "role": "spoke", "lan_prefixes": ["10.2.0.0/16"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("site b-surgery")),
        "the NOC is told whose prefix it is: {v}"
    );

    // An agentless site with the key b-surgery's agent enrolled with.
    let (_, surgery) = t.admin_get("/v1/sites/b-surgery").await;
    let key = surgery["public_key"].as_str().expect("enrolled key");
    let (s, v) = t
        .as_token(
            a,
            Method::POST,
            "/v1/sites",
            Some(json!({"name": "a-appliance", "region": "north", "role": "spoke", "public_key": key})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let msg = v["message"].as_str().expect("message");
    assert!(msg.contains("another site"), "{msg}");
    assert!(!msg.contains("b-surgery"), "{msg}");

    // A practice-b agent waits on a long-poll; only practice-b counts it.
    let branch = t
        .site_as(
            b,
            json!({"name": "b-branch", "region": "north", "role": "spoke"}),
        )
        .await;
    let credential = t
        .enrolled(branch["token"].as_str().expect("enrolment token"), None)
        .await;
    let (s, first) = t.agent_update(&credential, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let known = first["config"]["revision"].as_u64().expect("revision");
    let waiting = |token: String| {
        let t = &t;
        async move {
            let (s, v) = t.as_token(&token, Method::GET, "/v1/status", None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["long_poll_waiters"].as_u64().expect("waiters")
        }
    };
    assert_eq!((waiting(a.into()).await, waiting(b.into()).await), (0, 0));
    let url = t.url.clone();
    let poll = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!(
                "{url}/v1/agent/config?revision={known}&wait=30&deltas=true"
            ))
            .bearer_auth(credential)
            .send()
            .await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiting(b.into()).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the long-poll never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        waiting(a.into()).await,
        0,
        "another organisation's long-poll"
    );
    let (_, noc) = t.admin_get("/v1/status").await;
    assert_eq!(
        noc["long_poll_waiters"], 1,
        "the NOC counts every one: {noc}"
    );
    poll.abort();
}

/// LAN space is delegated: a scoped token gives its sites LAN prefixes
/// only inside what the NOC delegated to its organisation (a squat on
/// unused space is refused and stores nothing), only the NOC delegates,
/// delegations never overlap another organisation's delegation or sites,
/// and nobody puts a site inside another organisation's space. Taking
/// space back leaves the prefixes sites hold.
#[tokio::test]
async fn lan_space_is_claimed_only_inside_what_the_noc_delegated() {
    let World { t, a, .. } = world().await;
    let a = a.1.as_str();
    let patch = |token: &str, body: Value| {
        let token = token.to_owned();
        let t = &t;
        async move {
            t.as_token(&token, Method::PATCH, "/v1/sites/a-main", Some(body))
                .await
        }
    };

    // The squat of the issue: unused space outside its delegation.
    let (s, v) = patch(
        a,
        json!({"lan_prefixes": ["10.1.0.0/24", "10.100.128.0/17"]}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("orgs delegate trust-a")),
        "{v}"
    );
    let (_, site) = t.admin_get("/v1/sites/a-main").await;
    assert_eq!(
        site["lan_prefixes"],
        json!(["10.1.0.0/24"]),
        "nothing stored"
    );
    let (s, v) = patch(a, json!({"lan_prefixes": ["10.1.0.0/24", "10.1.5.0/24"]})).await;
    assert_eq!(s, StatusCode::OK, "inside its delegation: {v}");

    // Only the NOC delegates, and never into another's space.
    let (s, _) = t
        .as_token(
            a,
            Method::PATCH,
            "/v1/orgs/trust-a",
            Some(json!({"delegated": ["10.0.0.0/8"]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for (org, prefix, whose) in [
        ("practice-b", "10.1.128.0/17", "organisation trust-a"),
        ("trust-a", "10.2.0.0/24", "organisation practice-b"),
        (
            "trust-a",
            "198.51.100.0/24",
            "outside network.routed_prefixes",
        ),
    ] {
        let (s, v) = t
            .call(
                Method::PATCH,
                &format!("/v1/orgs/{org}"),
                Some(&t.admin.clone()),
                Some(json!({"delegated": [prefix]})),
            )
            .await;
        assert!(s.is_client_error(), "{org} {prefix}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(whose)),
            "{v}"
        );
    }
    let (s, v) = t
        .admin_post(
            "/v1/sites",
            json!({"name": "noc-squat", "region": "north", "role": "spoke", "lan_prefixes": ["10.1.200.0/24"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("delegated to organisation trust-a")),
        "{v}"
    );

    // Space taken back: what a-main holds stays, nothing new is claimed.
    t.delegate("trust-a", &["10.1.0.0/24"]).await;
    let (_, org) = t.as_token(a, Method::GET, "/v1/orgs/trust-a", None).await;
    assert_eq!(org["delegated"], json!(["10.1.0.0/24"]), "{org}");
    let (s, v) = patch(a, json!({"lan_prefixes": ["10.1.0.0/24", "10.1.5.0/24"]})).await;
    assert_eq!(s, StatusCode::OK, "what it holds stays: {v}");
    let (s, v) = patch(a, json!({"lan_prefixes": ["10.1.0.0/24", "10.1.6.0/24"]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (_, audit) = t.admin_get("/v1/audit").await;
    assert!(
        audit
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["action"] == "org.update"
                && e["detail"].as_str().is_some_and(|d| d.contains(
                    "after: description \"trust-a for tests\", delegated [10.1.0.0/24]"
                ))),
        "{audit}"
    );
}

/// Overlay blocks: the NOC delegates an organisation a block inside a
/// region's (never over another organisation's delegation or sites, never
/// outside a region), its new sites get their addresses there (and the
/// region's pool once it is full; another organisation's never), its
/// sites' filters hold the block as one prefix, and a site added inside it
/// changes no other site's filter. A region holding a block is not deleted
/// under it.
#[tokio::test]
async fn organisations_get_overlay_blocks_and_their_filters_stay_small() {
    let World { t, a, b } = world().await;
    let (a, b) = (a.1.as_str(), b.1.as_str());
    let patch = |org: &str, space: Value| {
        let (t, path) = (&t, format!("/v1/orgs/{org}"));
        async move {
            t.call(
                Method::PATCH,
                &path,
                Some(&t.admin.clone()),
                Some(json!({"delegated": space})),
            )
            .await
        }
    };
    let (_, main) = t.admin_get("/v1/sites/a-main").await;
    let main_v4 = main["addresses"][0].as_str().expect("address").to_owned();
    let block = "100.64.4.0/30";
    t.delegate("trust-a", &["10.1.0.0/16", block, "fd7a:6e65::4:0/126"])
        .await;

    // Refused, storing nothing: over trust-a's block, over a site of
    // another organisation, outside every region, host bits.
    refused(
        patch("practice-b", json!(["10.2.0.0/16", "100.64.4.0/29"])).await,
        StatusCode::CONFLICT,
        "delegated to organisation trust-a",
    );
    let (_, bs) = t.admin_get("/v1/sites/b-surgery").await;
    let b_v4 = bs["addresses"][0]
        .as_str()
        .expect("address")
        .replace("/32", "/31");
    let b_v4: ipnet::Ipv4Net = b_v4.parse().expect("prefix");
    refused(
        patch(
            "trust-a",
            json!(["10.1.0.0/16", block, b_v4.trunc().to_string()]),
        )
        .await,
        StatusCode::CONFLICT,
        "site b-surgery",
    );
    refused(
        patch("trust-a", json!(["100.64.200.0/24"])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not inside one region's block",
    );
    let (_, org) = t.admin_get("/v1/orgs/trust-a").await;
    assert_eq!(
        org["delegated"],
        json!(["10.1.0.0/16", block, "fd7a:6e65::4:0/126"]),
        "nothing stored: {org}"
    );

    // trust-a's new sites fill its block, then the pool; practice-b's
    // never enter it.
    let inside = |v: &Value| {
        let a: std::net::Ipv4Addr = v["site"]["addresses"][0]
            .as_str()
            .expect("address")
            .trim_end_matches("/32")
            .parse()
            .expect("address");
        let b: ipnet::Ipv4Net = block.parse().expect("block");
        b.contains(&a)
    };
    let mut credentials = Vec::new();
    for i in 0..5 {
        let v = t
            .site_as(
                a,
                json!({"name": format!("a-{i}"), "region": "north", "role": "spoke"}),
            )
            .await;
        assert_eq!(inside(&v), i < 4, "a-{i}: {v}");
        if i < 4 {
            let v6 = v["site"]["addresses"][1].as_str().expect("v6");
            assert!(v6.starts_with("fd7a:6e65::4:"), "the IPv6 block too: {v6}");
        }
        let token = v["token"].as_str().expect("token");
        credentials.push(t.enrolled(token, None).await);
        let v = t
            .site_as(
                b,
                json!({"name": format!("b-{i}"), "region": "north", "role": "spoke"}),
            )
            .await;
        assert!(!inside(&v), "b-{i}: {v}");
    }

    // The organisation's sources: its block, its LAN space, and what lies
    // outside them (a-main, from before the block; a-4, the pool).
    let (s, config) = t.agent_config(&credentials[0], 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{config}");
    let own: Vec<&str> = config["filter"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["reason"]["by"] == "same_org")
        .and_then(|r| r["from"].as_array())
        .expect("same organisation")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        own.contains(&"10.1.0.0/16") && own.contains(&block),
        "{own:?}"
    );
    assert!(own.contains(&main_v4.as_str()), "{own:?}");
    assert_eq!(
        own.len(),
        7,
        "block, LAN space, fd7a block, a-main and a-4 (v4, v6): {own:?}"
    );

    // Taking a site out of the block and putting one in changes no other
    // site's filter.
    let (_, before) = t.admin_get("/v1/sites/a-0").await;
    let (s, _) = t.as_token(a, Method::DELETE, "/v1/sites/a-1", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let v = t
        .site_as(
            a,
            json!({"name": "a-5", "region": "north", "role": "spoke"}),
        )
        .await;
    assert!(inside(&v), "a-5 takes a-1's place in the block: {v}");
    let (_, after) = t.admin_get("/v1/sites/a-0").await;
    assert_eq!(
        before["revision"], after["revision"],
        "a-0's config is untouched"
    );

    // A region whose block holds a delegation stays.
    t.region("south", false).await;
    let (_, south) = t.admin_get("/v1/regions/south").await;
    let south_block: ipnet::Ipv4Net = south["ipv4_block"]
        .as_str()
        .expect("block")
        .parse()
        .expect("block");
    let b_block = ipnet::Ipv4Net::new(south_block.network(), 28).expect("block");
    t.delegate("practice-b", &["10.2.0.0/16", &b_block.to_string()])
        .await;
    refused(
        t.call(
            Method::DELETE,
            "/v1/regions/south",
            Some(&t.admin.clone()),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "orgs undelegate practice-b",
    );
    t.delegate("practice-b", &["10.2.0.0/16"]).await;
    let (s, v) = t
        .call(
            Method::DELETE,
            "/v1/regions/south",
            Some(&t.admin.clone()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");

    // A region all delegated to one organisation has no room for
    // another's site, and the refusal says what to do (naming no one).
    t.region("west", false).await;
    let (_, west) = t.admin_get("/v1/regions/west").await;
    let west_block = west["ipv4_block"].as_str().expect("block").to_owned();
    t.delegate(
        "trust-a",
        &["10.1.0.0/16", block, "fd7a:6e65::4:0/126", &west_block],
    )
    .await;
    let (s, v) = t
        .as_token(
            b,
            Method::POST,
            "/v1/sites",
            Some(json!({"name": "b-west", "region": "west", "role": "spoke"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let message = v["message"].as_str().expect("message");
    assert!(message.contains("orgs delegate practice-b"), "{v}");
    assert!(
        !message.contains("trust-a"),
        "names no other organisation: {v}"
    );
}

/// Renumbering: a site from before its organisation's block moves into
/// it with its old address beside the new (in its own config and the
/// view), the old one goes only once its agent has applied the new, and
/// every refusal says what to do. Another organisation's token finds no
/// such site.
#[tokio::test]
async fn a_site_moves_into_its_organisations_block_old_and_new_side_by_side() {
    let World { t, a, b } = world().await;
    let (a, b) = (a.1.as_str(), b.1.as_str());
    let v = t
        .site_as(
            a,
            json!({"name": "a-old", "region": "north", "role": "spoke"}),
        )
        .await;
    let old = v["site"]["addresses"][0]
        .as_str()
        .expect("address")
        .to_owned();
    let credential = t.enrolled(v["token"].as_str().expect("token"), None).await;
    let renumber = |token: &str, finish: bool| {
        let (t, token) = (&t, token.to_owned());
        async move {
            t.as_token(
                &token,
                Method::POST,
                "/v1/sites/a-old/renumber",
                Some(json!({ "finish": finish })),
            )
            .await
        }
    };
    refused(
        renumber(a, false).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "orgs delegate trust-a",
    );
    t.delegate("trust-a", &["10.1.0.0/16", "100.64.4.0/30"])
        .await;
    let (s, _) = renumber(b, false).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another organisation's site");

    let (s, v) = renumber(a, false).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let addresses: Vec<&str> = v["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        addresses.contains(&"100.64.4.0/32"),
        "the block's first free: {v}"
    );
    assert!(addresses.contains(&old.as_str()), "the old one stays: {v}");
    assert_eq!(v["former_addresses"], json!([old]), "{v}");
    let (_, config) = t.agent_config(&credential, 0, 0).await;
    let on_interface = config["interface"]["addresses"].to_string();
    assert!(
        on_interface.contains("100.64.4.0/32") && on_interface.contains(&old),
        "{config}"
    );
    refused(renumber(a, false).await, StatusCode::CONFLICT, "--finish");

    // Not before the agent has applied the new address.
    refused(
        renumber(a, true).await,
        StatusCode::CONFLICT,
        "a-old (applied revision 0",
    );
    let revision = config["revision"].as_u64().expect("revision");
    let (s, v) = t
        .call(
            Method::POST,
            "/v1/agent/report",
            Some(&credential),
            Some(json!({ "applied_revision": revision })),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = renumber(a, true).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        !v["addresses"].to_string().contains(&old),
        "the old one is gone: {v}"
    );
    assert!(v.get("former_addresses").is_none(), "{v}");
    let (_, config) = t.agent_config(&credential, 0, 0).await;
    assert!(
        !config["interface"]["addresses"].to_string().contains(&old),
        "{config}"
    );
    refused(
        renumber(a, true).await,
        StatusCode::CONFLICT,
        "not being renumbered",
    );
    refused(
        renumber(a, false).await,
        StatusCode::CONFLICT,
        "already in its organisation's blocks",
    );

    let (_, audit) = t.as_token(a, Method::GET, "/v1/audit", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["object"] == "a-old")
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"site.renumber") && actions.contains(&"site.renumber.finish"),
        "{audit}"
    );
}
