//! Which sites' rendered configs a change can touch, so the controller
//! re-renders a neighbourhood, never the whole network (docs/design.md: a spoke
//! change costs O(1) configs).
//!
//! The answer may over-approximate; the caller re-renders these sites and
//! bumps a revision only where `render::config_hash` changed. It must never
//! under-approximate: see `render` for who carries what.

use std::collections::BTreeSet;

use wardnet_common::wire::Role;
use wardnet_common::Name;

use crate::model::{Model, Site};

/// The sites whose config may change when a site changes from `before` to
/// `after` (`None` when it was created or deleted). `model` is the model
/// after the change.
pub fn affected_by_site_change(
    model: &Model,
    before: Option<&Site>,
    after: Option<&Site>,
) -> BTreeSet<Name> {
    let mut out = BTreeSet::new();
    if let Some(name) = after.or(before).map(|s| &s.name) {
        if model.sites.contains_key(name) {
            out.insert(name.clone());
        }
    }

    let lans = |s: Option<&Site>| s.map(|s| s.lan_prefixes.clone()).unwrap_or_default();
    let active = |s: Option<&Site>| s.is_some_and(Site::is_active);
    // Other regions' primary hubs carry this site's LANs while it is active.
    let carried_lans_changed = if active(before) && active(after) {
        lans(before) != lans(after)
    } else {
        active(before) && !lans(before).is_empty() || active(after) && !lans(after).is_empty()
    };

    let mut all_hubs = carried_lans_changed;
    for s in before.into_iter().chain(after) {
        let region = model.regions.get(&s.region);
        match s.role {
            Role::Hub => {
                // Its region's sites (the primary hub may change) and the
                // hub mesh.
                out.extend(active_names(model.region_sites(&s.region)));
                all_hubs = true;
            }
            Role::Spoke => {
                out.extend(active_names(model.region_hubs(&s.region)));
                if region.is_some_and(|r| r.mesh) {
                    let spokes = model
                        .region_sites(&s.region)
                        .filter(|t| t.role == Role::Spoke);
                    out.extend(active_names(spokes));
                }
            }
        }
    }
    if all_hubs {
        let hubs = model.hubs.iter().filter_map(|n| model.sites.get(n));
        out.extend(active_names(hubs));
    }
    out
}

/// Names of the active sites among `sites` (inactive sites render no config,
/// so nothing about them can change).
fn active_names<'a>(sites: impl Iterator<Item = &'a Site> + 'a) -> impl Iterator<Item = Name> + 'a {
    sites.filter(|s| s.is_active()).map(|s| s.name.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{NetworkSettings, Region};
    use crate::render::{config_hash, render};
    use wardnet_common::wire::SiteState;
    use wardnet_common::PublicKey;

    const REGIONS: u32 = 6;
    const SPOKES: u32 = 5;

    fn name(s: &str) -> Name {
        s.parse().expect("name")
    }

    fn settings() -> NetworkSettings {
        NetworkSettings {
            overlay_v4: "100.64.0.0/10".parse().expect("overlay"),
            overlay_v6: None,
            region_prefix_len_v4: 20,
            region_prefix_len_v6: 64,
            routed_prefixes: ["10.0.0.0/8".parse().expect("prefix")].into(),
            listen_port: 51820,
            mtu: 1420,
            persistent_keepalive: 25,
        }
    }

    fn site(region: u32, host: u32, role: Role) -> Site {
        let n = match role {
            Role::Hub => format!("hub-{region}-{host}"),
            Role::Spoke => format!("gp-{region}-{host}"),
        };
        let mut key = [0u8; 32];
        key[0] = region as u8;
        key[1] = host as u8;
        Site {
            name: name(&n),
            region: name(&format!("r{region}")),
            role,
            state: SiteState::Active,
            agentless: false,
            lan_prefixes: [format!("10.{region}.{host}.0/24").parse().expect("lan")].into(),
            endpoint: (role == Role::Hub)
                .then(|| format!("198.51.100.{region}:51820").parse().expect("ep")),
            public_key: Some(PublicKey::from_bytes(key)),
            ipv4: format!("100.64.{}.{host}", region * 16)
                .parse()
                .expect("ipv4"),
            ipv6: None,
            revision: 1,
            config_hash: None,
            applied_revision: 0,
            created_at: 0,
            enrolled_at: None,
            last_seen: None,
            health: None,
            credential_hash: None,
        }
    }

    /// Regions r0..r5 (r1 and r4 mesh), each with two hubs (host 1, 2) and
    /// spokes on hosts 10..
    fn model() -> Model {
        let regions = (0..REGIONS)
            .map(|r| Region {
                name: name(&format!("r{r}")),
                mesh: r % 3 == 1,
                ipv4_block: format!("100.64.{}.0/20", r * 16).parse().expect("block"),
                ipv6_block: None,
                created_at: 0,
            })
            .collect();
        let mut sites = Vec::new();
        for r in 0..REGIONS {
            sites.push(site(r, 1, Role::Hub));
            sites.push(site(r, 2, Role::Hub));
            for h in 10..10 + SPOKES {
                sites.push(site(r, h, Role::Spoke));
            }
        }
        Model::from_parts(regions, sites)
    }

    fn names(items: &[&str]) -> BTreeSet<Name> {
        items.iter().map(|s| name(s)).collect()
    }

    /// Apply a change, and check the claimed set against the truth: every
    /// site whose config hash changed is in it.
    fn change(model: &mut Model, after: Option<Site>, deleted: Option<&str>) -> BTreeSet<Name> {
        let net = settings();
        let hashes = |m: &Model| -> BTreeMap<Name, Option<String>> {
            m.sites
                .keys()
                .map(|n| (n.clone(), render(m, &net, n).map(|c| config_hash(&c))))
                .collect()
        };
        let old = hashes(model);
        let before = match (&after, deleted) {
            (Some(a), _) => model.sites.get(&a.name).cloned(),
            (None, Some(d)) => model.remove_site(&name(d)),
            (None, None) => None,
        };
        if let Some(a) = after.clone() {
            model.upsert_site(a);
        }
        let affected = affected_by_site_change(model, before.as_ref(), after.as_ref());
        let new = hashes(model);
        for (n, h) in &new {
            if old.get(n) != Some(h) {
                assert!(
                    affected.contains(n),
                    "{n} changed but is not in {affected:?}"
                );
            }
        }
        affected
    }

    #[test]
    fn spoke_change_in_plain_region_touches_only_the_spoke_and_its_hubs() {
        let mut m = model();
        let mut s = m.sites[&name("gp-0-10")].clone();
        s.endpoint = Some("203.0.113.9:51820".parse().expect("ep"));
        let got = change(&mut m, Some(s), None);
        assert_eq!(got, names(&["gp-0-10", "hub-0-1", "hub-0-2"]));
    }

    #[test]
    fn mesh_spoke_change_touches_its_regions_spokes() {
        let mut m = model();
        let mut s = m.sites[&name("gp-1-11")].clone();
        s.endpoint = Some("203.0.113.9:51820".parse().expect("ep"));
        let got = change(&mut m, Some(s), None);
        let mut want = names(&["hub-1-1", "hub-1-2"]);
        want.extend((10..10 + SPOKES).map(|h| name(&format!("gp-1-{h}"))));
        assert_eq!(got, want);
    }

    #[test]
    fn spoke_lan_change_touches_every_hub_but_no_foreign_spoke() {
        let mut m = model();
        let mut s = m.sites[&name("gp-0-10")].clone();
        s.lan_prefixes = ["10.0.99.0/24".parse().expect("lan")].into();
        let got = change(&mut m, Some(s), None);
        assert!(got.contains(&name("gp-0-10")));
        for r in 0..REGIONS {
            assert!(got.contains(&name(&format!("hub-{r}-1"))), "{got:?}");
            assert!(got.contains(&name(&format!("hub-{r}-2"))), "{got:?}");
        }
        assert_eq!(got.len(), 1 + 2 * REGIONS as usize);
    }

    #[test]
    fn hub_change_touches_its_region_and_all_hubs() {
        let mut m = model();
        let mut h = m.sites[&name("hub-2-1")].clone();
        h.state = SiteState::Revoked;
        let got = change(&mut m, Some(h), None);
        for s in m.sites.values() {
            let expected = s.name.as_str() == "hub-2-1"
                || (s.is_active() && (s.region == name("r2") || s.role == Role::Hub));
            assert_eq!(got.contains(&s.name), expected, "{}", s.name);
        }
    }

    #[test]
    fn creating_and_deleting_spokes_stays_in_the_neighbourhood() {
        let mut m = model();
        let mut fresh = site(3, 50, Role::Spoke);
        fresh.lan_prefixes.clear();
        let got = change(&mut m, Some(fresh), None);
        assert_eq!(got, names(&["gp-3-50", "hub-3-1", "hub-3-2"]));

        let got = change(&mut m, None, Some("gp-4-12"));
        // r4 is mesh, and the deleted spoke had a LAN: its spokes and all hubs.
        assert!(!got.contains(&name("gp-4-12")));
        assert!(
            got.iter()
                .all(|n| n.as_str().starts_with("hub-") || n.as_str().starts_with("gp-4-")),
            "{got:?}"
        );
    }

    #[test]
    fn spoke_turned_hub_is_covered_by_both_roles() {
        let mut m = model();
        let mut s = m.sites[&name("gp-5-13")].clone();
        s.role = Role::Hub;
        let got = change(&mut m, Some(s), None);
        assert!(
            got.iter()
                .all(|n| n.as_str().starts_with("hub-") || n.as_str().starts_with("gp-5-")),
            "{got:?}"
        );
    }
}
