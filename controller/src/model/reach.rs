//! Who reaches whom: the model as the policy between organisations reads
//! it (the sources a rule names, the filter compiled for a site, which
//! filters and tunnels a change of a site or of the policy touches).

use std::collections::BTreeSet;

use ipnet::IpNet;
use wardnet_common::filter::SiteFilter;
use wardnet_common::policy::{Party, ServiceRef, ServiceView, Source, Target};
use wardnet_common::Name;

use super::{Model, Site, StoredPolicy};

/// Sources a policy names, as prefixes, for one unchanging model.
#[derive(Debug, Default)]
pub struct SourceCache(std::collections::HashMap<Source, Vec<IpNet>>);

impl Model {
    /// Forget the services behind a deleted site (the store deletes them
    /// with it).
    pub fn drop_services_of(&mut self, site: &Name) {
        if self.policy.services.iter().any(|s| &s.service.site == site) {
            std::sync::Arc::make_mut(&mut self.policy)
                .services
                .retain(|s| &s.service.site != site);
        }
    }

    /// The prefixes a policy source names, where its traffic comes from.
    /// An organisation: the address space delegated to it that only its
    /// sites hold (overlay blocks, LAN space), and the overlay addresses
    /// and LAN prefixes of its sites outside that space; so an
    /// organisation's sites inside its blocks add nothing. A region or a
    /// site: each site's overlay addresses and LAN prefixes (any state: an
    /// address is the site's from its creation).
    pub fn sources(&self, source: &Source) -> Vec<IpNet> {
        if let Source::Org(o) = source {
            if let Some(out) = self.indexed_sources(o) {
                return out;
            }
        }
        let names: Box<dyn Iterator<Item = &Name>> = match source {
            Source::All => Box::new(self.sites.keys()),
            Source::Org(o) => Box::new(self.by_org.get(o).into_iter().flatten()),
            Source::Region(r) => Box::new(self.by_region.get(r).into_iter().flatten()),
            Source::Site(s) => Box::new(std::iter::once(s)),
        };
        let blocks = match source {
            Source::Org(o) => self.own_space(o),
            _ => Vec::new(),
        };
        let mut out = blocks.clone();
        for s in names.filter_map(|n| self.sites.get(n)) {
            let prefixes = s
                .addresses()
                .into_iter()
                .chain(s.lan_prefixes.iter().copied());
            out.extend(prefixes.filter(|p| !blocks.iter().any(|b| b.contains(p))));
        }
        out
    }

    /// [`Model::sources`] of an organisation from the space index, when it
    /// is current and none of the organisation's space is reached into by
    /// another's site (then only its sites tell).
    fn indexed_sources(&self, org: &Name) -> Option<Vec<IpNet>> {
        if !self.space_current() {
            return None;
        }
        let mut out: Vec<IpNet> = self
            .policy
            .delegated
            .get(org)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        if out
            .iter()
            .any(|p| self.space.foreign.contains_key(&p.trunc()))
        {
            return None;
        }
        out.extend(
            self.space
                .outside
                .get(org)
                .into_iter()
                .flat_map(|m| m.keys().copied()),
        );
        Some(out)
    }

    /// The space delegated to organisation `org` that no other
    /// organisation's site holds an overlay address or LAN prefix in. (The
    /// controller never gives another organisation's site anything there;
    /// a controller of an older version, running beside this one during
    /// an upgrade, might, and then that block counts address by address.)
    pub fn own_space(&self, org: &Name) -> Vec<IpNet> {
        let foreign = |n: &Name| self.sites.get(n).is_some_and(|s| &s.org != org);
        let current = self.space_current();
        self.policy
            .delegated
            .get(org)
            .into_iter()
            .flatten()
            .filter(|p| {
                if current {
                    return !self.space.foreign.contains_key(&p.trunc());
                }
                !self.sites_inside(p).any(foreign)
                    && !self.lans_overlapping(p).any(|(n, _)| foreign(n))
            })
            .copied()
            .collect()
    }

    /// [`Model::sources`] of every organisation read from the sites, never
    /// from the space index (for tests that hold the two to each other).
    #[cfg(test)]
    pub(crate) fn sources_read(&self, org: &Name) -> Vec<IpNet> {
        let mut m = self.clone();
        m.space = Default::default();
        IpNet::aggregate(&m.sources(&Source::Org(org.clone())))
    }

    /// Whether all of site `s`'s prefixes lie in its organisation's own
    /// space: then its organisation's sources are the same with or without
    /// it.
    pub fn inside_own_space(&self, s: &Site) -> bool {
        let space = self.own_space(&s.org);
        s.addresses()
            .iter()
            .chain(&s.lan_prefixes)
            .all(|p| space.iter().any(|b| b.contains(p)))
    }

    /// What the policy knows of a site.
    pub fn party(s: &Site) -> Party {
        Party {
            site: s.name.clone(),
            org: s.org.clone(),
            region: s.region.clone(),
            overlay: s.addresses().iter().map(|p| p.addr()).collect(),
            hub: s.role == wardnet_common::Role::Hub,
        }
    }

    /// The filter of site `s`'s data plane.
    pub fn filter(&self, s: &Site) -> SiteFilter {
        self.filter_with(s, &mut SourceCache::default())
    }

    /// [`Model::filter`], with the sources a policy names looked up once
    /// for every filter compiled from this model (the NOC's rule into all
    /// sites compiles every filter; each names the same organisations).
    pub fn filter_with(&self, s: &Site, cache: &mut SourceCache) -> SiteFilter {
        wardnet_common::filter::compile(
            &Self::party(s),
            &s.lan_prefixes,
            &self.policy.rules,
            &self.policy.services,
            |src| {
                cache
                    .0
                    .entry(src.clone())
                    .or_insert_with(|| IpNet::aggregate(&self.sources(src)))
                    .clone()
            },
        )
    }

    /// Whether anything of the policy lets traffic from site `a` into
    /// site `b`, whatever its protocol and ports: one organisation, an
    /// unfiltered destination, a service at `b` shared with `a`'s
    /// organisation, a rule from `a` into `b`.
    pub fn reaches(&self, a: &Site, b: &Site) -> bool {
        let to = Self::party(b);
        if to.same_org(&Self::party(a)) {
            return true;
        }
        let here = |r: &ServiceRef| {
            self.policy
                .services
                .iter()
                .any(|s| r.is(&s.org, &s.service.name) && s.service.site == b.name)
        };
        if self
            .policy
            .services
            .iter()
            .any(|s| s.service.site == b.name && s.service.shared_with.includes(&a.org))
        {
            return true;
        }
        let party = Self::party(a);
        self.policy.rules.iter().any(|r| {
            r.rule.from.matches(&party)
                && match &r.rule.to {
                    Target::All => true,
                    Target::Org(o) => o == &b.org,
                    Target::Site(s) => s == &b.name,
                    Target::Service(r) => here(r),
                }
        })
    }

    /// Whether two sites may exchange anything (either way): only then do
    /// the spokes of a mesh region get a tunnel to each other.
    pub fn may_talk(&self, a: &Site, b: &Site) -> bool {
        self.reaches(a, b) || self.reaches(b, a)
    }

    /// The sites a rule's destination names; a service's site is looked
    /// up in `services`.
    fn target_sites<'a>(
        &self,
        to: &Target,
        services: impl Iterator<Item = &'a ServiceView>,
    ) -> Vec<Name> {
        match to {
            Target::All => self.sites.keys().cloned().collect(),
            Target::Org(o) => self.by_org.get(o).into_iter().flatten().cloned().collect(),
            Target::Site(s) => vec![s.clone()],
            Target::Service(r) => services
                .filter(|s| r.is(&s.org, &s.service.name))
                .map(|s| s.service.site.clone())
                .collect(),
        }
    }

    /// The sites whose filters may differ between two policies: where the
    /// rules and services that are not in both admit traffic into.
    pub fn policy_touches(&self, old: &StoredPolicy, new: &StoredPolicy) -> BTreeSet<Name> {
        let mut out = BTreeSet::new();
        for s in old.services.iter().chain(&new.services) {
            if !(old.services.contains(s) && new.services.contains(s)) {
                out.insert(s.service.site.clone());
            }
        }
        for r in old.rules.iter().chain(&new.rules) {
            if !(old.rules.contains(r) && new.rules.contains(r)) {
                let services = old.services.iter().chain(&new.services);
                out.extend(self.target_sites(&r.rule.to, services));
            }
        }
        // The space delegated to an organisation is part of its sources.
        for (o, _) in old.delegated.iter().chain(new.delegated.iter()) {
            if old.delegated.get(o) != new.delegated.get(o) {
                out.extend(self.org_holders(o));
            }
        }
        out
    }

    /// The sites whose filters hold site `s`'s prefixes (looked up in the
    /// model after the change): its organisation's and where rules from
    /// its organisation admit traffic into, and the sites of services
    /// shared with its organisation (all of them unless the site lies
    /// wholly inside its organisation's own space, which they hold
    /// already); where rules from it or its region admit traffic into;
    /// and what holds any other organisation whose delegated space the
    /// site is inside (that space no longer counts whole).
    pub fn filters_holding(&self, s: &Site) -> BTreeSet<Name> {
        let mut out = BTreeSet::new();
        if !self.inside_own_space(s) {
            out.extend(self.org_holders(&s.org));
        }
        let party = Self::party(s);
        for r in &self.policy.rules {
            if matches!(r.rule.from, Source::Site(_) | Source::Region(_))
                && r.rule.from.matches(&party)
            {
                out.extend(self.target_sites(&r.rule.to, self.policy.services.iter()));
            }
        }
        let mut others = BTreeSet::new();
        for p in s.addresses().iter().chain(&s.lan_prefixes) {
            others.extend(
                self.policy
                    .delegated
                    .overlapping(p)
                    .map(|(_, o)| o)
                    .filter(|o| **o != s.org),
            );
        }
        for o in others {
            out.extend(self.org_holders(o));
        }
        out
    }

    /// The sites whose filters hold organisation `org`'s sources: its own
    /// sites, where rules from it admit traffic into, and the sites of
    /// services shared with it.
    pub fn org_holders(&self, org: &Name) -> BTreeSet<Name> {
        let mut out: BTreeSet<Name> = self
            .by_org
            .get(org)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for r in &self.policy.rules {
            if r.rule.from == Source::Org(org.clone()) {
                out.extend(self.target_sites(&r.rule.to, self.policy.services.iter()));
            }
        }
        for x in &self.policy.services {
            if let wardnet_common::policy::SharedWith::Orgs(orgs) = &x.service.shared_with {
                if orgs.contains(org) {
                    out.insert(x.service.site.clone());
                }
            }
        }
        out
    }
}
