//! A site's peer entries as the controller keeps them, how one is rendered
//! from the model ([`entry`]), and the minimal cover of their allowed IPs
//! that becomes the site's routes.

use std::collections::BTreeSet;

use imbl::{OrdMap, OrdSet};
use ipnet::IpNet;
use wardnet_common::wire::{PeerConfig, Role};
use wardnet_common::{Endpoint, Name, PublicKey};

use crate::model::{Model, NetworkSettings, Site};
use crate::render::{
    agentless_behind, assigned_hub_is, hub_order, is_hub_lan, mesh_prefixes, own_prefixes,
    routed_prefixes,
};

/// A peer entry as the controller keeps it: like [`PeerConfig`], with
/// allowed IPs in a persistent set so a hub-mesh entry carrying a region's
/// thousands of LANs changes in O(log n).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerEntry {
    pub name: Name,
    pub region: Name,
    pub role: Role,
    pub public_key: PublicKey,
    pub endpoint: Option<Endpoint>,
    pub allowed_ips: OrdSet<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

impl PeerEntry {
    pub(super) fn from_wire(p: PeerConfig) -> Self {
        PeerEntry {
            name: p.name,
            region: p.region,
            role: p.role,
            public_key: p.public_key,
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.into_iter().collect(),
            persistent_keepalive: p.persistent_keepalive,
        }
    }

    pub(crate) fn to_wire(&self) -> PeerConfig {
        PeerConfig {
            name: self.name.clone(),
            region: self.region.clone(),
            role: self.role,
            public_key: self.public_key,
            endpoint: self.endpoint,
            allowed_ips: self.allowed_ips.iter().copied().collect(),
            persistent_keepalive: self.persistent_keepalive,
        }
    }

    /// The allowed IPs `new` has and this entry lacks, and the reverse.
    pub(super) fn allowed_diff(&self, new: &PeerEntry) -> (BTreeSet<IpNet>, BTreeSet<IpNet>) {
        let only = |a: &OrdSet<IpNet>, b: &OrdSet<IpNet>| -> BTreeSet<IpNet> {
            a.iter().filter(|p| !b.contains(*p)).copied().collect()
        };
        (
            only(&new.allowed_ips, &self.allowed_ips),
            only(&self.allowed_ips, &new.allowed_ips),
        )
    }

    /// Equal in everything but the allowed IPs.
    pub(super) fn same_but_allowed(&self, o: &PeerEntry) -> bool {
        self.name == o.name
            && self.region == o.region
            && self.role == o.role
            && self.public_key == o.public_key
            && self.endpoint == o.endpoint
            && self.persistent_keepalive == o.persistent_keepalive
    }
}

/// Routes added and removed by a change, netted out.
#[derive(Debug, Default)]
pub(super) struct RouteDiff {
    pub(super) added: BTreeSet<IpNet>,
    pub(super) removed: BTreeSet<IpNet>,
}

impl RouteDiff {
    pub(super) fn add(&mut self, p: IpNet) {
        if !self.removed.remove(&p) {
            self.added.insert(p);
        }
    }
    pub(super) fn remove(&mut self, p: IpNet) {
        if !self.added.remove(&p) {
            self.removed.insert(p);
        }
    }
}

/// The minimal cover of a counted set of prefixes, kept as prefixes come
/// and go: the same answer as [`crate::render::routes_for`] in O(log n) per
/// prefix (prefixes either nest or are disjoint, and in `IpNet` order a
/// supernet sorts before everything inside it).
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteCover {
    pub(super) candidates: OrdMap<IpNet, u32>,
    pub(super) routes: OrdSet<IpNet>,
}

impl RouteCover {
    /// The route containing `p` (routes are disjoint, so it is the greatest
    /// route at or before `p`).
    pub(super) fn covering(&self, p: &IpNet) -> Option<IpNet> {
        self.routes.get_prev(p).copied().filter(|r| r.contains(p))
    }

    pub(super) fn add(&mut self, p: IpNet, diff: &mut RouteDiff) {
        let n = self.candidates.entry(p).or_insert(0);
        *n += 1;
        if *n > 1 || self.covering(&p).is_some() {
            return;
        }
        // Usually nothing lies inside a new route: look before collecting.
        let mut inside = self.routes.range(p..=last_inside(&p)).copied().peekable();
        if inside.peek().is_some() {
            let inside: Vec<IpNet> = inside.collect();
            for r in inside {
                self.routes.remove(&r);
                diff.remove(r);
            }
        }
        self.routes.insert(p);
        diff.add(p);
    }

    pub(super) fn remove(&mut self, p: IpNet, diff: &mut RouteDiff) {
        match self.candidates.get_mut(&p) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                self.candidates.remove(&p);
            }
            None => return,
        }
        if self.routes.remove(&p).is_none() {
            return;
        }
        diff.remove(p);
        // Nothing contained p (it was a route), so what lies inside it is
        // now covered only by what lies inside it.
        let mut last: Option<IpNet> = None;
        let inside: Vec<IpNet> = self
            .candidates
            .range(p..=last_inside(&p))
            .map(|(k, _)| *k)
            .collect();
        for q in inside {
            if last.is_some_and(|l| l.contains(&q)) {
                continue;
            }
            self.routes.insert(q);
            diff.add(q);
            last = Some(q);
        }
    }
}

/// The largest prefix in `IpNet` order that lies inside `p`.
pub(super) fn last_inside(p: &IpNet) -> IpNet {
    match p {
        IpNet::V4(v) => IpNet::V4(ipnet::Ipv4Net::new(v.broadcast(), 32).unwrap_or(*v)),
        IpNet::V6(v) => IpNet::V6(ipnet::Ipv6Net::new(v.broadcast(), 128).unwrap_or(*v)),
    }
}

/// One peer entry of `site`'s config, as [`render`] renders it; `None` when
/// `peer` is not a peer of `site`.
pub(crate) fn entry(
    model: &Model,
    net: &NetworkSettings,
    site: &Name,
    peer: &Name,
) -> Option<PeerEntry> {
    let me = model.sites.get(site).filter(|s| s.is_active())?;
    let t = model.sites.get(peer).filter(|s| s.is_active())?;
    if me.name == t.name {
        return None;
    }
    let region = model.regions.get(&me.region)?;
    let keepalive = (net.persistent_keepalive != 0).then_some(net.persistent_keepalive);
    let (allowed, ka) = match me.role {
        Role::Spoke if t.region == me.region => match t.role {
            Role::Hub => {
                let hubs = hub_order(model, &me.name, &me.region);
                let i = hubs.iter().position(|h| h.name == t.name)?;
                if me.agentless && i > 0 {
                    return None;
                }
                let mut a = own_prefixes(t);
                if i == 0 {
                    a.extend(routed_prefixes(net));
                }
                (a, keepalive)
            }
            Role::Spoke if region.mesh && model.may_talk(me, t) => (own_prefixes(t), keepalive),
            Role::Spoke if region.mesh => return None,
            Role::Spoke => return None,
        },
        Role::Spoke => return None,
        Role::Hub if t.region == me.region => match t.role {
            Role::Spoke if t.agentless && !assigned_hub_is(model, t, &me.name) => return None,
            Role::Spoke => (own_prefixes(t), None),
            Role::Hub => {
                let mut a = own_prefixes(t);
                a.extend(agentless_behind(model, t));
                (a, keepalive)
            }
        },
        Role::Hub => {
            if t.role != Role::Hub {
                return None;
            }
            let other = model.regions.get(&t.region)?;
            let hubs = hub_order(model, &me.name, &t.region);
            let i = hubs.iter().position(|h| h.name == t.name)?;
            (
                mesh_prefixes(model, other, t, i == 0, hubs.len() > 1),
                keepalive,
            )
        }
    };
    Some(PeerEntry {
        name: t.name.clone(),
        region: t.region.clone(),
        role: t.role,
        public_key: t.public_key?,
        endpoint: t.endpoint,
        allowed_ips: allowed.into_iter().collect(),
        persistent_keepalive: ka,
    })
}

/// Whether the hub-mesh entry of `carrier`, the hub of `region` that
/// carries the region for the site rendered, carries `p`.
pub(super) fn mesh_carries(model: &Model, region: &Name, carrier: &Site, p: &IpNet) -> bool {
    let Some(r) = model.regions.get(region) else {
        return false;
    };
    let group = model.region_hubs(region).nth(1).is_some();
    IpNet::V4(r.ipv4_block) == *p
        || r.ipv6_block.map(IpNet::V6) == Some(*p)
        || (model.region_lan_count(region, p) > 0 && !(group && is_hub_lan(model, region, p)))
        || own_prefixes(carrier).contains(p)
}
