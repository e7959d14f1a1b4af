//! Per-site configs kept incrementally (docs/design.md, "The controller").
//!
//! Each active site has a [`SiteRender`]: its peer entries keyed by name,
//! the minimal cover of their allowed IPs as routes, and the steps of its
//! last revisions, each serialised once. A change does not re-render whole
//! configs: it names the entries it may have touched ([`Touches`]), and
//! only those are rendered again from the model and compared. A spoke's
//! enrolment costs its hub one entry, and every other primary hub one
//! allowed-IPs change per LAN prefix; only a hub change (its region may get
//! a new primary) re-renders a region's configs.
//!
//! [`crate::render::render`] stays the specification: after any sequence of
//! changes, every site's render here equals a full render of the model (a
//! property test checks it).

mod entries;
mod site_render;
#[cfg(test)]
pub(crate) mod tests;
mod touches;

pub(crate) use entries::{entry, PeerEntry, RouteCover};
pub(crate) use site_render::SiteRender;
pub(crate) use touches::Touches;

// Shared between the parts, not outside.
use entries::{mesh_carries, RouteDiff};
use site_render::Draft;

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::OrdMap;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use wardnet_common::wire::SiteConfig;
use wardnet_common::Name;

use crate::model::{Model, NetworkSettings, Site};
use crate::render::{failover_groups, hub_order, render};

/// Steps kept per site; an agent further behind gets the full config.
const MAX_STEPS: usize = 64;
/// Bytes of steps kept per site (a hub's steps can be large after a region
/// change); beyond this the oldest steps go.
const MAX_STEP_BYTES: usize = 256 * 1024;

/// Bump when rendering changes what it produces for the same model, so
/// every site gets a new revision once after an upgrade.
const RENDER_VERSION: u32 = 4;

/// What a site's stored revision was rendered with: the render version and
/// the network settings. A site whose stored fingerprint differs gets a new
/// revision at start (a changed MTU reaches every agent once).
pub(crate) fn fingerprint(net: &NetworkSettings) -> String {
    let mut h = Sha256::new();
    h.update(format!("{RENDER_VERSION}:{net:?}"));
    hex::encode(&h.finalize()[..16])
}

/// A site whose revision moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bump {
    pub site: Name,
    pub revision: u64,
}

/// Bring the renders of the touched sites in step with `model`, bumping
/// the revision (in the model too) of every site whose config changed.
pub(crate) fn apply(
    model: &mut Model,
    configs: &mut OrdMap<Name, Arc<SiteRender>>,
    net: &NetworkSettings,
    touches: Touches,
) -> Vec<Bump> {
    apply_to(model, configs, net, touches, &BTreeMap::new())
}

/// [`apply`], with the revision a changed site moves to given by `target`
/// where it names one above the site's (a replica following another's
/// changes: several revisions it did not see one by one become one step,
/// from the revision it had to the stored one); others move by one.
pub(crate) fn apply_to(
    model: &mut Model,
    configs: &mut OrdMap<Name, Arc<SiteRender>>,
    net: &NetworkSettings,
    mut touches: Touches,
    target: &BTreeMap<Name, u64>,
) -> Vec<Bump> {
    touches.settle(model);
    let mut bumps = Vec::new();
    // The policy and the sites' prefixes stay as they are while the
    // touched sites render: each source is looked up once.
    let mut sources = crate::model::SourceCache::default();
    for (name, touch) in touches.0 {
        let Some(site) = model.sites.get(&name) else {
            configs.remove(&name);
            continue;
        };
        let from = site.revision;
        // A render of another revision belongs to an earlier site of the
        // same name (deleted and created again): start afresh.
        let old = configs
            .get(&name)
            .filter(|r| r.revision == from)
            .map(|r| SiteRender::clone(r));
        let next = match old {
            Some(mut r) if !touch.full => {
                let mut d = Draft::default();
                if touch.interface {
                    let now = crate::render::interface(site, net);
                    if now != r.interface {
                        r.interface = now.clone();
                        d.interface = Some(now);
                    }
                }
                for peer in &touch.entries {
                    let e = entry(model, net, &name, peer);
                    r.set_entry(peer, e, &mut d);
                }
                if touch.filter {
                    let now = Some(Arc::new(model.filter_with(site, &mut sources)));
                    if now != r.filter {
                        r.filter.clone_from(&now);
                        d.filter = Some(now);
                    }
                }
                if touch.failover {
                    let now = failover_groups(model, site);
                    if now != r.failover {
                        r.failover.clone_from(&now);
                        d.failover = Some(now);
                    }
                }
                for (region, lans) in &touch.mesh {
                    let hubs = hub_order(model, &name, region);
                    let Some(carrier) = hubs.first() else {
                        continue;
                    };
                    if !r.peers.contains_key(&carrier.name) {
                        continue;
                    }
                    let (add, rm): (Vec<IpNet>, Vec<IpNet>) = lans
                        .iter()
                        .partition(|p| mesh_carries(model, region, carrier, p));
                    let pname = carrier.name.clone();
                    r.change_allowed(
                        &pname,
                        add.into_iter().collect(),
                        rm.into_iter().collect(),
                        &mut d,
                    );
                }
                Some((r, Some(d)))
            }
            old => render(model, net, &name).map(|cfg| rebuild(old, cfg, site)),
        };
        match next {
            None => {
                configs.remove(&name);
            }
            Some((mut r, draft)) => {
                let to = target
                    .get(&name)
                    .copied()
                    .filter(|t| *t > from)
                    .unwrap_or(from + 1);
                let changed = match draft {
                    // A site that just became active: no step to chain from.
                    None => true,
                    Some(d) => {
                        let delta = d.into_delta(&r, from, to);
                        if delta.is_empty() {
                            false
                        } else {
                            r.commit_step(delta);
                            true
                        }
                    }
                };
                if changed {
                    // (commit_step, or a fresh render, left `full` empty.)
                    r.revision = to;
                    if let Some(s) = model.sites.get_mut(&name) {
                        Arc::make_mut(s).revision = to;
                    }
                    bumps.push(Bump {
                        site: name.clone(),
                        revision: to,
                    });
                }
                configs.insert(name, Arc::new(r));
            }
        }
    }
    bumps
}

/// A full render compared with the previous one. The draft is `None` when
/// there is nothing to chain from (no previous render, or the site's
/// identity changed), and the agent is then sent the full config.
fn rebuild(old: Option<SiteRender>, cfg: SiteConfig, site: &Site) -> (SiteRender, Option<Draft>) {
    let mut fresh = SiteRender::from_config(cfg, &site.lan_prefixes);
    let Some(old) =
        old.filter(|o| o.site == fresh.site && o.region == fresh.region && o.role == fresh.role)
    else {
        return (fresh, None);
    };
    let mut d = Draft::default();
    if old.interface != fresh.interface {
        d.interface = Some(fresh.interface.clone());
    }
    if old.failover != fresh.failover {
        d.failover = Some(fresh.failover.clone());
    }
    if old.filter != fresh.filter {
        d.filter = Some(fresh.filter.clone());
    }
    for (name, e) in fresh.peers.iter() {
        match old.peers.get(name) {
            Some(o) if o == e => {}
            Some(o) if o.same_but_allowed(e) => {
                d.allowed.insert(name.clone(), o.allowed_diff(e));
            }
            _ => {
                d.set.insert(name.clone());
            }
        }
    }
    for name in old.peers.keys() {
        if !fresh.peers.contains_key(name) {
            d.removed.insert(name.clone());
        }
    }
    for r in fresh.routes.routes.iter() {
        if !old.routes.routes.contains(r) {
            d.routes.added.insert(*r);
        }
    }
    for r in old.routes.routes.iter() {
        if !fresh.routes.routes.contains(r) {
            d.routes.removed.insert(*r);
        }
    }
    fresh.steps = old.steps;
    fresh.step_bytes = old.step_bytes;
    (fresh, Some(d))
}

/// A full render of one site at its revision in `model` (no steps: an
/// agent behind it is sent the full config), or `None` when it has none.
pub(crate) fn render_one(
    model: &Model,
    net: &NetworkSettings,
    name: &Name,
) -> Option<Arc<SiteRender>> {
    let site = model.sites.get(name)?;
    let cfg = render(model, net, name)?;
    Some(Arc::new(SiteRender::from_config(cfg, &site.lan_prefixes)))
}

/// Renders for every active site of a freshly loaded model.
pub(crate) fn render_all(model: &Model, net: &NetworkSettings) -> OrdMap<Name, Arc<SiteRender>> {
    let mut out = OrdMap::new();
    for site in model.sites.values() {
        if let Some(cfg) = render(model, net, &site.name) {
            out.insert(
                site.name.clone(),
                Arc::new(SiteRender::from_config(cfg, &site.lan_prefixes)),
            );
        }
    }
    out
}
