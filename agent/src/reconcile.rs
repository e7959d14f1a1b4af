//! The reconciler: a pure function from (desired config, what is applied) to
//! the operations that turn one into the other. No I/O; the caller applies
//! the plan (peer ops to the data plane, addresses and routes via netlink)
//! and then records `applied.after(&plan)`.
//!
//! Rule (docs/design.md): what did not change gets no operation at all, so its
//! session and counters survive; a peer whose key stays is updated in place.

use std::collections::{BTreeMap, BTreeSet};
use wardnet_common::filter::SiteFilter;

use ipnet::IpNet;
use wardnet_common::{PeerConfig, PublicKey, SiteConfig};

/// One change to the data plane's peer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOp {
    /// A peer that is no longer wanted (or whose key changed).
    RemovePeer(PublicKey),
    /// Same key, other settings: applied in place (session and counters
    /// kept). Carries the full new config; the data plane applies its name,
    /// endpoint (only if the configured endpoint changed, so roaming is not
    /// undone), AllowedIPs and persistent keepalive.
    UpdatePeer(PeerConfig),
    AddPeer(PeerConfig),
}

impl PeerOp {
    pub fn public_key(&self) -> PublicKey {
        match self {
            PeerOp::RemovePeer(k) => *k,
            PeerOp::UpdatePeer(c) | PeerOp::AddPeer(c) => c.public_key,
        }
    }
}

/// What is currently applied on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub peers: BTreeMap<PublicKey, PeerConfig>,
    pub addresses: BTreeSet<IpNet>,
    pub routes: BTreeSet<IpNet>,
    /// `None` until the interface has been set up once.
    pub mtu: Option<u16>,
    pub listen_port: Option<u16>,
    /// The data plane's policy filter; `None` until set once.
    pub filter: Option<Option<SiteFilter>>,
}

/// The operations that turn `Applied` into the desired config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Ordered: every `RemovePeer`, then every `UpdatePeer`, then every
    /// `AddPeer`, so an AllowedIP moving from one peer to another is released
    /// before it is claimed.
    pub peer_ops: Vec<PeerOp>,
    pub addresses_to_add: BTreeSet<IpNet>,
    pub addresses_to_remove: BTreeSet<IpNet>,
    pub routes_to_add: BTreeSet<IpNet>,
    pub routes_to_remove: BTreeSet<IpNet>,
    /// `Some(port)` when the UDP socket must be rebound.
    pub listen_port: Option<u16>,
    /// `Some(mtu)` when the interface MTU must be set.
    pub mtu: Option<u16>,
    /// `Some(filter)` when the data plane's filter must be replaced
    /// (`Some(None)`: no filter).
    pub filter: Option<Option<SiteFilter>>,
}

impl Plan {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self == &Plan::default()
    }
}

/// Computes what to do to go from `applied` to `desired`.
pub fn plan(desired: &SiteConfig, applied: &Applied) -> Plan {
    // Duplicate keys in a config are a controller bug; the last entry wins,
    // as it would with `wg setconf`.
    let wanted: BTreeMap<PublicKey, &PeerConfig> =
        desired.peers.iter().map(|p| (p.public_key, p)).collect();

    let mut removes = Vec::new();
    let mut updates = Vec::new();
    let mut adds = Vec::new();
    for key in applied.peers.keys() {
        if !wanted.contains_key(key) {
            removes.push(PeerOp::RemovePeer(*key));
        }
    }
    for (key, want) in &wanted {
        match applied.peers.get(key) {
            None => adds.push(PeerOp::AddPeer((*want).clone())),
            Some(have) if have != *want => updates.push(PeerOp::UpdatePeer((*want).clone())),
            Some(_) => {}
        }
    }

    let mut peer_ops = removes;
    peer_ops.extend(updates);
    peer_ops.extend(adds);

    let want_addrs = &desired.interface.addresses;
    let want_routes = &desired.routes;
    let iface = &desired.interface;
    Plan {
        peer_ops,
        addresses_to_add: want_addrs.difference(&applied.addresses).copied().collect(),
        addresses_to_remove: applied.addresses.difference(want_addrs).copied().collect(),
        routes_to_add: want_routes.difference(&applied.routes).copied().collect(),
        routes_to_remove: applied.routes.difference(want_routes).copied().collect(),
        listen_port: (applied.listen_port != Some(iface.listen_port)).then_some(iface.listen_port),
        mtu: (applied.mtu != Some(iface.mtu)).then_some(iface.mtu),
        filter: (applied.filter.as_ref() != Some(&desired.filter)).then(|| desired.filter.clone()),
    }
}

impl Applied {
    /// What is applied once `plan` has been applied in full.
    pub fn after(&self, plan: &Plan) -> Applied {
        let mut next = self.clone();
        for op in &plan.peer_ops {
            match op {
                PeerOp::RemovePeer(k) => {
                    next.peers.remove(k);
                }
                PeerOp::UpdatePeer(c) | PeerOp::AddPeer(c) => {
                    next.peers.insert(c.public_key, c.clone());
                }
            }
        }
        for a in &plan.addresses_to_remove {
            next.addresses.remove(a);
        }
        next.addresses.extend(plan.addresses_to_add.iter().copied());
        for r in &plan.routes_to_remove {
            next.routes.remove(r);
        }
        next.routes.extend(plan.routes_to_add.iter().copied());
        if let Some(p) = plan.listen_port {
            next.listen_port = Some(p);
        }
        if let Some(m) = plan.mtu {
            next.mtu = Some(m);
        }
        if let Some(f) = &plan.filter {
            next.filter = Some(f.clone());
        }
        next
    }

    /// The record of a config applied in full.
    pub fn from_config(c: &SiteConfig) -> Applied {
        Applied {
            peers: c.peers.iter().map(|p| (p.public_key, p.clone())).collect(),
            addresses: c.interface.addresses.clone(),
            routes: c.routes.clone(),
            mtu: Some(c.interface.mtu),
            listen_port: Some(c.interface.listen_port),
            filter: Some(c.filter.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use wardnet_common::wire::InterfaceConfig;
    use wardnet_common::{Endpoint, Name, Role};

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }
    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }
    fn name(s: &str) -> Name {
        s.parse().expect("test name")
    }
    fn peer(n: u8) -> PeerConfig {
        PeerConfig {
            name: name(&format!("site-{n}")),
            region: name("north"),
            role: Role::Spoke,
            public_key: key(n),
            endpoint: Some(format!("198.51.100.{n}:51820").parse().expect("endpoint")),
            allowed_ips: [net(&format!("100.64.0.{n}/32"))].into(),
            persistent_keepalive: None,
        }
    }
    fn config(peers: Vec<PeerConfig>) -> SiteConfig {
        SiteConfig {
            revision: 1,
            site: name("gp-leeds-1"),
            region: name("north"),
            role: Role::Spoke,
            interface: InterfaceConfig {
                addresses: [net("100.64.0.100/32")].into(),
                listen_port: 51820,
                mtu: 1420,
            },
            peers,
            routes: [net("100.64.0.0/10")].into(),
            failover: Vec::new(),
            filter: None,
        }
    }

    #[test]
    fn unchanged_config_gives_an_empty_plan() {
        let c = config(vec![peer(1), peer(2)]);
        let p = plan(&c, &Applied::from_config(&c));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn first_apply_sets_everything() {
        let c = config(vec![peer(1)]);
        let p = plan(&c, &Applied::default());
        assert_eq!(p.peer_ops, vec![PeerOp::AddPeer(peer(1))]);
        assert_eq!(p.listen_port, Some(51820));
        assert_eq!(p.mtu, Some(1420));
        assert_eq!(p.addresses_to_add, [net("100.64.0.100/32")].into());
        assert_eq!(Applied::default().after(&p), Applied::from_config(&c));
    }

    #[test]
    fn endpoint_change_is_one_update() {
        let old = config(vec![peer(1), peer(2)]);
        let mut p2 = peer(2);
        p2.endpoint = Some("203.0.113.2:51820".parse::<Endpoint>().expect("endpoint"));
        let new = config(vec![peer(1), p2.clone()]);
        let p = plan(&new, &Applied::from_config(&old));
        assert_eq!(p.peer_ops, vec![PeerOp::UpdatePeer(p2)]);
        assert_eq!(p.listen_port, None);
        assert_eq!(p.mtu, None);
    }

    #[test]
    fn allowed_ips_and_keepalive_changes_are_updates() {
        let old = config(vec![peer(1)]);
        let mut p1 = peer(1);
        p1.allowed_ips.insert(net("10.1.0.0/16"));
        p1.persistent_keepalive = Some(25);
        let p = plan(&config(vec![p1.clone()]), &Applied::from_config(&old));
        assert_eq!(p.peer_ops, vec![PeerOp::UpdatePeer(p1)]);
    }

    #[test]
    fn key_change_is_remove_then_add_and_removes_come_first() {
        let old = config(vec![peer(1), peer(2)]);
        let mut rekeyed = peer(2);
        rekeyed.public_key = key(9);
        let mut moved = peer(1);
        moved.allowed_ips = peer(3).allowed_ips;
        let new = config(vec![moved.clone(), rekeyed.clone(), peer(3)]);
        let p = plan(&new, &Applied::from_config(&old));
        assert_eq!(
            p.peer_ops,
            vec![
                PeerOp::RemovePeer(key(2)),
                PeerOp::UpdatePeer(moved),
                PeerOp::AddPeer(peer(3)),
                PeerOp::AddPeer(rekeyed),
            ]
        );
    }

    #[test]
    fn removed_peer_is_one_remove() {
        let old = config(vec![peer(1), peer(2)]);
        let p = plan(&config(vec![peer(1)]), &Applied::from_config(&old));
        assert_eq!(p.peer_ops, vec![PeerOp::RemovePeer(key(2))]);
    }

    #[test]
    fn addresses_routes_mtu_and_port_are_set_differences() {
        let old = config(vec![]);
        let mut new = config(vec![]);
        new.interface.addresses = [net("100.64.0.100/32"), net("fd7a::100/128")].into();
        new.routes = [net("10.0.0.0/8")].into();
        new.interface.mtu = 1380;
        new.interface.listen_port = 51821;
        let p = plan(&new, &Applied::from_config(&old));
        assert!(p.peer_ops.is_empty());
        assert_eq!(p.addresses_to_add, [net("fd7a::100/128")].into());
        assert!(p.addresses_to_remove.is_empty());
        assert_eq!(p.routes_to_add, [net("10.0.0.0/8")].into());
        assert_eq!(p.routes_to_remove, [net("100.64.0.0/10")].into());
        assert_eq!(p.mtu, Some(1380));
        assert_eq!(p.listen_port, Some(51821));
    }

    fn arb_peer() -> impl Strategy<Value = PeerConfig> {
        (
            0u8..6,
            0u8..3,
            proptest::option::of(1u8..4),
            proptest::collection::btree_set(0u8..8, 0..3),
            proptest::option::of(prop_oneof![Just(0u16), Just(25u16)]),
        )
            .prop_map(|(k, n, ep, ips, ka)| {
                let mut p = peer(k);
                p.name = name(&format!("site-{n}"));
                p.endpoint = ep.map(|e| format!("198.51.100.{e}:51820").parse().expect("endpoint"));
                p.allowed_ips = ips
                    .into_iter()
                    .map(|i| net(&format!("100.64.1.{i}/32")))
                    .collect();
                p.persistent_keepalive = ka;
                p
            })
    }

    fn arb_config() -> impl Strategy<Value = SiteConfig> {
        (
            proptest::collection::vec(arb_peer(), 0..6),
            proptest::collection::btree_set(0u8..6, 0..4),
            proptest::collection::btree_set(0u8..6, 0..4),
            prop_oneof![Just(1420u16), Just(1380u16)],
            prop_oneof![Just(51820u16), Just(51821u16)],
        )
            .prop_map(|(peers, addrs, routes, mtu, port)| {
                // Keys are unique in a rendered config.
                let peers: BTreeMap<PublicKey, PeerConfig> =
                    peers.into_iter().map(|p| (p.public_key, p)).collect();
                let mut c = config(peers.into_values().collect());
                c.interface.addresses = addrs
                    .iter()
                    .map(|a| net(&format!("100.64.2.{a}/32")))
                    .collect();
                c.routes = routes
                    .iter()
                    .map(|r| net(&format!("10.{r}.0.0/16")))
                    .collect();
                c.interface.mtu = mtu;
                c.interface.listen_port = port;
                c
            })
    }

    proptest! {
        #[test]
        fn applying_the_plan_yields_the_desired_config(a in arb_config(), b in arb_config()) {
            let applied = Applied::from_config(&a);
            let p = plan(&b, &applied);
            prop_assert_eq!(applied.after(&p), Applied::from_config(&b));
            // Unchanged peers get no operation.
            for op in &p.peer_ops {
                let k = op.public_key();
                let before = a.peers.iter().find(|x| x.public_key == k);
                let after = b.peers.iter().find(|x| x.public_key == k);
                prop_assert_ne!(before, after);
            }
            // Removes, then updates, then adds.
            let rank = |op: &PeerOp| match op {
                PeerOp::RemovePeer(_) => 0,
                PeerOp::UpdatePeer(_) => 1,
                PeerOp::AddPeer(_) => 2,
            };
            prop_assert!(p.peer_ops.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])));
            // And a second plan from there is empty.
            prop_assert!(plan(&b, &applied.after(&p)).is_empty());
        }
    }
}
