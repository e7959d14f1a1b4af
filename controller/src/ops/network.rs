//! Network-wide administration: regions and their hubs, organisations,
//! admin tokens, the status summary and the audit log.

use std::sync::atomic::Ordering;

use ipnet::IpNet;
use wardnet_common::net::overlaps;
use wardnet_common::policy::Source;
use wardnet_common::token::{hash_secret, Secret, ADMIN_PREFIX};
use wardnet_common::wire::{
    AuditEntry, CreateOrg, CreateRegion, OrgView, RegionView, SiteState, StatusSummary, UpdateOrg,
};
use wardnet_common::{Name, Role};

use super::views::{not_found_org, not_found_region, region_view};
use super::Actor;
use crate::error::Error;
use crate::health::ONLINE_WINDOW_SECS;
use crate::ipam;
use crate::model::{default_org, Org, Region};
use crate::pipeline::Controller;
use crate::reports::Report;
use crate::store::{AdminToken, StoreError};

/// How long after the database last confirmed an admin token a replica
/// takes it on its own word while the database does not answer.
const RECALL_ADMINS_SECS: i64 = 24 * 3600;

impl Controller {
    // ----- regions -------------------------------------------------------

    pub async fn create_region(
        &self,
        actor: &Actor,
        req: CreateRegion,
    ) -> Result<RegionView, Error> {
        actor.require_network_wide("creating a region")?;
        let net = self.settings.network.clone();
        let actor = actor.clone();
        self.change(move |tx| {
            let (m, now) = (tx.model(), tx.now());
            if m.regions.contains_key(&req.name) {
                return Err(Error::Conflict(format!(
                    "a region named {} already exists",
                    req.name
                )));
            }
            let (v4, v6) = ipam::allocate_region_blocks(&net, m.regions.values())
                .map_err(|e| Error::Conflict(e.to_string()))?;
            let region = Region {
                name: req.name.clone(),
                mesh: req.mesh,
                ipv4_block: v4,
                ipv6_block: v6,
                created_at: now,
            };
            tx.insert_region(region.clone());
            tx.audit(
                &actor.id,
                "region.create",
                req.name.as_str(),
                Some(format!(
                    "block {v4}{}, mesh {}",
                    v6.map(|b| format!(" {b}")).unwrap_or_default(),
                    req.mesh
                )),
                None,
            );
            Ok(region_view(
                tx.model(),
                &region,
                &|_| Report::default(),
                now,
                &actor,
            ))
        })
        .await
    }

    /// Every region (regions and their hubs are the whole network's; a
    /// scoped admin's counts are of its own sites).
    pub fn list_regions(&self, actor: &Actor) -> Vec<RegionView> {
        let reports = self.reports();
        let report = |n: &Name| reports.get(n).cloned().unwrap_or_default();
        let now = self.now();
        self.with_model(|m| {
            m.regions
                .values()
                .map(|r| region_view(m, r, &report, now, actor))
                .collect()
        })
    }

    pub fn region(&self, actor: &Actor, name: &Name) -> Result<RegionView, Error> {
        let report = |n: &Name| self.report_of(n);
        let now = self.now();
        self.with_model(|m| {
            m.regions
                .get(name)
                .map(|r| region_view(m, r, &report, now, actor))
        })
        .ok_or_else(|| not_found_region(name))
    }

    pub async fn delete_region(&self, actor: &Actor, name: &Name) -> Result<(), Error> {
        actor.require_network_wide("deleting a region")?;
        let (actor, name) = (actor.clone(), name.clone());
        self.change(move |tx| {
            let m = tx.model();
            if !m.regions.contains_key(&name) {
                return Err(not_found_region(&name));
            }
            let n = m.by_region.get(&name).map_or(0, |s| s.len());
            if n > 0 {
                return Err(Error::Conflict(format!(
                    "region {name} still has {n} sites; delete them first"
                )));
            }
            super::rules::check_unnamed(&m.policy, &Source::Region(name.clone()))?;
            if let Some(region) = m.regions.get(&name) {
                let blocks = crate::ipam::blocks(m, &default_org(), region);
                if let Some(b) = blocks.own.iter().chain(&blocks.foreign).next() {
                    let holder = m
                        .policy
                        .delegated
                        .overlapping(b)
                        .map(|(_, o)| o.to_string())
                        .next()
                        .unwrap_or_default();
                    return Err(Error::Conflict(format!(
                        "region {name}'s block holds {b}, delegated to organisation {holder}; take it back first (`orgs undelegate {holder} {b}`)"
                    )));
                }
            }
            tx.delete_region(&name);
            tx.audit(&actor.id, "region.delete", name.as_str(), None, None);
            Ok(())
        })
        .await
    }

    /// The audit log; a scoped admin sees the entries about its own
    /// organisation's objects.
    pub async fn audit_log(
        &self,
        actor: &Actor,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, Error> {
        Ok(self
            .store
            .audit(limit.clamp(1, 1000), before, actor.org.as_ref())
            .await?)
    }

    /// Counts over the sites `actor` sees (regions: all of them).
    pub fn status(&self, actor: &Actor) -> StatusSummary {
        let online_after = self.now() - self.online_window_secs();
        let mut s = StatusSummary {
            regions: 0,
            sites_pending: 0,
            sites_active: 0,
            sites_revoked: 0,
            hubs: 0,
            spokes: 0,
            agents_online: 0,
            configs_pending_delivery: 0,
            long_poll_waiters: self.long_poll_waiters().max(0) as u64,
        };
        let reports = self.reports();
        self.with_model(|m| {
            s.regions = m.regions.len() as u64;
            for site in m.sites.values().filter(|s| actor.sees(&s.org)) {
                match site.state {
                    SiteState::Pending => s.sites_pending += 1,
                    SiteState::Active => s.sites_active += 1,
                    SiteState::Revoked => s.sites_revoked += 1,
                }
                match site.role {
                    Role::Hub => s.hubs += 1,
                    Role::Spoke => s.spokes += 1,
                }
                let r = reports.get(&site.name);
                // A revoked site's agent is not online, whatever it did
                // before (its credential is refused from the revocation on).
                if site.is_active()
                    && r.and_then(|r| r.last_seen)
                        .is_some_and(|t| t >= online_after)
                {
                    s.agents_online += 1;
                }
                let applied = r.map_or(0, |r| r.applied_revision);
                if site.is_active() && !site.agentless && applied < site.revision {
                    s.configs_pending_delivery += 1;
                }
            }
            // A scoped admin counts its own sites' long-polls, not the
            // network's.
            if actor.org.is_some() {
                let own = m.sites.values().filter(|s| actor.sees(&s.org));
                s.long_poll_waiters = self.heartbeats.waiting_among(own.map(|s| &s.name));
            }
        });
        s
    }

    /// An agent counts as online while its long-poll waits, and for this
    /// long after: a live agent polls again at once, and after a
    /// controller restart or a network blip it is back within its retry
    /// backoff (at most a minute).
    pub fn online_window_secs(&self) -> i64 {
        ONLINE_WINDOW_SECS
    }

    // ----- admin tokens --------------------------------------------------

    /// Create an admin API token (the bootstrap command and `tokens add`).
    /// Returns the token id and the secret, shown once.
    /// Create an admin API token (the bootstrap command), network-wide or
    /// scoped to `org`. Returns the token id and the secret, shown once.
    pub async fn create_admin_token(
        &self,
        actor: &Actor,
        description: &str,
        org: Option<&Name>,
    ) -> Result<(String, String), Error> {
        actor.require_network_wide("creating an admin token")?;
        if let Some(org) = org {
            if !self.org_exists(org).await? {
                return Err(Error::NotFound(format!(
                    "no organisation named {org}; create it first with `wardnet-controller orgs add {org}`"
                )));
            }
        }
        let secret = Secret::generate(ADMIN_PREFIX);
        let id = format!("tok-{}", &secret.hash()[..8]);
        let scope = org.map_or_else(
            || "network-wide".to_owned(),
            |o| format!("scoped to organisation {o}"),
        );
        let (hash, owned_org) = (secret.hash(), org.cloned());
        let (actor_id, token_id, description) =
            (actor.id.clone(), id.clone(), description.to_owned());
        self.change(move |tx| {
            let org = owned_org.as_ref();
            tx.insert_admin_token(&token_id, hash.clone(), &description, org);
            tx.audit(
                &actor_id,
                "token.create",
                &token_id,
                Some(format!("{description} ({scope})")),
                org,
            );
            Ok(())
        })
        .await
        .map_err(|e| match org {
            Some(org) if e.is_taken("admin_tokens.org") => not_found_org(org),
            _ => e,
        })?;
        Ok((id, secret.expose().to_owned()))
    }

    // ----- organisations -------------------------------------------------

    pub async fn create_org(&self, actor: &Actor, req: CreateOrg) -> Result<OrgView, Error> {
        actor.require_network_wide("creating an organisation")?;
        let org = Org {
            name: req.name.clone(),
            description: req.description.clone(),
            created_at: self.now(),
            delegated: req.delegated.clone(),
        };
        let (actor_id, new) = (actor.id.clone(), org.clone());
        let net = self.settings.network.clone();
        self.change(move |tx| {
            check_delegation(tx.model(), &net, &new.name, &new.delegated)?;
            tx.insert_org(new.clone());
            tx.audit(
                &actor_id,
                "org.create",
                new.name.as_str(),
                Some(format!(
                    "description {:?}, delegated [{}]",
                    new.description,
                    prefixes_text(&new.delegated)
                )),
                Some(&new.name),
            );
            Ok(())
        })
        .await
        .map_err(|e| match e {
            Error::Taken { .. } => {
                Error::Conflict(format!("an organisation named {} already exists", req.name))
            }
            e => e,
        })?;
        Ok(self.org_view(&org))
    }

    /// Change an organisation's description or delegated address space.
    pub async fn update_org(
        &self,
        actor: &Actor,
        name: &Name,
        req: UpdateOrg,
    ) -> Result<OrgView, Error> {
        actor.require_network_wide("changing an organisation")?;
        let mut org = self
            .store
            .orgs()
            .await?
            .into_iter()
            .find(|o| &o.name == name)
            .ok_or_else(|| not_found_org(name))?;
        let before = org.clone();
        if let Some(d) = req.description {
            org.description = d;
        }
        if let Some(l) = req.delegated {
            org.delegated = l;
        }
        let (actor_id, after) = (actor.id.clone(), org.clone());
        let net = self.settings.network.clone();
        self.change(move |tx| {
            check_delegation(tx.model(), &net, &after.name, &after.delegated)?;
            if after.description != before.description {
                tx.describe_org(&after.name, &after.description);
            }
            if after.delegated != before.delegated {
                tx.delegate_lans(&after.name, after.delegated.clone());
            }
            tx.audit(
                &actor_id,
                "org.update",
                after.name.as_str(),
                Some(format!(
                    "before: description {:?}, delegated [{}]; after: description {:?}, delegated [{}]",
                    before.description,
                    prefixes_text(&before.delegated),
                    after.description,
                    prefixes_text(&after.delegated)
                )),
                Some(&after.name),
            );
            Ok(())
        })
        .await?;
        Ok(self.org_view(&org))
    }

    fn org_view(&self, org: &Org) -> OrgView {
        let sites = self.with_model(|m| m.sites.values().filter(|s| s.org == org.name).count());
        OrgView {
            name: org.name.clone(),
            description: org.description.clone(),
            sites: sites as u64,
            created_at: org.created_at,
            delegated: org.delegated.clone(),
        }
    }

    /// The organisations `actor` sees: all, or its own.
    pub async fn list_orgs(&self, actor: &Actor) -> Result<Vec<OrgView>, Error> {
        Ok(self
            .store
            .orgs()
            .await?
            .iter()
            .filter(|o| actor.sees(&o.name))
            .map(|o| self.org_view(o))
            .collect())
    }

    pub async fn org(&self, actor: &Actor, name: &Name) -> Result<OrgView, Error> {
        self.list_orgs(actor)
            .await?
            .into_iter()
            .find(|o| &o.name == name)
            .ok_or_else(|| not_found_org(name))
    }

    /// Delete an organisation that no site and no admin token refers to.
    pub async fn delete_org(&self, actor: &Actor, name: &Name) -> Result<(), Error> {
        actor.require_network_wide("deleting an organisation")?;
        let org = self.org(actor, name).await?;
        if name == &default_org() {
            return Err(Error::Conflict(format!(
                "organisation {name} is where sites added without an organisation go; it cannot be deleted"
            )));
        }
        if org.sites > 0 {
            return Err(Error::Conflict(format!(
                "organisation {name} still has {} sites; delete them first",
                org.sites
            )));
        }
        let (actor_id, owned) = (actor.id.clone(), name.clone());
        self.change(move |tx| {
            super::rules::check_unnamed(&tx.model().policy, &Source::Org(owned.clone()))?;
            tx.delete_org(&owned);
            tx.audit(
                &actor_id,
                "org.delete",
                owned.as_str(),
                Some(format!("before: description {:?}", org.description)),
                Some(&owned),
            );
            Ok(())
        })
        .await
        .map_err(|e| {
            if e.is_taken("admin_tokens.org") {
                Error::Conflict(format!(
                    "admin tokens are scoped to organisation {name}; it cannot be deleted while they exist"
                ))
            } else if e.is_taken("sites.org") {
                Error::Conflict(format!(
                    "organisation {name} still has sites; delete them first"
                ))
            } else if e.is_taken("policy_rules.org") {
                Error::Conflict(format!(
                    "policy rules admit traffic into organisation {name}; delete them first (`policy list`)"
                ))
            } else {
                e
            }
        })
    }

    /// The admin token a request bears, and, when the database did not
    /// answer, why the request is answered from this replica's state
    /// (reads then see everything this replica has published, perhaps not
    /// the newest; writes fail with 503 naming the database). A token is
    /// then taken on this replica's word if the database confirmed it
    /// within [`RECALL_ADMINS_SECS`].
    pub async fn authenticate_admin(
        &self,
        bearer: Option<&str>,
    ) -> Result<(AdminToken, Option<String>), Error> {
        let token = bearer.ok_or_else(|| {
            Error::Unauthorized(
                "missing admin token: send `Authorization: Bearer <token>` (create one with `wardnet-controller admin-token create`)"
                    .into(),
            )
        })?;
        let hash = hash_secret(token);
        match self.store.admin_token(&hash).await {
            Ok(Some(t)) => {
                self.admins_seen
                    .lock()
                    .insert(hash, (t.clone(), self.now()));
                // Read-your-writes across replicas: an admin sees every
                // change committed before the request, through any replica.
                match self.sync().await {
                    Ok(()) => {
                        self.database_answers();
                        Ok((t, None))
                    }
                    Err(Error::Unavailable(why)) => Ok((t, Some(self.stale(&why)))),
                    Err(e) => Err(e),
                }
            }
            Ok(None) => {
                self.admins_seen.lock().remove(&hash);
                self.database_answers();
                Err(Error::Unauthorized("admin token not recognised".into()))
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Commit(_))) => {
                let why = format!("the database did not answer ({e})");
                let seen = self.admins_seen.lock().get(&hash).cloned();
                match seen {
                    Some((t, at)) if self.now() - at <= RECALL_ADMINS_SECS => {
                        Ok((t, Some(self.stale(&why))))
                    }
                    _ => {
                        self.stale(&why);
                        Err(Error::Unavailable(format!(
                            "{why}, and this replica has not seen this admin token in the last {} hours, \
                             so it cannot check it; try another replica, or again when the database answers",
                            RECALL_ADMINS_SECS / 3600
                        )))
                    }
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The database did not answer: say so in the log once per outage,
    /// and what an answer given from this replica's state is.
    fn stale(&self, why: &str) -> String {
        let now = self.now();
        let since =
            match self
                .database_away
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    tracing::warn!(
                    reason = why,
                    "the database does not answer: admin reads are answered from this replica's \
                     state, writes fail until it answers"
                );
                    now
                }
                Err(since) => since,
            };
        let world = self.snapshot();
        format!(
            "{why}; answered from this replica's state as of change {} (the database has not answered since {})",
            world.seq,
            wardnet_common::time::format_rfc3339(since)
        )
    }

    fn database_answers(&self) {
        let since = self.database_away.swap(0, Ordering::SeqCst);
        if since != 0 {
            tracing::info!(away_secs = self.now() - since, "the database answers again");
        }
    }
}

fn prefixes_text(p: &std::collections::BTreeSet<IpNet>) -> String {
    p.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Space delegated to organisation `org`: whole prefixes, each either an
/// overlay block inside one region's block that no other organisation's
/// site holds an address in, or LAN space inside the network's routed
/// prefixes that no other organisation's site uses; and no part of
/// another organisation's (the NOC, the only one who delegates, is told
/// whose).
fn check_delegation(
    m: &crate::model::Model,
    net: &crate::model::NetworkSettings,
    org: &Name,
    prefixes: &std::collections::BTreeSet<IpNet>,
) -> Result<(), Error> {
    for p in prefixes {
        if p.trunc() != *p {
            return Err(Error::Unprocessable(format!(
                "delegated: {p} has host bits set; did you mean {}?",
                p.trunc()
            )));
        }
        let overlay = overlaps(p, &IpNet::V4(net.overlay_v4))
            || net.overlay_v6.is_some_and(|v6| overlaps(p, &IpNet::V6(v6)));
        if overlay {
            let in_region = m.regions.values().any(|r| {
                IpNet::V4(r.ipv4_block).contains(p)
                    || r.ipv6_block.is_some_and(|b| IpNet::V6(b).contains(p))
            });
            if !in_region {
                return Err(Error::Unprocessable(format!(
                    "delegated: {p} is in the overlay but not inside one region's block; \
                     an organisation's overlay block lies inside a region's (`regions list` shows them)"
                )));
            }
            let foreign = m
                .sites_inside(p)
                .filter_map(|n| m.sites.get(n))
                .find(|s| &s.org != org);
            if let Some(s) = foreign {
                return Err(Error::Conflict(format!(
                    "delegated: {p} holds the overlay address of site {} (organisation {}); \
                     delegate a block no other organisation's site has an address in",
                    s.name, s.org
                )));
            }
        } else if !net.routed_prefixes.iter().any(|r| r.contains(p)) {
            return Err(Error::Unprocessable(format!(
                "delegated: {p} is outside network.routed_prefixes and the overlay; \
                 delegate LAN space the network routes, or an overlay block inside a region's"
            )));
        }
        if let Some((q, other)) = m.policy.delegated.overlapping(p).find(|(_, o)| *o != org) {
            return Err(Error::Conflict(format!(
                "delegated: {p} overlaps {q}, delegated to organisation {other}; take it back there first (`orgs undelegate {other} {q}`)"
            )));
        }
        if let Some(s) = m
            .lans_overlapping(p)
            .filter_map(|(n, _)| m.sites.get(n))
            .find(|s| &s.org != org)
        {
            return Err(Error::Conflict(format!(
                "delegated: {p} overlaps a LAN prefix of site {} (organisation {}); delegate space no other organisation's site uses",
                s.name, s.org
            )));
        }
    }
    Ok(())
}
