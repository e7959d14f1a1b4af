//! A site's config as kept between revisions: its entries, its routes and
//! the steps (deltas) of its last revisions, each serialised once, so an
//! agent a few revisions behind is sent only what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use imbl::OrdMap;
use ipnet::IpNet;
use wardnet_common::delta::{AllowedIpsChange, ConfigDelta};
use wardnet_common::filter::SiteFilter;
use wardnet_common::wire::{FailoverGroup, InterfaceConfig, Role, SiteConfig};
use wardnet_common::Name;

use super::*;

/// One revision's change, serialised once.
#[derive(Debug)]
pub(super) struct Step {
    pub(super) from: u64,
    pub(super) bytes: Bytes,
}

/// A site's config as the controller keeps it between changes.
#[derive(Debug, Clone)]
pub struct SiteRender {
    pub revision: u64,
    pub(super) site: Name,
    pub(super) region: Name,
    pub(super) role: Role,
    pub(super) interface: InterfaceConfig,
    pub(super) own_lans: BTreeSet<IpNet>,
    pub(super) peers: OrdMap<Name, Arc<PeerEntry>>,
    pub(super) routes: RouteCover,
    pub(super) failover: Vec<FailoverGroup>,
    pub(super) filter: Option<Arc<SiteFilter>>,
    /// The last revisions' steps, oldest first; they chain to `revision`.
    pub(super) steps: imbl::Vector<Arc<Step>>,
    pub(super) step_bytes: usize,
    /// The full config of this revision as JSON, built on first request.
    pub(super) full: Arc<OnceLock<Bytes>>,
}

impl SiteRender {
    /// A render from a full config (at start, or when a site becomes active).
    pub(super) fn from_config(cfg: SiteConfig, own_lans: &BTreeSet<IpNet>) -> Self {
        let mut r = SiteRender {
            revision: cfg.revision,
            site: cfg.site,
            region: cfg.region,
            role: cfg.role,
            own_lans: own_lans.clone(),
            interface: cfg.interface,
            peers: OrdMap::new(),
            routes: RouteCover::default(),
            failover: cfg.failover,
            filter: cfg.filter.map(Arc::new),
            steps: imbl::Vector::new(),
            step_bytes: 0,
            full: Arc::new(OnceLock::new()),
        };
        let mut ignore = RouteDiff::default();
        for p in cfg.peers {
            let e = PeerEntry::from_wire(p);
            for a in &e.allowed_ips {
                r.add_candidate(*a, &mut ignore);
            }
            r.peers.insert(e.name.clone(), Arc::new(e));
        }
        r
    }

    pub(super) fn is_route_candidate(&self, p: &IpNet) -> bool {
        !self.interface.addresses.iter().any(|a| a.trunc() == *p)
            && !self.own_lans.iter().any(|lan| lan.contains(p))
    }

    pub(super) fn add_candidate(&mut self, p: IpNet, diff: &mut RouteDiff) {
        let p = p.trunc();
        if self.is_route_candidate(&p) {
            self.routes.add(p, diff);
        }
    }

    pub(super) fn remove_candidate(&mut self, p: IpNet, diff: &mut RouteDiff) {
        let p = p.trunc();
        if self.is_route_candidate(&p) {
            self.routes.remove(p, diff);
        }
    }

    /// Replace, add or remove one peer entry, recording the change.
    pub(super) fn set_entry(&mut self, name: &Name, new: Option<PeerEntry>, d: &mut Draft) {
        let old = self.peers.get(name).cloned();
        match (old, new) {
            (None, None) => {}
            (Some(o), Some(n)) if *o == n => {}
            (Some(o), Some(n)) if o.same_but_allowed(&n) => {
                let (added, removed) = o.allowed_diff(&n);
                self.change_allowed(name, added, removed, d);
            }
            (old, Some(n)) => {
                // Only the prefixes that come or go move the route cover (a
                // hub-mesh entry that changed its endpoint keeps its region's
                // thousands of LANs).
                match &old {
                    Some(o) => {
                        let (added, removed) = o.allowed_diff(&n);
                        for a in removed {
                            self.remove_candidate(a, &mut d.routes);
                        }
                        for a in added {
                            self.add_candidate(a, &mut d.routes);
                        }
                    }
                    None => {
                        for a in n.allowed_ips.iter() {
                            self.add_candidate(*a, &mut d.routes);
                        }
                    }
                }
                d.removed.remove(name);
                d.allowed.remove(name);
                d.set.insert(name.clone());
                self.peers.insert(name.clone(), Arc::new(n));
            }
            (Some(o), None) => {
                for a in o.allowed_ips.iter() {
                    self.remove_candidate(*a, &mut d.routes);
                }
                self.peers.remove(name);
                d.set.remove(name);
                d.allowed.remove(name);
                d.removed.insert(name.clone());
            }
        }
    }

    /// Add and remove allowed IPs of an existing entry.
    pub(super) fn change_allowed(
        &mut self,
        name: &Name,
        added: BTreeSet<IpNet>,
        removed: BTreeSet<IpNet>,
        d: &mut Draft,
    ) {
        let Some(entry) = self.peers.get(name) else {
            return;
        };
        let mut e = PeerEntry::clone(entry);
        let added: Vec<IpNet> = added
            .into_iter()
            .filter(|p| e.allowed_ips.insert(*p).is_none())
            .collect();
        let removed: Vec<IpNet> = removed
            .into_iter()
            .filter(|p| e.allowed_ips.remove(p).is_some())
            .collect();
        if added.is_empty() && removed.is_empty() {
            return;
        }
        self.peers.insert(name.clone(), Arc::new(e));
        for p in &removed {
            self.remove_candidate(*p, &mut d.routes);
        }
        for p in &added {
            self.add_candidate(*p, &mut d.routes);
        }
        if d.set.contains(name) {
            return; // the whole entry goes out anyway
        }
        let c = d.allowed.entry(name.clone()).or_default();
        for p in removed {
            if !c.0.remove(&p) {
                c.1.insert(p);
            }
        }
        for p in added {
            if !c.1.remove(&p) {
                c.0.insert(p);
            }
        }
    }

    /// The config this render stands for.
    pub fn to_config(&self) -> SiteConfig {
        SiteConfig {
            revision: self.revision,
            site: self.site.clone(),
            region: self.region.clone(),
            role: self.role,
            interface: self.interface.clone(),
            peers: self.peers.values().map(|e| e.to_wire()).collect(),
            routes: self.routes.routes.iter().copied().collect(),
            failover: self.failover.clone(),
            filter: self.filter.as_deref().cloned(),
        }
    }

    /// The full config as JSON, serialised once per revision.
    pub fn full_bytes(&self) -> Bytes {
        self.full
            .get_or_init(|| {
                // Invariant: SiteConfig holds no maps with non-string keys and
                // no floats, so it always serialises.
                Bytes::from(serde_json::to_vec(&self.to_config()).expect("SiteConfig serialises"))
            })
            .clone()
    }

    /// The answer for an agent at revision `known` (below `self.revision`):
    /// the steps since `known` when they are all kept, else the full config.
    pub fn update_bytes(&self, known: u64) -> Bytes {
        let start = (known > 0)
            .then(|| self.steps.iter().position(|s| s.from == known))
            .flatten();
        let mut out = Vec::new();
        match start {
            Some(i) => {
                out.extend_from_slice(br#"{"kind":"deltas","steps":["#);
                for (n, s) in self.steps.iter().skip(i).enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&s.bytes);
                }
                out.extend_from_slice(b"]}");
            }
            None => {
                out.extend_from_slice(br#"{"kind":"full","config":"#);
                out.extend_from_slice(&self.full_bytes());
                out.push(b'}');
            }
        }
        Bytes::from(out)
    }

    /// Close a draft into a new revision: the step is serialised now, once.
    pub(super) fn commit_step(&mut self, delta: ConfigDelta) {
        self.revision = delta.revision;
        // Invariant: as for SiteConfig, a delta always serialises.
        let bytes = Bytes::from(serde_json::to_vec(&delta).expect("ConfigDelta serialises"));
        self.step_bytes += bytes.len();
        self.steps.push_back(Arc::new(Step {
            from: delta.from_revision,
            bytes,
        }));
        while self.steps.len() > MAX_STEPS || self.step_bytes > MAX_STEP_BYTES {
            match self.steps.pop_front() {
                Some(s) => self.step_bytes -= s.bytes.len(),
                None => break,
            }
        }
        self.full = Arc::new(OnceLock::new());
    }
}

/// A site's changes being collected for its next revision.
#[derive(Debug, Default)]
pub(super) struct Draft {
    pub(super) interface: Option<InterfaceConfig>,
    /// The filter changed (to `None`: removed).
    pub(super) filter: Option<Option<Arc<SiteFilter>>>,
    pub(super) failover: Option<Vec<FailoverGroup>>,
    pub(super) set: BTreeSet<Name>,
    pub(super) removed: BTreeSet<Name>,
    /// Per peer: (added, removed) allowed IPs.
    pub(super) allowed: BTreeMap<Name, (BTreeSet<IpNet>, BTreeSet<IpNet>)>,
    pub(super) routes: RouteDiff,
}

impl Draft {
    pub(super) fn into_delta(self, r: &SiteRender, from: u64, to: u64) -> ConfigDelta {
        ConfigDelta {
            from_revision: from,
            revision: to,
            interface: self.interface,
            peers_removed: self.removed,
            peers_set: self
                .set
                .iter()
                .filter_map(|n| r.peers.get(n).map(|e| e.to_wire()))
                .collect(),
            allowed_ips: self
                .allowed
                .into_iter()
                .filter(|(_, (a, rm))| !a.is_empty() || !rm.is_empty())
                .map(|(name, (added, removed))| AllowedIpsChange {
                    name,
                    added,
                    removed,
                })
                .collect(),
            routes_added: self.routes.added,
            routes_removed: self.routes.removed,
            failover: self.failover,
            filter_removed: matches!(self.filter, Some(None)),
            filter: self.filter.flatten().map(|f| SiteFilter::clone(&f)),
        }
    }
}
