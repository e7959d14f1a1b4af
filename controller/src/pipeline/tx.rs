//! A change, described once. A job changes the model only through a
//! [`Tx`]; each of its operations applies the change to the model and
//! records everything that follows from it: the store's writes, each
//! site's version before and after (what the configs, the credential index
//! and the woken long-polls are derived from), and the audit entry's
//! before/after. A job that refuses part-way leaves nothing behind: the
//! pipeline rolls the model back ([`Tx::rollback`]), whatever the job
//! changed before it refused.

use std::collections::BTreeSet;
use std::sync::Arc;

use ipnet::IpNet;

use wardnet_common::policy::{RuleView, ServiceView};
use wardnet_common::wire::UnixTime;
use wardnet_common::Name;

use crate::model::{Model, Org, Region, Site};
use crate::store::{NewAudit, StoredPolicy, Write};

/// What a committed [`Tx`] hands the pipeline.
pub(crate) struct Effects {
    pub writes: Vec<Write>,
    /// (before, after) of every site the change touched, in order.
    pub sites: Vec<(Option<Site>, Option<Site>)>,
}

/// How to put the model back: the previous value of what an operation
/// replaced.
enum Undo {
    Site(Name, Option<Box<Site>>),
    Region(Name, Option<Region>),
    Policy(Arc<StoredPolicy>),
    Consumed(String),
}

pub(crate) struct Tx<'m> {
    model: &'m mut Model,
    now: UnixTime,
    writes: Vec<Write>,
    sites: Vec<(Option<Site>, Option<Site>)>,
    /// The change's audit entries, in the order they were made.
    audit: Vec<NewAudit>,
    undo: Vec<Undo>,
}

impl<'m> Tx<'m> {
    pub(crate) fn new(model: &'m mut Model, now: UnixTime) -> Self {
        Self {
            model,
            now,
            writes: Vec::new(),
            sites: Vec::new(),
            audit: Vec::new(),
            undo: Vec::new(),
        }
    }

    /// The model as changed so far: what checks read.
    pub(crate) fn model(&self) -> &Model {
        self.model
    }

    pub(crate) fn now(&self) -> UnixTime {
        self.now
    }

    /// The change is kept: what it writes and which sites it changed.
    pub(crate) fn finish(self) -> Effects {
        let mut writes = self.writes;
        writes.extend(self.audit.into_iter().map(Write::Audit));
        Effects {
            writes,
            sites: self.sites,
        }
    }

    /// The change is refused: the model is put back as it was.
    pub(crate) fn rollback(self) {
        for u in self.undo.into_iter().rev() {
            match u {
                Undo::Site(name, Some(s)) => {
                    debug_assert_eq!(name, s.name);
                    self.model.upsert_site(*s);
                }
                Undo::Site(name, None) => {
                    self.model.remove_site(&name);
                }
                Undo::Region(_, Some(r)) => self.model.upsert_region(r),
                Undo::Region(name, None) => {
                    self.model.remove_region(&name);
                }
                Undo::Policy(p) => {
                    self.model.policy = p;
                    self.model.ensure_space();
                }
                Undo::Consumed(hash) => {
                    self.model.consumed_tokens.remove(&hash);
                }
            }
        }
    }

    // ----- regions ------------------------------------------------------

    pub(crate) fn insert_region(&mut self, r: Region) {
        let before = self.model.regions.get(&r.name).cloned();
        self.undo.push(Undo::Region(r.name.clone(), before));
        self.model.upsert_region(r.clone());
        self.writes.push(Write::InsertRegion(r));
    }

    pub(crate) fn delete_region(&mut self, name: &Name) {
        let before = self.model.remove_region(name);
        self.undo.push(Undo::Region(name.clone(), before));
        self.writes.push(Write::DeleteRegion(name.clone()));
    }

    // ----- sites ----------------------------------------------------------

    /// A new site (its name is free: the caller checked).
    pub(crate) fn insert_site(&mut self, s: Site) {
        self.undo.push(Undo::Site(s.name.clone(), None));
        self.model.upsert_site(s.clone());
        self.writes.push(Write::InsertSite(s.clone()));
        self.sites.push((None, Some(s)));
    }

    /// Replace an existing site with `after` (its administered columns:
    /// what agents report is not the writer's).
    pub(crate) fn update_site(&mut self, after: Site) {
        let before = self.model.upsert_site(after.clone());
        self.undo
            .push(Undo::Site(after.name.clone(), before.clone().map(Box::new)));
        self.writes.push(Write::UpdateSite(after.clone()));
        self.sites.push((before, Some(after)));
    }

    /// Delete a site, and its services with it (the store cascades).
    pub(crate) fn delete_site(&mut self, name: &Name) {
        let before = self.model.remove_site(name);
        self.undo
            .push(Undo::Site(name.clone(), before.clone().map(Box::new)));
        self.undo.push(Undo::Policy(self.model.policy.clone()));
        self.model.drop_services_of(name);
        self.writes.push(Write::DeleteSite(name.clone()));
        self.sites.push((before, None));
    }

    /// The site `name` as the change left it, before and after: the
    /// audit's detail for a change of a site.
    fn site_versions(&self, name: &Name) -> (Option<&Site>, Option<&Site>) {
        let first = self
            .sites
            .iter()
            .find(|(b, a)| b.as_ref().or(a.as_ref()).is_some_and(|s| &s.name == name));
        let last = self
            .sites
            .iter()
            .rev()
            .find(|(b, a)| a.as_ref().or(b.as_ref()).is_some_and(|s| &s.name == name));
        (
            first.and_then(|(b, _)| b.as_ref()),
            last.and_then(|(_, a)| a.as_ref()),
        )
    }

    // ----- enrolment tokens -------------------------------------------------

    pub(crate) fn issue_enrol_token(&mut self, site: &Name, hash: String, expires_at: UnixTime) {
        self.writes.push(Write::InsertEnrolToken {
            site: site.clone(),
            hash,
            created_at: self.now,
            expires_at,
        });
    }

    /// Forget a site's unused enrolment tokens.
    pub(crate) fn forget_enrol_tokens(&mut self, site: &Name) {
        self.writes
            .push(Write::DeleteEnrolTokens { site: site.clone() });
    }

    /// Redeem a token: the store refuses it (a precondition) when another
    /// redemption, here or on another replica, came first.
    pub(crate) fn consume_enrol_token(&mut self, site: &Name, hash: String, sealed: String) {
        if self.model.consumed_tokens.insert(hash.clone()).is_none() {
            self.undo.push(Undo::Consumed(hash.clone()));
        }
        self.writes.push(Write::ConsumeEnrolToken {
            hash,
            site: site.clone(),
            now: self.now,
            sealed,
        });
    }

    // ----- organisations and admin tokens (the store's only) -----------------

    pub(crate) fn insert_org(&mut self, org: Org) {
        if !org.delegated.is_empty() {
            self.set_delegation(&org.name, org.delegated.clone());
        }
        self.writes.push(Write::InsertOrg(org));
    }

    /// The store refuses it (`sites.org`, `admin_tokens.org`,
    /// `policy_rules.org`) while anything refers to the organisation.
    pub(crate) fn delete_org(&mut self, name: &Name) {
        if self.model.policy.delegated.get(name).is_some() {
            self.set_delegation(name, Default::default());
        }
        self.writes.push(Write::DeleteOrg(name.clone()));
    }

    pub(crate) fn describe_org(&mut self, org: &Name, description: &str) {
        self.writes.push(Write::DescribeOrg {
            org: org.clone(),
            description: description.to_owned(),
        });
    }

    /// The model's delegations, and the index of what organisations'
    /// sources are made of with them.
    fn set_delegation(&mut self, org: &Name, space: BTreeSet<IpNet>) {
        self.policy_mut().delegated.set(org, space);
        self.model.refresh_space();
    }

    /// Replace the address space (overlay blocks, LAN space) delegated to
    /// organisation `org`.
    pub(crate) fn delegate_lans(&mut self, org: &Name, prefixes: BTreeSet<IpNet>) {
        self.set_delegation(org, prefixes.clone());
        self.writes.push(Write::DelegateLans {
            org: org.clone(),
            prefixes,
        });
    }

    /// An admin token, network-wide or scoped to `org`; its secret's hash.
    pub(crate) fn insert_admin_token(
        &mut self,
        id: &str,
        hash: String,
        description: &str,
        org: Option<&Name>,
    ) {
        self.writes.push(Write::InsertAdminToken {
            id: id.to_owned(),
            hash,
            description: description.to_owned(),
            created_at: self.now,
            org: org.cloned(),
        });
    }

    // ----- policy -----------------------------------------------------------

    fn policy_mut(&mut self) -> &mut StoredPolicy {
        self.undo.push(Undo::Policy(self.model.policy.clone()));
        Arc::make_mut(&mut self.model.policy)
    }

    /// Add a rule; it takes the next number, which is never given again.
    pub(crate) fn insert_rule(&mut self, rule: RuleView) {
        let p = self.policy_mut();
        p.next_rule_id = p.next_rule_id.max(rule.rule.id + 1);
        p.rules.push(rule.clone());
        self.writes.push(Write::InsertRule(rule));
    }

    pub(crate) fn delete_rule(&mut self, id: u64) -> Option<RuleView> {
        let p = self.policy_mut();
        let i = p.rules.iter().position(|r| r.rule.id == id)?;
        let before = p.rules.remove(i);
        self.writes.push(Write::DeleteRule(id));
        Some(before)
    }

    pub(crate) fn insert_service(&mut self, service: ServiceView) {
        let p = self.policy_mut();
        p.services.push(service.clone());
        p.services.sort_by(crate::model::by_service);
        self.writes.push(Write::InsertService(service));
    }

    /// Delete organisation `org`'s service `name`.
    pub(crate) fn delete_service(&mut self, org: &Name, name: &Name) -> Option<ServiceView> {
        let p = self.policy_mut();
        let i = p
            .services
            .iter()
            .position(|s| &s.org == org && &s.service.name == name)?;
        let before = p.services.remove(i);
        self.writes.push(Write::DeleteService {
            org: org.clone(),
            name: name.clone(),
        });
        Some(before)
    }

    // ----- audit ------------------------------------------------------------

    /// An audit entry of the change: who (`actor`: an admin token's id, or
    /// `agent:<site>`), what, about which object, and whose it is (its
    /// organisation's admins see the entry; `None`: network-wide). A
    /// change that does several things (a site deleted with the rules that
    /// named it) makes one entry for each.
    pub(crate) fn audit(
        &mut self,
        actor: &str,
        action: &str,
        object: &str,
        detail: Option<String>,
        org: Option<&Name>,
    ) {
        self.audit.push(NewAudit {
            at: self.now,
            actor: actor.to_owned(),
            action: action.into(),
            object: object.into(),
            detail,
            org: org.cloned(),
        });
    }

    /// The audit entry of a change of site `name`: its administered fields
    /// before and after, as this change left them.
    pub(crate) fn audit_site(&mut self, actor: &str, action: &str, name: &Name) {
        let (before, after) = self.site_versions(name);
        let detail = site_change(before, after);
        let org = before.or(after).map(|s| s.org.clone());
        self.audit(actor, action, name.as_str(), Some(detail), org.as_ref());
    }
}

/// A site's administered fields, as the audit log records them.
fn site_fields(s: &Site) -> String {
    let lans: Vec<String> = s.lan_prefixes.iter().map(ToString::to_string).collect();
    format!(
        "org {}, region {}, role {}, state {}, lan [{}], endpoint {}, address {}{}{}",
        s.org,
        s.region,
        s.role,
        s.state,
        lans.join(" "),
        s.endpoint
            .map_or_else(|| "none".to_owned(), |e| e.to_string()),
        s.ipv4,
        s.ipv6.map(|a| format!(" {a}")).unwrap_or_default(),
        match &s.renumber {
            Some(r) => {
                let old: Vec<String> = r.former.iter().map(ToString::to_string).collect();
                format!(", renumbering from {}", old.join(" "))
            }
            None if s.agentless => ", agentless".to_owned(),
            None => String::new(),
        }
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

#[cfg(test)]
pub(super) mod tests {
    use std::net::Ipv4Addr;

    use ipnet::IpNet;
    use wardnet_common::wire::SiteState;
    use wardnet_common::{PublicKey, Role};

    use super::*;
    use crate::model::{default_org, SiteInputs};

    pub(crate) fn name(s: &str) -> Name {
        s.parse().expect("name")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    pub(crate) fn region(n: &str, block: &str) -> Region {
        Region {
            name: name(n),
            mesh: false,
            ipv4_block: block.parse().expect("block"),
            ipv6_block: None,
            created_at: 1,
        }
    }

    pub(crate) fn site(n: &str, region: &str, last: u8, key: Option<u8>, lan: &str) -> Site {
        Site::new(SiteInputs {
            name: name(n),
            region: name(region),
            org: default_org(),
            role: Role::Spoke,
            state: if key.is_some() {
                SiteState::Active
            } else {
                SiteState::Pending
            },
            agentless: false,
            lan_prefixes: [net(lan)].into(),
            endpoint: None,
            public_key: key.map(|k| PublicKey::from_bytes([k; 32])),
            ipv4: Ipv4Addr::new(100, 64, 0, last),
            ipv6: None,
            credential_hash: None,
            created_at: 1,
            enrolled_at: None,
            renumber: None,
        })
    }

    /// What the model's indexes answer, to compare two models by.
    fn shape(m: &Model) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            m.sites.values().map(|s| Site::clone(s)).collect::<Vec<_>>(),
            m.regions,
            m.region_addresses(&name("r")),
            m.lan_overlapping(&net("10.0.0.0/8"), &name("nobody")),
            m.region_lans(&name("r")).collect::<Vec<_>>(),
            m.sites_with_key(&PublicKey::from_bytes([9; 32]), &name("nobody"))
                .collect::<Vec<_>>(),
            m.policy,
        )
    }

    #[test]
    fn a_refused_change_leaves_the_model_as_it_was_whatever_it_changed() {
        let mut m = Model::default();
        m.upsert_region(region("r", "100.64.0.0/20"));
        m.upsert_site(site("a", "r", 1, None, "10.1.0.0/24"));
        let before = shape(&m);

        let mut tx = Tx::new(&mut m, 5);
        tx.insert_site(site("b", "r", 2, Some(9), "10.2.0.0/24"));
        let mut a = Site::clone(&tx.model().sites[&name("a")]);
        a.lan_prefixes = [net("10.3.0.0/24")].into();
        a.public_key = Some(PublicKey::from_bytes([7; 32]));
        a.state = SiteState::Active;
        tx.update_site(a);
        tx.delete_site(&name("a"));
        tx.insert_region(region("s", "100.64.16.0/20"));
        tx.delete_region(&name("r"));
        tx.consume_enrol_token(&name("b"), "hash".into(), "sealed".into());
        tx.insert_rule(RuleView {
            rule: wardnet_common::policy::Rule {
                id: 1,
                from: "all".parse().expect("source"),
                to: "site:b".parse().expect("target"),
                proto: wardnet_common::policy::Proto::Any,
                ports: vec![],
                description: String::new(),
            },
            org: default_org(),
            created_at: 5,
        });
        assert_ne!(shape(tx.model()), before, "the change did change the model");
        tx.rollback();

        assert_eq!(shape(&m), before);
        assert!(m.consumed_tokens.is_empty());
        assert_eq!(m.policy.next_rule_id, 0);
    }

    #[test]
    fn a_kept_change_says_what_it_wrote_and_each_site_before_and_after() {
        let mut m = Model::default();
        m.upsert_region(region("r", "100.64.0.0/20"));
        m.upsert_site(site("a", "r", 1, None, "10.1.0.0/24"));
        let mut tx = Tx::new(&mut m, 5);
        let mut a = Site::clone(&tx.model().sites[&name("a")]);
        a.endpoint = Some("198.51.100.1:51820".parse().expect("endpoint"));
        tx.update_site(a.clone());
        let mut again = a.clone();
        again.lan_prefixes = [net("10.9.0.0/24")].into();
        tx.update_site(again.clone());
        tx.audit_site("tok-1", "site.update", &name("a"));
        let effects = tx.finish();

        assert_eq!(effects.sites.len(), 2);
        assert_eq!(effects.sites[1], (Some(a), Some(again.clone())));
        let audit = match effects.writes.last() {
            Some(Write::Audit(a)) => a.clone(),
            other => panic!("the audit entry comes last, not {other:?}"),
        };
        let detail = audit.detail.expect("a detail");
        // Before is the site as the change found it, after as it left it.
        assert!(
            detail.starts_with("before: ") && detail.contains("endpoint none"),
            "{detail}"
        );
        assert!(detail.contains("lan [10.9.0.0/24]"), "{detail}");
        assert_eq!(audit.org, Some(default_org()));
        assert!(matches!(&effects.writes[1], Write::UpdateSite(s) if *s == again));
        assert_eq!(m.sites[&name("a")].as_ref(), &again);
    }
}
