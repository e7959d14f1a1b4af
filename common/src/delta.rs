//! Config deltas: what changed in a site's config between two revisions.
//!
//! An agent at revision N long-polls with `deltas=true` and gets either the
//! steps N→N+1→…→M (each one revision, prepared once by the controller) or,
//! when it is new or too far behind, the full config. A step applies only
//! to the revision it starts from; a step that does not chain is refused,
//! so the agent asks for a full config and can never end on a wrong one.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::filter::SiteFilter;
use crate::wire::{FailoverGroup, InterfaceConfig, PeerConfig, SiteConfig};
use crate::Name;

/// The answer to `GET /v1/agent/config?deltas=true` when something changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ConfigUpdate {
    /// The whole config (the agent is new, or too far behind for steps).
    Full { config: SiteConfig },
    /// One step per revision, in order, from the agent's revision on.
    Deltas { steps: Vec<ConfigDelta> },
}

/// One revision's change to a site's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigDelta {
    /// The revision this step applies to.
    pub from_revision: u64,
    /// The revision it produces.
    pub revision: u64,
    /// The new interface settings, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceConfig>,
    /// Peers that are gone.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub peers_removed: BTreeSet<Name>,
    /// Peers that are new or replaced whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_set: Vec<PeerConfig>,
    /// Peers that only gained or lost allowed IPs (a hub-mesh peer carries a
    /// region's LANs: one spoke's LAN changes one prefix, not the entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<AllowedIpsChange>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub routes_added: BTreeSet<IpNet>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub routes_removed: BTreeSet<IpNet>,
    /// The site's failover groups, whole, when they changed (`[]`: none
    /// any more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Vec<FailoverGroup>>,
    /// The site's filter, whole, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<SiteFilter>,
    /// The site is no longer filtered (it moved to the `default`
    /// organisation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub filter_removed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedIpsChange {
    pub name: Name,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub added: BTreeSet<IpNet>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed: BTreeSet<IpNet>,
}

/// Why a delta could not be applied; the agent then asks for a full config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta starts at revision {from}, but the config is at {have}")]
    DoesNotChain { have: u64, from: u64 },
    #[error("the delta changes allowed IPs of peer {0}, which the config does not have")]
    UnknownPeer(Name),
    #[error("the delta does not move the revision forward ({from} -> {to})")]
    NotForward { from: u64, to: u64 },
}

impl ConfigDelta {
    /// Whether the step changes nothing (then no revision is spent on it).
    pub fn is_empty(&self) -> bool {
        self.interface.is_none()
            && self.peers_removed.is_empty()
            && self.peers_set.is_empty()
            && self.allowed_ips.is_empty()
            && self.routes_added.is_empty()
            && self.routes_removed.is_empty()
            && self.failover.is_none()
            && self.filter.is_none()
            && !self.filter_removed
    }
}

impl SiteConfig {
    /// Apply one step, all or nothing: on error `self` is unchanged.
    pub fn apply_delta(&mut self, d: &ConfigDelta) -> Result<(), DeltaError> {
        if d.from_revision != self.revision {
            return Err(DeltaError::DoesNotChain {
                have: self.revision,
                from: d.from_revision,
            });
        }
        if d.revision <= d.from_revision {
            return Err(DeltaError::NotForward {
                from: d.from_revision,
                to: d.revision,
            });
        }
        let mut peers: std::collections::BTreeMap<Name, PeerConfig> =
            std::mem::take(&mut self.peers)
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect();
        let restore = |cfg: &mut SiteConfig,
                       peers: std::collections::BTreeMap<Name, PeerConfig>| {
            cfg.peers = peers.into_values().collect();
        };
        let before = peers.clone();
        for n in &d.peers_removed {
            peers.remove(n);
        }
        for p in &d.peers_set {
            peers.insert(p.name.clone(), p.clone());
        }
        for c in &d.allowed_ips {
            let Some(p) = peers.get_mut(&c.name) else {
                restore(self, before);
                return Err(DeltaError::UnknownPeer(c.name.clone()));
            };
            for r in &c.removed {
                p.allowed_ips.remove(r);
            }
            p.allowed_ips.extend(c.added.iter().copied());
        }
        restore(self, peers);
        for r in &d.routes_removed {
            self.routes.remove(r);
        }
        self.routes.extend(d.routes_added.iter().copied());
        if let Some(i) = &d.interface {
            self.interface = i.clone();
        }
        if let Some(f) = &d.failover {
            self.failover.clone_from(f);
        }
        if d.filter_removed {
            self.filter = None;
        }
        if let Some(f) = &d.filter {
            self.filter = Some(f.clone());
        }
        self.revision = d.revision;
        Ok(())
    }

    /// Apply a chain of steps, all or nothing.
    pub fn apply_deltas(&mut self, steps: &[ConfigDelta]) -> Result<(), DeltaError> {
        let mut next = self.clone();
        for s in steps {
            next.apply_delta(s)?;
        }
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SiteConfig {
        serde_json::from_str(
            r#"{
              "revision": 4,
              "site": "gp-leeds-12",
              "region": "north",
              "role": "spoke",
              "interface": {"addresses": ["100.64.0.12/32"], "listen_port": 51820, "mtu": 1420},
              "peers": [
                {"name": "hub-north", "region": "north", "role": "hub",
                 "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
                 "endpoint": "198.51.100.1:51820",
                 "allowed_ips": ["10.0.0.0/8", "100.64.0.0/10"], "persistent_keepalive": 25}
              ],
              "routes": ["10.0.0.0/8", "100.64.0.0/10"]
            }"#,
        )
        .expect("config")
    }

    /// The wire form, literally: a change here is a protocol change.
    #[test]
    fn deltas_parse_from_literal_json_and_apply() {
        let update: ConfigUpdate = serde_json::from_str(
            r#"{"kind": "deltas", "steps": [
                {"from_revision": 4, "revision": 5,
                 "peers_set": [{"name": "hub-north-b", "region": "north", "role": "hub",
                   "public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
                   "endpoint": "198.51.100.2:51820", "allowed_ips": ["100.64.0.2/32"]}],
                 "routes_added": ["100.64.0.2/32"]},
                {"from_revision": 5, "revision": 6,
                 "interface": {"addresses": ["100.64.0.12/32"], "listen_port": 51821, "mtu": 1380},
                 "peers_removed": ["hub-north-b"],
                 "allowed_ips": [{"name": "hub-north", "added": ["172.16.0.0/12"], "removed": ["10.0.0.0/8"]}],
                 "routes_added": ["172.16.0.0/12"],
                 "routes_removed": ["10.0.0.0/8", "100.64.0.2/32"]}
            ]}"#,
        )
        .expect("deltas");
        let ConfigUpdate::Deltas { steps } = update else {
            panic!("not deltas")
        };
        let mut cfg = base();
        cfg.apply_deltas(&steps).expect("chains");
        assert_eq!(cfg.revision, 6);
        assert_eq!(cfg.interface.mtu, 1380);
        assert_eq!(cfg.interface.listen_port, 51821);
        assert_eq!(cfg.peers.len(), 1);
        let ips: Vec<String> = cfg.peers[0]
            .allowed_ips
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(ips, ["100.64.0.0/10", "172.16.0.0/12"]);
        let routes: Vec<String> = cfg.routes.iter().map(|p| p.to_string()).collect();
        assert_eq!(routes, ["100.64.0.0/10", "172.16.0.0/12"]);
    }

    #[test]
    fn a_full_update_is_tagged_and_a_step_serialises_without_empty_parts() {
        let full = ConfigUpdate::Full { config: base() };
        let json = serde_json::to_value(&full).expect("json");
        assert_eq!(json["kind"], "full");
        assert_eq!(json["config"]["revision"], 4);
        let step = ConfigDelta {
            from_revision: 4,
            revision: 5,
            peers_removed: ["hub-north".parse().expect("name")].into(),
            ..ConfigDelta::default()
        };
        assert_eq!(
            serde_json::to_string(&step).expect("json"),
            r#"{"from_revision":4,"revision":5,"peers_removed":["hub-north"]}"#
        );
        let bad = serde_json::from_str::<ConfigUpdate>(r#"{"kind": "patch", "steps": []}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn a_step_that_does_not_chain_changes_nothing() {
        let mut cfg = base();
        let gap = ConfigDelta {
            from_revision: 3,
            revision: 5,
            peers_removed: ["hub-north".parse().expect("name")].into(),
            ..ConfigDelta::default()
        };
        assert_eq!(
            cfg.apply_delta(&gap),
            Err(DeltaError::DoesNotChain { have: 4, from: 3 })
        );
        assert_eq!(cfg, base());

        let ok = ConfigDelta {
            from_revision: 4,
            revision: 5,
            ..ConfigDelta::default()
        };
        let unknown = ConfigDelta {
            from_revision: 5,
            revision: 6,
            allowed_ips: vec![AllowedIpsChange {
                name: "nobody".parse().expect("name"),
                added: ["10.9.0.0/24".parse().expect("prefix")].into(),
                removed: BTreeSet::new(),
            }],
            ..ConfigDelta::default()
        };
        let err = cfg.apply_deltas(&[ok, unknown]).expect_err("unknown peer");
        assert!(matches!(err, DeltaError::UnknownPeer(_)));
        assert_eq!(cfg, base(), "a chain is applied all or nothing");
    }
}
