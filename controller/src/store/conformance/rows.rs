//! Cases on stored rows: constraints, batches, tokens, organisations,
//! policy, audit and reports.

use std::sync::Arc;

use wardnet_common::PrivateKey;

use super::*;
use crate::store::*;
use wardnet_common::Name;

pub(super) async fn unique_constraints_name_the_clash(s: &dyn Store) {
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

pub(super) async fn a_failed_batch_leaves_nothing_behind(s: &dyn Store) {
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

pub(super) async fn concurrent_batches_fail_independently(s: Arc<dyn Store>) {
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

pub(super) async fn tokens_are_single_use_and_expire(s: &dyn Store) {
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
    let consume = |now: i64| Write::ConsumeEnrolToken {
        hash: "h1".into(),
        site: "a".parse().expect("name"),
        now,
        sealed: format!("sealed-{now}"),
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
    let used = s.enrol_token("h1").await.expect("read").expect("exists");
    let won = if a.is_ok() { 50 } else { 51 };
    assert_eq!(
        (used.used_at, used.sealed),
        (Some(won), Some(format!("sealed-{won}"))),
        "the winner's credential is kept, sealed"
    );
    assert!(s.enrol_token("nope").await.expect("read").is_none());
}

/// Organisations: `default` exists from the migration; sites and scoped
/// tokens must name an existing one and hold it in place; audit entries
/// filter by it.
pub(super) async fn organisations_are_referred_to_and_held(s: &dyn Store) {
    let org = |n: &str| crate::model::Org {
        name: n.parse().expect("name"),
        description: format!("{n} trust"),
        created_at: 3,
        delegated: ["10.1.0.0/16".parse().expect("prefix")].into(),
    };
    let names = |orgs: Vec<crate::model::Org>| -> Vec<String> {
        orgs.into_iter().map(|o| o.name.to_string()).collect()
    };
    assert_eq!(names(s.orgs().await.expect("orgs")), ["default"]);
    s.commit(vec![
        Write::InsertOrg(org("trust-a")),
        Write::InsertRegion(region("north", "100.64.0.0/20")),
    ])
    .await
    .expect("org");
    let dup = s.commit(vec![Write::InsertOrg(org("trust-a"))]).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    // Its delegated LAN space reads back with the policy, and changes.
    let trust: Name = "trust-a".parse().expect("name");
    let delegated = |p: &str| -> std::collections::BTreeSet<ipnet::IpNet> {
        [p.parse().expect("prefix")].into()
    };
    let policy = s.load().await.expect("load").policy;
    assert_eq!(
        policy.delegated,
        [(trust.clone(), delegated("10.1.0.0/16"))].into()
    );
    s.commit(vec![
        Write::DelegateLans {
            org: trust.clone(),
            prefixes: delegated("10.2.0.0/16"),
        },
        Write::DescribeOrg {
            org: trust.clone(),
            description: "renamed".into(),
        },
    ])
    .await
    .expect("delegate");
    let policy = s.load().await.expect("load").policy;
    assert_eq!(
        policy.delegated,
        [(trust.clone(), delegated("10.2.0.0/16"))].into()
    );
    let stored = s.orgs().await.expect("orgs");
    let t = stored.iter().find(|o| o.name == trust).expect("trust-a");
    assert_eq!(
        (t.description.as_str(), &t.delegated),
        ("renamed", &delegated("10.2.0.0/16"))
    );

    let mut lost = site("gp-lost", "north", "100.64.0.9");
    lost.org = "no-such-org".parse().expect("name");
    match s.commit(vec![Write::InsertSite(lost)]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "sites.org"),
        other => panic!("a site in a missing organisation: {other:?}"),
    }
    let mut gp = site("gp-a", "north", "100.64.0.10");
    gp.org = "trust-a".parse().expect("name");
    s.commit(vec![Write::InsertSite(gp.clone())])
        .await
        .expect("site");
    let loaded = s.load().await.expect("load");
    assert_eq!(loaded.sites, vec![gp.clone()], "the organisation is stored");
    match s.commit(vec![Write::DeleteOrg(gp.org.clone())]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "sites.org"),
        other => panic!("deleting an organisation with sites: {other:?}"),
    }
    s.commit(vec![
        Write::DeleteSite(gp.name.clone()),
        Write::InsertAdminToken {
            id: "tok-a".into(),
            hash: "scoped".into(),
            description: "trust-a IT".into(),
            created_at: 4,
            org: Some(gp.org.clone()),
        },
        Write::Audit(NewAudit {
            at: 4,
            actor: "local".into(),
            action: "token.create".into(),
            object: "tok-a".into(),
            detail: None,
            org: Some(gp.org.clone()),
        }),
        Write::Audit(NewAudit {
            at: 5,
            actor: "local".into(),
            action: "region.create".into(),
            object: "north".into(),
            detail: None,
            org: None,
        }),
    ])
    .await
    .expect("token");
    assert_eq!(
        s.admin_token("scoped")
            .await
            .expect("read")
            .and_then(|t| t.org),
        Some(gp.org.clone())
    );
    let bad = s
        .commit(vec![Write::InsertAdminToken {
            id: "tok-x".into(),
            hash: "x".into(),
            description: "x".into(),
            created_at: 4,
            org: Some("no-such-org".parse().expect("name")),
        }])
        .await;
    assert!(
        matches!(&bad, Err(StoreError::Conflict { what }) if what == "admin_tokens.org"),
        "{bad:?}"
    );
    let theirs = s.audit(10, None, Some(&gp.org)).await.expect("audit");
    assert_eq!(
        theirs.iter().map(|e| e.object.as_str()).collect::<Vec<_>>(),
        ["tok-a"]
    );
    assert_eq!(s.audit(10, None, None).await.expect("audit").len(), 2);
    match s.commit(vec![Write::DeleteOrg(gp.org.clone())]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "admin_tokens.org"),
        other => panic!("deleting an organisation with a token: {other:?}"),
    }
    s.commit(vec![Write::InsertOrg(org("empty"))])
        .await
        .expect("org");
    s.commit(vec![Write::DeleteOrg("empty".parse().expect("name"))])
        .await
        .expect("an unused organisation goes");
    assert_eq!(names(s.orgs().await.expect("orgs")), ["default", "trust-a"]);
}

/// Policy rules and services: ids and names are unique, a rule holds its
/// organisation, a service goes with its site, and both read back as
/// written.
pub(super) async fn policy_rules_and_services(s: &dyn Store) {
    use wardnet_common::policy::{Rule, Service, SharedWith};
    let org: Name = "trust-a".parse().expect("name");
    s.commit(vec![
        Write::InsertOrg(crate::model::Org {
            name: org.clone(),
            description: String::new(),
            created_at: 1,
            delegated: Default::default(),
        }),
        Write::InsertRegion(region("north", "100.64.0.0/20")),
        Write::InsertSite(site("lth-1", "north", "100.64.0.10")),
    ])
    .await
    .expect("setup");
    let rule = RuleView {
        rule: Rule {
            id: 1,
            from: "region:north".parse().expect("source"),
            to: "org:trust-a".parse().expect("target"),
            proto: "tcp".parse().expect("proto"),
            ports: vec![
                "443".parse().expect("port"),
                "8000-8080".parse().expect("range"),
            ],
            description: "referrals".into(),
        },
        org: org.clone(),
        created_at: 2,
    };
    let service = ServiceView {
        service: Service {
            name: "pacs".parse().expect("name"),
            site: "lth-1".parse().expect("name"),
            prefixes: ["100.64.0.10/32".parse().expect("prefix")].into(),
            proto: "any".parse().expect("proto"),
            ports: Vec::new(),
            shared_with: SharedWith::Orgs(["gp-b".parse().expect("name")].into()),
            description: String::new(),
        },
        org: "default".parse().expect("name"),
        created_at: 3,
    };
    s.commit(vec![
        Write::InsertRule(rule.clone()),
        Write::InsertService(service.clone()),
    ])
    .await
    .expect("policy");
    let p = s.load().await.expect("read").policy;
    assert_eq!(p.rules, vec![rule.clone()]);
    assert_eq!(p.next_rule_id, 2);
    assert_eq!(p.services, vec![service.clone()]);
    match s.commit(vec![Write::InsertRule(rule.clone())]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "policy_rules.id"),
        other => panic!("a second rule 1: {other:?}"),
    }
    let mut stray = rule.clone();
    stray.rule.id = 2;
    stray.org = "no-such-org".parse().expect("name");
    match s.commit(vec![Write::InsertRule(stray)]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "policy_rules.org"),
        other => panic!("a rule for a missing organisation: {other:?}"),
    }
    let dup = s.commit(vec![Write::InsertService(service.clone())]).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    // Named within an organisation: another's pacs is another service,
    // and deleting one leaves the other.
    let mut theirs = service.clone();
    theirs.org = org.clone();
    theirs.created_at = 4;
    s.commit(vec![Write::InsertService(theirs.clone())])
        .await
        .expect("the same name in another organisation");
    assert_eq!(
        s.load().await.expect("read").policy.services,
        vec![service.clone(), theirs.clone()]
    );
    s.commit(vec![Write::DeleteService {
        org: service.org.clone(),
        name: service.service.name.clone(),
    }])
    .await
    .expect("delete one");
    assert_eq!(s.load().await.expect("read").policy.services, vec![theirs]);
    match s.commit(vec![Write::DeleteOrg(org.clone())]).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "policy_rules.org"),
        other => panic!("deleting an organisation a rule admits into: {other:?}"),
    }
    s.commit(vec![
        Write::DeleteSite("lth-1".parse().expect("name")),
        Write::DeleteRule(1),
    ])
    .await
    .expect("delete");
    let after = s.load().await.expect("read").policy;
    assert_eq!((after.rules.len(), after.services.len()), (0, 0));
    assert_eq!(after.next_rule_id, 2, "rule 1's number is not given again");
    s.commit(vec![Write::DeleteOrg(org)])
        .await
        .expect("nothing holds it now");
}

/// Site lth-1 (of `default`) with service pacs, and a rule into it.
pub(super) async fn policy_with_a_service(s: &dyn Store) {
    use wardnet_common::policy::{Rule, Service, SharedWith};
    let default: Name = "default".parse().expect("name");
    s.commit(vec![
        Write::InsertRegion(region("north", "100.64.0.0/20")),
        Write::InsertSite(site("lth-1", "north", "100.64.0.10")),
        Write::InsertService(ServiceView {
            service: Service {
                name: "pacs".parse().expect("name"),
                site: "lth-1".parse().expect("name"),
                prefixes: Default::default(),
                proto: "tcp".parse().expect("proto"),
                ports: vec!["104".parse().expect("port")],
                shared_with: SharedWith::All,
                description: String::new(),
            },
            org: default.clone(),
            created_at: 1,
        }),
        Write::InsertRule(RuleView {
            rule: Rule {
                id: 1,
                from: "all".parse().expect("source"),
                to: "service:default/pacs".parse().expect("target"),
                proto: "tcp".parse().expect("proto"),
                ports: Vec::new(),
                description: String::new(),
            },
            org: default,
            created_at: 2,
        }),
    ])
    .await
    .expect("write");
}

pub(super) async fn audit_and_admin_tokens(s: &dyn Store) {
    s.commit(vec![
        Write::InsertAdminToken {
            id: "tok-1".into(),
            hash: "ah".into(),
            description: "ops".into(),
            created_at: 5,
            org: None,
        },
        Write::Audit(NewAudit {
            at: 6,
            actor: "tok-1".into(),
            action: "region.create".into(),
            object: "north".into(),
            detail: None,
            org: None,
        }),
        Write::Audit(NewAudit {
            at: 7,
            actor: "tok-1".into(),
            action: "region.delete".into(),
            object: "north".into(),
            detail: Some("x".into()),
            org: None,
        }),
    ])
    .await
    .expect("write");
    assert_eq!(
        s.admin_token("ah").await.expect("read").map(|t| t.id),
        Some("tok-1".into())
    );
    assert!(s.admin_token("other").await.expect("read").is_none());
    let log = s.audit(10, None, None).await.expect("audit");
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["region.delete", "region.create"]
    );
    let older = s.audit(10, Some(log[0].id), None).await.expect("audit");
    assert_eq!(older.len(), 1);
}

pub(super) async fn reports_do_not_clobber_and_are_not_clobbered(s: &dyn Store) {
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
    // An older report (an agent that moved to another replica, whose old
    // replica persists late) does not move the newer one back.
    s.commit(vec![Write::Report {
        site: "a".parse().expect("name"),
        applied_revision: 2,
        last_seen: 50,
        health: None,
    }])
    .await
    .expect("late report");
    let got = &s.load().await.expect("load").sites[0];
    assert_eq!((got.applied_revision, got.last_seen), (3, Some(99)));
}
