//! Golden tests for per-site rendering: a small literal network, and the
//! configs written out by hand from the topology rules (docs/design.md,
//! "Topology model"; controller/src/render.rs).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde_json::json;
use wardnet_common::wire::{Role, SiteConfig, SiteState};
use wardnet_common::{Name, PublicKey};
use wardnet_controller::model::{Model, NetworkSettings, Region, Site, SiteInputs};
use wardnet_controller::render::render;

const K_HUB_NORTH: &str = "o1PltapkilkcuAtfM6MUN1JnXUwnG4UuP0ZuE/hgg0o=";
const K_HUB_SOUTH: &str = "hlfg+LViqRWy5VtknOiHv1RiNp39RADb9kWL2IGZreY=";
const K_GP_A: &str = "oeQkLTydfRzR96qfry8fyuFBtvwWisGUODfhzVMZOhk=";
const K_GP_B: &str = "qqa6evTKjA2J++/jZ4lDCXaXZ/nabjvKNfD3RsHlzl8=";
const K_GP_C: &str = "KpPYQDfxd4EP+wEua+T0G8BbjM9rvaIXy1zvOONViLo=";
const K_GP_D: &str = "hGWF0d59+nUnZd8gIQtEfkz+42maOLMTOxU5r12N90I=";
const K_GP_REVOKED: &str = "lgz3ZjpT9hR0kOX9APx5TeZs3MfLqI9U0tFxjasLFws=";
const K_HUB_NORTH_2: &str = "ZljO96QV1Z3NGapjBurDuDfiGuFOeNxKvbWSvSabttw=";

fn name(s: &str) -> Name {
    s.parse().expect("name")
}

fn net() -> NetworkSettings {
    NetworkSettings {
        overlay_v4: "100.64.0.0/10".parse().expect("overlay"),
        overlay_v6: Some("fd7a:6e65::/48".parse().expect("overlay v6")),
        region_prefix_len_v4: 20,
        region_prefix_len_v6: 64,
        routed_prefixes: ["10.0.0.0/8".parse().expect("prefix")].into(),
        listen_port: 51820,
        mtu: 1420,
        persistent_keepalive: 25,
    }
}

fn region(n: &str, mesh: bool, v4: &str, v6: &str) -> Region {
    Region {
        name: name(n),
        mesh,
        ipv4_block: v4.parse().expect("block"),
        ipv6_block: Some(v6.parse().expect("block v6")),
        created_at: 1_700_000_000,
    }
}

struct S<'a> {
    name: &'a str,
    region: &'a str,
    role: Role,
    state: SiteState,
    key: Option<&'a str>,
    v4: &'a str,
    v6: &'a str,
    lans: &'a [&'a str],
    endpoint: Option<&'a str>,
}

fn site(s: S<'_>) -> Site {
    Site {
        inputs: SiteInputs {
            name: name(s.name),
            region: name(s.region),
            org: wardnet_controller::model::default_org(),
            role: s.role,
            state: s.state,
            agentless: false,
            lan_prefixes: s.lans.iter().map(|l| l.parse().expect("lan")).collect(),
            endpoint: s.endpoint.map(|e| e.parse().expect("endpoint")),
            public_key: s.key.map(|k| k.parse().expect("key")),
            ipv4: s.v4.parse().expect("ipv4"),
            ipv6: Some(s.v6.parse().expect("ipv6")),
            created_at: 1_700_000_000,
            enrolled_at: None,
            renumber: None,
            credential_hash: None,
        },
        revision: 3,
        render_fingerprint: None,
        applied_revision: 0,
        last_seen: None,
        health: None,
    }
}

fn active<'a>(
    n: &'a str,
    region: &'a str,
    role: Role,
    key: &'a str,
    v4: &'a str,
    v6: &'a str,
) -> S<'a> {
    S {
        name: n,
        region,
        role,
        state: SiteState::Active,
        key: Some(key),
        v4,
        v6,
        lans: &[],
        endpoint: None,
    }
}

fn model() -> Model {
    use Role::{Hub, Spoke};
    let regions = vec![
        region("north", false, "100.64.0.0/20", "fd7a:6e65::/64"),
        region("south", true, "100.64.16.0/20", "fd7a:6e65:0:1::/64"),
    ];
    let sites = vec![
        site(S {
            lans: &["10.1.0.0/24"],
            endpoint: Some("198.51.100.1:51820"),
            ..active(
                "hub-north",
                "north",
                Hub,
                K_HUB_NORTH,
                "100.64.0.1",
                "fd7a:6e65::1",
            )
        }),
        site(S {
            lans: &["10.1.1.0/24"],
            ..active("gp-a", "north", Spoke, K_GP_A, "100.64.0.2", "fd7a:6e65::2")
        }),
        site(active(
            "gp-b",
            "north",
            Spoke,
            K_GP_B,
            "100.64.0.3",
            "fd7a:6e65::3",
        )),
        site(S {
            state: SiteState::Pending,
            key: None,
            lans: &["10.1.9.0/24"],
            ..active(
                "gp-pending",
                "north",
                Spoke,
                K_GP_A,
                "100.64.0.4",
                "fd7a:6e65::4",
            )
        }),
        site(S {
            endpoint: Some("203.0.113.1:51820"),
            ..active(
                "hub-south",
                "south",
                Hub,
                K_HUB_SOUTH,
                "100.64.16.1",
                "fd7a:6e65:0:1::1",
            )
        }),
        site(S {
            lans: &["10.2.1.0/24"],
            ..active(
                "gp-c",
                "south",
                Spoke,
                K_GP_C,
                "100.64.16.2",
                "fd7a:6e65:0:1::2",
            )
        }),
        site(S {
            lans: &["10.2.2.0/24"],
            endpoint: Some("203.0.113.20:51820"),
            ..active(
                "gp-d",
                "south",
                Spoke,
                K_GP_D,
                "100.64.16.3",
                "fd7a:6e65:0:1::3",
            )
        }),
        site(S {
            state: SiteState::Revoked,
            lans: &["10.2.9.0/24"],
            endpoint: Some("203.0.113.30:51820"),
            ..active(
                "gp-revoked",
                "south",
                Spoke,
                K_GP_REVOKED,
                "100.64.16.4",
                "fd7a:6e65:0:1::4",
            )
        }),
    ];
    Model::from_parts(regions, sites, Default::default())
}

fn rendered(m: &Model, site: &str) -> SiteConfig {
    render(m, &net(), &name(site)).expect("active site renders")
}

/// The filter of a site in the `default` organisation: everything to its
/// own prefixes (`local`), nothing else.
/// The filter of a spoke in the `default` organisation, filtered like any
/// other: it admits its organisation's sites (every site of this model,
/// hubs included, in any state), and probes from anyone.
fn default_filter(overlay: &[&str], lans: &[&str]) -> serde_json::Value {
    let local: Vec<&str> = overlay.iter().chain(lans).copied().collect();
    json!({
        "local": local,
        "rules": [
            {"reason": {"by": "same_org"},
             "from": ["10.1.0.0/23", "10.1.9.0/24", "10.2.1.0/24", "10.2.2.0/24", "10.2.9.0/24",
                      "100.64.0.1/32", "100.64.0.2/31", "100.64.0.4/32",
                      "100.64.16.1/32", "100.64.16.2/31", "100.64.16.4/32",
                      "fd7a:6e65::1/128", "fd7a:6e65::2/127", "fd7a:6e65::4/128",
                      "fd7a:6e65:0:1::1/128", "fd7a:6e65:0:1::2/127", "fd7a:6e65:0:1::4/128"],
             "traffic": [{"proto": "any"}]},
            {"reason": {"by": "probe"}, "from": ["0.0.0.0/0", "::/0"], "to": overlay,
             "traffic": [{"proto": "icmp"}]}
        ]
    })
}

/// The filter of a hub in the `default` organisation: infrastructure, it
/// admits probes to its overlay addresses and nothing else unless a rule
/// or service names it.
fn hub_filter(overlay: &[&str], lans: &[&str]) -> serde_json::Value {
    let local: Vec<&str> = overlay.iter().chain(lans).copied().collect();
    json!({
        "local": local,
        "rules": [{"reason": {"by": "probe"}, "from": ["0.0.0.0/0", "::/0"], "to": overlay,
                   "traffic": [{"proto": "icmp"}]}]
    })
}

fn expected(v: serde_json::Value) -> SiteConfig {
    serde_json::from_value(v).expect("expected config is valid wire JSON")
}

#[test]
fn hub_north_golden() {
    let want = expected(json!({
        "revision": 3, "site": "hub-north", "region": "north", "role": "hub",
        "interface": {"addresses": ["100.64.0.1/32", "fd7a:6e65::1/128"], "listen_port": 51820, "mtu": 1420},
        "peers": [
            {"name": "gp-a", "region": "north", "role": "spoke", "public_key": K_GP_A,
             "allowed_ips": ["100.64.0.2/32", "fd7a:6e65::2/128", "10.1.1.0/24"]},
            {"name": "gp-b", "region": "north", "role": "spoke", "public_key": K_GP_B,
             "allowed_ips": ["100.64.0.3/32", "fd7a:6e65::3/128"]},
            {"name": "hub-south", "region": "south", "role": "hub", "public_key": K_HUB_SOUTH,
             "endpoint": "203.0.113.1:51820",
             "allowed_ips": ["100.64.16.0/20", "fd7a:6e65:0:1::/64", "10.2.1.0/24", "10.2.2.0/24",
                             "100.64.16.1/32", "fd7a:6e65:0:1::1/128"],
             "persistent_keepalive": 25}
        ],
        "routes": ["100.64.0.2/32", "100.64.0.3/32", "fd7a:6e65::2/128", "fd7a:6e65::3/128", "10.1.1.0/24",
                   "100.64.16.0/20", "fd7a:6e65:0:1::/64", "10.2.1.0/24", "10.2.2.0/24"],
        "filter": hub_filter(&["100.64.0.1/32", "fd7a:6e65::1/128"], &["10.1.0.0/24"])
    }));
    assert_eq!(rendered(&model(), "hub-north"), want);
}

#[test]
fn hub_south_golden() {
    let want = expected(json!({
        "revision": 3, "site": "hub-south", "region": "south", "role": "hub",
        "interface": {"addresses": ["100.64.16.1/32", "fd7a:6e65:0:1::1/128"], "listen_port": 51820, "mtu": 1420},
        "peers": [
            {"name": "gp-c", "region": "south", "role": "spoke", "public_key": K_GP_C,
             "allowed_ips": ["100.64.16.2/32", "fd7a:6e65:0:1::2/128", "10.2.1.0/24"]},
            {"name": "gp-d", "region": "south", "role": "spoke", "public_key": K_GP_D,
             "endpoint": "203.0.113.20:51820",
             "allowed_ips": ["100.64.16.3/32", "fd7a:6e65:0:1::3/128", "10.2.2.0/24"]},
            {"name": "hub-north", "region": "north", "role": "hub", "public_key": K_HUB_NORTH,
             "endpoint": "198.51.100.1:51820",
             "allowed_ips": ["100.64.0.0/20", "fd7a:6e65::/64", "10.1.0.0/24", "10.1.1.0/24",
                             "100.64.0.1/32", "fd7a:6e65::1/128"],
             "persistent_keepalive": 25}
        ],
        "routes": ["100.64.16.2/32", "fd7a:6e65:0:1::2/128", "10.2.1.0/24",
                   "100.64.16.3/32", "fd7a:6e65:0:1::3/128", "10.2.2.0/24",
                   "100.64.0.0/20", "fd7a:6e65::/64", "10.1.0.0/24", "10.1.1.0/24"],
        "filter": hub_filter(&["100.64.16.1/32", "fd7a:6e65:0:1::1/128"], &[])
    }));
    assert_eq!(rendered(&model(), "hub-south"), want);
}

#[test]
fn spoke_gp_a_golden() {
    let want = expected(json!({
        "revision": 3, "site": "gp-a", "region": "north", "role": "spoke",
        "interface": {"addresses": ["100.64.0.2/32", "fd7a:6e65::2/128"], "listen_port": 51820, "mtu": 1420},
        "peers": [
            {"name": "hub-north", "region": "north", "role": "hub", "public_key": K_HUB_NORTH,
             "endpoint": "198.51.100.1:51820",
             "allowed_ips": ["100.64.0.0/10", "fd7a:6e65::/48", "10.0.0.0/8",
                             "100.64.0.1/32", "fd7a:6e65::1/128", "10.1.0.0/24"],
             "persistent_keepalive": 25}
        ],
        // 10.0.0.0/8 contains gp-a's own LAN 10.1.1.0/24 and stays: the LAN's
        // connected route is more specific.
        "routes": ["10.0.0.0/8", "100.64.0.0/10", "fd7a:6e65::/48"],
        "filter": default_filter(&["100.64.0.2/32", "fd7a:6e65::2/128"], &["10.1.1.0/24"])
    }));
    assert_eq!(rendered(&model(), "gp-a"), want);
}

#[test]
fn mesh_spoke_gp_c_golden() {
    let want = expected(json!({
        "revision": 3, "site": "gp-c", "region": "south", "role": "spoke",
        "interface": {"addresses": ["100.64.16.2/32", "fd7a:6e65:0:1::2/128"], "listen_port": 51820, "mtu": 1420},
        "peers": [
            {"name": "gp-d", "region": "south", "role": "spoke", "public_key": K_GP_D,
             "endpoint": "203.0.113.20:51820",
             "allowed_ips": ["100.64.16.3/32", "fd7a:6e65:0:1::3/128", "10.2.2.0/24"],
             "persistent_keepalive": 25},
            {"name": "hub-south", "region": "south", "role": "hub", "public_key": K_HUB_SOUTH,
             "endpoint": "203.0.113.1:51820",
             "allowed_ips": ["100.64.0.0/10", "fd7a:6e65::/48", "10.0.0.0/8",
                             "100.64.16.1/32", "fd7a:6e65:0:1::1/128"],
             "persistent_keepalive": 25}
        ],
        "routes": ["10.0.0.0/8", "100.64.0.0/10", "fd7a:6e65::/48"],
        "filter": default_filter(&["100.64.16.2/32", "fd7a:6e65:0:1::2/128"], &["10.2.1.0/24"])
    }));
    assert_eq!(rendered(&model(), "gp-c"), want);
}

#[test]
fn pending_revoked_and_unknown_sites_render_nothing() {
    let m = model();
    for n in ["gp-pending", "gp-revoked", "nowhere"] {
        assert_eq!(render(&m, &net(), &name(n)), None, "{n}");
    }
}

#[test]
fn inactive_sites_appear_in_no_config() {
    let m = model();
    let hidden: BTreeSet<IpNet> = [
        "10.1.9.0/24",
        "10.2.9.0/24",
        "100.64.0.4/32",
        "100.64.16.4/32",
    ]
    .iter()
    .map(|p| p.parse().expect("prefix"))
    .collect();
    for n in m.sites.keys() {
        let Some(cfg) = render(&m, &net(), n) else {
            continue;
        };
        for p in &cfg.peers {
            assert!(
                !p.name.as_str().starts_with("gp-pending") && p.name.as_str() != "gp-revoked",
                "{n}: {p:?}"
            );
            assert!(p.allowed_ips.is_disjoint(&hidden), "{n}: {p:?}");
        }
        assert!(cfg.routes.is_disjoint(&hidden), "{n}: {:?}", cfg.routes);
    }
}

#[test]
fn listen_port_follows_the_sites_own_endpoint() {
    let mut m = model();
    let mut hub = Site::clone(&m.sites[&name("hub-north")]);
    hub.endpoint = Some("198.51.100.1:51999".parse().expect("endpoint"));
    m.upsert_site(hub);
    assert_eq!(rendered(&m, "hub-north").interface.listen_port, 51999);
    assert_eq!(rendered(&m, "gp-b").interface.listen_port, 51820);
}

#[test]
fn a_hub_endpoint_change_reaches_its_spokes_and_nothing_else_changes_them() {
    let m = model();
    let cfg = rendered(&m, "gp-a");
    let mut m2 = m.clone();
    let mut hub = Site::clone(&m2.sites[&name("hub-north")]);
    hub.endpoint = Some("198.51.100.99:51820".parse().expect("endpoint"));
    m2.upsert_site(hub);
    assert_ne!(cfg, rendered(&m2, "gp-a"));
    // A change elsewhere in the network leaves gp-a's config alone.
    let mut gp_d = Site::clone(&m2.sites[&name("gp-d")]);
    gp_d.endpoint = None;
    let mut m3 = m2.clone();
    m3.upsert_site(gp_d);
    assert_eq!(rendered(&m2, "gp-a"), rendered(&m3, "gp-a"));
}

/// North with a second hub: `hub-north-2` sorts after `hub-north`, so
/// `hub-north` stays primary.
fn model_with_secondary_hub() -> Model {
    let mut m = model();
    m.upsert_site(site(S {
        lans: &["10.1.2.0/24"],
        endpoint: Some("198.51.100.2:51820"),
        ..active(
            "hub-north-2",
            "north",
            Role::Hub,
            K_HUB_NORTH_2,
            "100.64.0.5",
            "fd7a:6e65::5",
        )
    }));
    m
}

fn allowed(cfg: &SiteConfig, peer: &str) -> Option<BTreeSet<String>> {
    cfg.peers
        .iter()
        .find(|p| p.name.as_str() == peer)
        .map(|p| p.allowed_ips.iter().map(|a| a.to_string()).collect())
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The hub of `cfg`'s failover group for `region` that carries it.
fn carrier(cfg: &SiteConfig, region: &str) -> String {
    let g = cfg
        .failover
        .iter()
        .find(|g| g.region.as_str() == region)
        .expect("a failover group for the region");
    assert_eq!(g.hubs.len(), 2);
    g.hubs[0].to_string()
}

fn other_hub(h: &str) -> &'static str {
    if h == "hub-north" {
        "hub-north-2"
    } else {
        "hub-north"
    }
}

#[test]
fn a_hub_pair_shares_its_region_and_both_join_the_hub_mesh() {
    let m = model_with_secondary_hub();

    // A spoke peers with both hubs; the one it is assigned to carries the
    // routed prefixes, and the config names the pair as a failover group.
    let gp_a = rendered(&m, "gp-a");
    assert_eq!(
        gp_a.peers
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["hub-north", "hub-north-2"]
    );
    let mine = carrier(&gp_a, "north");
    let own = |h: &str| -> Vec<&'static str> {
        if h == "hub-north" {
            vec!["100.64.0.1/32", "fd7a:6e65::1/128", "10.1.0.0/24"]
        } else {
            vec!["100.64.0.5/32", "fd7a:6e65::5/128", "10.1.2.0/24"]
        }
    };
    let mut carried = own(&mine);
    carried.extend(["100.64.0.0/10", "fd7a:6e65::/48", "10.0.0.0/8"]);
    assert_eq!(allowed(&gp_a, &mine), Some(strings(&carried)));
    let standby = other_hub(&mine);
    assert_eq!(allowed(&gp_a, standby), Some(strings(&own(standby))));
    for p in &gp_a.peers {
        assert_eq!(p.persistent_keepalive, Some(25), "both links stay warm");
    }

    // The hubs peer as sites of one region, with their own prefixes only;
    // each reaches other regions through the hub mesh itself.
    let h2 = rendered(&m, "hub-north-2");
    assert_eq!(
        h2.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["gp-a", "gp-b", "hub-north", "hub-south"]
    );
    assert_eq!(allowed(&h2, "hub-north"), Some(strings(&own("hub-north"))));
    assert!(h2.failover.is_empty(), "south has one hub");
    assert_eq!(
        allowed(&h2, "hub-south"),
        allowed(&rendered(&m, "hub-north"), "hub-south")
    );

    // Another region's hub peers with both; the one it is assigned to
    // carries the region's blocks and its spokes' LANs, each hub its own.
    let south = rendered(&m, "hub-south");
    let c = carrier(&south, "north");
    let mut carried = own(&c);
    carried.extend(["100.64.0.0/20", "fd7a:6e65::/64", "10.1.1.0/24"]);
    assert_eq!(allowed(&south, &c), Some(strings(&carried)));
    assert_eq!(
        allowed(&south, other_hub(&c)),
        Some(strings(&own(other_hub(&c))))
    );
}

#[test]
fn spokes_spread_over_a_hub_pair_and_a_third_hub_takes_only_its_share() {
    use wardnet_controller::render::hub_order;
    let mut m = model_with_secondary_hub();
    let spokes: Vec<Name> = (0..400).map(|i| name(&format!("gp-{i}"))).collect();
    let first = |m: &Model, s: &Name| hub_order(m, s, &name("north"))[0].name.clone();
    let before: Vec<Name> = spokes.iter().map(|s| first(&m, s)).collect();
    let on_first = before.iter().filter(|h| h.as_str() == "hub-north").count();
    assert!(
        (160..=240).contains(&on_first),
        "{on_first} of 400 on hub-north"
    );

    m.upsert_site(site(S {
        endpoint: Some("198.51.100.3:51820"),
        ..active(
            "hub-north-3",
            "north",
            Role::Hub,
            K_GP_REVOKED,
            "100.64.0.6",
            "fd7a:6e65::6",
        )
    }));
    let after: Vec<Name> = spokes.iter().map(|s| first(&m, s)).collect();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(
        after
            .iter()
            .zip(&before)
            .all(|(a, b)| a == b || a.as_str() == "hub-north-3"),
        "a spoke moves only to the new hub"
    );
    assert!((90..=180).contains(&moved), "{moved} of 400 moved");
}

#[test]
fn an_agentless_spoke_in_a_hub_pair_gets_one_hub_and_the_other_reaches_it_through_that_one() {
    let mut m = model_with_secondary_hub();
    let mut gp = Site::clone(&m.sites[&name("gp-b")]);
    gp.agentless = true;
    m.upsert_site(gp.clone());
    let cfg = rendered(&m, "gp-b");
    assert_eq!(
        cfg.peers.len(),
        1,
        "one hub: nothing on its side fails over"
    );
    assert!(cfg.failover.is_empty());
    let hub = cfg.peers[0].name.to_string();
    assert!(cfg.peers[0]
        .allowed_ips
        .contains(&"100.64.0.0/10".parse().expect("prefix")));

    let own_b: Vec<String> = gp
        .addresses()
        .iter()
        .chain(&gp.lan_prefixes)
        .map(|p| p.to_string())
        .collect();
    // Its hub peers with it; the other hub does not, and routes it to its hub.
    assert!(allowed(&rendered(&m, &hub), "gp-b").is_some());
    let other = rendered(&m, other_hub(&hub));
    assert!(allowed(&other, "gp-b").is_none());
    let via = allowed(&other, &hub).expect("the hubs peer");
    for p in &own_b {
        assert!(via.contains(p), "{p} through {hub}");
    }
}

#[test]
fn with_one_hub_left_the_region_is_as_with_one_hub() {
    let mut m = model_with_secondary_hub();
    let mut h1 = Site::clone(&m.sites[&name("hub-north")]);
    h1.state = SiteState::Revoked;
    m.upsert_site(h1);
    let gp_a = rendered(&m, "gp-a");
    assert_eq!(gp_a.peers.len(), 1);
    assert_eq!(gp_a.peers[0].name.as_str(), "hub-north-2");
    assert!(gp_a.peers[0]
        .allowed_ips
        .contains(&"100.64.0.0/10".parse().expect("prefix")));
    assert!(gp_a.failover.is_empty());
    let south = rendered(&m, "hub-south");
    assert!(allowed(&south, "hub-north").is_none());
    let h2 = allowed(&south, "hub-north-2").expect("peer");
    assert!(h2.contains("100.64.0.0/20") && h2.contains("10.1.2.0/24"));
    assert!(south.failover.is_empty());
}

/// What every rendered network must satisfy for WireGuard to work: peerings
/// are mutual with the right keys, no AllowedIP is on two peers of one
/// config, and nothing is routed to the site's own addresses.
fn assert_consistent(m: &Model) {
    let configs: BTreeMap<Name, SiteConfig> = m
        .sites
        .keys()
        .filter_map(|n| render(m, &net(), n).map(|c| (n.clone(), c)))
        .collect();
    for (n, cfg) in &configs {
        let mut seen = BTreeSet::new();
        for p in &cfg.peers {
            let other = configs
                .get(&p.name)
                .unwrap_or_else(|| panic!("{n} peers with inactive {}", p.name));
            let key: Option<PublicKey> = m.sites[&p.name].public_key;
            assert_eq!(Some(p.public_key), key, "{n} -> {}", p.name);
            assert!(
                other.peers.iter().any(|q| &q.name == n),
                "{n} peers with {} but not back",
                p.name
            );
            for a in &p.allowed_ips {
                assert!(seen.insert(*a), "{n}: {a} is on two peers");
            }
        }
        assert!(cfg.routes.is_disjoint(&cfg.interface.addresses), "{n}");
        // A failover group names peers that are hubs of its region, and
        // what moves between them (the first one's prefixes but its host
        // addresses) is on no other peer, so a move keeps AllowedIPs unique.
        for g in &cfg.failover {
            assert!(g.hubs.len() > 1, "{n}: a group of one");
            for h in &g.hubs {
                let p = cfg.peers.iter().find(|p| &p.name == h);
                let p = p.unwrap_or_else(|| panic!("{n}: group hub {h} is no peer"));
                assert_eq!((p.role, &p.region), (Role::Hub, &g.region), "{n}: {h}");
            }
            let first = cfg
                .peers
                .iter()
                .find(|p| p.name == g.hubs[0])
                .expect("peer");
            let moving = first
                .allowed_ips
                .iter()
                .filter(|a| a.prefix_len() < a.max_prefix_len());
            for a in moving {
                for other in cfg.peers.iter().filter(|p| p.name != first.name) {
                    assert!(
                        !other.allowed_ips.contains(a),
                        "{n}: {a} also on {}",
                        other.name
                    );
                }
            }
        }
    }
}

#[test]
fn rendered_networks_are_consistent() {
    assert_consistent(&model());
    assert_consistent(&model_with_secondary_hub());
}
