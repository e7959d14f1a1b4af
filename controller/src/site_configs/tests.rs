use std::collections::HashMap;

use proptest::prelude::*;
use wardnet_common::delta::ConfigUpdate;
use wardnet_common::wire::SiteState;

use super::*;
use crate::model::Region;
use wardnet_common::policy::Source;
use wardnet_common::wire::Role;
use wardnet_common::PublicKey;

fn name(s: &str) -> Name {
    s.parse().expect("name")
}

pub(crate) fn settings() -> NetworkSettings {
    NetworkSettings {
        overlay_v4: "100.64.0.0/10".parse().expect("overlay"),
        overlay_v6: Some("fd7a:6e65::/48".parse().expect("overlay6")),
        region_prefix_len_v4: 20,
        region_prefix_len_v6: 64,
        routed_prefixes: ["10.0.0.0/8".parse().expect("prefix")].into(),
        listen_port: 51820,
        mtu: 1420,
        persistent_keepalive: 25,
    }
}

const REGIONS: u8 = 3;
const SITES: u8 = 8;

fn site_name(r: u8, i: u8) -> Name {
    name(&format!("s{r}-{i}"))
}

/// Regions r0..r2 (r1 mesh); site i of each region is a hub for i < 2,
/// the last one an agentless spoke.
fn base() -> Model {
    let regions = (0..REGIONS)
        .map(|r| Region {
            name: name(&format!("r{r}")),
            mesh: r == 1,
            ipv4_block: format!("100.64.{}.0/20", u32::from(r) * 16)
                .parse()
                .expect("block"),
            ipv6_block: Some(format!("fd7a:6e65:0:{r}::/64").parse().expect("block6")),
            created_at: 0,
        })
        .collect();
    Model::from_parts(regions, Vec::new(), Default::default())
}

fn new_site(r: u8, i: u8, lan: Option<u8>, active: bool) -> Site {
    Site {
        inputs: crate::model::SiteInputs {
            name: site_name(r, i),
            region: name(&format!("r{r}")),
            org: name(["default", "org-a", "org-b"][usize::from((r + i) % 3)]),
            role: if i < 2 { Role::Hub } else { Role::Spoke },
            state: if active {
                SiteState::Active
            } else {
                SiteState::Pending
            },
            agentless: i == SITES - 1,
            lan_prefixes: lan
                .map(|l| format!("10.{r}.{l}.0/24").parse().expect("lan"))
                .into_iter()
                .collect(),
            endpoint: Some(
                format!("198.51.100.{}:51820", r * 16 + i)
                    .parse()
                    .expect("ep"),
            ),
            public_key: active.then(|| PublicKey::from_bytes([r * 16 + i + 1; 32])),
            ipv4: format!("100.64.{}.{}", u32::from(r) * 16, i + 1)
                .parse()
                .expect("v4"),
            ipv6: Some(format!("fd7a:6e65:0:{r}::{}", i + 1).parse().expect("v6")),
            created_at: 0,
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

#[derive(Debug, Clone)]
enum Op {
    /// Create (pending or active) or activate a site.
    Up {
        r: u8,
        i: u8,
        lan: Option<u8>,
    },
    Revoke {
        r: u8,
        i: u8,
    },
    Delete {
        r: u8,
        i: u8,
    },
    Lan {
        r: u8,
        i: u8,
        lan: Option<u8>,
    },
    Endpoint {
        r: u8,
        i: u8,
        port: u16,
    },
    /// Add policy item `k` (a rule or a service), or remove it when
    /// present.
    Policy {
        k: u8,
    },
    /// Delegate space `k` to its organisation, or take it back. Nothing
    /// checks that no other organisation's site is inside: such space
    /// must count address by address, and coming or going inside it must
    /// reach the filters holding it.
    Delegate {
        k: u8,
    },
}

/// The space `Op::Delegate` toggles, with the organisation it goes to.
const DELEGATIONS: [(&str, &str); 5] = [
    ("org-a", "100.64.0.0/29"),
    ("org-b", "100.64.16.0/30"),
    ("org-a", "10.1.0.0/22"),
    ("default", "fd7a:6e65:0:2::/125"),
    ("org-b", "10.2.0.0/16"),
];

fn toggle_delegation(m: &mut Model, k: u8) {
    let (org, p) = DELEGATIONS[usize::from(k)];
    let p: IpNet = p.parse().expect("prefix");
    let d = &mut Arc::make_mut(&mut m.policy).delegated;
    let mut space = d.get(&name(org)).cloned().unwrap_or_default();
    if !space.remove(&p) {
        space.insert(p);
    }
    d.set(&name(org), space);
}

const POLICY_ITEMS: u8 = 6;

/// The policy items the ops toggle: rules 1-4, services 4 and 5.
fn toggle_policy(m: &mut Model, k: u8) {
    use wardnet_common::policy::{Rule, RuleView, Service, ServiceView, SharedWith};
    let p = Arc::make_mut(&mut m.policy);
    let rule = |id: u64, from: &str, to: &str| RuleView {
        rule: Rule {
            id,
            from: from.parse().expect("source"),
            to: to.parse().expect("target"),
            proto: wardnet_common::policy::Proto::Tcp,
            ports: vec!["443".parse().expect("port")],
            description: String::new(),
        },
        org: name("org-b"),
        created_at: 0,
    };
    let service = |n: &str, site: Name, with: SharedWith| ServiceView {
        service: Service {
            name: name(n),
            site,
            prefixes: Default::default(),
            proto: wardnet_common::policy::Proto::Udp,
            ports: Vec::new(),
            shared_with: with,
            description: String::new(),
        },
        org: name("org-a"),
        created_at: 0,
    };
    if k < 4 {
        let id = u64::from(k) + 1;
        if let Some(i) = p.rules.iter().position(|r| r.rule.id == id) {
            p.rules.remove(i);
            return;
        }
        p.rules.push(match k {
            0 => rule(id, "org:org-a", "org:org-b"),
            1 => rule(id, "region:r1", &format!("site:{}", site_name(1, 3))),
            2 => rule(id, &format!("site:{}", site_name(1, 5)), "org:org-a"),
            _ => rule(id, "all", "service:svc-4"),
        });
        p.rules.sort_by_key(|r| r.rule.id);
    } else {
        let n = format!("svc-{k}");
        if let Some(i) = p.services.iter().position(|s| s.service.name.as_str() == n) {
            p.services.remove(i);
            return;
        }
        p.services.push(if k == 4 {
            service(
                &n,
                site_name(1, 4),
                SharedWith::Orgs([name("org-b")].into()),
            )
        } else {
            service(&n, site_name(1, 2), SharedWith::All)
        });
        p.services
            .sort_by(|a, b| a.service.name.cmp(&b.service.name));
    }
}

fn op() -> impl Strategy<Value = Op> {
    let ri = (0..REGIONS, 0..SITES);
    prop_oneof![
        4 => (ri.clone(), proptest::option::of(0u8..6)).prop_map(|((r, i), lan)| Op::Up { r, i, lan }),
        1 => ri.clone().prop_map(|(r, i)| Op::Revoke { r, i }),
        1 => ri.clone().prop_map(|(r, i)| Op::Delete { r, i }),
        2 => (ri.clone(), proptest::option::of(0u8..6)).prop_map(|((r, i), lan)| Op::Lan { r, i, lan }),
        2 => (ri, 1000u16..1010).prop_map(|((r, i), port)| Op::Endpoint { r, i, port }),
        2 => (0..POLICY_ITEMS).prop_map(|k| Op::Policy { k }),
        2 => (0..DELEGATIONS.len() as u8).prop_map(|k| Op::Delegate { k }),
    ]
}

/// Apply one op to the model; (before, after) of the site it changed.
fn run(m: &mut Model, op: &Op) -> Option<(Option<Site>, Option<Site>)> {
    let lan_free = |m: &Model, r: u8, i: u8, lan: Option<u8>| {
        lan.is_none_or(|l| {
            let p: IpNet = format!("10.{r}.{l}.0/24").parse().expect("lan");
            m.lan_overlapping(&p, &site_name(r, i)).is_none()
        })
    };
    match *op {
        Op::Up { r, i, lan } => {
            let before = m.sites.get(&site_name(r, i)).map(|s| Site::clone(s));
            let after = match &before {
                None if lan_free(m, r, i, lan) => new_site(r, i, lan, (i + r) % 3 != 0),
                Some(b) if b.state == SiteState::Pending => {
                    let mut a = new_site(r, i, None, true);
                    a.lan_prefixes = b.lan_prefixes.clone();
                    a.revision = b.revision;
                    a
                }
                _ => return None,
            };
            m.upsert_site(after.clone());
            Some((before, Some(after)))
        }
        Op::Revoke { r, i } => {
            let before = m.sites.get(&site_name(r, i)).map(|s| Site::clone(s))?;
            let mut after = before.clone();
            after.state = SiteState::Revoked;
            m.upsert_site(after.clone());
            Some((Some(before), Some(after)))
        }
        Op::Delete { r, i } => {
            let before = m.remove_site(&site_name(r, i))?;
            m.drop_services_of(&before.name);
            Some((Some(before), None))
        }
        Op::Policy { k } => {
            toggle_policy(m, k);
            None
        }
        Op::Delegate { k } => {
            toggle_delegation(m, k);
            // Half the time as the writer does, half as if nobody had:
            // sources read from the sites then, which must agree.
            if k % 2 == 0 {
                m.refresh_space();
            }
            None
        }
        Op::Lan { r, i, lan } => {
            let before = m.sites.get(&site_name(r, i)).map(|s| Site::clone(s))?;
            if !lan_free(m, r, i, lan) {
                return None;
            }
            let mut after = before.clone();
            after.lan_prefixes = lan
                .map(|l| format!("10.{r}.{l}.0/24").parse().expect("lan"))
                .into_iter()
                .collect();
            m.upsert_site(after.clone());
            Some((Some(before), Some(after)))
        }
        Op::Endpoint { r, i, port } => {
            let before = m.sites.get(&site_name(r, i)).map(|s| Site::clone(s))?;
            let mut after = before.clone();
            after.endpoint = Some(
                format!("203.0.113.{}:{port}", r * 16 + i)
                    .parse()
                    .expect("ep"),
            );
            m.upsert_site(after.clone());
            Some((Some(before), Some(after)))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// After any sequence of grouped changes (sites and the policy):
    /// every site's incremental render (peers, routes, the filter)
    /// equals a full render of the model; revisions only grow;
    /// and from any revision an agent saw, the answer it is sent
    /// (steps, or the full config) brings it exactly to the latest.
    #[test]
    fn incremental_configs_equal_full_renders_and_deltas_chain(
        groups in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 1..30)
    ) {
        let net = settings();
        let mut model = base();
        let mut configs = OrdMap::new();
        // Every config an agent could have been served, per site.
        let mut seen: HashMap<Name, Vec<SiteConfig>> = HashMap::new();
        for group in &groups {
            let mut touches = Touches::default();
            let policy = model.policy.clone();
            for op in group {
                if let Some((before, after)) = run(&mut model, op) {
                    touches.site_changed(&model, before.as_ref(), after.as_ref());
                    if after.is_none() {
                        // A site created again under the name is a new
                        // site: its agent enrols afresh (revision 0).
                        seen.remove(&before.as_ref().expect("deleted").name);
                    }
                }
            }
            // As the writer does: the sites a policy change admits into.
            if !Arc::ptr_eq(&policy, &model.policy) {
                for t in model.policy_touches(&policy, &model.policy) {
                    touches.policy_target(&model, &t);
                }
            }
            let revisions: HashMap<Name, u64> =
                model.sites.values().map(|s| (s.name.clone(), s.revision)).collect();
            apply(&mut model, &mut configs, &net, touches);
            for org in ["default", "org-a", "org-b"] {
                let org = name(org);
                let indexed = IpNet::aggregate(&model.sources(&Source::Org(org.clone())));
                prop_assert_eq!(indexed, model.sources_read(&org), "organisation {}", org);
            }
            for site in model.sites.values() {
                let want = render(&model, &net, &site.name);
                let got = configs.get(&site.name).map(|r| r.to_config());
                prop_assert_eq!(&got, &want, "site {}", site.name);
                if let Some(old) = revisions.get(&site.name) {
                    prop_assert!(site.revision >= *old);
                }
                let Some(render) = configs.get(&site.name) else { continue };
                prop_assert_eq!(render.revision, site.revision);
                let latest = render.to_config();
                let history = seen.entry(site.name.clone()).or_default();
                for earlier in history.iter().filter(|c| c.revision < latest.revision) {
                    let answer: ConfigUpdate = serde_json::from_slice(&render.update_bytes(earlier.revision))
                        .expect("answer parses");
                    let mut cfg = earlier.clone();
                    match answer {
                        ConfigUpdate::Full { config } => cfg = config,
                        ConfigUpdate::Deltas { steps } => cfg.apply_deltas(&steps).expect("steps chain"),
                    }
                    prop_assert_eq!(&cfg, &latest);
                }
                if history.last().is_none_or(|c| c.revision < latest.revision) {
                    history.push(latest);
                }
            }
        }
    }
}

#[test]
fn route_cover_follows_adds_and_removes() {
    let p = |s: &str| -> IpNet { s.parse().expect("prefix") };
    let mut c = RouteCover::default();
    let mut d = RouteDiff::default();
    for s in ["10.1.0.0/24", "10.1.1.0/24", "10.1.0.0/24"] {
        c.add(p(s), &mut d);
    }
    c.add(p("10.0.0.0/8"), &mut d);
    assert_eq!(
        c.routes.iter().copied().collect::<Vec<_>>(),
        [p("10.0.0.0/8")]
    );
    c.remove(p("10.0.0.0/8"), &mut d);
    assert_eq!(
        c.routes.iter().copied().collect::<Vec<_>>(),
        [p("10.1.0.0/24"), p("10.1.1.0/24")]
    );
    c.remove(p("10.1.0.0/24"), &mut d);
    assert_eq!(
        c.routes.len(),
        2,
        "a prefix added twice stays until removed twice"
    );
    c.remove(p("10.1.0.0/24"), &mut d);
    assert_eq!(
        c.routes.iter().copied().collect::<Vec<_>>(),
        [p("10.1.1.0/24")]
    );
    assert_eq!(
        d.added.iter().copied().collect::<Vec<_>>(),
        [p("10.1.1.0/24")]
    );
    assert!(d.removed.is_empty());
}
