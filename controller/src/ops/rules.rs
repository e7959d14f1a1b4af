//! The policy between organisations: rules and services, as the NOC and
//! each organisation's admins manage them, and `check`, which answers for
//! one flow with what decided it (`wardnet_common::policy::decide`).
//!
//! Scope: a rule belongs to the organisation it admits traffic into, and a
//! service to its site's organisation; a scoped token manages only its
//! own (anything else answers 404). It also sees services other
//! organisations share with it, and may check flows from its own sites to
//! its own sites or to a service shared with it.
//!
//! The policy is part of the model: a change goes through the writer like
//! any other, and the same group gives every site whose filter it changes
//! a new revision (its agent hears within the long-poll's wake-up). Each
//! site's filter is compiled by [`crate::model::Model::filter`].

use std::net::IpAddr;
use wardnet_common::policy::{
    decide, CheckAnswer, CheckQuery, CreateRule, Flow, PolicyView, Reason, Rule, RuleView, Service,
    ServiceRef, ServiceView, Source, Target,
};

use wardnet_common::Name;

use super::views::{not_found_org, visible_site};
use super::Actor;
use crate::error::Error;
use crate::model::{Model, Site};
use crate::pipeline::{Controller, Tx};
use crate::store::StoredPolicy;

/// Rules name sites and services by name, and a name means the site or
/// service that held it when the rule was made: a rule is made only for
/// one that exists, and goes when it does (with an audit entry), so a
/// site or service that takes the name later never inherits it. A new
/// site or service also drops rules left naming its name (made before
/// this was so): it starts with none. `services` are qualified (`ORG/NAME`).
pub(crate) fn drop_rules_naming(
    tx: &mut Tx,
    actor: &str,
    site: Option<&Name>,
    services: &[ServiceRef],
) {
    let names_it = |r: &Rule| {
        let by_site = |n: &Name| site == Some(n);
        matches!(&r.from, Source::Site(n) if by_site(n))
            || match &r.to {
                Target::Site(n) => by_site(n),
                Target::Service(r) => services.contains(r),
                Target::All | Target::Org(_) => false,
            }
    };
    let gone: Vec<u64> = tx
        .model()
        .policy
        .rules
        .iter()
        .filter(|r| names_it(&r.rule))
        .map(|r| r.rule.id)
        .collect();
    for id in gone {
        let Some(before) = tx.delete_rule(id) else {
            continue;
        };
        let why = match (&before.rule.from, &before.rule.to) {
            (_, Target::Service(r)) if services.contains(r) => format!("service {r}"),
            _ => format!("site {}", site.map(Name::as_str).unwrap_or_default()),
        };
        tx.audit(
            actor,
            "policy.rule.delete",
            &format!("rule {id}"),
            Some(format!(
                "before: {}; removed with the {why} it named (a new one of that name does not inherit it)",
                rule_text(&before.rule)
            )),
            Some(&before.org),
        );
    }
}

/// Refuses deleting an organisation or a region that rules take traffic
/// from, or (an organisation) that services are shared with: a new one of
/// that name would inherit them. Says which to delete first.
pub(crate) fn check_unnamed(policy: &StoredPolicy, source: &Source) -> Result<(), Error> {
    let rules: Vec<String> = policy
        .rules
        .iter()
        .filter(|r| &r.rule.from == source)
        .map(|r| r.rule.id.to_string())
        .collect();
    if !rules.is_empty() {
        return Err(Error::Conflict(format!(
            "rules {} admit traffic from {source}; delete them first (`policy delete-rule ID`), so that nothing given the name later inherits them",
            rules.join(", ")
        )));
    }
    if let Source::Org(org) = source {
        let shared: Vec<String> = policy
            .services
            .iter()
            .filter(|s| {
                matches!(&s.service.shared_with, wardnet_common::policy::SharedWith::Orgs(o) if o.contains(org))
            })
            .map(|s| ServiceRef::new(&s.org, &s.service.name).to_string())
            .collect();
        if !shared.is_empty() {
            return Err(Error::Conflict(format!(
                "services {} are shared with organisation {org}; delete them first (`policy delete-service ORG/NAME`) and publish them again without it",
                shared.join(", ")
            )));
        }
    }
    Ok(())
}

/// A rule from a site names one that exists and that the token may name:
/// any site for a network-wide token, its own organisation's for a scoped
/// one (which sites other organisations have is not its to learn: it
/// admits another organisation by `org:`). A rule is bound to the site
/// that has the name now, never to one that takes it later.
fn check_site_source(m: &Model, actor: &Actor, from: &Source) -> Result<(), Error> {
    let Source::Site(name) = from else {
        return Ok(());
    };
    if m.sites.get(name).is_some_and(|s| actor.sees(&s.org)) {
        return Ok(());
    }
    Err(Error::Unprocessable(match &actor.org {
        None => format!("from: no site named {name}; `sites list` shows them"),
        Some(org) => format!(
            "from: no site named {name} in organisation {org}; to admit another organisation's sites, name the organisation (`--from org:NAME`)"
        ),
    }))
}

fn not_found_rule(id: u64) -> Error {
    Error::NotFound(format!("no rule {id}; `policy list` shows the rules"))
}

fn not_found_service(name: &ServiceRef) -> Error {
    Error::NotFound(format!(
        "no service named {name}; `policy list` shows the services"
    ))
}

/// The service `r` names among those `may` admits to `actor`: qualified
/// (`ORG/NAME`), that one; by name alone, a scoped token's own of that
/// name, else the one of that name, and when several organisations have
/// one, an error listing them (all of them ones the asker may see) to
/// name one as `ORG/NAME`.
fn find_service<'a>(
    policy: &'a StoredPolicy,
    actor: &Actor,
    r: &ServiceRef,
    may: impl Fn(&ServiceView) -> bool,
) -> Result<&'a ServiceView, Error> {
    let mut found: Vec<&ServiceView> = policy
        .services
        .iter()
        .filter(|s| r.is(&s.org, &s.service.name) && may(s))
        .collect();
    if let Some(own) = found.iter().find(|s| actor.org.as_ref() == Some(&s.org)) {
        found = vec![*own];
    }
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found_service(r)),
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|s| ServiceRef::new(&s.org, &s.service.name).to_string())
                .collect();
            Err(Error::Conflict(format!(
                "several organisations have a service named {r}: {}; name one as ORG/NAME",
                names.join(", ")
            )))
        }
    }
}

/// How a rule reads in the audit log.
fn rule_text(r: &Rule) -> String {
    format!(
        "from {} to {} {}{}",
        r.from,
        r.to,
        wardnet_common::policy::traffic_text(r.proto, &r.ports),
        if r.description.is_empty() {
            String::new()
        } else {
            format!(": {}", r.description)
        }
    )
}

fn service_text(s: &Service) -> String {
    let prefixes: Vec<String> = s.prefixes.iter().map(ToString::to_string).collect();
    format!(
        "site {}, prefixes [{}], {}, shared with {}",
        s.site,
        prefixes.join(" "),
        wardnet_common::policy::traffic_text(s.proto, &s.ports),
        serde_json::to_string(&s.shared_with).unwrap_or_default()
    )
}

/// Whether `actor` may see a rule: its own organisation's, or one into
/// all sites (it admits into its sites too). Only the owner deletes.
fn sees_rule(actor: &Actor, r: &RuleView) -> bool {
    actor.sees(&r.org) || r.rule.to == Target::All
}

/// Whether `actor` may see a service: its own, or one shared with it.
fn sees_service(actor: &Actor, s: &ServiceView) -> bool {
    actor.sees(&s.org)
        || actor
            .org
            .as_ref()
            .is_some_and(|o| s.service.shared_with.includes(o))
}

impl Controller {
    /// The rules and services `actor` may see.
    pub async fn policy(&self, actor: &Actor) -> Result<PolicyView, Error> {
        let p = self.with_model(|m| m.policy.clone());
        Ok(PolicyView {
            rules: p
                .rules
                .iter()
                .filter(|r| sees_rule(actor, r))
                .cloned()
                .collect(),
            services: p
                .services
                .iter()
                .filter(|s| sees_service(actor, s))
                .cloned()
                .collect(),
        })
    }

    /// The organisation a rule to `to` admits traffic into, if `actor` may
    /// manage such rules, and the destination as stored (a service
    /// qualified with its organisation).
    async fn rule_owner(
        &self,
        actor: &Actor,
        to: &Target,
        policy: &StoredPolicy,
    ) -> Result<(Name, Target), Error> {
        if let Target::Service(r) = to {
            let s = find_service(policy, actor, r, |s| actor.sees(&s.org))?;
            let r = ServiceRef::new(&s.org, &s.service.name);
            return Ok((s.org.clone(), Target::Service(r)));
        }
        let org = match to {
            // Into every organisation: the NOC's (its monitoring), owned
            // by `default`, seen by every organisation it admits into.
            Target::All => {
                actor.require_network_wide("a rule into all sites")?;
                Ok(crate::model::default_org())
            }
            Target::Org(org) => {
                let exists = self.org_exists(org).await?;
                if !exists || !actor.sees(org) {
                    return Err(not_found_org(org));
                }
                Ok(org.clone())
            }
            Target::Site(site) => {
                self.with_model(|m| visible_site(m, actor, site).map(|s| s.org.clone()))
            }
            Target::Service(_) => unreachable!("a service is looked up above"),
        }?;
        Ok((org, to.clone()))
    }

    /// A rule's source must name an organisation or a region that exists
    /// (both are the whole network's to know). A site source is checked in
    /// the change itself ([`check_site_source`]).
    async fn check_source(&self, from: &Source) -> Result<(), Error> {
        match from {
            Source::All | Source::Site(_) => Ok(()),
            Source::Org(o) => {
                if self.org_exists(o).await? {
                    Ok(())
                } else {
                    Err(Error::Unprocessable(format!(
                        "from: no organisation named {o}; `orgs list` shows them (the NOC adds one with `wardnet-controller orgs add {o}`)"
                    )))
                }
            }
            Source::Region(r) => {
                if self.with_model(|m| m.regions.contains_key(r)) {
                    Ok(())
                } else {
                    Err(Error::Unprocessable(format!(
                        "from: no region named {r}; `regions list` shows them"
                    )))
                }
            }
        }
    }

    pub async fn create_rule(&self, actor: &Actor, req: CreateRule) -> Result<RuleView, Error> {
        wardnet_common::policy::check_ports(req.proto, &req.ports).map_err(Error::Unprocessable)?;
        self.check_source(&req.from).await?;
        let policy = self.with_model(|m| m.policy.clone());
        let (org, to) = self.rule_owner(actor, &req.to, &policy).await?;
        let actor = actor.clone();
        let missing = not_found_org(&org);
        // Numbers come from a counter that only goes up (in the model and
        // the store), so a deleted rule's number is never given again.
        self.change(move |tx| {
            check_site_source(tx.model(), &actor, &req.from)?;
            let (id, now) = (tx.model().policy.next_rule_id, tx.now());
            let stored = RuleView {
                rule: Rule {
                    id,
                    from: req.from.clone(),
                    to: to.clone(),
                    proto: req.proto,
                    ports: req.ports.clone(),
                    description: req.description.clone(),
                },
                org: org.clone(),
                created_at: now,
            };
            tx.insert_rule(stored.clone());
            tx.audit(
                &actor.id,
                "policy.rule.create",
                &format!("rule {id}"),
                Some(format!("after: {}", rule_text(&stored.rule))),
                Some(&org),
            );
            Ok(stored)
        })
        .await
        .map_err(|e| {
            if e.is_taken("policy_rules.org") {
                missing
            } else if e.is_taken("policy_rules.id") {
                Error::Conflict("other rules were being added at the same time; try again".into())
            } else {
                e
            }
        })
    }

    pub async fn rule(&self, actor: &Actor, id: u64) -> Result<RuleView, Error> {
        self.with_model(|m| m.policy.clone())
            .rules
            .iter()
            .find(|r| r.rule.id == id && sees_rule(actor, r))
            .cloned()
            .ok_or_else(|| not_found_rule(id))
    }

    pub async fn delete_rule(&self, actor: &Actor, id: u64) -> Result<(), Error> {
        let actor = actor.clone();
        self.change(move |tx| {
            let visible = tx
                .model()
                .policy
                .rules
                .iter()
                .any(|r| r.rule.id == id && actor.sees(&r.org));
            let before = visible
                .then(|| tx.delete_rule(id))
                .flatten()
                .ok_or_else(|| not_found_rule(id))?;
            tx.audit(
                &actor.id,
                "policy.rule.delete",
                &format!("rule {id}"),
                Some(format!("before: {}", rule_text(&before.rule))),
                Some(&before.org),
            );
            Ok(())
        })
        .await
    }

    /// Publish a service behind one of `actor`'s sites.
    pub async fn create_service(
        &self,
        actor: &Actor,
        service: Service,
    ) -> Result<ServiceView, Error> {
        wardnet_common::policy::check_ports(service.proto, &service.ports)
            .map_err(Error::Unprocessable)?;
        let site = self.with_model(|m| visible_site(m, actor, &service.site).cloned())?;
        let own: Vec<ipnet::IpNet> = site
            .addresses()
            .into_iter()
            .chain(site.lan_prefixes.iter().copied())
            .collect();
        if let Some(p) = service
            .prefixes
            .iter()
            .find(|p| !own.iter().any(|o| o.contains(*p)))
        {
            return Err(Error::Unprocessable(format!(
                "prefixes: {p} is not behind site {}; a service lies within the site's addresses or LAN prefixes",
                site.name
            )));
        }
        let actor = actor.clone();
        let org = site.org.clone();
        self.change(move |tx| {
            let (m, now) = (tx.model(), tx.now());
            // Named within the organisation: another's of the same name is
            // no concern of this one (nor is it told of it).
            if m.policy
                .services
                .iter()
                .any(|s| s.org == org && s.service.name == service.name)
            {
                return Err(Error::Conflict(format!(
                    "organisation {org} already has a service named {}; `policy list` shows it",
                    service.name
                )));
            }
            if !m.sites.contains_key(&service.site) {
                return Err(Error::NotFound(format!("no site named {}", service.site)));
            }
            let stored = ServiceView {
                service: service.clone(),
                org: org.clone(),
                created_at: now,
            };
            let named = ServiceRef::new(&org, &service.name);
            drop_rules_naming(tx, &actor.id, None, std::slice::from_ref(&named));
            tx.insert_service(stored.clone());
            tx.audit(
                &actor.id,
                "policy.service.create",
                &named.to_string(),
                Some(format!("after: {}", service_text(&stored.service))),
                Some(&org),
            );
            Ok(stored)
        })
        .await
    }

    /// A service `actor` may see (its own, or shared with it).
    pub async fn service(&self, actor: &Actor, name: &ServiceRef) -> Result<ServiceView, Error> {
        self.with_model(|m| {
            find_service(&m.policy, actor, name, |s| sees_service(actor, s)).cloned()
        })
    }

    /// Delete one of `actor`'s services, and the rules into it.
    pub async fn delete_service(&self, actor: &Actor, name: &ServiceRef) -> Result<(), Error> {
        let (actor, name) = (actor.clone(), name.clone());
        self.change(move |tx| {
            let found = find_service(&tx.model().policy, &actor, &name, |s| actor.sees(&s.org))?;
            let named = ServiceRef::new(&found.org, &found.service.name);
            let before = tx
                .delete_service(&found.org.clone(), &named.name)
                .ok_or_else(|| not_found_service(&name))?;
            drop_rules_naming(tx, &actor.id, None, std::slice::from_ref(&named));
            tx.audit(
                &actor.id,
                "policy.service.delete",
                &named.to_string(),
                Some(format!("before: {}", service_text(&before.service))),
                Some(&before.org),
            );
            Ok(())
        })
        .await
    }

    /// May `q.from` reach `q.to`? A scoped token asks about flows from its
    /// own sites, to its own sites or to a site offered to it (a service
    /// there shared with it, or a rule admitting its site there); any
    /// other site answers 404.
    pub async fn check(&self, actor: &Actor, q: CheckQuery) -> Result<CheckAnswer, Error> {
        // The same traffic a rule may name: ports 1 to 65535, for tcp and udp only.
        if let Some(port) = q.port {
            if port == 0 {
                return Err(Error::Unprocessable(
                    "port: 0 is not a port; ports are 1 to 65535".into(),
                ));
            }
            let one = wardnet_common::policy::PortRange { lo: port, hi: port };
            wardnet_common::policy::check_ports(q.proto, &[one])
                .map_err(|e| Error::Unprocessable(format!("port: {e}")))?;
        }
        let policy = self.with_model(|m| m.policy.clone());
        let from = self.with_model(|m| visible_site(m, actor, &q.from).cloned())?;
        let offered = |to: &Site| {
            let source = Model::party(&from);
            let serves = |r: &ServiceRef| {
                policy
                    .services
                    .iter()
                    .any(|s| r.is(&s.org, &s.service.name) && s.service.site == to.name)
            };
            policy
                .services
                .iter()
                .any(|s| s.service.site == to.name && sees_service(actor, s))
                || policy.rules.iter().any(|r| {
                    r.rule.from.matches(&source)
                        && match &r.rule.to {
                            Target::All => true,
                            Target::Org(o) => o == &to.org,
                            Target::Site(n) => n == &to.name,
                            Target::Service(r) => serves(r),
                        }
                })
        };
        let to = self.with_model(|m| {
            visible_site(m, actor, &q.to)
                .cloned()
                .or_else(|e| m.sites.get(&q.to).filter(|s| offered(s)).cloned().ok_or(e))
        })?;
        if let Some(a) = q.address {
            let at_site = to.addresses().iter().any(|p| p.contains(&a))
                || to.lan_prefixes.iter().any(|p| p.contains(&a));
            // Only of a site it sees is a token told what the site holds:
            // of a site merely offered to it (a service there), an address
            // elsewhere is denied like any other, so checks do not map the
            // site's LANs.
            if !at_site && actor.sees(&to.org) {
                return Err(Error::Unprocessable(format!(
                    "address: {a} is not one of site {}'s addresses or LAN prefixes",
                    to.name
                )));
            }
        }
        let rules: Vec<Rule> = policy.rules.iter().map(|r| r.rule.clone()).collect();
        let services: Vec<Service> = policy.services.iter().map(|s| s.service.clone()).collect();
        let d = decide(
            &rules,
            &services,
            &Flow {
                from: Model::party(&from),
                to: Model::party(&to),
                // Without an address: the site's own (overlay) one, which
                // is where ICMP probes go.
                dst: q.address.or(Some(IpAddr::V4(to.ipv4))),
                proto: q.proto,
                port: q.port,
            },
        );
        Ok(CheckAnswer {
            allow: d.allow,
            because: d.reason.to_string(),
            enforced: !to.agentless,
            rule: match &d.reason {
                Reason::Rule(id) => rules.iter().find(|r| r.id == *id).cloned(),
                _ => None,
            },
            service: match &d.reason {
                // (named within the destination's organisation)
                Reason::Service(n) => services
                    .iter()
                    .find(|s| &s.name == n && s.site == to.name)
                    .cloned(),
                _ => None,
            },
            decided_by: d.reason,
        })
    }
}
