//! The controller's in-memory model of the network: regions and sites as the
//! store holds them. Rendering and IPAM are pure functions over it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use wardnet_common::wire::{HealthSummary, SiteState, UnixTime};
use wardnet_common::{Endpoint, Name, PublicKey, Role};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: Name,
    pub mesh: bool,
    pub ipv4_block: Ipv4Net,
    pub ipv6_block: Option<Ipv6Net>,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub name: Name,
    pub region: Name,
    pub role: Role,
    pub state: SiteState,
    /// An appliance without the agent (configured by wg-quick export).
    pub agentless: bool,
    pub lan_prefixes: BTreeSet<IpNet>,
    pub endpoint: Option<Endpoint>,
    pub public_key: Option<PublicKey>,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// Revision of the site's rendered config and the hash it was taken at.
    pub revision: u64,
    pub config_hash: Option<String>,
    pub applied_revision: u64,
    pub created_at: UnixTime,
    pub enrolled_at: Option<UnixTime>,
    pub last_seen: Option<UnixTime>,
    pub health: Option<HealthSummary>,
    /// SHA-256 (hex) of the agent credential, once enrolled.
    pub credential_hash: Option<String>,
}

impl Site {
    /// The site's overlay addresses as host prefixes.
    pub fn addresses(&self) -> BTreeSet<IpNet> {
        let mut out = BTreeSet::new();
        out.insert(wardnet_common::net::host_prefix(self.ipv4.into()));
        if let Some(v6) = self.ipv6 {
            out.insert(wardnet_common::net::host_prefix(v6.into()));
        }
        out
    }

    /// Whether the site takes part in other sites' configs.
    pub fn is_active(&self) -> bool {
        self.state == SiteState::Active && self.public_key.is_some()
    }
}

/// Regions and sites, keyed by name, with the indexes rendering needs so
/// that rendering one site touches only its neighbourhood.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub regions: BTreeMap<Name, Region>,
    pub sites: BTreeMap<Name, Site>,
    /// Region name -> names of its sites.
    pub by_region: BTreeMap<Name, BTreeSet<Name>>,
    /// Names of all hub sites, any state.
    pub hubs: BTreeSet<Name>,
}

impl Model {
    pub fn from_parts(regions: Vec<Region>, sites: Vec<Site>) -> Self {
        let mut m = Model::default();
        for r in regions {
            m.by_region.entry(r.name.clone()).or_default();
            m.regions.insert(r.name.clone(), r);
        }
        for s in sites {
            m.upsert_site(s);
        }
        m
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
        self.by_region
            .entry(s.region.clone())
            .or_default()
            .insert(s.name.clone());
        if s.role == Role::Hub {
            self.hubs.insert(s.name.clone());
        }
        self.sites.insert(s.name.clone(), s);
        old
    }

    pub fn remove_site(&mut self, name: &Name) -> Option<Site> {
        let old = self.sites.remove(name)?;
        if let Some(set) = self.by_region.get_mut(&old.region) {
            set.remove(name);
        }
        self.hubs.remove(name);
        Some(old)
    }

    /// Sites of a region, in name order.
    pub fn region_sites<'a>(&'a self, region: &Name) -> impl Iterator<Item = &'a Site> + 'a {
        self.by_region
            .get(region)
            .into_iter()
            .flatten()
            .filter_map(|n| self.sites.get(n))
    }

    /// Active hubs of a region, in name order.
    pub fn region_hubs<'a>(&'a self, region: &Name) -> impl Iterator<Item = &'a Site> + 'a {
        self.region_sites(region)
            .filter(|s| s.role == Role::Hub && s.is_active())
    }
}
