//! Per-site config rendering: a pure function from the model to the
//! WireGuard peers and routes one site should run (docs/design.md, "Topology
//! model").
//!
//! Only active sites appear as peers. Rendering one site reads only its
//! neighbourhood: its region and, for a hub, the other regions' hubs and
//! LANs (from the model's hub and per-region LAN indexes, so a hub costs
//! O(its region's sites + number of hubs), not O(network)).
//!
//! Who peers with whom (every relation is symmetric, or handshakes fail):
//! - a spoke peers with every active hub of its region. WireGuard forbids
//!   the same AllowedIP on two peers, so one hub's entry carries the
//!   network-wide routed prefixes: the hub rendezvous hashing assigns the
//!   spoke to, which spreads a region's spokes over its hubs. With two hubs
//!   or more the config names them as a failover group, and the agent moves
//!   the routed prefixes to another hub when its own stops answering;
//! - an agentless spoke (wg-quick, no agent to fail over) peers only with
//!   its assigned hub; the region's other hubs reach it through that hub;
//! - in a mesh region, spokes also peer with each other, where the policy
//!   lets them exchange anything (visibility);
//! - every hub peers with every other active site of its region (but the
//!   agentless spokes assigned to another hub);
//! - every hub peers with the hubs of the other regions (hub mesh). Of a
//!   region's hubs, the one rendezvous hashing assigns to this hub carries
//!   the region's blocks and its spokes' LANs, and the group fails over as
//!   a spoke's does.
//!
//! Any hub of a region may deliver traffic for a site it serves, so the
//! data plane accepts from one hub of a group what another hub of the same
//! group carries (docs/decisions.md, "Hub pairs").

use std::collections::BTreeSet;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use wardnet_common::wire::{FailoverGroup, InterfaceConfig, PeerConfig, Role, SiteConfig};
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
    let keepalive = (net.persistent_keepalive != 0).then_some(net.persistent_keepalive);

    let mut peers = Vec::new();
    match me.role {
        Role::Spoke => {
            let hubs = hub_order(model, &me.name, &region.name);
            for (i, hub) in hubs.iter().enumerate() {
                if me.agentless && i > 0 {
                    break;
                }
                let mut allowed = own_prefixes(hub);
                if i == 0 {
                    allowed.extend(routed_prefixes(net));
                }
                peers.extend(peer(hub, allowed, keepalive));
            }
            if region.mesh {
                // Only the spokes the policy lets it exchange anything with
                // (visibility): the others reach it through the hub, and
                // their traffic is filtered at its destination.
                let others = model.region_sites(&region.name).filter(|t| {
                    t.role == Role::Spoke
                        && t.is_active()
                        && t.name != me.name
                        && model.may_talk(me, t)
                });
                for t in others {
                    peers.extend(peer(t, own_prefixes(t), keepalive));
                }
            }
        }
        Role::Hub => {
            for t in model.region_sites(&region.name) {
                if t.name == me.name || !t.is_active() {
                    continue;
                }
                if t.role == Role::Spoke && t.agentless && !assigned_hub_is(model, t, &me.name) {
                    continue;
                }
                let mut allowed = own_prefixes(t);
                // Hubs keep their links to each other warm; a hub never
                // needs to keep a spoke's NAT binding open (the spoke does).
                let ka = if t.role == Role::Hub {
                    allowed.extend(agentless_behind(model, t));
                    keepalive
                } else {
                    None
                };
                peers.extend(peer(t, allowed, ka));
            }
            for other in model.regions.values().filter(|r| r.name != region.name) {
                let hubs = hub_order(model, &me.name, &other.name);
                for (i, h) in hubs.iter().enumerate() {
                    let allowed = mesh_prefixes(model, other, h, i == 0, hubs.len() > 1);
                    peers.extend(peer(h, allowed, keepalive));
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
        failover: failover_groups(model, me),
        filter: Some(model.filter(me)),
    })
}

/// The failover groups of `me`: a spoke with an agent, the hubs of its
/// region; a hub, the hubs of each other region; wherever there are two
/// or more.
pub(crate) fn failover_groups(model: &Model, me: &Site) -> Vec<FailoverGroup> {
    let group = |region: &Name| -> Option<FailoverGroup> {
        let hubs = hub_order(model, &me.name, region);
        (hubs.len() > 1).then(|| FailoverGroup {
            region: region.clone(),
            hubs: hubs.iter().map(|h| h.name.clone()).collect(),
        })
    };
    match me.role {
        Role::Spoke if me.agentless => Vec::new(),
        Role::Spoke => group(&me.region).into_iter().collect(),
        Role::Hub => model
            .regions
            .keys()
            .filter(|r| **r != me.region)
            .filter_map(group)
            .collect(),
    }
}

/// The active hubs of `region` in `viewer`'s order of preference:
/// rendezvous (highest random weight) hashing of the pair's names, so each
/// site gets its own order, the sites spread evenly over the hubs, and a
/// hub that comes or goes moves only the sites it wins or held.
pub fn hub_order<'m>(model: &'m Model, viewer: &Name, region: &Name) -> Vec<&'m Site> {
    let mut hubs: Vec<(u64, &Site)> = model
        .region_hubs(region)
        .map(|h| (rendezvous(viewer, &h.name), h))
        .collect();
    hubs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
    hubs.into_iter().map(|(_, h)| h).collect()
}

/// The weight of `hub` for `viewer`.
pub(crate) fn rendezvous(viewer: &Name, hub: &Name) -> u64 {
    let mut h = Sha256::new();
    h.update(viewer.as_str().as_bytes());
    h.update([0]);
    h.update(hub.as_str().as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Whether `hub` is the hub an agentless spoke is assigned to.
pub(crate) fn assigned_hub_is(model: &Model, spoke: &Site, hub: &Name) -> bool {
    hub_order(model, &spoke.name, &spoke.region)
        .first()
        .is_some_and(|h| h.name == *hub)
}

/// What the other hubs of its region reach through `hub`: the agentless
/// spokes assigned to it (none in a region with one hub).
pub(crate) fn agentless_behind(model: &Model, hub: &Site) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    if model.region_hubs(&hub.region).nth(1).is_none() {
        return out;
    }
    for s in model.region_sites(&hub.region) {
        if s.role == Role::Spoke
            && s.agentless
            && s.is_active()
            && assigned_hub_is(model, s, &hub.name)
        {
            out.extend(own_prefixes(s));
        }
    }
    out
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

/// What a hub of another region carries in the hub mesh: its own
/// addresses and LANs; and, for the hub of the region this hub is assigned
/// to (`carrier`), the region's blocks and its spokes' LANs. The addresses
/// are redundant inside the block (and dropped from the routes), but they
/// name the peer's own overlay address, which the agent's link probes need
/// as their target. With one hub (`!group`), the hub's own LANs are among
/// the region's LANs anyway.
pub(crate) fn mesh_prefixes(
    model: &Model,
    region: &Region,
    hub: &Site,
    carrier: bool,
    group: bool,
) -> BTreeSet<IpNet> {
    let mut p = own_prefixes(hub);
    if carrier {
        p.insert(IpNet::V4(region.ipv4_block));
        p.extend(region.ipv6_block.map(IpNet::V6));
        p.extend(
            model
                .region_lans(&region.name)
                .filter(|l| !group || !is_hub_lan(model, &region.name, l))
                .copied(),
        );
    }
    p
}

/// Whether `lan` is a LAN of an active hub of `region`.
pub(crate) fn is_hub_lan(model: &Model, region: &Name, lan: &IpNet) -> bool {
    model
        .region_hubs(region)
        .any(|h| h.lan_prefixes.contains(lan))
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
