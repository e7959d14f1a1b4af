//! Per-site configs kept incrementally (docs/design.md, "Controller v2").
//!
//! Each active site has a [`SiteRender`]: its peer entries keyed by name,
//! the minimal cover of their allowed IPs as routes, and the steps of its
//! last revisions, each serialised once. A change does not re-render whole
//! configs: it names the entries it may have touched ([`Touches`]), and
//! only those are rendered again from the model and compared. A spoke's
//! enrolment costs its hub one entry, and every other primary hub one
//! allowed-IPs change per LAN prefix; only a hub change (its region may get
//! a new primary) re-renders a region's configs.
//!
//! [`crate::render::render`] stays the specification: after any sequence of
//! changes, every site's render here equals a full render of the model (a
//! property test checks it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use wardnet_common::delta::{AllowedIpsChange, ConfigDelta};
use wardnet_common::filter::SiteFilter;
use wardnet_common::wire::{FailoverGroup, InterfaceConfig, PeerConfig, Role, SiteConfig};
use wardnet_common::{Endpoint, Name, PublicKey};

use crate::model::{Model, NetworkSettings, Site};
use crate::render::{
    agentless_behind, assigned_hub_is, failover_groups, hub_order, is_hub_lan, mesh_prefixes,
    own_prefixes, render, routed_prefixes,
};

/// Steps kept per site; an agent further behind gets the full config.
const MAX_STEPS: usize = 64;
/// Bytes of steps kept per site (a hub's steps can be large after a region
/// change); beyond this the oldest steps go.
const MAX_STEP_BYTES: usize = 256 * 1024;

/// Bump when rendering changes what it produces for the same model, so
/// every site gets a new revision once after an upgrade.
const RENDER_VERSION: u32 = 4;

/// What a site's stored revision was rendered with: the render version and
/// the network settings. A site whose stored fingerprint differs gets a new
/// revision at start (a changed MTU reaches every agent once).
pub fn fingerprint(net: &NetworkSettings) -> String {
    let mut h = Sha256::new();
    h.update(format!("{RENDER_VERSION}:{net:?}"));
    hex::encode(&h.finalize()[..16])
}

/// A peer entry as the controller keeps it: like [`PeerConfig`], with
/// allowed IPs in a persistent set so a hub-mesh entry carrying a region's
/// thousands of LANs changes in O(log n).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub name: Name,
    pub region: Name,
    pub role: Role,
    pub public_key: PublicKey,
    pub endpoint: Option<Endpoint>,
    pub allowed_ips: OrdSet<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

impl PeerEntry {
    fn from_wire(p: PeerConfig) -> Self {
        PeerEntry {
            name: p.name,
            region: p.region,
            role: p.role,
            public_key: p.public_key,
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.into_iter().collect(),
            persistent_keepalive: p.persistent_keepalive,
        }
    }

    pub fn to_wire(&self) -> PeerConfig {
        PeerConfig {
            name: self.name.clone(),
            region: self.region.clone(),
            role: self.role,
            public_key: self.public_key,
            endpoint: self.endpoint,
            allowed_ips: self.allowed_ips.iter().copied().collect(),
            persistent_keepalive: self.persistent_keepalive,
        }
    }

    /// The allowed IPs `new` has and this entry lacks, and the reverse.
    fn allowed_diff(&self, new: &PeerEntry) -> (BTreeSet<IpNet>, BTreeSet<IpNet>) {
        let only = |a: &OrdSet<IpNet>, b: &OrdSet<IpNet>| -> BTreeSet<IpNet> {
            a.iter().filter(|p| !b.contains(*p)).copied().collect()
        };
        (
            only(&new.allowed_ips, &self.allowed_ips),
            only(&self.allowed_ips, &new.allowed_ips),
        )
    }

    /// Equal in everything but the allowed IPs.
    fn same_but_allowed(&self, o: &PeerEntry) -> bool {
        self.name == o.name
            && self.region == o.region
            && self.role == o.role
            && self.public_key == o.public_key
            && self.endpoint == o.endpoint
            && self.persistent_keepalive == o.persistent_keepalive
    }
}

/// Routes added and removed by a change, netted out.
#[derive(Debug, Default)]
struct RouteDiff {
    added: BTreeSet<IpNet>,
    removed: BTreeSet<IpNet>,
}

impl RouteDiff {
    fn add(&mut self, p: IpNet) {
        if !self.removed.remove(&p) {
            self.added.insert(p);
        }
    }
    fn remove(&mut self, p: IpNet) {
        if !self.added.remove(&p) {
            self.removed.insert(p);
        }
    }
}

/// The minimal cover of a counted set of prefixes, kept as prefixes come
/// and go: the same answer as [`crate::render::routes_for`] in O(log n) per
/// prefix (prefixes either nest or are disjoint, and in `IpNet` order a
/// supernet sorts before everything inside it).
#[derive(Debug, Clone, Default)]
pub struct RouteCover {
    candidates: OrdMap<IpNet, u32>,
    routes: OrdSet<IpNet>,
}

impl RouteCover {
    /// The route containing `p` (routes are disjoint, so it is the greatest
    /// route at or before `p`).
    fn covering(&self, p: &IpNet) -> Option<IpNet> {
        self.routes.get_prev(p).copied().filter(|r| r.contains(p))
    }

    fn add(&mut self, p: IpNet, diff: &mut RouteDiff) {
        let n = self.candidates.entry(p).or_insert(0);
        *n += 1;
        if *n > 1 || self.covering(&p).is_some() {
            return;
        }
        // Usually nothing lies inside a new route: look before collecting.
        let mut inside = self.routes.range(p..=last_inside(&p)).copied().peekable();
        if inside.peek().is_some() {
            let inside: Vec<IpNet> = inside.collect();
            for r in inside {
                self.routes.remove(&r);
                diff.remove(r);
            }
        }
        self.routes.insert(p);
        diff.add(p);
    }

    fn remove(&mut self, p: IpNet, diff: &mut RouteDiff) {
        match self.candidates.get_mut(&p) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                self.candidates.remove(&p);
            }
            None => return,
        }
        if self.routes.remove(&p).is_none() {
            return;
        }
        diff.remove(p);
        // Nothing contained p (it was a route), so what lies inside it is
        // now covered only by what lies inside it.
        let mut last: Option<IpNet> = None;
        let inside: Vec<IpNet> = self
            .candidates
            .range(p..=last_inside(&p))
            .map(|(k, _)| *k)
            .collect();
        for q in inside {
            if last.is_some_and(|l| l.contains(&q)) {
                continue;
            }
            self.routes.insert(q);
            diff.add(q);
            last = Some(q);
        }
    }
}

/// The largest prefix in `IpNet` order that lies inside `p`.
fn last_inside(p: &IpNet) -> IpNet {
    match p {
        IpNet::V4(v) => IpNet::V4(ipnet::Ipv4Net::new(v.broadcast(), 32).unwrap_or(*v)),
        IpNet::V6(v) => IpNet::V6(ipnet::Ipv6Net::new(v.broadcast(), 128).unwrap_or(*v)),
    }
}

/// One revision's change, serialised once.
#[derive(Debug)]
struct Step {
    from: u64,
    bytes: Bytes,
}

/// A site's config as the controller keeps it between changes.
#[derive(Debug, Clone)]
pub struct SiteRender {
    pub revision: u64,
    site: Name,
    region: Name,
    role: Role,
    interface: InterfaceConfig,
    own_lans: BTreeSet<IpNet>,
    peers: OrdMap<Name, Arc<PeerEntry>>,
    routes: RouteCover,
    failover: Vec<FailoverGroup>,
    filter: Option<Arc<SiteFilter>>,
    /// The last revisions' steps, oldest first; they chain to `revision`.
    steps: imbl::Vector<Arc<Step>>,
    step_bytes: usize,
    /// The full config of this revision as JSON, built on first request.
    full: Arc<OnceLock<Bytes>>,
}

impl SiteRender {
    /// A render from a full config (at start, or when a site becomes active).
    fn from_config(cfg: SiteConfig, own_lans: &BTreeSet<IpNet>) -> Self {
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

    fn is_route_candidate(&self, p: &IpNet) -> bool {
        !self.interface.addresses.iter().any(|a| a.trunc() == *p)
            && !self.own_lans.iter().any(|lan| lan.contains(p))
    }

    fn add_candidate(&mut self, p: IpNet, diff: &mut RouteDiff) {
        let p = p.trunc();
        if self.is_route_candidate(&p) {
            self.routes.add(p, diff);
        }
    }

    fn remove_candidate(&mut self, p: IpNet, diff: &mut RouteDiff) {
        let p = p.trunc();
        if self.is_route_candidate(&p) {
            self.routes.remove(p, diff);
        }
    }

    /// Replace, add or remove one peer entry, recording the change.
    fn set_entry(&mut self, name: &Name, new: Option<PeerEntry>, d: &mut Draft) {
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
    fn change_allowed(
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
    fn commit_step(&mut self, delta: ConfigDelta) {
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
struct Draft {
    interface: Option<InterfaceConfig>,
    /// The filter changed (to `None`: removed).
    filter: Option<Option<Arc<SiteFilter>>>,
    failover: Option<Vec<FailoverGroup>>,
    set: BTreeSet<Name>,
    removed: BTreeSet<Name>,
    /// Per peer: (added, removed) allowed IPs.
    allowed: BTreeMap<Name, (BTreeSet<IpNet>, BTreeSet<IpNet>)>,
    routes: RouteDiff,
}

impl Draft {
    fn into_delta(self, r: &SiteRender, from: u64, to: u64) -> ConfigDelta {
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

/// What a change may have touched in one site's config.
#[derive(Debug, Default, Clone)]
pub struct Touch {
    /// Render the whole config again (the site itself changed, or its
    /// region's hubs did).
    full: bool,
    /// Its failover groups may have changed (another region's hubs did).
    failover: bool,
    /// Its filter may have changed (the policy, or a site it names).
    filter: bool,
    /// Only the site's own interface settings may have changed (its
    /// endpoint): its peers and routes stay. A hub's endpoint change would
    /// otherwise render its thousands of peers again.
    interface: bool,
    /// Render these peer entries again.
    entries: BTreeSet<Name>,
    /// Region -> LAN prefixes whose presence in that region's hub-mesh
    /// entry may have changed.
    mesh: BTreeMap<Name, BTreeSet<IpNet>>,
}

/// The sites a group of changes touched, and how.
#[derive(Debug, Default)]
pub struct Touches(BTreeMap<Name, Touch>);

impl Touches {
    fn full(&mut self, site: &Name) {
        self.0.entry(site.clone()).or_default().full = true;
    }
    fn interface(&mut self, site: &Name) {
        self.0.entry(site.clone()).or_default().interface = true;
    }
    /// The site's filter may have changed.
    pub fn filter(&mut self, site: &Name) {
        self.0.entry(site.clone()).or_default().filter = true;
    }

    /// What the policy admits into `site` may have changed: its filter,
    /// and in a mesh region which spokes it has a tunnel with.
    pub fn policy_target(&mut self, model: &Model, site: &Name) {
        self.filter(site);
        let Some(s) = model.sites.get(site) else {
            return;
        };
        if s.role != Role::Spoke || !model.regions.get(&s.region).is_some_and(|r| r.mesh) {
            return;
        }
        let spokes: Vec<Name> = model
            .region_sites(&s.region)
            .filter(|t| t.role == Role::Spoke && t.is_active() && t.name != *site)
            .map(|t| t.name.clone())
            .collect();
        self.entries(site, spokes.iter());
        for t in &spokes {
            self.entries(t, [site]);
        }
    }
    fn failover(&mut self, site: &Name) {
        self.0.entry(site.clone()).or_default().failover = true;
    }
    fn entries<'a>(&mut self, site: &Name, names: impl IntoIterator<Item = &'a Name>) {
        let t = self.0.entry(site.clone()).or_default();
        t.entries.extend(names.into_iter().cloned());
    }
    fn mesh(&mut self, site: &Name, region: &Name, lans: &BTreeSet<IpNet>) {
        let t = self.0.entry(site.clone()).or_default();
        t.mesh
            .entry(region.clone())
            .or_default()
            .extend(lans.iter().copied());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Record what a site's change from `before` to `after` may touch;
    /// `model` is the model after the change. May over-approximate (an
    /// entry rendered again and found equal costs nothing but the render),
    /// never under-approximate.
    pub fn site_changed(&mut self, model: &Model, before: Option<&Site>, after: Option<&Site>) {
        let Some(x) = after.or(before).map(|s| s.name.clone()) else {
            return;
        };
        match (before, after) {
            // Still active in the same place with the same prefixes: what
            // its own config holds of itself is the interface.
            (Some(b), Some(a))
                if b.is_active()
                    && a.is_active()
                    && b.role == a.role
                    && b.org == a.org
                    && b.region == a.region
                    && b.addresses() == a.addresses()
                    && b.lan_prefixes == a.lan_prefixes =>
            {
                self.interface(&x);
            }
            // A deleted site is touched too: its render goes.
            _ => self.full(&x),
        }
        let in_filters = |s: &Site| {
            (
                s.org.clone(),
                s.region.clone(),
                s.addresses(),
                s.lan_prefixes.clone(),
            )
        };
        if before.map(in_filters) != after.map(in_filters) {
            self.filter(&x);
            for s in before.into_iter().chain(after) {
                for t in model.filters_holding(s) {
                    self.filter(&t);
                }
            }
        }
        let mut regions_done = BTreeSet::new();
        for s in before.into_iter().chain(after) {
            let r = &s.region;
            match s.role {
                Role::Hub => {
                    if !regions_done.insert(r.clone()) {
                        continue;
                    }
                    let member = |s: Option<&Site>| {
                        s.is_some_and(|s| &s.region == r && s.role == Role::Hub && s.is_active())
                    };
                    // A hub that comes or goes changes every order of
                    // preference in its region, and the groups naming it.
                    let joined_or_left = member(before) != member(after);
                    for t in model
                        .region_sites(r)
                        .filter(|t| t.is_active() && t.name != x)
                    {
                        if joined_or_left {
                            self.full(&t.name);
                        } else {
                            self.entries(&t.name, [&x]);
                        }
                    }
                    let mut names: Vec<Name> =
                        model.region_hubs(r).map(|h| h.name.clone()).collect();
                    names.push(x.clone());
                    for p in other_hubs(model, r) {
                        self.entries(&p, names.iter());
                        if joined_or_left {
                            self.failover(&p);
                        }
                    }
                }
                Role::Spoke => {
                    let hubs: Vec<Name> = model.region_hubs(r).map(|h| h.name.clone()).collect();
                    let agentless = s.agentless;
                    for h in &hubs {
                        self.entries(h, [&x]);
                        if agentless {
                            // Its hub's entry at the others carries it.
                            self.entries(h, hubs.iter());
                        }
                    }
                    if model.regions.get(r).is_some_and(|reg| reg.mesh) {
                        let spokes: Vec<Name> = model
                            .region_sites(r)
                            .filter(|t| t.role == Role::Spoke && t.is_active() && t.name != x)
                            .map(|t| t.name.clone())
                            .collect();
                        for t in &spokes {
                            self.entries(t, [&x]);
                        }
                    }
                    let lans = carried_lans(before, after);
                    if !lans.is_empty() {
                        for p in other_hubs(model, r) {
                            self.mesh(&p, r, &lans);
                        }
                    }
                }
            }
        }
    }
}

/// Active hubs of every region but `region`.
fn other_hubs(model: &Model, region: &Name) -> Vec<Name> {
    model
        .hubs
        .iter()
        .filter_map(|n| model.sites.get(n))
        .filter(|h| h.is_active() && &h.region != region)
        .map(|h| h.name.clone())
        .collect()
}

/// LAN prefixes other regions' hubs may carry differently after a
/// spoke changed from `before` to `after`.
fn carried_lans(before: Option<&Site>, after: Option<&Site>) -> BTreeSet<IpNet> {
    let carried = |s: Option<&Site>| {
        s.filter(|s| s.is_active())
            .map(|s| s.lan_prefixes.clone())
            .unwrap_or_default()
    };
    let (b, a) = (carried(before), carried(after));
    if b == a {
        return BTreeSet::new();
    }
    b.symmetric_difference(&a).copied().collect()
}

/// One peer entry of `site`'s config, as [`render`] renders it; `None` when
/// `peer` is not a peer of `site`.
pub fn entry(model: &Model, net: &NetworkSettings, site: &Name, peer: &Name) -> Option<PeerEntry> {
    let me = model.sites.get(site).filter(|s| s.is_active())?;
    let t = model.sites.get(peer).filter(|s| s.is_active())?;
    if me.name == t.name {
        return None;
    }
    let region = model.regions.get(&me.region)?;
    let keepalive = (net.persistent_keepalive != 0).then_some(net.persistent_keepalive);
    let (allowed, ka) = match me.role {
        Role::Spoke if t.region == me.region => match t.role {
            Role::Hub => {
                let hubs = hub_order(model, &me.name, &me.region);
                let i = hubs.iter().position(|h| h.name == t.name)?;
                if me.agentless && i > 0 {
                    return None;
                }
                let mut a = own_prefixes(t);
                if i == 0 {
                    a.extend(routed_prefixes(net));
                }
                (a, keepalive)
            }
            Role::Spoke if region.mesh && model.may_talk(me, t) => (own_prefixes(t), keepalive),
            Role::Spoke if region.mesh => return None,
            Role::Spoke => return None,
        },
        Role::Spoke => return None,
        Role::Hub if t.region == me.region => match t.role {
            Role::Spoke if t.agentless && !assigned_hub_is(model, t, &me.name) => return None,
            Role::Spoke => (own_prefixes(t), None),
            Role::Hub => {
                let mut a = own_prefixes(t);
                a.extend(agentless_behind(model, t));
                (a, keepalive)
            }
        },
        Role::Hub => {
            if t.role != Role::Hub {
                return None;
            }
            let other = model.regions.get(&t.region)?;
            let hubs = hub_order(model, &me.name, &t.region);
            let i = hubs.iter().position(|h| h.name == t.name)?;
            (
                mesh_prefixes(model, other, t, i == 0, hubs.len() > 1),
                keepalive,
            )
        }
    };
    Some(PeerEntry {
        name: t.name.clone(),
        region: t.region.clone(),
        role: t.role,
        public_key: t.public_key?,
        endpoint: t.endpoint,
        allowed_ips: allowed.into_iter().collect(),
        persistent_keepalive: ka,
    })
}

/// Whether the hub-mesh entry of `carrier`, the hub of `region` that
/// carries the region for the site rendered, carries `p`.
fn mesh_carries(model: &Model, region: &Name, carrier: &Site, p: &IpNet) -> bool {
    let Some(r) = model.regions.get(region) else {
        return false;
    };
    let group = model.region_hubs(region).nth(1).is_some();
    IpNet::V4(r.ipv4_block) == *p
        || r.ipv6_block.map(IpNet::V6) == Some(*p)
        || (model.region_lan_count(region, p) > 0 && !(group && is_hub_lan(model, region, p)))
        || own_prefixes(carrier).contains(p)
}

/// A site whose revision moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bump {
    pub site: Name,
    pub revision: u64,
}

/// Bring the renders of the touched sites in step with `model`, bumping
/// the revision (in the model too) of every site whose config changed.
pub fn apply(
    model: &mut Model,
    configs: &mut OrdMap<Name, Arc<SiteRender>>,
    net: &NetworkSettings,
    touches: Touches,
) -> Vec<Bump> {
    apply_to(model, configs, net, touches, &BTreeMap::new())
}

/// [`apply`], with the revision a changed site moves to given by `target`
/// where it names one above the site's (a replica following another's
/// changes: several revisions it did not see one by one become one step,
/// from the revision it had to the stored one); others move by one.
pub fn apply_to(
    model: &mut Model,
    configs: &mut OrdMap<Name, Arc<SiteRender>>,
    net: &NetworkSettings,
    touches: Touches,
    target: &BTreeMap<Name, u64>,
) -> Vec<Bump> {
    let mut bumps = Vec::new();
    for (name, touch) in touches.0 {
        let Some(site) = model.sites.get(&name) else {
            configs.remove(&name);
            continue;
        };
        let from = site.revision;
        // A render of another revision belongs to an earlier site of the
        // same name (deleted and created again): start afresh.
        let old = configs
            .get(&name)
            .filter(|r| r.revision == from)
            .map(|r| SiteRender::clone(r));
        let next = match old {
            Some(mut r) if !touch.full => {
                let mut d = Draft::default();
                if touch.interface {
                    let now = crate::render::interface(site, net);
                    if now != r.interface {
                        r.interface = now.clone();
                        d.interface = Some(now);
                    }
                }
                for peer in &touch.entries {
                    let e = entry(model, net, &name, peer);
                    r.set_entry(peer, e, &mut d);
                }
                if touch.filter {
                    let now = model.filter(site).map(Arc::new);
                    if now != r.filter {
                        r.filter.clone_from(&now);
                        d.filter = Some(now);
                    }
                }
                if touch.failover {
                    let now = failover_groups(model, site);
                    if now != r.failover {
                        r.failover.clone_from(&now);
                        d.failover = Some(now);
                    }
                }
                for (region, lans) in &touch.mesh {
                    let hubs = hub_order(model, &name, region);
                    let Some(carrier) = hubs.first() else {
                        continue;
                    };
                    if !r.peers.contains_key(&carrier.name) {
                        continue;
                    }
                    let (add, rm): (Vec<IpNet>, Vec<IpNet>) = lans
                        .iter()
                        .partition(|p| mesh_carries(model, region, carrier, p));
                    let pname = carrier.name.clone();
                    r.change_allowed(
                        &pname,
                        add.into_iter().collect(),
                        rm.into_iter().collect(),
                        &mut d,
                    );
                }
                Some((r, Some(d)))
            }
            old => render(model, net, &name).map(|cfg| rebuild(old, cfg, site)),
        };
        match next {
            None => {
                configs.remove(&name);
            }
            Some((mut r, draft)) => {
                let to = target
                    .get(&name)
                    .copied()
                    .filter(|t| *t > from)
                    .unwrap_or(from + 1);
                let changed = match draft {
                    // A site that just became active: no step to chain from.
                    None => true,
                    Some(d) => {
                        let delta = d.into_delta(&r, from, to);
                        if delta.is_empty() {
                            false
                        } else {
                            r.commit_step(delta);
                            true
                        }
                    }
                };
                if changed {
                    // (commit_step, or a fresh render, left `full` empty.)
                    r.revision = to;
                    if let Some(s) = model.sites.get_mut(&name) {
                        Arc::make_mut(s).revision = to;
                    }
                    bumps.push(Bump {
                        site: name.clone(),
                        revision: to,
                    });
                }
                configs.insert(name, Arc::new(r));
            }
        }
    }
    bumps
}

/// A full render compared with the previous one. The draft is `None` when
/// there is nothing to chain from (no previous render, or the site's
/// identity changed), and the agent is then sent the full config.
fn rebuild(old: Option<SiteRender>, cfg: SiteConfig, site: &Site) -> (SiteRender, Option<Draft>) {
    let mut fresh = SiteRender::from_config(cfg, &site.lan_prefixes);
    let Some(old) =
        old.filter(|o| o.site == fresh.site && o.region == fresh.region && o.role == fresh.role)
    else {
        return (fresh, None);
    };
    let mut d = Draft::default();
    if old.interface != fresh.interface {
        d.interface = Some(fresh.interface.clone());
    }
    if old.failover != fresh.failover {
        d.failover = Some(fresh.failover.clone());
    }
    if old.filter != fresh.filter {
        d.filter = Some(fresh.filter.clone());
    }
    for (name, e) in fresh.peers.iter() {
        match old.peers.get(name) {
            Some(o) if o == e => {}
            Some(o) if o.same_but_allowed(e) => {
                d.allowed.insert(name.clone(), o.allowed_diff(e));
            }
            _ => {
                d.set.insert(name.clone());
            }
        }
    }
    for name in old.peers.keys() {
        if !fresh.peers.contains_key(name) {
            d.removed.insert(name.clone());
        }
    }
    for r in fresh.routes.routes.iter() {
        if !old.routes.routes.contains(r) {
            d.routes.added.insert(*r);
        }
    }
    for r in old.routes.routes.iter() {
        if !fresh.routes.routes.contains(r) {
            d.routes.removed.insert(*r);
        }
    }
    fresh.steps = old.steps;
    fresh.step_bytes = old.step_bytes;
    (fresh, Some(d))
}

/// A full render of one site at its revision in `model` (no steps: an
/// agent behind it is sent the full config), or `None` when it has none.
pub fn render_one(model: &Model, net: &NetworkSettings, name: &Name) -> Option<Arc<SiteRender>> {
    let site = model.sites.get(name)?;
    let cfg = render(model, net, name)?;
    Some(Arc::new(SiteRender::from_config(cfg, &site.lan_prefixes)))
}

/// Renders for every active site of a freshly loaded model.
pub fn render_all(model: &Model, net: &NetworkSettings) -> OrdMap<Name, Arc<SiteRender>> {
    let mut out = OrdMap::new();
    for site in model.sites.values() {
        if let Some(cfg) = render(model, net, &site.name) {
            out.insert(
                site.name.clone(),
                Arc::new(SiteRender::from_config(cfg, &site.lan_prefixes)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use wardnet_common::delta::ConfigUpdate;
    use wardnet_common::wire::SiteState;

    use super::*;
    use crate::model::Region;

    fn name(s: &str) -> Name {
        s.parse().expect("name")
    }

    fn settings() -> NetworkSettings {
        NetworkSettings {
            overlay_v4: "100.64.0.0/10".parse().expect("overlay"),
            overlay_v6: Some("fd7a:6e65::/48".parse().expect("overlay6")),
            region_prefix_len_v4: 20,
            region_prefix_len_v6: 64,
            routed_prefixes: ["10.0.0.0/8".parse().expect("prefix")].into(),
            listen_port: 51820,
            mtu: 1420,
            persistent_keepalive: 25,
        }
    }

    const REGIONS: u8 = 3;
    const SITES: u8 = 8;

    fn site_name(r: u8, i: u8) -> Name {
        name(&format!("s{r}-{i}"))
    }

    /// Regions r0..r2 (r1 mesh); site i of each region is a hub for i < 2,
    /// the last one an agentless spoke.
    fn base() -> Model {
        let regions = (0..REGIONS)
            .map(|r| Region {
                name: name(&format!("r{r}")),
                mesh: r == 1,
                ipv4_block: format!("100.64.{}.0/20", u32::from(r) * 16)
                    .parse()
                    .expect("block"),
                ipv6_block: Some(format!("fd7a:6e65:0:{r}::/64").parse().expect("block6")),
                created_at: 0,
            })
            .collect();
        Model::from_parts(regions, Vec::new(), Default::default())
    }

    fn new_site(r: u8, i: u8, lan: Option<u8>, active: bool) -> Site {
        Site {
            inputs: crate::model::SiteInputs {
                name: site_name(r, i),
                region: name(&format!("r{r}")),
                org: name(["default", "org-a", "org-b"][usize::from((r + i) % 3)]),
                role: if i < 2 { Role::Hub } else { Role::Spoke },
                state: if active {
                    SiteState::Active
                } else {
                    SiteState::Pending
                },
                agentless: i == SITES - 1,
                lan_prefixes: lan
                    .map(|l| format!("10.{r}.{l}.0/24").parse().expect("lan"))
                    .into_iter()
                    .collect(),
                endpoint: Some(
                    format!("198.51.100.{}:51820", r * 16 + i)
                        .parse()
                        .expect("ep"),
                ),
                public_key: active.then(|| PublicKey::from_bytes([r * 16 + i + 1; 32])),
                ipv4: format!("100.64.{}.{}", u32::from(r) * 16, i + 1)
                    .parse()
                    .expect("v4"),
                ipv6: Some(format!("fd7a:6e65:0:{r}::{}", i + 1).parse().expect("v6")),
                created_at: 0,
                enrolled_at: None,
                credential_hash: None,
            },
            revision: 0,
            render_fingerprint: None,
            applied_revision: 0,
            last_seen: None,
            health: None,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Create (pending or active) or activate a site.
        Up {
            r: u8,
            i: u8,
            lan: Option<u8>,
        },
        Revoke {
            r: u8,
            i: u8,
        },
        Delete {
            r: u8,
            i: u8,
        },
        Lan {
            r: u8,
            i: u8,
            lan: Option<u8>,
        },
        Endpoint {
            r: u8,
            i: u8,
            port: u16,
        },
        /// Add policy item `k` (a rule or a service), or remove it when
        /// present.
        Policy {
            k: u8,
        },
    }

    const POLICY_ITEMS: u8 = 6;

    /// The policy items the ops toggle: rules 1-4, services 4 and 5.
    fn toggle_policy(m: &mut Model, k: u8) {
        use wardnet_common::policy::{Rule, RuleView, Service, ServiceView, SharedWith};
        let p = Arc::make_mut(&mut m.policy);
        let rule = |id: u64, from: &str, to: &str| RuleView {
            rule: Rule {
                id,
                from: from.parse().expect("source"),
                to: to.parse().expect("target"),
                proto: wardnet_common::policy::Proto::Tcp,
                ports: vec!["443".parse().expect("port")],
                description: String::new(),
            },
            org: name("org-b"),
            created_at: 0,
        };
        let service = |n: &str, site: Name, with: SharedWith| ServiceView {
            service: Service {
                name: name(n),
                site,
                prefixes: Default::default(),
                proto: wardnet_common::policy::Proto::Udp,
                ports: Vec::new(),
                shared_with: with,
                description: String::new(),
            },
            org: name("org-a"),
            created_at: 0,
        };
        if k < 4 {
            let id = u64::from(k) + 1;
            if let Some(i) = p.rules.iter().position(|r| r.rule.id == id) {
                p.rules.remove(i);
                return;
            }
            p.rules.push(match k {
                0 => rule(id, "org:org-a", "org:org-b"),
                1 => rule(id, "region:r1", &format!("site:{}", site_name(1, 3))),
                2 => rule(id, &format!("site:{}", site_name(1, 5)), "org:org-a"),
                _ => rule(id, "all", "service:svc-4"),
            });
            p.rules.sort_by_key(|r| r.rule.id);
        } else {
            let n = format!("svc-{k}");
            if let Some(i) = p.services.iter().position(|s| s.service.name.as_str() == n) {
                p.services.remove(i);
                return;
            }
            p.services.push(if k == 4 {
                service(
                    &n,
                    site_name(1, 4),
                    SharedWith::Orgs([name("org-b")].into()),
                )
            } else {
                service(&n, site_name(1, 2), SharedWith::All)
            });
            p.services
                .sort_by(|a, b| a.service.name.cmp(&b.service.name));
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let ri = (0..REGIONS, 0..SITES);
        prop_oneof![
            4 => (ri.clone(), proptest::option::of(0u8..6)).prop_map(|((r, i), lan)| Op::Up { r, i, lan }),
            1 => ri.clone().prop_map(|(r, i)| Op::Revoke { r, i }),
            1 => ri.clone().prop_map(|(r, i)| Op::Delete { r, i }),
            2 => (ri.clone(), proptest::option::of(0u8..6)).prop_map(|((r, i), lan)| Op::Lan { r, i, lan }),
            2 => (ri, 1000u16..1010).prop_map(|((r, i), port)| Op::Endpoint { r, i, port }),
            2 => (0..POLICY_ITEMS).prop_map(|k| Op::Policy { k }),
        ]
    }

    /// Apply one op to the model; (before, after) of the site it changed.
    fn run(m: &mut Model, op: &Op) -> Option<(Option<Site>, Option<Site>)> {
        let lan_free = |m: &Model, r: u8, i: u8, lan: Option<u8>| {
            lan.is_none_or(|l| {
                let p: IpNet = format!("10.{r}.{l}.0/24").parse().expect("lan");
                m.lan_overlapping(&p, &site_name(r, i)).is_none()
            })
        };
        match *op {
            Op::Up { r, i, lan } => {
                let before = m.sites.get(&site_name(r, i)).map(|s| Site::clone(s));
                let after = match &before {
                    None if lan_free(m, r, i, lan) => new_site(r, i, lan, (i + r) % 3 != 0),
                    Some(b) if b.state == SiteState::Pending => {
                        let mut a = new_site(r, i, None, true);
                        a.lan_prefixes = b.lan_prefixes.clone();
                        a.revision = b.revision;
                        a
                    }
                    _ => return None,
                };
                m.upsert_site(after.clone());
                Some((before, Some(after)))
            }
            Op::Revoke { r, i } => {
                let before = m.sites.get(&site_name(r, i)).map(|s| Site::clone(s))?;
                let mut after = before.clone();
                after.state = SiteState::Revoked;
                m.upsert_site(after.clone());
                Some((Some(before), Some(after)))
            }
            Op::Delete { r, i } => {
                let before = m.remove_site(&site_name(r, i))?;
                m.drop_services_of(&before.name);
                Some((Some(before), None))
            }
            Op::Policy { k } => {
                toggle_policy(m, k);
                None
            }
            Op::Lan { r, i, lan } => {
                let before = m.sites.get(&site_name(r, i)).map(|s| Site::clone(s))?;
                if !lan_free(m, r, i, lan) {
                    return None;
                }
                let mut after = before.clone();
                after.lan_prefixes = lan
                    .map(|l| format!("10.{r}.{l}.0/24").parse().expect("lan"))
                    .into_iter()
                    .collect();
                m.upsert_site(after.clone());
                Some((Some(before), Some(after)))
            }
            Op::Endpoint { r, i, port } => {
                let before = m.sites.get(&site_name(r, i)).map(|s| Site::clone(s))?;
                let mut after = before.clone();
                after.endpoint = Some(
                    format!("203.0.113.{}:{port}", r * 16 + i)
                        .parse()
                        .expect("ep"),
                );
                m.upsert_site(after.clone());
                Some((Some(before), Some(after)))
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// After any sequence of grouped changes (sites and the policy):
        /// every site's incremental render (peers, routes, the filter)
        /// equals a full render of the model; revisions only grow;
        /// and from any revision an agent saw, the answer it is sent
        /// (steps, or the full config) brings it exactly to the latest.
        #[test]
        fn incremental_configs_equal_full_renders_and_deltas_chain(
            groups in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 1..30)
        ) {
            let net = settings();
            let mut model = base();
            let mut configs = OrdMap::new();
            // Every config an agent could have been served, per site.
            let mut seen: HashMap<Name, Vec<SiteConfig>> = HashMap::new();
            for group in &groups {
                let mut touches = Touches::default();
                let policy = model.policy.clone();
                for op in group {
                    if let Some((before, after)) = run(&mut model, op) {
                        touches.site_changed(&model, before.as_ref(), after.as_ref());
                        if after.is_none() {
                            // A site created again under the name is a new
                            // site: its agent enrols afresh (revision 0).
                            seen.remove(&before.as_ref().expect("deleted").name);
                        }
                    }
                }
                // As the writer does: the sites a policy change admits into.
                if !Arc::ptr_eq(&policy, &model.policy) {
                    for t in model.policy_touches(&policy, &model.policy) {
                        touches.policy_target(&model, &t);
                    }
                }
                let revisions: HashMap<Name, u64> =
                    model.sites.values().map(|s| (s.name.clone(), s.revision)).collect();
                apply(&mut model, &mut configs, &net, touches);
                for site in model.sites.values() {
                    let want = render(&model, &net, &site.name);
                    let got = configs.get(&site.name).map(|r| r.to_config());
                    prop_assert_eq!(&got, &want, "site {}", site.name);
                    if let Some(old) = revisions.get(&site.name) {
                        prop_assert!(site.revision >= *old);
                    }
                    let Some(render) = configs.get(&site.name) else { continue };
                    prop_assert_eq!(render.revision, site.revision);
                    let latest = render.to_config();
                    let history = seen.entry(site.name.clone()).or_default();
                    for earlier in history.iter().filter(|c| c.revision < latest.revision) {
                        let answer: ConfigUpdate = serde_json::from_slice(&render.update_bytes(earlier.revision))
                            .expect("answer parses");
                        let mut cfg = earlier.clone();
                        match answer {
                            ConfigUpdate::Full { config } => cfg = config,
                            ConfigUpdate::Deltas { steps } => cfg.apply_deltas(&steps).expect("steps chain"),
                        }
                        prop_assert_eq!(&cfg, &latest);
                    }
                    if history.last().is_none_or(|c| c.revision < latest.revision) {
                        history.push(latest);
                    }
                }
            }
        }
    }

    #[test]
    fn route_cover_follows_adds_and_removes() {
        let p = |s: &str| -> IpNet { s.parse().expect("prefix") };
        let mut c = RouteCover::default();
        let mut d = RouteDiff::default();
        for s in ["10.1.0.0/24", "10.1.1.0/24", "10.1.0.0/24"] {
            c.add(p(s), &mut d);
        }
        c.add(p("10.0.0.0/8"), &mut d);
        assert_eq!(
            c.routes.iter().copied().collect::<Vec<_>>(),
            [p("10.0.0.0/8")]
        );
        c.remove(p("10.0.0.0/8"), &mut d);
        assert_eq!(
            c.routes.iter().copied().collect::<Vec<_>>(),
            [p("10.1.0.0/24"), p("10.1.1.0/24")]
        );
        c.remove(p("10.1.0.0/24"), &mut d);
        assert_eq!(
            c.routes.len(),
            2,
            "a prefix added twice stays until removed twice"
        );
        c.remove(p("10.1.0.0/24"), &mut d);
        assert_eq!(
            c.routes.iter().copied().collect::<Vec<_>>(),
            [p("10.1.1.0/24")]
        );
        assert_eq!(
            d.added.iter().copied().collect::<Vec<_>>(),
            [p("10.1.1.0/24")]
        );
        assert!(d.removed.is_empty());
    }
}
