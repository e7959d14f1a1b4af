//! Sites: adding, changing, revoking and deleting them, their enrolment
//! tokens, their configs as the controller renders them, and the checks a
//! site's LAN prefixes and key must pass.

use std::collections::BTreeSet;

use ipnet::IpNet;
use wardnet_common::net::overlaps;
use wardnet_common::policy::ServiceRef;
use wardnet_common::token::{Secret, ENROLMENT_PREFIX};
use wardnet_common::wire::{CreateSite, SiteConfig, SiteCreated, SiteState, SiteView, UpdateSite};
use wardnet_common::{Name, Role};

use super::views::{not_found_org, not_found_region, site_view, visible_site};
use super::Actor;
use crate::error::Error;
use crate::ipam;
use crate::model::{default_org, Model, Site, SiteInputs};
use crate::pipeline::Controller;
use crate::reports::Report;

impl Controller {
    // ----- sites ---------------------------------------------------------

    pub async fn add_site(&self, actor: &Actor, req: CreateSite) -> Result<SiteCreated, Error> {
        if req.role == Role::Hub {
            actor.require_network_wide("adding a hub (it carries every organisation's traffic)")?;
        }
        let org = req
            .org
            .clone()
            .or_else(|| actor.org.clone())
            .unwrap_or_else(default_org);
        if !actor.sees(&org) {
            return Err(not_found_org(&org));
        }
        // Whether the organisation exists is the database's to say (its
        // constraint `sites.org`), with no read on the way in.
        let missing_org = Error::NotFound(format!(
            "no organisation named {org}; create it first with `wardnet-controller orgs add {org}`"
        ));
        let net = self.settings.network.clone();
        let lifetime = self.settings.token_lifetime_secs as i64;
        let actor = actor.clone();
        self.change(move |tx| {
            let (m, now) = (tx.model(), tx.now());
            if m.sites.contains_key(&req.name) {
                return Err(Error::Conflict(format!("a site named {} already exists", req.name)));
            }
            let region = m.regions.get(&req.region).ok_or_else(|| not_found_region(&req.region))?.clone();
            check_lan_prefixes(m, &net, &actor, &req.name, &org, &req.lan_prefixes)?;
            if req.role == Role::Hub && req.endpoint.is_none() {
                return Err(Error::Unprocessable(format!(
                    "hub {} needs a reachable underlay endpoint: pass `endpoint` (IP:PORT) so its spokes can reach it",
                    req.name
                )));
            }
            if let Some(k) = req.public_key {
                check_key_unused(m, Some(&actor), &req.name, &k)?;
            }
            let (used4, used6) = ipam::used_addresses(m, &req.region);
            let blocks = ipam::blocks(m, &org, &region);
            let (ipv4, ipv6) = ipam::allocate_site_addresses(&region, &used4, &used6, &blocks)
                .map_err(|e| exhausted(e, &org, &region.name, &blocks))?;
            let agentless = req.public_key.is_some();
            let site = Site::new(SiteInputs {
                name: req.name.clone(),
                region: req.region.clone(),
                org: org.clone(),
                role: req.role,
                state: if agentless { SiteState::Active } else { SiteState::Pending },
                agentless,
                lan_prefixes: req.lan_prefixes.clone(),
                endpoint: req.endpoint,
                public_key: req.public_key,
                ipv4,
                ipv6,
                created_at: now,
                enrolled_at: agentless.then_some(now),
                renumber: None,
                credential_hash: None,
            });
            let mut out = SiteCreated {
                site: site_view(&site, &Report::default()),
                token: None,
                token_expires_at: None,
            };
            super::rules::drop_rules_naming(tx, &actor.id, Some(&req.name), &[]);
            tx.insert_site(site);
            if !agentless {
                let token = Secret::generate(ENROLMENT_PREFIX);
                tx.issue_enrol_token(&req.name, token.hash(), now + lifetime);
                out.token = Some(token.expose().to_owned());
                out.token_expires_at = Some(now + lifetime);
            }
            tx.audit_site(&actor.id, "site.create", &req.name);
            Ok(out)
        })
        .await
        .map_err(|e| if e.is_taken("sites.org") { missing_org } else { e })
        .map(|mut created| {
            // The revision was settled by the pipeline after the closure ran.
            if let Ok(v) = self.site(&Actor::local(), &created.site.name) {
                created.site = v;
            }
            created
        })
    }

    pub fn list_sites(
        &self,
        actor: &Actor,
        region: Option<&Name>,
        state: Option<SiteState>,
    ) -> Vec<SiteView> {
        let reports = self.reports();
        self.with_model(|m| {
            m.sites
                .values()
                .filter(|s| actor.sees(&s.org))
                .filter(|s| region.is_none_or(|r| &s.region == r))
                .filter(|s| state.is_none_or(|st| s.state == st))
                .map(|s| site_view(s, reports.get(&s.name).unwrap_or(&Report::default())))
                .collect()
        })
    }

    pub fn site(&self, actor: &Actor, name: &Name) -> Result<SiteView, Error> {
        let report = self.report_of(name);
        self.with_model(|m| visible_site(m, actor, name).map(|s| site_view(s, &report)))
    }

    pub async fn update_site(
        &self,
        actor: &Actor,
        name: &Name,
        req: UpdateSite,
    ) -> Result<SiteView, Error> {
        let net = self.settings.network.clone();
        let (actor, owned_name) = (actor.clone(), name.clone());
        let name = owned_name.clone();
        self.change(move |tx| {
            let (m, name) = (tx.model(), &name);
            let mut after = visible_site(m, &actor, name)?.as_ref().clone();
            if let Some(lan) = &req.lan_prefixes {
                check_lan_prefixes(m, &net, &actor, name, &after.org, lan)?;
                after.lan_prefixes = lan.clone();
            }
            if let Some(ep) = req.endpoint {
                if after.role == Role::Hub && ep.is_none() {
                    return Err(Error::Unprocessable(format!(
                        "hub {name} needs an endpoint; it cannot be cleared"
                    )));
                }
                after.endpoint = ep;
            }
            tx.update_site(after);
            tx.audit_site(&actor.id, "site.update", name);
            Ok(())
        })
        .await?;
        self.site(&Actor::local(), &owned_name)
    }

    /// Move a site into its organisation's overlay block. Started
    /// (`finish` false), it gets addresses in the block and keeps its old
    /// ones beside them, so that nothing using either breaks; finished, the
    /// old ones go, once its agent and every agent that carries it (its
    /// region's hubs, its mesh peers) has applied a config with the new.
    pub async fn renumber_site(
        &self,
        actor: &Actor,
        name: &Name,
        finish: bool,
    ) -> Result<SiteView, Error> {
        let reports = if finish {
            self.reports()
        } else {
            Default::default()
        };
        let (actor, owned) = (actor.clone(), name.clone());
        self.change(move |tx| {
            let (m, name) = (tx.model(), &owned);
            let before = visible_site(m, &actor, name)?.as_ref().clone();
            let after = if finish {
                renumber_finished(m, &before, &reports)?
            } else {
                renumber_started(m, &before)?
            };
            tx.update_site(after);
            let action = if finish {
                "site.renumber.finish"
            } else {
                "site.renumber"
            };
            tx.audit_site(&actor.id, action, name);
            Ok(())
        })
        .await?;
        self.site(&Actor::local(), name)
    }

    pub async fn revoke_site(&self, actor: &Actor, name: &Name) -> Result<SiteView, Error> {
        let (actor, owned) = (actor.clone(), name.clone());
        self.change(move |tx| {
            let name = &owned;
            let before = visible_site(tx.model(), &actor, name)?;
            if before.state == SiteState::Revoked {
                return Err(Error::Conflict(format!("site {name} is already revoked")));
            }
            let mut after = before.as_ref().clone();
            after.state = SiteState::Revoked;
            after.credential_hash = None;
            tx.update_site(after);
            tx.forget_enrol_tokens(name);
            tx.audit_site(&actor.id, "site.revoke", name);
            Ok(())
        })
        .await?;
        // The revoked site's own long-poll ended when the change was
        // published (its credential is gone).
        self.site(&Actor::local(), name)
    }

    pub async fn delete_site(&self, actor: &Actor, name: &Name) -> Result<(), Error> {
        let (actor, owned) = (actor.clone(), name.clone());
        self.change(move |tx| {
            let name = &owned;
            visible_site(tx.model(), &actor, name)?;
            let services: Vec<ServiceRef> = tx
                .model()
                .policy
                .services
                .iter()
                .filter(|s| &s.service.site == name)
                .map(|s| ServiceRef::new(&s.org, &s.service.name))
                .collect();
            super::rules::drop_rules_naming(tx, &actor.id, Some(name), &services);
            tx.delete_site(name);
            tx.audit_site(&actor.id, "site.delete", name);
            Ok(())
        })
        .await?;
        self.heartbeats.forget(name);
        self.metrics.apply_latency.forget(name);
        Ok(())
    }

    /// A new one-time token for a site (a replaced gateway, key rotation).
    /// The site keeps running on its current key until the new agent enrols.
    pub async fn issue_token(&self, actor: &Actor, name: &Name) -> Result<SiteCreated, Error> {
        let lifetime = self.settings.token_lifetime_secs as i64;
        let (actor, owned) = (actor.clone(), name.clone());
        let report = self.report_of(name);
        self.change(move |tx| {
            let (name, now) = (&owned, tx.now());
            let site = visible_site(tx.model(), &actor, name)?;
            if site.state == SiteState::Revoked {
                return Err(Error::Conflict(format!(
                    "site {name} is revoked; delete it and add it again to re-enrol"
                )));
            }
            if site.agentless {
                return Err(Error::Conflict(format!(
                    "site {name} is agentless (configured by `sites export`); it does not enrol"
                )));
            }
            let token = Secret::generate(ENROLMENT_PREFIX);
            let created = SiteCreated {
                site: site_view(site, &report),
                token: Some(token.expose().to_owned()),
                token_expires_at: Some(now + lifetime),
            };
            let org = site.org.clone();
            tx.forget_enrol_tokens(name);
            tx.issue_enrol_token(name, token.hash(), now + lifetime);
            tx.audit(&actor.id, "site.token", name.as_str(), None, Some(&org));
            Ok(created)
        })
        .await
    }

    /// The config the controller renders for a site now.
    pub fn site_config(&self, actor: &Actor, name: &Name) -> Result<SiteConfig, Error> {
        let world = self.snapshot();
        let site = visible_site(&world.model, actor, name)?;
        world
            .configs
            .get(name)
            .map(|r| r.to_config())
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "site {name} is {}; only active sites have a config",
                    site.state
                ))
            })
    }

    pub fn wg_quick(&self, actor: &Actor, name: &Name) -> Result<String, Error> {
        self.site_config(actor, name)
            .map(|c| crate::wgquick::wg_quick(&c))
    }
}

/// A site's LAN prefixes may not overlap the overlay, a region block, or
/// another site's LAN prefixes (nor each other). A clash with a site
/// `actor` may not see names nothing of it: which prefixes another
/// organisation holds is not a scoped admin's to map.
fn check_lan_prefixes(
    m: &Model,
    net: &crate::model::NetworkSettings,
    actor: &Actor,
    site: &Name,
    org: &Name,
    lan: &BTreeSet<IpNet>,
) -> Result<(), Error> {
    let list: Vec<&IpNet> = lan.iter().collect();
    let held = m.sites.get(site).map(|s| &s.lan_prefixes);
    for (i, p) in list.iter().enumerate() {
        // What the site already has stays; what is new is claimed. A
        // scoped token hears first whether it may claim there at all, so
        // its refusals outside its own space are all alike (no map of
        // who holds what); the NOC hears first whose LAN it clashes with.
        let new = !held.is_some_and(|h| h.contains(*p));
        if new && actor.org.is_some() {
            check_claim(m, actor, org, p)?;
        }
        if p.trunc() != **p {
            return Err(Error::Unprocessable(format!(
                "lan_prefixes: {p} has host bits set; did you mean {}?",
                p.trunc()
            )));
        }
        for q in &list[i + 1..] {
            if overlaps(p, q) {
                return Err(Error::Conflict(format!(
                    "lan_prefixes: {p} overlaps {q} of the same site"
                )));
            }
        }
        if overlaps(p, &IpNet::V4(net.overlay_v4))
            || net.overlay_v6.is_some_and(|v6| overlaps(p, &IpNet::V6(v6)))
        {
            return Err(Error::Conflict(format!(
                "lan_prefixes: {p} overlaps the overlay prefix; a site LAN must lie outside it"
            )));
        }
        for r in m.regions.values() {
            if overlaps(p, &IpNet::V4(r.ipv4_block))
                || r.ipv6_block.is_some_and(|b| overlaps(p, &IpNet::V6(b)))
            {
                return Err(Error::Conflict(format!(
                    "lan_prefixes: {p} overlaps region {}'s overlay block",
                    r.name
                )));
            }
        }
        if !net.routed_prefixes.iter().any(|r| r.contains(*p)) {
            let routed: Vec<String> = net.routed_prefixes.iter().map(|r| r.to_string()).collect();
            return Err(Error::Unprocessable(format!(
                "lan_prefixes: {p} is outside network.routed_prefixes ({}) of the controller's config; \
                 spokes route only those prefixes to their hub, so sites in other regions could not reach it. \
                 Use a prefix inside them, or add a supernet of {p} to routed_prefixes and restart the controller",
                if routed.is_empty() { "none configured".to_owned() } else { routed.join(", ") }
            )));
        }
        if let Some((other, q)) = m.lan_overlapping(p, site) {
            let seen = m.sites.get(other).is_some_and(|s| actor.sees(&s.org));
            return Err(Error::Conflict(if seen {
                format!("lan_prefixes: {p} overlaps {q}, a LAN prefix of site {other}")
            } else {
                format!(
                    "lan_prefixes: {p} overlaps a LAN prefix of another organisation; \
                     ask the NOC which prefixes your organisation's sites may use"
                )
            }));
        }
        if new && actor.org.is_none() {
            check_claim(m, actor, org, p)?;
        }
    }
    Ok(())
}

/// A region with no address for a site of `org`: what to do depends on
/// whether blocks of other organisations took the rest.
fn exhausted(e: ipam::IpamError, org: &Name, region: &Name, blocks: &ipam::Blocks) -> Error {
    if blocks.foreign.is_empty() {
        return Error::Conflict(e.to_string());
    }
    let whose = if blocks.own.is_empty() {
        format!("organisation {org} has no block there")
    } else {
        format!("organisation {org}'s blocks there are full")
    };
    Error::Conflict(format!(
        "region {region} has no free address for a site of organisation {org}: {whose}, and the rest \
         of the region is delegated to other organisations; the NOC delegates {org} a block \
         (`wardnet-controller orgs delegate {org} PREFIX`) or takes back part of another's"
    ))
}

/// Site `s` with addresses in its organisation's blocks of its region, the
/// old ones kept beside them, and the sites that carry it with the
/// revisions they are at.
fn renumber_started(m: &Model, s: &Site) -> Result<Site, Error> {
    let name = &s.name;
    if s.agentless {
        return Err(Error::Unprocessable(format!(
            "site {name} is agentless: no agent of ours would apply its new address; \
             delete it and add it again (it then gets an address in its organisation's block), \
             then export its config to the appliance again"
        )));
    }
    if let Some(r) = &s.renumber {
        let old: Vec<String> = r.former.iter().map(ToString::to_string).collect();
        return Err(Error::Conflict(format!(
            "site {name} is already moving from {}; finish that first (`sites renumber {name} --finish`)",
            old.join(", ")
        )));
    }
    let region = m
        .regions
        .get(&s.region)
        .ok_or_else(|| not_found_region(&s.region))?;
    let own = ipam::blocks(m, &s.org, region).own;
    if own.is_empty() {
        return Err(Error::Unprocessable(format!(
            "organisation {} has no overlay block in region {}; the NOC delegates one first \
             (`wardnet-controller orgs delegate {} PREFIX`, inside the region's block)",
            s.org, s.region, s.org
        )));
    }
    let inside = |a: std::net::IpAddr| own.iter().any(|b| b.contains(&a));
    let (used4, used6) = ipam::used_addresses(m, &s.region);
    let (new4, new6) = ipam::allocate_in_blocks(region, &used4, &used6, &own);
    let mut after = s.clone();
    let mut former = BTreeSet::new();
    if !inside(s.ipv4.into()) {
        if let Some(a) = new4 {
            former.insert(s.ipv4.into());
            after.ipv4 = a;
        }
    }
    if let (Some(old), Some(new)) = (s.ipv6, new6) {
        if !inside(old.into()) {
            former.insert(old.into());
            after.ipv6 = Some(new);
        }
    }
    if former.is_empty() {
        // Nothing moved: an address outside the blocks had no room there
        // (IPv6 only counts where the organisation has an IPv6 block).
        let has6 = own.iter().any(|b| matches!(b, IpNet::V6(_)));
        let full = !inside(s.ipv4.into()) || (has6 && s.ipv6.is_some_and(|a| !inside(a.into())));
        return Err(Error::Conflict(if full {
            format!(
                "organisation {}'s blocks in region {} have no free address for site {name}; \
                 the NOC delegates a larger block",
                s.org, s.region
            )
        } else {
            format!("site {name}'s addresses are already in its organisation's blocks")
        }));
    }
    let mut carriers: std::collections::BTreeMap<Name, u64> = [(name.clone(), s.revision)].into();
    for h in m.region_hubs(&s.region).filter(|h| h.name != *name) {
        carriers.insert(h.name.clone(), h.revision);
    }
    if s.role == Role::Spoke && region.mesh {
        for t in m
            .region_sites(&s.region)
            .filter(|t| t.role == Role::Spoke && t.is_active() && t.name != *name)
            .filter(|t| m.may_talk(s, t))
        {
            carriers.insert(t.name.clone(), t.revision);
        }
    }
    after.renumber = Some(crate::model::Renumber { former, carriers });
    Ok(after)
}

/// Site `s` without its old addresses, if every agent that carries it
/// has applied a config after the renumber started.
fn renumber_finished(
    m: &Model,
    s: &Site,
    reports: &std::collections::HashMap<Name, Report>,
) -> Result<Site, Error> {
    let name = &s.name;
    let Some(r) = &s.renumber else {
        return Err(Error::Conflict(format!(
            "site {name} is not being renumbered (`sites renumber {name}` starts it)"
        )));
    };
    let waiting: Vec<String> = r
        .carriers
        .iter()
        .filter_map(|(c, at)| {
            let t = m.sites.get(c).filter(|t| t.is_active() && !t.agentless)?;
            let applied = reports
                .get(c)
                .map_or(0, |r| r.applied_revision)
                .max(t.applied_revision);
            (applied <= *at)
                .then(|| format!("{c} (applied revision {applied}, needs one after {at})"))
        })
        .collect();
    if !waiting.is_empty() {
        return Err(Error::Conflict(format!(
            "not every agent that carries site {name} has applied its new address yet: {}; \
             try again when they have (connected agents do within seconds)",
            waiting.join(", ")
        )));
    }
    let mut after = s.clone();
    after.renumber = None;
    Ok(after)
}

/// A LAN prefix newly given to a site of organisation `org`: a scoped
/// token claims only inside what the NOC delegated to its organisation,
/// and nobody puts a site inside another organisation's delegation. The
/// refusal to a scoped token names only its own delegation.
fn check_claim(m: &Model, actor: &Actor, org: &Name, p: &IpNet) -> Result<(), Error> {
    let own = m.policy.delegated.get(org);
    if actor.org.is_some() && !own.is_some_and(|d| d.iter().any(|q| q.contains(p))) {
        let list: Vec<String> = own.into_iter().flatten().map(ToString::to_string).collect();
        return Err(Error::Unprocessable(format!(
            "lan_prefixes: {p} is outside the LAN space delegated to organisation {org} ({}); \
             ask the NOC to delegate it (`wardnet-controller orgs delegate {org} PREFIX`)",
            if list.is_empty() {
                "none yet".to_owned()
            } else {
                list.join(", ")
            }
        )));
    }
    if let Some((q, other)) = m.policy.delegated.overlapping(p).find(|(_, o)| *o != org) {
        return Err(Error::Conflict(format!(
            "lan_prefixes: {p} overlaps {q}, delegated to organisation {other}; \
             use space delegated to organisation {org}, or move the delegation (`orgs undelegate`)"
        )));
    }
    Ok(())
}

/// No other site holds `key`. The clash names the other site only to an
/// admin who may see it (`actor`; an enrolling agent sees none).
pub(super) fn check_key_unused(
    m: &Model,
    actor: Option<&Actor>,
    site: &Name,
    key: &wardnet_common::PublicKey,
) -> Result<(), Error> {
    let Some(other) = m.sites_with_key(key, site).next() else {
        return Ok(());
    };
    let seen = actor.is_some_and(|a| m.sites.get(other).is_some_and(|s| a.sees(&s.org)));
    Err(Error::Conflict(if seen {
        format!("public key {key} is already used by site {other}; every site needs its own key")
    } else {
        format!("public key {key} is already used by another site; every site needs its own key")
    }))
}
