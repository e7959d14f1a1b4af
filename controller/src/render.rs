//! Per-site config rendering: a pure function from the model to the
//! WireGuard peers and routes one site should run (docs/design.md, "Topology
//! model").
//!
//! Only active sites appear as peers. Rendering one site reads only its
//! neighbourhood: its region and, for a primary hub, the other regions'
//! primary hubs and LANs (from the model's hub and per-region LAN indexes,
//! so a hub costs O(its region's sites + number of regions), not O(network)).
//!
//! Who peers with whom (every relation is symmetric, or handshakes fail):
//! - a spoke peers with every active hub of its region; the *primary* hub
//!   (smallest name) carries the network-wide routed prefixes, because
//!   WireGuard forbids the same AllowedIP on two peers;
//! - in a mesh region, spokes also peer with each other;
//! - every hub peers with every other active site of its region;
//! - primary hubs peer with each other (hub mesh), each carrying its region's
//!   blocks and LANs. A secondary hub is not in the hub mesh (the other
//!   regions send its region's traffic to the primary hub); like a spoke, it
//!   reaches other regions through its primary hub, whose peer entry carries
//!   the routed prefixes.

use std::collections::BTreeSet;

use ipnet::IpNet;
use wardnet_common::wire::{InterfaceConfig, PeerConfig, Role, SiteConfig};
use wardnet_common::Name;

use crate::model::{Model, NetworkSettings, Region, Site};

/// The config `site` should run, or `None` when the site is unknown, not
/// active (pending and revoked sites get no config) or its region is missing.
pub fn render(model: &Model, net: &NetworkSettings, site: &Name) -> Option<SiteConfig> {
    let me = model.sites.get(site)?;
    if !me.is_active() {
        return None;
    }
    let region = model.regions.get(&me.region)?;
    let primary = model.region_hubs(&region.name).next();
    let keepalive = (net.persistent_keepalive != 0).then_some(net.persistent_keepalive);

    let mut peers = Vec::new();
    match me.role {
        Role::Spoke => {
            for hub in model.region_hubs(&region.name) {
                let mut allowed = own_prefixes(hub);
                if primary.is_some_and(|p| p.name == hub.name) {
                    allowed.extend(routed_prefixes(net));
                }
                peers.extend(peer(hub, allowed, keepalive));
            }
            if region.mesh {
                let others = model
                    .region_sites(&region.name)
                    .filter(|t| t.role == Role::Spoke && t.is_active() && t.name != me.name);
                for t in others {
                    peers.extend(peer(t, own_prefixes(t), keepalive));
                }
            }
        }
        Role::Hub => {
            let i_am_primary = primary.is_some_and(|p| p.name == me.name);
            for t in model.region_sites(&region.name) {
                if t.name == me.name || !t.is_active() {
                    continue;
                }
                let mut allowed = own_prefixes(t);
                if !i_am_primary && primary.is_some_and(|p| p.name == t.name) {
                    allowed.extend(routed_prefixes(net));
                }
                // Hubs keep their links to each other warm; a hub never
                // needs to keep a spoke's NAT binding open (the spoke does).
                let ka = if t.role == Role::Hub { keepalive } else { None };
                peers.extend(peer(t, allowed, ka));
            }
            if i_am_primary {
                for other in model.regions.values().filter(|r| r.name != region.name) {
                    if let Some(p) = model.region_hubs(&other.name).next() {
                        peers.extend(peer(p, region_prefixes(model, other, p), keepalive));
                    }
                }
            }
        }
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));

    let all_allowed = peers.iter().flat_map(|p| p.allowed_ips.iter().copied());
    let routes = routes_for(all_allowed, &me.addresses(), &me.lan_prefixes);

    Some(SiteConfig {
        revision: me.revision,
        site: me.name.clone(),
        region: me.region.clone(),
        role: me.role,
        interface: interface(me, net),
        peers,
        routes,
    })
}

/// A site's own interface settings: its addresses, the port of its own
/// endpoint (or the default), the MTU.
pub(crate) fn interface(me: &Site, net: &NetworkSettings) -> InterfaceConfig {
    InterfaceConfig {
        addresses: me.addresses(),
        listen_port: me.endpoint.map_or(net.listen_port, |e| e.addr().port()),
        mtu: net.mtu,
    }
}

/// The overlay prefixes and the configured site-LAN supernets.
pub(crate) fn routed_prefixes(net: &NetworkSettings) -> BTreeSet<IpNet> {
    let mut r = net.routed_prefixes.clone();
    r.insert(IpNet::V4(net.overlay_v4));
    r.extend(net.overlay_v6.map(IpNet::V6));
    r
}

/// A site's own overlay host prefixes and LANs.
pub(crate) fn own_prefixes(s: &Site) -> BTreeSet<IpNet> {
    let mut p = s.addresses();
    p.extend(s.lan_prefixes.iter().copied());
    p
}

/// What another region's primary hub carries in the hub mesh: the region's
/// blocks, the LANs of its active sites, and the hub's own addresses. The
/// addresses are redundant inside the block (and dropped from the routes),
/// but they name the peer's own overlay address, which the agent's link
/// probes need as their target.
pub(crate) fn region_prefixes(model: &Model, region: &Region, primary: &Site) -> BTreeSet<IpNet> {
    let mut p = BTreeSet::from([IpNet::V4(region.ipv4_block)]);
    p.extend(region.ipv6_block.map(IpNet::V6));
    p.extend(model.region_lans(&region.name).copied());
    p.extend(primary.addresses());
    p
}

/// A peer entry for an active site; `None` only if the site has no key,
/// which `is_active` already rules out.
fn peer(
    s: &Site,
    allowed_ips: BTreeSet<IpNet>,
    persistent_keepalive: Option<u16>,
) -> Option<PeerConfig> {
    Some(PeerConfig {
        name: s.name.clone(),
        region: s.region.clone(),
        role: s.role,
        public_key: s.public_key?,
        endpoint: s.endpoint,
        allowed_ips,
        persistent_keepalive,
    })
}

/// The minimal cover of the peers' AllowedIPs, without the site's own
/// addresses and without anything equal to or inside one of its own LANs (a
/// supernet that contains a LAN stays: the LAN's connected route is more
/// specific).
pub(crate) fn routes_for(
    allowed: impl IntoIterator<Item = IpNet>,
    own_addresses: &BTreeSet<IpNet>,
    own_lans: &BTreeSet<IpNet>,
) -> BTreeSet<IpNet> {
    let candidates: BTreeSet<IpNet> = allowed
        .into_iter()
        .map(|p| p.trunc())
        .filter(|p| !own_addresses.contains(p) && !own_lans.iter().any(|lan| lan.contains(p)))
        .collect();
    // In `IpNet` order a supernet sorts before everything inside it, and
    // prefixes either nest or are disjoint; so a prefix is covered exactly
    // when the last prefix kept contains it.
    let mut routes = BTreeSet::new();
    let mut last: Option<IpNet> = None;
    for p in candidates {
        if last.is_some_and(|l| l.contains(&p)) {
            continue;
        }
        routes.insert(p);
        last = Some(p);
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<IpNet> {
        items.iter().map(|s| s.parse().expect("prefix")).collect()
    }

    #[test]
    fn routes_are_the_minimal_cover() {
        let allowed = set(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.200.0.0/24",
            "100.64.0.0/10",
            "100.64.0.5/32",
            "172.16.0.0/24",
            "172.16.1.0/24",
            "fd7a:6e65::/48",
            "fd7a:6e65::5/128",
            "fd7b::/64",
        ]);
        let routes = routes_for(allowed, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(
            routes,
            set(&[
                "10.0.0.0/8",
                "100.64.0.0/10",
                "172.16.0.0/24",
                "172.16.1.0/24",
                "fd7a:6e65::/48",
                "fd7b::/64"
            ])
        );
    }

    #[test]
    fn routes_skip_own_addresses_and_what_lies_in_own_lans_but_keep_supernets() {
        let allowed = set(&[
            "10.0.0.0/8",
            "10.1.0.0/24",
            "10.1.0.128/25",
            "192.168.7.0/24",
            "100.64.0.1/32",
        ]);
        let own_addresses = set(&["100.64.0.1/32"]);
        let own_lans = set(&["10.1.0.0/24", "192.168.7.0/24"]);
        let routes = routes_for(allowed, &own_addresses, &own_lans);
        assert_eq!(routes, set(&["10.0.0.0/8"]));
    }
}
