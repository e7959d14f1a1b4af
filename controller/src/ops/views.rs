//! How sites, regions and errors look to the admin who asks: a site or
//! region as the API shows it, and "not found" for whatever the asker may
//! not see (as if it did not exist).

use ipnet::IpNet;
use wardnet_common::wire::{RegionHub, RegionView, SiteView};
use wardnet_common::{Name, Role};

use super::Actor;
use crate::error::Error;
use crate::health::ONLINE_WINDOW_SECS;
use crate::model::{Model, Region, Site};
use crate::pipeline::Controller;
use crate::reports::Report;

pub(super) fn not_found_site(name: &Name) -> Error {
    Error::NotFound(format!(
        "no site named {name}; `sites list` shows the sites"
    ))
}

/// The site `name` if it exists and `actor` may see it; else 404 either way.
pub(super) fn visible_site<'m>(
    m: &'m Model,
    actor: &Actor,
    name: &Name,
) -> Result<&'m std::sync::Arc<Site>, Error> {
    m.sites
        .get(name)
        .filter(|s| actor.sees(&s.org))
        .ok_or_else(|| not_found_site(name))
}

pub(super) fn not_found_org(name: &Name) -> Error {
    Error::NotFound(format!(
        "no organisation named {name}; `orgs list` shows the organisations"
    ))
}

pub(crate) fn site_view(s: &Site, r: &Report) -> SiteView {
    SiteView {
        name: s.name.clone(),
        region: s.region.clone(),
        org: s.org.clone(),
        role: s.role,
        state: s.state,
        agentless: s.agentless,
        lan_prefixes: s.lan_prefixes.clone(),
        endpoint: s.endpoint,
        public_key: s.public_key,
        addresses: s.addresses(),
        former_addresses: s
            .renumber
            .iter()
            .flat_map(|r| r.former.iter())
            .map(|a| wardnet_common::net::host_prefix(*a))
            .collect(),
        revision: s.revision,
        applied_revision: r.applied_revision,
        created_at: s.created_at,
        enrolled_at: s.enrolled_at,
        last_seen: r.last_seen,
        health: r.health.clone(),
    }
}

pub(super) fn not_found_region(name: &Name) -> Error {
    Error::NotFound(format!(
        "no region named {name}; create it first with `wardnet-controller regions add {name}`"
    ))
}

pub(super) fn region_view(
    m: &Model,
    r: &Region,
    report: &dyn Fn(&Name) -> Report,
    now: i64,
    actor: &Actor,
) -> RegionView {
    let hubs: Vec<&Site> = m.region_hubs(&r.name).collect();
    let mut views: Vec<RegionHub> = hubs
        .iter()
        .map(|h| {
            let rep = report(&h.name);
            RegionHub {
                name: h.name.clone(),
                online: crate::health::online(rep.last_seen, now, ONLINE_WINDOW_SECS),
                peers_up: rep.health.as_ref().map(|h| h.peers_up),
                peers_total: rep.health.as_ref().map(|h| h.peers_total),
                spokes_assigned: 0,
                spokes_carried: 0,
            }
        })
        .collect();
    if !views.is_empty() {
        // A scoped admin counts only its own organisation's spokes.
        let spokes = m
            .region_sites(&r.name)
            .filter(|s| s.role == Role::Spoke && s.is_active() && actor.sees(&s.org));
        for s in spokes {
            let assigned = crate::render::hub_order(m, &s.name, &r.name)
                .first()
                .map(|h| h.name.clone());
            let rep = report(&s.name);
            let carried = rep
                .health
                .as_ref()
                .and_then(|h| h.active_hub.clone())
                .or_else(|| assigned.clone())
                .filter(|_| crate::health::online(rep.last_seen, now, ONLINE_WINDOW_SECS));
            for v in &mut views {
                if assigned.as_ref() == Some(&v.name) {
                    v.spokes_assigned += 1;
                }
                if carried.as_ref() == Some(&v.name) {
                    v.spokes_carried += 1;
                }
            }
        }
    }
    RegionView {
        name: r.name.clone(),
        mesh: r.mesh,
        ipv4_block: IpNet::V4(r.ipv4_block),
        ipv6_block: r.ipv6_block.map(IpNet::V6),
        sites: match actor.org {
            None => m.by_region.get(&r.name).map_or(0, |s| s.len() as u64),
            Some(_) => m
                .region_sites(&r.name)
                .filter(|s| actor.sees(&s.org))
                .count() as u64,
        },
        created_at: r.created_at,
        hubs: views,
    }
}

impl Controller {
    /// Whether organisation `org` exists (organisations live in the store
    /// only).
    pub(super) async fn org_exists(&self, org: &Name) -> Result<bool, Error> {
        Ok(self.store.orgs().await?.iter().any(|o| &o.name == org))
    }
}
