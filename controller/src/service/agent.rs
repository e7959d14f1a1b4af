//! What agents call: enrolment, the config long-poll and reports.

use std::time::Duration;

use wardnet_common::token::{hash_secret, Secret, AGENT_PREFIX};
use wardnet_common::wire::{AgentReport, EnrollRequest, EnrollResponse, SiteConfig, SiteState};
use wardnet_common::{Name, Role};

use super::admin::check_key_unused;
use super::{Controller, Mutation, WaitGuard};
use crate::error::ApiError;
use crate::store::{NewAudit, StoreError, Write};

/// An authenticated agent: its site, and the credential hash it used (a
/// revoked or re-enrolled site's old credential stops working at once).
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub site: Name,
    credential_hash: String,
}

impl Controller {
    pub async fn enroll(&self, req: EnrollRequest) -> Result<EnrollResponse, ApiError> {
        let result = self.enroll_inner(req).await;
        let label = match &result {
            Ok(_) => "success",
            Err(ApiError::Unauthorized(m)) if m.contains("expired") => "expired_token",
            Err(ApiError::Unauthorized(_)) => "unknown_token",
            Err(ApiError::Conflict(m)) if m.contains("already used") => "token_reused",
            Err(ApiError::Conflict(_)) => "conflict",
            Err(ApiError::BadRequest(_) | ApiError::Unprocessable(_)) => "bad_request",
            Err(_) => "error",
        };
        self.metrics.enrolments.with_label_values(&[label]).inc();
        result
    }

    async fn enroll_inner(&self, req: EnrollRequest) -> Result<EnrollResponse, ApiError> {
        let hash = hash_secret(req.token.trim());
        let token = self.store.enrol_token(&hash).await?.ok_or_else(|| {
            ApiError::Unauthorized(
                "enrolment token not recognised: check it was copied whole, or ask the NOC for a new one \
                 (`wardnet-controller sites token SITE`)"
                    .into(),
            )
        })?;
        let now = self.now();
        if let Some(used) = token.used_at {
            return Err(used_error(&token.site, used));
        }
        if token.expires_at <= now {
            return Err(ApiError::Unauthorized(format!(
                "enrolment token for site {} expired at {} (Unix time); ask the NOC for a new one \
                 (`wardnet-controller sites token {}`)",
                token.site, token.expires_at, token.site
            )));
        }
        let credential = Secret::generate(AGENT_PREFIX);
        let site_name = token.site.clone();
        let result = self
            .change(|m, now| {
                let before = m
                    .sites
                    .get(&site_name)
                    .ok_or_else(|| ApiError::Unauthorized("the site of this token was deleted".into()))?
                    .clone();
                if before.state == SiteState::Revoked {
                    return Err(ApiError::Forbidden(format!("site {site_name} is revoked")));
                }
                check_key_unused(m, &site_name, &req.public_key)?;
                let endpoint = req.endpoint.or(before.endpoint);
                if before.role == Role::Hub && endpoint.is_none() {
                    return Err(ApiError::Unprocessable(format!(
                        "site {site_name} is a hub and needs a reachable endpoint: enrol with --endpoint IP:PORT"
                    )));
                }
                let mut after = before.clone();
                after.state = SiteState::Active;
                after.public_key = Some(req.public_key);
                after.endpoint = endpoint;
                after.enrolled_at = Some(now);
                after.credential_hash = Some(credential.hash());
                m.upsert_site(after.clone());
                let response = EnrollResponse {
                    site: after.name.clone(),
                    region: after.region.clone(),
                    role: after.role,
                    addresses: after.addresses(),
                    credential: credential.expose().to_owned(),
                };
                let mut mu = Mutation::new(response);
                mu.writes.push(Write::ConsumeEnrolToken {
                    hash: hash.clone(),
                    site: site_name.clone(),
                    now,
                });
                mu.writes.push(Write::UpdateSite(after.clone()));
                mu.sites.push((Some(before), Some(after)));
                mu.audit = Some(NewAudit {
                    at: now,
                    actor: format!("agent:{site_name}"),
                    action: "site.enrol".into(),
                    object: site_name.to_string(),
                    detail: Some(format!("public key {}", req.public_key)),
                });
                Ok(mu)
            })
            .await;
        match result {
            Err(ApiError::Internal(e))
                if e.downcast_ref::<StoreError>()
                    .is_some_and(|s| matches!(s, StoreError::Precondition(_))) =>
            {
                // Another redemption (here or on another replica) won the race.
                Err(used_error(&token.site, now))
            }
            other => other,
        }
    }

    /// Check an agent's bearer credential.
    pub fn authenticate_agent(&self, bearer: Option<&str>) -> Result<AgentIdentity, ApiError> {
        let cred = bearer.ok_or_else(|| {
            ApiError::Unauthorized(
                "missing agent credential: send `Authorization: Bearer <credential>`".into(),
            )
        })?;
        let hash = hash_secret(cred);
        let state = self.state.read();
        match state.credentials.get(&hash) {
            Some(site) => Ok(AgentIdentity {
                site: site.clone(),
                credential_hash: hash,
            }),
            None => Err(ApiError::Unauthorized(
                "agent credential not recognised: the site was revoked, deleted or re-enrolled; \
                 enrol again with a new token"
                    .into(),
            )),
        }
    }

    fn still_valid(&self, who: &AgentIdentity) -> Result<(), ApiError> {
        let state = self.state.read();
        match state.credentials.get(&who.credential_hash) {
            Some(site) if site == &who.site => Ok(()),
            _ => Err(ApiError::Unauthorized(format!(
                "the credential of site {} is no longer valid (revoked, deleted or re-enrolled)",
                who.site
            ))),
        }
    }

    /// The long-poll: the site's config at once when its revision is newer
    /// than `known`, else wait up to `wait` for a change (None: no change).
    pub async fn agent_config(
        &self,
        who: &AgentIdentity,
        known: u64,
        wait: Option<Duration>,
    ) -> Result<Option<SiteConfig>, ApiError> {
        let wait = wait
            .unwrap_or(self.settings.long_poll_timeout)
            .min(self.settings.long_poll_timeout);
        let mut rx = self
            .revision_rx(&who.site)
            .ok_or_else(|| ApiError::Unauthorized(format!("site {} no longer exists", who.site)))?;
        let deadline = tokio::time::Instant::now() + wait;
        let _guard = WaitGuard::new(&self.waiting);
        loop {
            self.still_valid(who)?;
            let current = *rx.borrow_and_update();
            if current > known {
                return self.with_model(|m| {
                    crate::render::render(m, &self.settings.network, &who.site)
                        .map(Some)
                        .ok_or_else(|| {
                            ApiError::Forbidden(format!(
                                "site {} has no config (not active)",
                                who.site
                            ))
                        })
                });
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The sender is gone: the site was deleted.
                        self.still_valid(who)?;
                        return Err(ApiError::Unauthorized(format!("site {} no longer exists", who.site)));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.shutdown.cancelled() => return Ok(None),
            }
        }
    }

    /// Record what the agent applied, when it was seen, and its health.
    pub async fn agent_report(
        &self,
        who: &AgentIdentity,
        report: AgentReport,
    ) -> Result<(), ApiError> {
        self.still_valid(who)?;
        // It becomes a Prometheus target for the whole NOC: only IP:PORT.
        if let Some(addr) = report
            .health
            .as_ref()
            .and_then(|h| h.metrics_address.as_deref())
        {
            addr.parse::<wardnet_common::Endpoint>()
                .map_err(|e| ApiError::Unprocessable(format!("health.metrics_address: {e}")))?;
        }
        let now = self.now();
        let write = {
            let mut state = self.state.write();
            let site = state.model.sites.get_mut(&who.site).ok_or_else(|| {
                ApiError::Unauthorized(format!("site {} no longer exists", who.site))
            })?;
            if report.applied_revision > site.revision {
                return Err(ApiError::Unprocessable(format!(
                    "applied_revision {} is newer than the site's revision {}",
                    report.applied_revision, site.revision
                )));
            }
            site.applied_revision = report.applied_revision;
            site.last_seen = Some(now);
            site.health = report.health.clone();
            Write::Report {
                site: who.site.clone(),
                applied_revision: report.applied_revision,
                last_seen: now,
                health: report.health,
            }
        };
        self.store.commit(vec![write]).await?;
        self.metrics.apply_latency.applied(
            &who.site,
            report.applied_revision,
            std::time::Instant::now(),
        );
        Ok(())
    }

    /// Wake a site's long-polls without a new revision (after revocation,
    /// so the agent learns at once that its credential is gone).
    pub(crate) fn wake(&self, site: &Name) {
        if let Some(tx) = self.state.read().revisions.get(site) {
            tx.send_modify(|_| {});
        }
    }
}

fn used_error(site: &Name, at: i64) -> ApiError {
    ApiError::Conflict(format!(
        "enrolment token for site {site} was already used (at {at}, Unix time); each token enrols one gateway. \
         Ask the NOC for a new one (`wardnet-controller sites token {site}`)"
    ))
}
