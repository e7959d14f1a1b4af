//! The controller's in-memory model of the network: regions and sites as the
//! store holds them. Rendering and IPAM are pure functions over it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use imbl::{OrdMap, OrdSet};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use wardnet_common::policy::{RuleView, ServiceView};
use wardnet_common::wire::{HealthSummary, SiteState, UnixTime};
use wardnet_common::{Endpoint, Name, PublicKey, Role};

mod reach;
pub use reach::SourceCache;
#[cfg(test)]
mod tests;

/// Network-wide settings from the controller config that rendering needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// The overlay IPv4 prefix, e.g. 100.64.0.0/10.
    pub overlay_v4: Ipv4Net,
    /// The optional overlay IPv6 prefix, e.g. fd7a:6e65::/48.
    pub overlay_v6: Option<Ipv6Net>,
    /// Prefix length of each region's IPv4 block (e.g. 20: 4094 sites).
    pub region_prefix_len_v4: u8,
    /// Prefix length of each region's IPv6 block (e.g. 64).
    pub region_prefix_len_v6: u8,
    /// Supernets that spokes route to their hub besides the overlay
    /// (typically the site-LAN address space).
    pub routed_prefixes: BTreeSet<IpNet>,
    /// UDP port agents listen on when their endpoint does not say.
    pub listen_port: u16,
    pub mtu: u16,
    /// Keepalive a spoke sends to its hub (and mesh peers), in seconds.
    pub persistent_keepalive: u16,
}

/// The order services are kept in: by organisation, then name (a name is
/// unique within its organisation).
pub fn by_service(a: &ServiceView, b: &ServiceView) -> std::cmp::Ordering {
    (&a.org, &a.service.name).cmp(&(&b.org, &b.service.name))
}

/// The whole policy: rules by id, services by organisation and name, each as the API shows
/// it (with the organisation that owns it and when it was made).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredPolicy {
    pub rules: Vec<RuleView>,
    pub services: Vec<ServiceView>,
    /// The number the next rule gets: numbers only go up, a deleted
    /// rule's is never given again.
    pub next_rule_id: u64,
    /// The LAN address space the NOC delegated to each organisation (only
    /// organisations with some): a scoped token claims LAN prefixes only
    /// inside its own. Kept with the policy, so replicas reload it when
    /// the change log says the policy changed.
    pub delegated: Delegations,
}

/// The address space delegated to organisations (overlay blocks, LAN
/// space), by organisation and indexed by prefix, so what overlaps a
/// prefix is found without reading every organisation's.
#[derive(Debug, Clone, Default)]
pub struct Delegations {
    by_org: BTreeMap<Name, BTreeSet<IpNet>>,
    /// Every delegated prefix (truncated) -> its organisation.
    index: OrdMap<IpNet, Name>,
    /// Changes with every change, and is never the same for two different
    /// contents: the model's [`SpaceIndex`] says which one it was built for.
    generation: u64,
}

impl PartialEq for Delegations {
    fn eq(&self, other: &Self) -> bool {
        self.by_org == other.by_org
    }
}
impl Eq for Delegations {}

/// Generations of [`Delegations`], unique in the process.
static DELEGATIONS_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Delegations {
    /// Which contents these are (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What organisation `org` was delegated, if anything.
    pub fn get(&self, org: &Name) -> Option<&BTreeSet<IpNet>> {
        self.by_org.get(org)
    }

    /// Replace what organisation `org` was delegated (empty: nothing).
    pub fn set(&mut self, org: &Name, space: BTreeSet<IpNet>) {
        self.generation = DELEGATIONS_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for p in self.by_org.remove(org).into_iter().flatten() {
            if self.index.get(&p.trunc()) == Some(org) {
                self.index.remove(&p.trunc());
            }
        }
        if !space.is_empty() {
            for p in &space {
                self.index.insert(p.trunc(), org.clone());
            }
            self.by_org.insert(org.clone(), space);
        }
    }

    /// Organisations with delegated space, and theirs.
    pub fn iter(&self) -> impl Iterator<Item = (&Name, &BTreeSet<IpNet>)> {
        self.by_org.iter()
    }

    /// Delegated prefixes that overlap `p`, with their organisation.
    pub fn overlapping<'a>(
        &'a self,
        p: &IpNet,
    ) -> impl Iterator<Item = (&'a IpNet, &'a Name)> + 'a {
        overlapping_keys(&self.index, p)
    }
}

impl FromIterator<(Name, BTreeSet<IpNet>)> for Delegations {
    fn from_iter<I: IntoIterator<Item = (Name, BTreeSet<IpNet>)>>(iter: I) -> Self {
        let mut d = Delegations::default();
        for (org, space) in iter {
            d.set(&org, space);
        }
        d
    }
}

impl<const N: usize> From<[(Name, BTreeSet<IpNet>); N]> for Delegations {
    fn from(v: [(Name, BTreeSet<IpNet>); N]) -> Self {
        v.into_iter().collect()
    }
}

/// Keys of `map` (truncated prefixes) that overlap `p`, with their values.
/// O(prefix length × log N) to the first: a prefix overlapping `p` either
/// contains `p` (then it is `p` truncated to its own, shorter or equal,
/// length: one lookup per length) or lies inside `p` (then its network
/// address is in `p`: one range query).
fn overlapping_keys<'a, V>(
    map: &'a OrdMap<IpNet, V>,
    p: &IpNet,
) -> impl Iterator<Item = (&'a IpNet, &'a V)> + 'a {
    let p = p.trunc();
    let containing = (0..p.prefix_len()).filter_map(move |len| {
        // Invariant: len is below p's own prefix length, so valid.
        let sup = match p {
            IpNet::V4(v) => Ipv4Net::new(v.network(), len).map(|n| IpNet::V4(n.trunc())),
            IpNet::V6(v) => Ipv6Net::new(v.network(), len).map(|n| IpNet::V6(n.trunc())),
        };
        sup.ok().and_then(|s| map.get_key_value(&s))
    });
    // Inside p (p itself included): network address in [p.network,
    // p.broadcast]; `IpNet` orders by family, then address, then length.
    let last = match p {
        IpNet::V4(v) => Ipv4Net::new(v.broadcast(), 32).map(IpNet::V4),
        IpNet::V6(v) => Ipv6Net::new(v.broadcast(), 128).map(IpNet::V6),
    };
    let inside = last
        .ok()
        .into_iter()
        .flat_map(move |last| map.range(p..=last));
    containing.chain(inside)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: Name,
    pub mesh: bool,
    pub ipv4_block: Ipv4Net,
    pub ipv6_block: Option<Ipv6Net>,
    pub created_at: UnixTime,
}

/// The organisation sites belong to unless they say otherwise.
pub fn default_org() -> Name {
    wardnet_common::wire::DEFAULT_ORG
        .parse()
        .expect("the default organisation's name is a valid name")
}

/// An organisation: a trust, a practice, an ambulance service. Its sites
/// and the admin tokens scoped to it refer to it by name; it lives in the
/// store (nothing renders from it), its delegated address space also in
/// [`StoredPolicy::delegated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub name: Name,
    pub description: String,
    pub created_at: UnixTime,
    /// The LAN address space the NOC delegated to it.
    pub delegated: BTreeSet<IpNet>,
}

/// What a site's config and every index of the model are built from: the
/// administered part of a site. Two versions of a site with equal inputs
/// render the same configs, so "does this change a config" is `==`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteInputs {
    pub name: Name,
    pub region: Name,
    /// The organisation the site belongs to (it never changes).
    pub org: Name,
    pub role: Role,
    pub state: SiteState,
    /// An appliance without the agent (configured by wg-quick export).
    pub agentless: bool,
    pub lan_prefixes: BTreeSet<IpNet>,
    pub endpoint: Option<Endpoint>,
    pub public_key: Option<PublicKey>,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// SHA-256 (hex) of the agent credential, once enrolled.
    pub credential_hash: Option<String>,
    pub created_at: UnixTime,
    pub enrolled_at: Option<UnixTime>,
    /// A move into its organisation's overlay block under way (`sites
    /// renumber`): the old addresses stay beside `ipv4` and `ipv6` until
    /// the agents that carry the site have applied the new ones.
    pub renumber: Option<Renumber>,
}

/// A site moving into its organisation's overlay block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renumber {
    /// The addresses it had, still its own until the move is finished.
    pub former: BTreeSet<std::net::IpAddr>,
    /// The sites whose configs carry it (itself, its region's hubs, its
    /// mesh peers), with the revision each had before the move: each
    /// applies a later one before the old addresses go.
    pub carriers: BTreeMap<Name, u64>,
}

/// A site: its inputs, the revision of its config, and what its agent
/// reported. It reads as its inputs (`site.name`): a site *is* its
/// administered fields plus bookkeeping, and every reader wants the former.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub inputs: SiteInputs,
    /// Revision of the site's config, and the fingerprint of the rendering
    /// (render version and network settings) it was taken with.
    pub revision: u64,
    pub render_fingerprint: Option<String>,
    /// What the agent last reported, as loaded at start; the live values
    /// are soft state (`service::heartbeat`), persisted in batches.
    pub applied_revision: u64,
    pub last_seen: Option<UnixTime>,
    pub health: Option<HealthSummary>,
}

impl std::ops::Deref for Site {
    type Target = SiteInputs;
    fn deref(&self) -> &SiteInputs {
        &self.inputs
    }
}

impl std::ops::DerefMut for Site {
    fn deref_mut(&mut self) -> &mut SiteInputs {
        &mut self.inputs
    }
}

impl Site {
    /// A new site with these inputs: revision 0, nothing reported.
    pub fn new(inputs: SiteInputs) -> Self {
        Site {
            inputs,
            revision: 0,
            render_fingerprint: None,
            applied_revision: 0,
            last_seen: None,
            health: None,
        }
    }
}

impl SiteInputs {
    /// The site's overlay addresses as host prefixes (during a renumber,
    /// the old ones too: the site still answers on them).
    pub fn addresses(&self) -> BTreeSet<IpNet> {
        self.overlay()
            .map(wardnet_common::net::host_prefix)
            .collect()
    }

    /// The site's overlay addresses, the old ones of a renumber included.
    pub fn overlay(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        std::iter::once(self.ipv4.into())
            .chain(self.ipv6.map(Into::into))
            .chain(self.renumber.iter().flat_map(|r| r.former.iter().copied()))
    }

    /// Whether the site takes part in other sites' configs.
    pub fn is_active(&self) -> bool {
        self.state == SiteState::Active && self.public_key.is_some()
    }
}

/// Regions and sites, keyed by name, with the indexes rendering needs so
/// that rendering one site touches only its neighbourhood.
///
/// Everything that grows with the sites is a persistent map (`imbl`), so a
/// clone is O(1) and shares structure: the writer changes a clone, and the
/// published snapshot readers hold stays as it was.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub regions: BTreeMap<Name, Region>,
    /// Shared: copying a map node copies pointers, not sites.
    pub sites: OrdMap<Name, std::sync::Arc<Site>>,
    /// Region name -> names of its sites.
    pub by_region: BTreeMap<Name, OrdSet<Name>>,
    /// Organisation name -> names of its sites, any state.
    /// (Persistent: N3 has some 28,000 organisations, and the model is
    /// cloned for every group of changes.)
    pub by_org: OrdMap<Name, OrdSet<Name>>,
    /// Names of all hub sites, any state.
    pub hubs: BTreeSet<Name>,
    /// Region name -> names of its hub sites, any state.
    region_hub_names: BTreeMap<Name, BTreeSet<Name>>,
    /// Region name -> LAN prefixes of its *active* sites (with how many
    /// sites declare each), so a primary hub renders another region's LANs
    /// without reading that region's sites.
    region_lans: BTreeMap<Name, OrdMap<IpNet, u32>>,
    /// Public key -> sites holding it, any state (the store's UNIQUE
    /// constraint keeps this to one site; a set keeps the index exact anyway).
    by_key: imbl::HashMap<PublicKey, BTreeSet<Name>>,
    /// Every site's LAN prefixes, any state, keyed by the truncated prefix:
    /// site -> the prefix as declared. Ordered, so overlap checks are range
    /// queries.
    lans: OrdMap<IpNet, BTreeMap<Name, IpNet>>,
    /// Region name -> overlay addresses its sites hold, any state (unique:
    /// the store's UNIQUE constraints see to it), for IPAM.
    region_addresses: BTreeMap<Name, (OrdSet<Ipv4Addr>, OrdSet<Ipv6Addr>)>,
    /// Overlay address -> the site holding it, any state: who is inside an
    /// organisation's overlay block.
    by_address: OrdMap<std::net::IpAddr, Name>,
    /// Hashes of enrolment tokens redeemed since start: a second redemption
    /// is refused here without a database round trip (the database's
    /// conditional update stays the judge).
    pub consumed_tokens: imbl::HashSet<String>,
    /// The policy between organisations (rules and services), which each
    /// site's filter is compiled from.
    pub policy: std::sync::Arc<StoredPolicy>,
    /// What organisations' sources are made of, kept up to date as sites
    /// come and go; see [`Model::refresh_space`].
    space: SpaceIndex,
}

/// What the sources of organisations are made of, for the delegations of
/// one generation: which delegated prefixes other organisations' sites
/// reach into (such space counts address by address), and each
/// organisation's sites' prefixes outside its delegated space. For any
/// other generation (the policy changed and nobody refreshed it) the
/// model reads the sites instead: slower, never wrong.
#[derive(Debug, Clone, Default)]
struct SpaceIndex {
    generation: Option<u64>,
    /// Delegated prefix -> how many prefixes of sites of other
    /// organisations overlap it.
    foreign: OrdMap<IpNet, u32>,
    /// Organisation -> prefixes of its sites outside its delegated space,
    /// with how many of its sites hold each.
    outside: OrdMap<Name, OrdMap<IpNet, u32>>,
}

impl Model {
    pub fn from_parts(regions: Vec<Region>, sites: Vec<Site>, policy: StoredPolicy) -> Self {
        let mut m = Model {
            policy: std::sync::Arc::new(policy),
            ..Model::default()
        };
        for r in regions {
            m.by_region.entry(r.name.clone()).or_default();
            m.regions.insert(r.name.clone(), r);
        }
        for s in sites {
            m.upsert_site(s);
        }
        m.refresh_space();
        m
    }

    /// Build the index of what organisations' sources are made of for the
    /// delegations the policy holds now. Whoever changes the delegations
    /// calls it; until then the sources are read from the sites.
    pub fn refresh_space(&mut self) {
        self.space = SpaceIndex {
            generation: Some(self.policy.delegated.generation()),
            ..SpaceIndex::default()
        };
        let sites: Vec<std::sync::Arc<Site>> = self.sites.values().cloned().collect();
        for s in &sites {
            self.count_space(s, true);
        }
    }

    /// [`Model::refresh_space`] unless the index is current already.
    pub fn ensure_space(&mut self) {
        if !self.space_current() {
            self.refresh_space();
        }
    }

    /// Whether the space index is built for the delegations the policy
    /// holds now.
    fn space_current(&self) -> bool {
        self.space.generation == Some(self.policy.delegated.generation())
    }

    /// Add (or take away) site `s`'s part of the space index.
    fn count_space(&mut self, s: &Site, add: bool) {
        if !self.space_current() {
            return;
        }
        let step = |n: &mut u32| {
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        };
        // The policy is shared, not copied: the index changes beside it.
        let policy = std::sync::Arc::clone(&self.policy);
        let own = policy.delegated.get(&s.org);
        for p in s.addresses().iter().chain(&s.lan_prefixes) {
            for (b, _) in policy
                .delegated
                .overlapping(p)
                .filter(|(_, o)| **o != s.org)
            {
                let n = self.space.foreign.entry(*b).or_default();
                step(n);
                if *n == 0 {
                    self.space.foreign.remove(b);
                }
            }
            if !own.is_some_and(|d| d.iter().any(|b| b.contains(p))) {
                let mine = self.space.outside.entry(s.org.clone()).or_default();
                let n = mine.entry(*p).or_default();
                step(n);
                if *n == 0 {
                    mine.remove(p);
                    if mine.is_empty() {
                        self.space.outside.remove(&s.org);
                    }
                }
            }
        }
    }

    pub fn upsert_region(&mut self, r: Region) {
        self.by_region.entry(r.name.clone()).or_default();
        self.regions.insert(r.name.clone(), r);
    }

    pub fn remove_region(&mut self, name: &Name) -> Option<Region> {
        self.by_region.remove(name);
        self.regions.remove(name)
    }

    /// Insert or replace a site, keeping the indexes in step.
    pub fn upsert_site(&mut self, s: Site) -> Option<Site> {
        let old = self.remove_site(&s.name);
        self.count_space(&s, true);
        self.by_region
            .entry(s.region.clone())
            .or_default()
            .insert(s.name.clone());
        self.by_org
            .entry(s.org.clone())
            .or_default()
            .insert(s.name.clone());
        if s.role == Role::Hub {
            self.hubs.insert(s.name.clone());
            self.region_hub_names
                .entry(s.region.clone())
                .or_default()
                .insert(s.name.clone());
        }
        if s.is_active() {
            let lans = self.region_lans.entry(s.region.clone()).or_default();
            for p in &s.lan_prefixes {
                *lans.entry(*p).or_default() += 1;
            }
        }
        if let Some(k) = s.public_key {
            self.by_key.entry(k).or_default().insert(s.name.clone());
        }
        let (v4, v6) = self.region_addresses.entry(s.region.clone()).or_default();
        for a in s.overlay() {
            match a {
                std::net::IpAddr::V4(a) => {
                    v4.insert(a);
                }
                std::net::IpAddr::V6(a) => {
                    v6.insert(a);
                }
            }
            self.by_address.insert(a, s.name.clone());
        }
        for p in &s.lan_prefixes {
            self.lans
                .entry(p.trunc())
                .or_default()
                .insert(s.name.clone(), *p);
        }
        self.sites.insert(s.name.clone(), std::sync::Arc::new(s));
        old
    }

    pub fn remove_site(&mut self, name: &Name) -> Option<Site> {
        let old = std::sync::Arc::unwrap_or_clone(self.sites.remove(name)?);
        self.count_space(&old, false);
        if let Some(set) = self.by_region.get_mut(&old.region) {
            set.remove(name);
        }
        if let Some(set) = self.by_org.get_mut(&old.org) {
            set.remove(name);
            if set.is_empty() {
                self.by_org.remove(&old.org);
            }
        }
        self.hubs.remove(name);
        if let Some(set) = self.region_hub_names.get_mut(&old.region) {
            set.remove(name);
        }
        if old.is_active() {
            if let Some(lans) = self.region_lans.get_mut(&old.region) {
                for p in &old.lan_prefixes {
                    if let Some(n) = lans.get_mut(p) {
                        *n -= 1;
                        if *n == 0 {
                            lans.remove(p);
                        }
                    }
                }
            }
        }
        // An address is free again only if this site was its holder: a
        // replica catching up may have applied the site that took the
        // address over before the deletion of the one that had it, and
        // must not then give it out a third time.
        for a in old.overlay() {
            if self.by_address.get(&a) != Some(name) {
                continue;
            }
            self.by_address.remove(&a);
            if let Some((v4, v6)) = self.region_addresses.get_mut(&old.region) {
                match a {
                    std::net::IpAddr::V4(a) => {
                        v4.remove(&a);
                    }
                    std::net::IpAddr::V6(a) => {
                        v6.remove(&a);
                    }
                }
            }
        }
        if let Some(k) = &old.public_key {
            if let Some(set) = self.by_key.get_mut(k) {
                set.remove(name);
                if set.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        for p in &old.lan_prefixes {
            let key = p.trunc();
            if let Some(sites) = self.lans.get_mut(&key) {
                sites.remove(name);
                if sites.is_empty() {
                    self.lans.remove(&key);
                }
            }
        }
        Some(old)
    }

    /// Overlay addresses held by a region's sites, in any state.
    pub fn region_addresses(&self, region: &Name) -> (OrdSet<Ipv4Addr>, OrdSet<Ipv6Addr>) {
        self.region_addresses
            .get(region)
            .cloned()
            .unwrap_or_default()
    }

    /// The sites holding overlay addresses inside `p`, in address order.
    pub fn sites_inside<'a>(&'a self, p: &IpNet) -> impl Iterator<Item = &'a Name> + 'a {
        let (first, last): (std::net::IpAddr, std::net::IpAddr) = match p {
            IpNet::V4(v) => (v.network().into(), v.broadcast().into()),
            IpNet::V6(v) => (v.network().into(), v.broadcast().into()),
        };
        self.by_address.range(first..=last).map(|(_, n)| n)
    }

    /// How many active sites of `region` declare LAN prefix `p`.
    pub fn region_lan_count(&self, region: &Name, p: &IpNet) -> u32 {
        self.region_lans
            .get(region)
            .and_then(|m| m.get(p))
            .copied()
            .unwrap_or(0)
    }

    /// LAN prefixes of a region's active sites, in order.
    pub fn region_lans<'a>(&'a self, region: &Name) -> impl Iterator<Item = &'a IpNet> + 'a {
        self.region_lans
            .get(region)
            .into_iter()
            .flat_map(|m| m.keys())
    }

    /// Sites other than `except` that hold public key `key`, in name order.
    pub fn sites_with_key<'a>(
        &'a self,
        key: &PublicKey,
        except: &'a Name,
    ) -> impl Iterator<Item = &'a Name> + 'a {
        self.by_key
            .get(key)
            .into_iter()
            .flatten()
            .filter(move |n| *n != except)
    }

    /// A LAN prefix of a site other than `except` that overlaps `p`, as
    /// (site, prefix as declared).
    pub fn lan_overlapping<'a>(
        &'a self,
        p: &IpNet,
        except: &Name,
    ) -> Option<(&'a Name, &'a IpNet)> {
        self.lans_overlapping(p).find(|(n, _)| *n != except)
    }

    /// Every site's LAN prefix that overlaps `p`, as (site, prefix as
    /// declared).
    pub fn lans_overlapping<'a>(
        &'a self,
        p: &IpNet,
    ) -> impl Iterator<Item = (&'a Name, &'a IpNet)> + 'a {
        overlapping_keys(&self.lans, p).flat_map(|(_, sites)| sites.iter())
    }

    /// Sites of a region, in name order.
    pub fn region_sites<'a>(&'a self, region: &Name) -> impl Iterator<Item = &'a Site> + 'a {
        self.by_region
            .get(region)
            .into_iter()
            .flatten()
            .filter_map(|n| self.sites.get(n).map(|s| &**s))
    }

    /// Active hubs of a region, in name order (from the hub index: a
    /// region's thousands of spokes are not read).
    pub fn region_hubs<'a>(&'a self, region: &Name) -> impl Iterator<Item = &'a Site> + 'a {
        self.region_hub_names
            .get(region)
            .into_iter()
            .flatten()
            .filter_map(|n| self.sites.get(n).map(|s| &**s))
            .filter(|s| s.role == Role::Hub && s.is_active())
    }
}
