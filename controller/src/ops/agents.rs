//! What agents call: enrolment, the config long-poll and reports.

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use wardnet_common::token::{hash_secret, Secret, AGENT_PREFIX};
use wardnet_common::wire::{AgentReport, EnrollRequest, EnrollResponse, SiteState, UnixTime};
use wardnet_common::{Name, Role};

use super::sites::check_key_unused;
use crate::error::Error;
use crate::pipeline::{Controller, WaitGuard, World};
use crate::reports::Report;
use crate::store::StoreError;

/// An authenticated agent: its site, and the credential hash it used (a
/// revoked or re-enrolled site's old credential stops working at once).
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub site: Name,
    credential_hash: String,
}

/// Why an enrolment was refused, as variants (metric labels come from
/// these, never from message text).
enum EnrolFailure {
    UnknownToken,
    Expired {
        site: Name,
        at: UnixTime,
    },
    Used {
        site: Name,
        at: UnixTime,
    },
    /// The same enrolment again (same token, same key): answered as the
    /// first time, a success.
    Repeated(EnrollResponse),
    Other(Error),
}

impl EnrolFailure {
    fn label(&self) -> &'static str {
        match self {
            EnrolFailure::UnknownToken => "unknown_token",
            EnrolFailure::Expired { .. } => "expired_token",
            EnrolFailure::Used { .. } => "token_reused",
            EnrolFailure::Repeated(_) => "repeated",
            EnrolFailure::Other(Error::Conflict(_)) => "conflict",
            EnrolFailure::Other(Error::BadRequest(_) | Error::Unprocessable(_)) => "bad_request",
            EnrolFailure::Other(Error::Unavailable(_)) => "unavailable",
            EnrolFailure::Other(_) => "error",
        }
    }

    fn into_api(self) -> Error {
        match self {
            EnrolFailure::UnknownToken => Error::Unauthorized(
                "enrolment token not recognised: check it was copied whole, or ask the NOC for a new one \
                 (`wardnet-controller sites token SITE`)"
                    .into(),
            ),
            EnrolFailure::Expired { site, at } => Error::Unauthorized(format!(
                "enrolment token for site {site} expired at {} ; ask the NOC for a new one \
                 (`wardnet-controller sites token {site}`)",
                wardnet_common::time::format_rfc3339(at)
            )),
            EnrolFailure::Used { site, at } => used_error(&site, at),
            EnrolFailure::Repeated(_) => {
                unreachable!("a repeated enrolment is answered, not refused")
            }
            EnrolFailure::Other(e) => e,
        }
    }
}

impl From<Error> for EnrolFailure {
    fn from(e: Error) -> Self {
        EnrolFailure::Other(e)
    }
}

impl From<StoreError> for EnrolFailure {
    fn from(e: StoreError) -> Self {
        EnrolFailure::Other(e.into())
    }
}

impl Controller {
    pub async fn enroll(&self, req: EnrollRequest) -> Result<EnrollResponse, Error> {
        let result = self.enroll_inner(req).await;
        let label = match &result {
            Ok(_) => "success",
            Err(f) => f.label(),
        };
        self.metrics.enrolments.with_label_values(&[label]).inc();
        match result {
            Ok(r) | Err(EnrolFailure::Repeated(r)) => Ok(r),
            Err(f) => Err(f.into_api()),
        }
    }

    /// A used token again. With the key it enrolled (the agent retrying
    /// after its answer was lost, here or at another replica), and while
    /// the token would still be valid and the site still has the
    /// credential it got: the same answer. Otherwise refused as used.
    async fn enrolled_before(
        &self,
        token: crate::store::EnrolToken,
        req: &EnrollRequest,
    ) -> EnrolFailure {
        let used_error = || EnrolFailure::Used {
            site: token.site.clone(),
            at: token.used_at.unwrap_or(token.created_at),
        };
        let credential = token.sealed.as_deref().and_then(|sealed| {
            Secret::unseal(
                AGENT_PREFIX,
                req.token.trim(),
                &credential_context(&token.site, &req.public_key),
                sealed,
            )
        });
        let Some(credential) = credential.filter(|_| token.expires_at > self.now()) else {
            return used_error();
        };
        // Committed elsewhere: this replica reads it before answering.
        if let Err(e) = self.sync().await {
            return EnrolFailure::Other(e);
        }
        let hash = credential.hash();
        self.with_model(|m| match m.sites.get(&token.site) {
            Some(s)
                if s.state == SiteState::Active
                    && s.public_key == Some(req.public_key)
                    && s.credential_hash.as_deref() == Some(hash.as_str()) =>
            {
                EnrolFailure::Repeated(EnrollResponse {
                    site: s.name.clone(),
                    region: s.region.clone(),
                    role: s.role,
                    addresses: s.addresses(),
                    credential: credential.expose().to_owned(),
                })
            }
            _ => used_error(),
        })
    }

    async fn enroll_inner(&self, req: EnrollRequest) -> Result<EnrollResponse, EnrolFailure> {
        let hash = hash_secret(req.token.trim());
        let token = self
            .store
            .enrol_token(&hash)
            .await?
            .ok_or(EnrolFailure::UnknownToken)?;
        let now = self.now();
        if token.used_at.is_some() {
            return Err(self.enrolled_before(token, &req).await);
        }
        if token.expires_at <= now {
            return Err(EnrolFailure::Expired {
                site: token.site,
                at: token.expires_at,
            });
        }
        let credential = Secret::generate(AGENT_PREFIX);
        // Kept with the token, sealed with it, for the same enrolment again.
        let sealed = credential
            .seal(
                req.token.trim(),
                &credential_context(&token.site, &req.public_key),
            )
            .ok_or_else(|| {
                Error::Internal(anyhow::anyhow!("a generated credential did not seal"))
            })?;
        let site_name = token.site.clone();
        let (asked, token_hash) = (req.clone(), hash.clone());
        let result = self
            .change(move |tx| {
                let req = &asked;
                let (m, now) = (tx.model(), tx.now());
                if m.consumed_tokens.contains(&hash) {
                    // Redeemed by a request committed before this one.
                    return Err(Error::Precondition("enrolment token already used".into()));
                }
                let before = m
                    .sites
                    .get(&site_name)
                    .ok_or_else(|| Error::Unauthorized("the site of this token was deleted".into()))?
                    .as_ref()
                    .clone();
                if before.state == SiteState::Revoked {
                    return Err(Error::Forbidden(format!("site {site_name} is revoked")));
                }
                check_key_unused(m, None, &site_name, &req.public_key)?;
                let endpoint = req.endpoint.or(before.endpoint);
                if before.role == Role::Hub && endpoint.is_none() {
                    return Err(Error::Unprocessable(format!(
                        "site {site_name} is a hub and needs a reachable endpoint: enrol with --endpoint IP:PORT"
                    )));
                }
                let mut after = before.clone();
                after.state = SiteState::Active;
                after.public_key = Some(req.public_key);
                after.endpoint = endpoint;
                after.enrolled_at = Some(now);
                after.credential_hash = Some(credential.hash());
                let response = EnrollResponse {
                    site: after.name.clone(),
                    region: after.region.clone(),
                    role: after.role,
                    addresses: after.addresses(),
                    credential: credential.expose().to_owned(),
                };
                tx.consume_enrol_token(&site_name, hash.clone(), sealed.clone());
                tx.update_site(after);
                tx.audit(
                    &format!("agent:{site_name}"),
                    "site.enrol",
                    site_name.as_str(),
                    Some(format!("public key {}", req.public_key)),
                    Some(&before.org),
                );
                Ok(response)
            })
            .await;
        match result {
            // Another redemption (here or on another replica) won the
            // race: this one's own, maybe (the agent sent it twice).
            // Read again: the token as it was read above is unused.
            Err(Error::Precondition(_)) => match self.store.enrol_token(&token_hash).await {
                Ok(Some(t)) => Err(self.enrolled_before(t, &req).await),
                Ok(None) => Err(EnrolFailure::UnknownToken),
                Err(e) => Err(EnrolFailure::Other(e.into())),
            },
            Err(e) => Err(EnrolFailure::Other(e)),
            Ok(r) => Ok(r),
        }
    }

    /// Check an agent's bearer credential. With replicas, one this replica
    /// does not know yet (enrolled through another a moment ago) is looked
    /// up again once caught up with the database.
    pub async fn authenticate_agent(&self, bearer: Option<&str>) -> Result<AgentIdentity, Error> {
        let cred = bearer.ok_or_else(|| {
            Error::Unauthorized(
                "missing agent credential: send `Authorization: Bearer <credential>`".into(),
            )
        })?;
        let hash = hash_secret(cred);
        let known = |c: &Self| c.published.load().credentials.get(&hash).cloned();
        let mut site = known(self);
        if site.is_none() && self.replicated {
            self.sync().await?;
            site = known(self);
        }
        match site {
            Some(site) => Ok(AgentIdentity {
                site,
                credential_hash: hash,
            }),
            None => Err(Error::Unauthorized(
                "agent credential not recognised: the site was revoked, deleted or re-enrolled; \
                 enrol again with a new token"
                    .into(),
            )),
        }
    }

    fn still_valid(&self, world: &World, who: &AgentIdentity) -> Result<(), Error> {
        match world.credentials.get(&who.credential_hash) {
            Some(site) if site == &who.site => Ok(()),
            _ => Err(Error::Unauthorized(format!(
                "the credential of site {} is no longer valid (revoked, deleted or re-enrolled)",
                who.site
            ))),
        }
    }

    /// The long-poll. When the site's revision is newer than `known`, the
    /// answer at once: with `deltas`, the steps since `known` (or the full
    /// config when the agent is new or too far behind), else the full
    /// config. Otherwise wait up to `wait` (jittered, so agents started
    /// together do not stay in step) for a change; `None`: no change.
    /// Answers are bytes prepared once per revision.
    pub async fn agent_config(
        &self,
        who: &AgentIdentity,
        known: u64,
        wait: Option<Duration>,
        deltas: bool,
    ) -> Result<Option<Bytes>, Error> {
        let wait = wait
            .unwrap_or(self.settings.long_poll_timeout)
            .min(self.settings.long_poll_timeout);
        let wait = wait.mul_f64(rand::random::<f64>().mul_add(0.2, 0.8));
        let deadline = tokio::time::Instant::now() + wait;
        let _guard = WaitGuard::new(&self.waiting);
        // A waiting long-poll is the agent's presence: it is seen now, and
        // until the request ends.
        let _present = self
            .published
            .load()
            .credentials
            .contains_key(&who.credential_hash)
            .then(|| Presence::new(self, &who.site));
        let watch = self.watch(&who.site);
        let answer = loop {
            // Listen before looking: a revision published in between wakes
            // this at once.
            let mut changed = pin!(watch.notify().notified());
            changed.as_mut().enable();
            let world = self.published.load();
            self.still_valid(&world, who)?;
            // Out of date: another replica renders the network's configs
            // now; the agent goes there.
            self.require_current()?;
            let Some(render) = world.configs.get(&who.site) else {
                return Err(Error::Forbidden(format!(
                    "site {} has no config (not active)",
                    who.site
                )));
            };
            if render.revision > known {
                break Some(if deltas {
                    render.update_bytes(known)
                } else {
                    render.full_bytes()
                });
            }
            drop(world);
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => break None,
                () = self.shutdown.cancelled() => break None,
            }
        };
        Ok(answer)
    }

    /// Record what the agent applied, when it was seen, and its health: soft
    /// state, persisted in batches (see [`super::heartbeat`]).
    pub async fn agent_report(
        &self,
        who: &AgentIdentity,
        report: AgentReport,
    ) -> Result<(), Error> {
        let world = self.published.load();
        self.still_valid(&world, who)?;
        // It becomes a Prometheus target for the whole NOC: only IP:PORT.
        if let Some(addr) = report
            .health
            .as_ref()
            .and_then(|h| h.metrics_address.as_deref())
        {
            addr.parse::<wardnet_common::Endpoint>()
                .map_err(|e| Error::Unprocessable(format!("health.metrics_address: {e}")))?;
        }
        let site =
            world.model.sites.get(&who.site).ok_or_else(|| {
                Error::Unauthorized(format!("site {} no longer exists", who.site))
            })?;
        if report.applied_revision > site.revision {
            return Err(Error::Unprocessable(format!(
                "applied_revision {} is newer than the site's revision {}",
                report.applied_revision, site.revision
            )));
        }
        self.heartbeats.record(
            &who.site,
            Report {
                applied_revision: report.applied_revision,
                last_seen: Some(self.now()),
                health: report.health,
            },
        );
        self.metrics.apply_latency.applied(
            &who.site,
            report.applied_revision,
            std::time::Instant::now(),
        );
        Ok(())
    }

    /// The last report of a site (soft state).
    pub fn report_of(&self, site: &Name) -> Report {
        self.heartbeats.get(site, self.now())
    }

    /// Every site's last report.
    pub fn reports(&self) -> std::collections::HashMap<Name, Report> {
        self.heartbeats.all(self.now())
    }
}

/// What an agent's credential is sealed for: its site and key.
fn credential_context(site: &Name, key: &wardnet_common::PublicKey) -> Vec<u8> {
    format!("wardnet agent credential\0{site}\0{key}").into_bytes()
}

fn used_error(site: &Name, at: i64) -> Error {
    Error::Conflict(format!(
        "enrolment token for site {site} was already used (at {}) by a gateway with another key; each token \
         enrols one gateway (the same gateway again, with its key, gets the same answer until the token \
         would have expired). To enrol this gateway instead, ask the NOC for a new token \
         (`wardnet-controller sites token {site}`) and run `wardnet-agent enroll --force` with it",
        wardnet_common::time::format_rfc3339(at)
    ))
}

/// A site's long-poll is waiting (see [`super::heartbeat`]).
struct Presence<'a> {
    controller: &'a Controller,
    site: &'a Name,
}

impl<'a> Presence<'a> {
    fn new(controller: &'a Controller, site: &'a Name) -> Self {
        controller.heartbeats.arrive(site, controller.now());
        Self { controller, site }
    }
}

impl Drop for Presence<'_> {
    fn drop(&mut self) {
        self.controller
            .heartbeats
            .leave(self.site, self.controller.now());
    }
}
