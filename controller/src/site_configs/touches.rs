//! What a change may have touched: for each site, the peer entries (and
//! whether its whole config) to render again. A change of one spoke names
//! O(1) sites; only a hub change names a region.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use wardnet_common::wire::Role;
use wardnet_common::Name;

use crate::model::{Model, Site};

/// What a change may have touched in one site's config.
#[derive(Debug, Default, Clone)]
pub(crate) struct Touch {
    /// Render the whole config again (the site itself changed, or its
    /// region's hubs did).
    pub(super) full: bool,
    /// Its failover groups may have changed (another region's hubs did).
    pub(super) failover: bool,
    /// Its filter may have changed (the policy, or a site it names).
    pub(super) filter: bool,
    /// Only the site's own interface settings may have changed (its
    /// endpoint): its peers and routes stay. A hub's endpoint change would
    /// otherwise render its thousands of peers again.
    pub(super) interface: bool,
    /// Render these peer entries again.
    pub(super) entries: BTreeSet<Name>,
    /// Region -> LAN prefixes whose presence in that region's hub-mesh
    /// entry may have changed.
    pub(super) mesh: BTreeMap<Name, BTreeSet<IpNet>>,
}

/// The sites a group of changes touched, and how.
#[derive(Debug, Default)]
pub(crate) struct Touches(
    pub(super) BTreeMap<Name, Touch>,
    /// Sites (as before and after a change) whose prefixes moved in or
    /// out of filters: the filters that hold them are looked up in the
    /// group's final model ([`Touches::settle`]), not the model at the
    /// time of the change. A later change of the same group may bring
    /// back a rule an earlier one removed (the policy then looks
    /// unchanged); a policy that does differ touches its targets anyway.
    Vec<Site>,
);

impl Touches {
    /// Look up, in the group's final model, the filters that hold the
    /// prefixes of the sites the group moved (see the second field).
    pub(super) fn settle(&mut self, model: &Model) {
        for s in std::mem::take(&mut self.1) {
            for t in model.filters_holding(&s) {
                self.filter(&t);
            }
        }
    }

    pub(super) fn full(&mut self, site: &Name) {
        self.0.entry(site.clone()).or_default().full = true;
    }
    pub(super) fn interface(&mut self, site: &Name) {
        self.0.entry(site.clone()).or_default().interface = true;
    }
    /// The site's filter may have changed.
    pub(crate) fn filter(&mut self, site: &Name) {
        self.0.entry(site.clone()).or_default().filter = true;
    }

    /// What the policy admits into `site` may have changed: its filter,
    /// and in a mesh region which spokes it has a tunnel with.
    pub(crate) fn policy_target(&mut self, model: &Model, site: &Name) {
        self.filter(site);
        let Some(s) = model.sites.get(site) else {
            return;
        };
        if s.role != Role::Spoke || !model.regions.get(&s.region).is_some_and(|r| r.mesh) {
            return;
        }
        let spokes: Vec<Name> = model
            .region_sites(&s.region)
            .filter(|t| t.role == Role::Spoke && t.is_active() && t.name != *site)
            .map(|t| t.name.clone())
            .collect();
        self.entries(site, spokes.iter());
        for t in &spokes {
            self.entries(t, [site]);
        }
    }
    pub(super) fn failover(&mut self, site: &Name) {
        self.0.entry(site.clone()).or_default().failover = true;
    }
    pub(super) fn entries<'a>(&mut self, site: &Name, names: impl IntoIterator<Item = &'a Name>) {
        let t = self.0.entry(site.clone()).or_default();
        t.entries.extend(names.into_iter().cloned());
    }
    pub(super) fn mesh(&mut self, site: &Name, region: &Name, lans: &BTreeSet<IpNet>) {
        let t = self.0.entry(site.clone()).or_default();
        t.mesh
            .entry(region.clone())
            .or_default()
            .extend(lans.iter().copied());
    }

    /// Record what a site's change from `before` to `after` may touch;
    /// `model` is the model after the change. May over-approximate (an
    /// entry rendered again and found equal costs nothing but the render),
    /// never under-approximate.
    pub(crate) fn site_changed(
        &mut self,
        model: &Model,
        before: Option<&Site>,
        after: Option<&Site>,
    ) {
        let Some(x) = after.or(before).map(|s| s.name.clone()) else {
            return;
        };
        match (before, after) {
            // Still active in the same place with the same prefixes: what
            // its own config holds of itself is the interface.
            (Some(b), Some(a))
                if b.is_active()
                    && a.is_active()
                    && b.role == a.role
                    && b.org == a.org
                    && b.region == a.region
                    && b.addresses() == a.addresses()
                    && b.lan_prefixes == a.lan_prefixes =>
            {
                self.interface(&x);
            }
            // A deleted site is touched too: its render goes.
            _ => self.full(&x),
        }
        let in_filters = |s: &Site| {
            (
                s.org.clone(),
                s.region.clone(),
                s.addresses(),
                s.lan_prefixes.clone(),
            )
        };
        if before.map(in_filters) != after.map(in_filters) {
            self.filter(&x);
            self.1.extend(before.into_iter().chain(after).cloned());
        }
        let mut regions_done = BTreeSet::new();
        for s in before.into_iter().chain(after) {
            let r = &s.region;
            match s.role {
                Role::Hub => {
                    if !regions_done.insert(r.clone()) {
                        continue;
                    }
                    let member = |s: Option<&Site>| {
                        s.is_some_and(|s| &s.region == r && s.role == Role::Hub && s.is_active())
                    };
                    // A hub that comes or goes changes every order of
                    // preference in its region, and the groups naming it.
                    let joined_or_left = member(before) != member(after);
                    for t in model
                        .region_sites(r)
                        .filter(|t| t.is_active() && t.name != x)
                    {
                        if joined_or_left {
                            self.full(&t.name);
                        } else {
                            self.entries(&t.name, [&x]);
                        }
                    }
                    let mut names: Vec<Name> =
                        model.region_hubs(r).map(|h| h.name.clone()).collect();
                    names.push(x.clone());
                    for p in other_hubs(model, r) {
                        self.entries(&p, names.iter());
                        if joined_or_left {
                            self.failover(&p);
                        }
                    }
                }
                Role::Spoke => {
                    let hubs: Vec<Name> = model.region_hubs(r).map(|h| h.name.clone()).collect();
                    let agentless = s.agentless;
                    for h in &hubs {
                        self.entries(h, [&x]);
                        if agentless {
                            // Its hub's entry at the others carries it.
                            self.entries(h, hubs.iter());
                        }
                    }
                    if model.regions.get(r).is_some_and(|reg| reg.mesh) {
                        let spokes: Vec<Name> = model
                            .region_sites(r)
                            .filter(|t| t.role == Role::Spoke && t.is_active() && t.name != x)
                            .map(|t| t.name.clone())
                            .collect();
                        for t in &spokes {
                            self.entries(t, [&x]);
                        }
                    }
                    let lans = carried_lans(before, after);
                    if !lans.is_empty() {
                        for p in other_hubs(model, r) {
                            self.mesh(&p, r, &lans);
                        }
                    }
                }
            }
        }
    }
}

/// Active hubs of every region but `region`.
pub(super) fn other_hubs(model: &Model, region: &Name) -> Vec<Name> {
    model
        .hubs
        .iter()
        .filter_map(|n| model.sites.get(n))
        .filter(|h| h.is_active() && &h.region != region)
        .map(|h| h.name.clone())
        .collect()
}

/// LAN prefixes other regions' hubs may carry differently after a
/// spoke changed from `before` to `after`.
pub(super) fn carried_lans(before: Option<&Site>, after: Option<&Site>) -> BTreeSet<IpNet> {
    let carried = |s: Option<&Site>| {
        s.filter(|s| s.is_active())
            .map(|s| s.lan_prefixes.clone())
            .unwrap_or_default()
    };
    let (b, a) = (carried(before), carried(after));
    if b == a {
        return BTreeSet::new();
    }
    b.symmetric_difference(&a).copied().collect()
}
