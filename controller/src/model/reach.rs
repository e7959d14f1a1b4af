//! Who reaches whom: the model as the policy between organisations reads
//! it (the sources a rule names, the filter compiled for a site, which
//! filters and tunnels a change of a site or of the policy touches).

use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use wardnet_common::filter::SiteFilter;
use wardnet_common::policy::{Party, ServiceView, Source, Target};
use wardnet_common::Name;

use super::{default_org, Model, Site, StoredPolicy};

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

    /// The prefixes of the sites a policy source names (any state: an
    /// address is the site's from its creation): each site's overlay
    /// addresses and LAN prefixes, where its traffic comes from.
    pub fn sources(&self, source: &Source) -> Vec<IpNet> {
        let names: Box<dyn Iterator<Item = &Name>> = match source {
            Source::All => Box::new(self.sites.keys()),
            Source::Org(o) => Box::new(self.by_org.get(o).into_iter().flatten()),
            Source::Region(r) => Box::new(self.by_region.get(r).into_iter().flatten()),
            Source::Site(s) => Box::new(std::iter::once(s)),
        };
        let mut out = Vec::new();
        for s in names.filter_map(|n| self.sites.get(n)) {
            out.push(IpNet::V4(Ipv4Net::from(s.ipv4)));
            out.extend(s.ipv6.map(|a| IpNet::V6(Ipv6Net::from(a))));
            out.extend(s.lan_prefixes.iter().copied());
        }
        out
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
        wardnet_common::filter::compile(
            &Self::party(s),
            &s.lan_prefixes,
            &self.policy.rules,
            &self.policy.services,
            |src| self.sources(src),
        )
    }

    /// Whether anything of the policy lets traffic from site `a` into
    /// site `b`, whatever its protocol and ports: one organisation, an
    /// unfiltered destination, a service at `b` shared with `a`'s
    /// organisation, a rule from `a` into `b`.
    pub fn reaches(&self, a: &Site, b: &Site) -> bool {
        let to = Self::party(b);
        if to.same_org(&Self::party(a)) || to.unfiltered() {
            return true;
        }
        let here = |n: &Name| {
            self.policy
                .services
                .iter()
                .any(|s| &s.service.name == n && s.service.site == b.name)
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
                    Target::Service(n) => here(n),
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
            Target::Service(n) => services
                .filter(|s| &s.service.name == n)
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
        out
    }

    /// The sites whose filters hold site `s`'s prefixes: its
    /// organisation's (except `default`'s, which are not filtered), where
    /// rules from it, its organisation or its region admit traffic into,
    /// and the sites of services shared with its organisation.
    pub fn filters_holding(&self, s: &Site) -> BTreeSet<Name> {
        let mut out = BTreeSet::new();
        if s.org != default_org() {
            out.extend(self.by_org.get(&s.org).into_iter().flatten().cloned());
        }
        // (A hub in `default` admits nothing by organisation.)
        let party = Self::party(s);
        for r in &self.policy.rules {
            if r.rule.from != Source::All && r.rule.from.matches(&party) {
                out.extend(self.target_sites(&r.rule.to, self.policy.services.iter()));
            }
        }
        for x in &self.policy.services {
            if let wardnet_common::policy::SharedWith::Orgs(orgs) = &x.service.shared_with {
                if orgs.contains(&s.org) {
                    out.insert(x.service.site.clone());
                }
            }
        }
        out
    }
}
