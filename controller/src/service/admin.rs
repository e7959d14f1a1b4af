//! Admin operations: organisations, regions, sites, tokens, exports,
//! audit, status.
//!
//! Scope: an admin token is network-wide or scoped to one organisation. A
//! scoped token sees and changes only its organisation's sites (and their
//! health, exports and audit entries); every other site answers 404, as if
//! it did not exist. What belongs to the whole network (regions, hubs,
//! organisations, admin tokens) only a network-wide token changes (403).

use std::collections::BTreeSet;

use ipnet::IpNet;
use wardnet_common::net::overlaps;
use wardnet_common::token::{hash_secret, Secret, ADMIN_PREFIX, ENROLMENT_PREFIX};
use wardnet_common::wire::{
    AuditEntry, CreateOrg, CreateRegion, CreateSite, OrgView, RegionHub, RegionView, SiteConfig,
    SiteCreated, SiteState, SiteView, StatusSummary, UpdateSite,
};
use wardnet_common::{Name, Role};

use super::heartbeat::Report;
use super::{Controller, Mutation};
use crate::error::ApiError;
use crate::ipam;
use crate::model::{default_org, Model, Org, Region, Site, SiteInputs};
use crate::store::{AdminToken, NewAudit, StoreError, Write};

/// Who asks: an admin token's id (what the audit log names) and the
/// organisation it is scoped to (`None`: network-wide).
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub org: Option<Name>,
}

impl Actor {
    /// The controller host's own commands (`admin-token create`).
    pub fn local() -> Self {
        Actor {
            id: "local".into(),
            org: None,
        }
    }

    /// Whether this admin may see and change what belongs to `org`.
    pub fn sees(&self, org: &Name) -> bool {
        self.org.as_ref().is_none_or(|o| o == org)
    }

    /// Refuses what only a network-wide token may do (`what`: "creating a
    /// region"). Nothing of another organisation is revealed by it.
    pub fn require_network_wide(&self, what: &str) -> Result<(), ApiError> {
        match &self.org {
            None => Ok(()),
            Some(org) => Err(ApiError::Forbidden(format!(
                "{what} needs a network-wide admin token; this token is scoped to organisation {org}"
            ))),
        }
    }
}

/// An audit entry; `org`: whose object it is about (its admins see it).
pub(super) fn audit(
    at: i64,
    actor: &Actor,
    action: &str,
    object: &str,
    detail: Option<String>,
    org: Option<&Name>,
) -> NewAudit {
    NewAudit {
        at,
        actor: actor.id.clone(),
        action: action.into(),
        object: object.into(),
        detail,
        org: org.cloned(),
    }
}

/// A site's administered fields, as the audit log records them.
fn site_fields(s: &Site) -> String {
    let lans: Vec<String> = s.lan_prefixes.iter().map(ToString::to_string).collect();
    format!(
        "org {}, region {}, role {}, state {}, lan [{}], endpoint {}, address {}{}",
        s.org,
        s.region,
        s.role,
        s.state,
        lans.join(" "),
        s.endpoint
            .map_or_else(|| "none".to_owned(), |e| e.to_string()),
        s.ipv4,
        if s.agentless { ", agentless" } else { "" }
    )
}

/// An audit entry's detail for a change of a site: its fields before and after.
fn site_change(before: Option<&Site>, after: Option<&Site>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!("before: {}; after: {}", site_fields(b), site_fields(a)),
        (None, Some(a)) => format!("after: {}", site_fields(a)),
        (Some(b), None) => format!("before: {}", site_fields(b)),
        (None, None) => String::new(),
    }
}

/// The site `name` if it exists and `actor` may see it; else 404 either way.
pub(super) fn visible_site<'m>(
    m: &'m Model,
    actor: &Actor,
    name: &Name,
) -> Result<&'m std::sync::Arc<Site>, ApiError> {
    m.sites
        .get(name)
        .filter(|s| actor.sees(&s.org))
        .ok_or_else(|| not_found_site(name))
}

pub(super) fn not_found_org(name: &Name) -> ApiError {
    ApiError::NotFound(format!(
        "no organisation named {name}; `orgs list` shows the organisations"
    ))
}

fn region_view(
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
        revision: s.revision,
        applied_revision: r.applied_revision,
        created_at: s.created_at,
        enrolled_at: s.enrolled_at,
        last_seen: r.last_seen,
        health: r.health.clone(),
    }
}

fn not_found_site(name: &Name) -> ApiError {
    ApiError::NotFound(format!(
        "no site named {name}; `sites list` shows the sites"
    ))
}

fn not_found_region(name: &Name) -> ApiError {
    ApiError::NotFound(format!(
        "no region named {name}; create it first with `wardnet-controller regions add {name}`"
    ))
}

/// See [`Controller::online_window_secs`].
pub(super) const ONLINE_WINDOW_SECS: i64 = 130;

impl Controller {
    // ----- regions -------------------------------------------------------

    pub async fn create_region(
        &self,
        actor: &Actor,
        req: CreateRegion,
    ) -> Result<RegionView, ApiError> {
        actor.require_network_wide("creating a region")?;
        let net = self.settings.network.clone();
        let actor = actor.clone();
        self.change(move |m, now| {
            if m.regions.contains_key(&req.name) {
                return Err(ApiError::Conflict(format!(
                    "a region named {} already exists",
                    req.name
                )));
            }
            let (v4, v6) = ipam::allocate_region_blocks(&net, m.regions.values())
                .map_err(|e| ApiError::Conflict(e.to_string()))?;
            let region = Region {
                name: req.name.clone(),
                mesh: req.mesh,
                ipv4_block: v4,
                ipv6_block: v6,
                created_at: now,
            };
            m.upsert_region(region.clone());
            let view = region_view(m, &region, &|_| Report::default(), now, &actor);
            let mut mu = Mutation::new(view);
            mu.writes.push(Write::InsertRegion(region));
            mu.audit = Some(audit(
                now,
                &actor,
                "region.create",
                req.name.as_str(),
                Some(format!(
                    "block {v4}{}, mesh {}",
                    v6.map(|b| format!(" {b}")).unwrap_or_default(),
                    req.mesh
                )),
                None,
            ));
            Ok(mu)
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

    pub fn region(&self, actor: &Actor, name: &Name) -> Result<RegionView, ApiError> {
        let report = |n: &Name| self.report_of(n);
        let now = self.now();
        self.with_model(|m| {
            m.regions
                .get(name)
                .map(|r| region_view(m, r, &report, now, actor))
        })
        .ok_or_else(|| not_found_region(name))
    }

    pub async fn delete_region(&self, actor: &Actor, name: &Name) -> Result<(), ApiError> {
        actor.require_network_wide("deleting a region")?;
        let (actor, name) = (actor.clone(), name.clone());
        self.change(move |m, now| {
            if !m.regions.contains_key(&name) {
                return Err(not_found_region(&name));
            }
            let n = m.by_region.get(&name).map_or(0, |s| s.len());
            if n > 0 {
                return Err(ApiError::Conflict(format!(
                    "region {name} still has {n} sites; delete them first"
                )));
            }
            m.remove_region(&name);
            let mut mu = Mutation::new(());
            mu.writes.push(Write::DeleteRegion(name.clone()));
            mu.audit = Some(audit(
                now,
                &actor,
                "region.delete",
                name.as_str(),
                None,
                None,
            ));
            Ok(mu)
        })
        .await
    }

    // ----- sites ---------------------------------------------------------

    pub async fn add_site(&self, actor: &Actor, req: CreateSite) -> Result<SiteCreated, ApiError> {
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
        let missing_org = ApiError::NotFound(format!(
            "no organisation named {org}; create it first with `wardnet-controller orgs add {org}`"
        ));
        let net = self.settings.network.clone();
        let lifetime = self.settings.token_lifetime_secs as i64;
        let actor = actor.clone();
        self.change(move |m, now| {
            if m.sites.contains_key(&req.name) {
                return Err(ApiError::Conflict(format!("a site named {} already exists", req.name)));
            }
            let region = m.regions.get(&req.region).ok_or_else(|| not_found_region(&req.region))?.clone();
            check_lan_prefixes(m, &net, &req.name, &req.lan_prefixes)?;
            if req.role == Role::Hub && req.endpoint.is_none() {
                return Err(ApiError::Unprocessable(format!(
                    "hub {} needs a reachable underlay endpoint: pass `endpoint` (IP:PORT) so its spokes can reach it",
                    req.name
                )));
            }
            if let Some(k) = req.public_key {
                check_key_unused(m, &req.name, &k)?;
            }
            let (used4, used6) = ipam::used_addresses(m, &req.region);
            let (ipv4, ipv6) = ipam::allocate_site_addresses(&region, &used4, &used6)
                .map_err(|e| ApiError::Conflict(e.to_string()))?;
            let agentless = req.public_key.is_some();
            let site = Site {
                inputs: SiteInputs {
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
                    credential_hash: None,
                },
                revision: 0,
                render_fingerprint: None,
                applied_revision: 0,
                last_seen: None,
                health: None,
            };
            m.upsert_site(site.clone());
            let mut out = SiteCreated {
                site: site_view(&site, &Report::default()),
                token: None,
                token_expires_at: None,
            };
            let mut mu = Mutation::new(());
            mu.writes.push(Write::InsertSite(site.clone()));
            if !agentless {
                let token = Secret::generate(ENROLMENT_PREFIX);
                mu.writes.push(Write::InsertEnrolToken {
                    site: site.name.clone(),
                    hash: token.hash(),
                    created_at: now,
                    expires_at: now + lifetime,
                });
                out.token = Some(token.expose().to_owned());
                out.token_expires_at = Some(now + lifetime);
            }
            mu.audit = Some(audit(
                now,
                &actor,
                "site.create",
                req.name.as_str(),
                Some(site_change(None, Some(&site))),
                Some(&site.org),
            ));
            mu.sites.push((None, Some(site)));
            Ok(Mutation {
                writes: mu.writes,
                sites: mu.sites,
                audit: mu.audit,
                output: out,
            })
        })
        .await
        .map_err(|e| if e.is_conflict_on("sites.org") { missing_org } else { e })
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

    pub fn site(&self, actor: &Actor, name: &Name) -> Result<SiteView, ApiError> {
        let report = self.report_of(name);
        self.with_model(|m| visible_site(m, actor, name).map(|s| site_view(s, &report)))
    }

    pub async fn update_site(
        &self,
        actor: &Actor,
        name: &Name,
        req: UpdateSite,
    ) -> Result<SiteView, ApiError> {
        let net = self.settings.network.clone();
        let (actor, owned_name) = (actor.clone(), name.clone());
        let name = owned_name.clone();
        self.change(move |m, now| {
            let name = &name;
            let before = visible_site(m, &actor, name)?.as_ref().clone();
            let mut after = before.clone();
            if let Some(lan) = &req.lan_prefixes {
                check_lan_prefixes(m, &net, name, lan)?;
                after.lan_prefixes = lan.clone();
            }
            if let Some(ep) = req.endpoint {
                if after.role == Role::Hub && ep.is_none() {
                    return Err(ApiError::Unprocessable(format!(
                        "hub {name} needs an endpoint; it cannot be cleared"
                    )));
                }
                after.endpoint = ep;
            }
            m.upsert_site(after.clone());
            let mut mu = Mutation::new(());
            mu.writes.push(Write::UpdateSite(after.clone()));
            mu.audit = Some(audit(
                now,
                &actor,
                "site.update",
                name.as_str(),
                Some(site_change(Some(&before), Some(&after))),
                Some(&before.org),
            ));
            mu.sites.push((Some(before), Some(after)));
            Ok(mu)
        })
        .await?;
        self.site(&Actor::local(), &owned_name)
    }

    pub async fn revoke_site(&self, actor: &Actor, name: &Name) -> Result<SiteView, ApiError> {
        let (actor, owned) = (actor.clone(), name.clone());
        self.change(move |m, now| {
            let name = &owned;
            let before = visible_site(m, &actor, name)?.as_ref().clone();
            if before.state == SiteState::Revoked {
                return Err(ApiError::Conflict(format!(
                    "site {name} is already revoked"
                )));
            }
            let mut after = before.clone();
            after.state = SiteState::Revoked;
            after.credential_hash = None;
            m.upsert_site(after.clone());
            let mut mu = Mutation::new(());
            mu.writes.push(Write::UpdateSite(after.clone()));
            mu.writes
                .push(Write::DeleteEnrolTokens { site: name.clone() });
            mu.audit = Some(audit(
                now,
                &actor,
                "site.revoke",
                name.as_str(),
                Some(site_change(Some(&before), Some(&after))),
                Some(&before.org),
            ));
            mu.sites.push((Some(before), Some(after)));
            Ok(mu)
        })
        .await?;
        // The revoked site's own long-poll ended when the change was
        // published (its credential is gone).
        self.site(&Actor::local(), name)
    }

    pub async fn delete_site(&self, actor: &Actor, name: &Name) -> Result<(), ApiError> {
        let (actor, owned) = (actor.clone(), name.clone());
        self.change(move |m, now| {
            let name = &owned;
            visible_site(m, &actor, name)?;
            let before = m.remove_site(name).ok_or_else(|| not_found_site(name))?;
            // Its services go with it (the store cascades).
            m.drop_services_of(name);
            let mut mu = Mutation::new(());
            mu.writes.push(Write::DeleteSite(name.clone()));
            mu.audit = Some(audit(
                now,
                &actor,
                "site.delete",
                name.as_str(),
                Some(site_change(Some(&before), None)),
                Some(&before.org),
            ));
            mu.sites.push((Some(before), None));
            Ok(mu)
        })
        .await?;
        self.heartbeats.forget(name);
        self.metrics.apply_latency.forget(name);
        Ok(())
    }

    /// A new one-time token for a site (a replaced gateway, key rotation).
    /// The site keeps running on its current key until the new agent enrols.
    pub async fn issue_token(&self, actor: &Actor, name: &Name) -> Result<SiteCreated, ApiError> {
        let lifetime = self.settings.token_lifetime_secs as i64;
        let (actor, owned) = (actor.clone(), name.clone());
        let report = self.report_of(name);
        self.change(move |m, now| {
            let name = &owned;
            let site = visible_site(m, &actor, name)?;
            if site.state == SiteState::Revoked {
                return Err(ApiError::Conflict(format!(
                    "site {name} is revoked; delete it and add it again to re-enrol"
                )));
            }
            if site.agentless {
                return Err(ApiError::Conflict(format!(
                    "site {name} is agentless (configured by `sites export`); it does not enrol"
                )));
            }
            let token = Secret::generate(ENROLMENT_PREFIX);
            let mut mu = Mutation::new(SiteCreated {
                site: site_view(site, &report),
                token: Some(token.expose().to_owned()),
                token_expires_at: Some(now + lifetime),
            });
            mu.writes
                .push(Write::DeleteEnrolTokens { site: name.clone() });
            mu.writes.push(Write::InsertEnrolToken {
                site: name.clone(),
                hash: token.hash(),
                created_at: now,
                expires_at: now + lifetime,
            });
            mu.audit = Some(audit(
                now,
                &actor,
                "site.token",
                name.as_str(),
                None,
                Some(&site.org),
            ));
            Ok(mu)
        })
        .await
    }

    /// The config the controller renders for a site now.
    pub fn site_config(&self, actor: &Actor, name: &Name) -> Result<SiteConfig, ApiError> {
        let world = self.snapshot();
        let site = visible_site(&world.model, actor, name)?;
        world
            .configs
            .get(name)
            .map(|r| r.to_config())
            .ok_or_else(|| {
                ApiError::Conflict(format!(
                    "site {name} is {}; only active sites have a config",
                    site.state
                ))
            })
    }

    pub fn wg_quick(&self, actor: &Actor, name: &Name) -> Result<String, ApiError> {
        self.site_config(actor, name)
            .map(|c| crate::wgquick::wg_quick(&c))
    }

    /// The audit log; a scoped admin sees the entries about its own
    /// organisation's objects.
    pub async fn audit_log(
        &self,
        actor: &Actor,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, ApiError> {
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
    ) -> Result<(String, String), ApiError> {
        actor.require_network_wide("creating an admin token")?;
        if let Some(org) = org {
            if !self.store.orgs().await?.iter().any(|o| &o.name == org) {
                return Err(ApiError::NotFound(format!(
                    "no organisation named {org}; create it first with `wardnet-controller orgs add {org}`"
                )));
            }
        }
        let secret = Secret::generate(ADMIN_PREFIX);
        let id = format!("tok-{}", &secret.hash()[..8]);
        let now = self.now();
        let scope = org.map_or_else(
            || "network-wide".to_owned(),
            |o| format!("scoped to organisation {o}"),
        );
        self.store
            .commit(vec![
                Write::InsertAdminToken {
                    id: id.clone(),
                    hash: secret.hash(),
                    description: description.to_owned(),
                    created_at: now,
                    org: org.cloned(),
                },
                Write::Audit(audit(
                    now,
                    actor,
                    "token.create",
                    &id,
                    Some(format!("{description} ({scope})")),
                    org,
                )),
            ])
            .await
            .map_err(|e| match e {
                StoreError::Conflict { what } if what == "admin_tokens.org" => {
                    org.map_or_else(|| e_conflict(&what), not_found_org)
                }
                e => e.into(),
            })?;
        Ok((id, secret.expose().to_owned()))
    }

    // ----- organisations -------------------------------------------------

    pub async fn create_org(&self, actor: &Actor, req: CreateOrg) -> Result<OrgView, ApiError> {
        actor.require_network_wide("creating an organisation")?;
        let now = self.now();
        let org = Org {
            name: req.name.clone(),
            description: req.description.clone(),
            created_at: now,
        };
        self.store
            .commit(vec![
                Write::InsertOrg(org.clone()),
                Write::Audit(audit(
                    now,
                    actor,
                    "org.create",
                    req.name.as_str(),
                    Some(format!("description {:?}", req.description)),
                    Some(&req.name),
                )),
            ])
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ApiError::Conflict(format!("an organisation named {} already exists", req.name))
                }
                e => e.into(),
            })?;
        Ok(self.org_view(&org))
    }

    fn org_view(&self, org: &Org) -> OrgView {
        let sites = self.with_model(|m| m.sites.values().filter(|s| s.org == org.name).count());
        OrgView {
            name: org.name.clone(),
            description: org.description.clone(),
            sites: sites as u64,
            created_at: org.created_at,
        }
    }

    /// The organisations `actor` sees: all, or its own.
    pub async fn list_orgs(&self, actor: &Actor) -> Result<Vec<OrgView>, ApiError> {
        Ok(self
            .store
            .orgs()
            .await?
            .iter()
            .filter(|o| actor.sees(&o.name))
            .map(|o| self.org_view(o))
            .collect())
    }

    pub async fn org(&self, actor: &Actor, name: &Name) -> Result<OrgView, ApiError> {
        self.list_orgs(actor)
            .await?
            .into_iter()
            .find(|o| &o.name == name)
            .ok_or_else(|| not_found_org(name))
    }

    /// Delete an organisation that no site and no admin token refers to.
    pub async fn delete_org(&self, actor: &Actor, name: &Name) -> Result<(), ApiError> {
        actor.require_network_wide("deleting an organisation")?;
        let org = self.org(actor, name).await?;
        if name == &default_org() {
            return Err(ApiError::Conflict(format!(
                "organisation {name} is where sites added without an organisation go; it cannot be deleted"
            )));
        }
        if org.sites > 0 {
            return Err(ApiError::Conflict(format!(
                "organisation {name} still has {} sites; delete them first",
                org.sites
            )));
        }
        let now = self.now();
        self.store
            .commit(vec![
                Write::DeleteOrg(name.clone()),
                Write::Audit(audit(
                    now,
                    actor,
                    "org.delete",
                    name.as_str(),
                    Some(format!("before: description {:?}", org.description)),
                    Some(name),
                )),
            ])
            .await
            .map_err(|e| match e {
                StoreError::Conflict { what } if what == "admin_tokens.org" => {
                    ApiError::Conflict(format!(
                        "admin tokens are scoped to organisation {name}; it cannot be deleted while they exist"
                    ))
                }
                StoreError::Conflict { what } if what == "sites.org" => ApiError::Conflict(format!(
                    "organisation {name} still has sites; delete them first"
                )),
                StoreError::Conflict { what } if what == "policy_rules.org" => {
                    ApiError::Conflict(format!(
                        "policy rules admit traffic into organisation {name}; delete them first (`policy list`)"
                    ))
                }
                e => e.into(),
            })
    }

    pub async fn authenticate_admin(&self, bearer: Option<&str>) -> Result<AdminToken, ApiError> {
        let token = bearer.ok_or_else(|| {
            ApiError::Unauthorized(
                "missing admin token: send `Authorization: Bearer <token>` (create one with `wardnet-controller admin-token create`)"
                    .into(),
            )
        })?;
        match self.store.admin_token(&hash_secret(token)).await {
            Ok(Some(t)) => {
                // Read-your-writes across replicas: an admin sees every
                // change committed before the request, through any replica.
                self.sync().await?;
                Ok(t)
            }
            Ok(None) => Err(ApiError::Unauthorized("admin token not recognised".into())),
            Err(e) => Err(e.into()),
        }
    }
}

fn e_conflict(what: &str) -> ApiError {
    ApiError::Conflict(format!("conflict on {what}"))
}

/// A site's LAN prefixes may not overlap the overlay, a region block, or
/// another site's LAN prefixes (nor each other).
fn check_lan_prefixes(
    m: &Model,
    net: &crate::model::NetworkSettings,
    site: &Name,
    lan: &BTreeSet<IpNet>,
) -> Result<(), ApiError> {
    let list: Vec<&IpNet> = lan.iter().collect();
    for (i, p) in list.iter().enumerate() {
        if p.trunc() != **p {
            return Err(ApiError::Unprocessable(format!(
                "lan_prefixes: {p} has host bits set; did you mean {}?",
                p.trunc()
            )));
        }
        for q in &list[i + 1..] {
            if overlaps(p, q) {
                return Err(ApiError::Conflict(format!(
                    "lan_prefixes: {p} overlaps {q} of the same site"
                )));
            }
        }
        if overlaps(p, &IpNet::V4(net.overlay_v4))
            || net.overlay_v6.is_some_and(|v6| overlaps(p, &IpNet::V6(v6)))
        {
            return Err(ApiError::Conflict(format!(
                "lan_prefixes: {p} overlaps the overlay prefix; a site LAN must lie outside it"
            )));
        }
        for r in m.regions.values() {
            if overlaps(p, &IpNet::V4(r.ipv4_block))
                || r.ipv6_block.is_some_and(|b| overlaps(p, &IpNet::V6(b)))
            {
                return Err(ApiError::Conflict(format!(
                    "lan_prefixes: {p} overlaps region {}'s overlay block",
                    r.name
                )));
            }
        }
        if !net.routed_prefixes.iter().any(|r| r.contains(*p)) {
            let routed: Vec<String> = net.routed_prefixes.iter().map(|r| r.to_string()).collect();
            return Err(ApiError::Unprocessable(format!(
                "lan_prefixes: {p} is outside network.routed_prefixes ({}) of the controller's config; \
                 spokes route only those prefixes to their hub, so sites in other regions could not reach it. \
                 Use a prefix inside them, or add a supernet of {p} to routed_prefixes and restart the controller",
                if routed.is_empty() { "none configured".to_owned() } else { routed.join(", ") }
            )));
        }
        if let Some((other, q)) = m.lan_overlapping(p, site) {
            return Err(ApiError::Conflict(format!(
                "lan_prefixes: {p} overlaps {q}, a LAN prefix of site {other}"
            )));
        }
    }
    Ok(())
}

pub(super) fn check_key_unused(
    m: &Model,
    site: &Name,
    key: &wardnet_common::PublicKey,
) -> Result<(), ApiError> {
    match m.sites_with_key(key, site).next() {
        Some(other) => Err(ApiError::Conflict(format!(
            "public key {key} is already used by site {other}; every site needs its own key"
        ))),
        None => Ok(()),
    }
}
