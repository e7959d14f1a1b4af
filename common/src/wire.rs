//! The `/v1` wire protocol between controller, agents and the admin CLI.
//!
//! Every request type rejects unknown fields, so a typo in a client is an
//! error that names the field instead of a silently ignored setting. Tests at
//! the bottom parse literal JSON: a change to the wire is a visible change to
//! those tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Endpoint, Name, PublicKey};

pub use crate::time::UnixTime;

/// A site's role in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Hub,
    Spoke,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hub => "hub",
            Role::Spoke => "spoke",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hub" => Ok(Role::Hub),
            "spoke" => Ok(Role::Spoke),
            other => Err(format!(
                "invalid role {other:?}: expected \"hub\" or \"spoke\""
            )),
        }
    }
}

/// A site's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteState {
    /// Created, waiting for its agent to enrol.
    Pending,
    /// Has a public key and takes part in the overlay.
    Active,
    /// Removed from every peer's config; its addresses stay reserved until deleted.
    Revoked,
}

impl SiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::Pending => "pending",
            SiteState::Active => "active",
            SiteState::Revoked => "revoked",
        }
    }
}

impl fmt::Display for SiteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SiteState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(SiteState::Pending),
            "active" => Ok(SiteState::Active),
            "revoked" => Ok(SiteState::Revoked),
            other => Err(format!("invalid state {other:?}")),
        }
    }
}

// ---------------------------------------------------------------------------
// What an agent runs: the rendered per-site config.
// ---------------------------------------------------------------------------

/// The complete WireGuard and routing config of one site, rendered by the
/// controller. Peers are sorted by name and all sets are ordered, so two
/// renders of the same model are byte-identical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Per-site revision; grows whenever this config changes.
    pub revision: u64,
    pub site: Name,
    pub region: Name,
    pub role: Role,
    pub interface: InterfaceConfig,
    pub peers: Vec<PeerConfig>,
    /// Prefixes to route through the WireGuard interface.
    pub routes: BTreeSet<IpNet>,
    /// Peers that stand in for each other: the hubs of a region with more
    /// than one. Left out when there are none, so a config in a region
    /// with one hub reads as it always did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<FailoverGroup>,
    /// What the site's data plane admits from its tunnels (the policy
    /// between organisations); left out when the site is not filtered (it
    /// belongs to the `default` organisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::SiteFilter>,
}

/// The hubs of one region, as one site sees them. The first is the one
/// the controller assigns (rendezvous hashing spreads sites over the
/// region's hubs); its peer entry carries the group's prefixes (every
/// prefix of its entry but its own host addresses). The agent moves those
/// prefixes to another hub of the group when the first stops answering,
/// and back when it has answered again for long enough.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverGroup {
    pub region: Name,
    /// Peer names, in order of preference (at least two).
    pub hubs: Vec<Name>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// The site's overlay addresses, as host prefixes (/32, /128).
    pub addresses: BTreeSet<IpNet>,
    pub listen_port: u16,
    pub mtu: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer site's name (metrics and `status` label peers by it).
    pub name: Name,
    pub region: Name,
    pub role: Role,
    pub public_key: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    pub allowed_ips: BTreeSet<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

// ---------------------------------------------------------------------------
// Agent <-> controller.
// ---------------------------------------------------------------------------

/// `POST /v1/enroll` (no auth header: the token is the credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    pub public_key: PublicKey,
    /// The site's reachable underlay endpoint, if the admin passed one to
    /// the agent; overrides what `sites add` recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    pub site: Name,
    pub region: Name,
    pub role: Role,
    pub addresses: BTreeSet<IpNet>,
    /// Bearer credential for `/v1/agent/*`; shown once, stored hashed.
    pub credential: String,
}

/// `GET /v1/agent/config?revision=N&wait=SECONDS&deltas=true`: answers at
/// once when the site's revision is newer than `revision`, else holds the
/// request until it is or `wait` passes (then 204 No Content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigQuery {
    #[serde(default)]
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
    /// Answer with a [`crate::delta::ConfigUpdate`] (steps since `revision`,
    /// or the full config) instead of a bare [`SiteConfig`]. Agents from
    /// before deltas leave it out and get full configs.
    #[serde(default)]
    pub deltas: bool,
}

/// `POST /v1/agent/report`: what the agent has applied, and a health summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    pub applied_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSummary>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A small per-sync health summary (never per-packet data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthSummary {
    pub peers_up: u32,
    /// Peers with no handshake since the agent started: neither up nor down.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub peers_unknown: u32,
    pub peers_total: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_rtt_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_loss_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_peer: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    /// The hub that carries this site's traffic now (sites in a region
    /// with more than one hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_hub: Option<Name>,
    /// Times this site moved its traffic away from a hub that stopped
    /// answering, since its agent started.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub failovers: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

// ---------------------------------------------------------------------------
// Admin API.
// ---------------------------------------------------------------------------

/// `POST /v1/regions`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegion {
    pub name: Name,
    /// Spokes of a mesh region also peer directly with each other.
    #[serde(default)]
    pub mesh: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionView {
    pub name: Name,
    pub mesh: bool,
    pub ipv4_block: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_block: Option<IpNet>,
    pub sites: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: UnixTime,
    /// The region's active hubs: health, and the spokes each carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hubs: Vec<RegionHub>,
}

/// One hub of a region, as `regions show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionHub {
    pub name: Name,
    /// Its agent reported within the online window.
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_up: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_total: Option<u32>,
    /// Spokes rendezvous hashing assigns to this hub.
    pub spokes_assigned: u64,
    /// Online spokes whose traffic goes through this hub now (as they
    /// report it; in a region with one hub, all its online spokes).
    pub spokes_carried: u64,
}

pub use crate::policy::DEFAULT_ORG;

/// `POST /v1/orgs` (a network-wide admin token only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub name: Name,
    /// Who the organisation is, for people (e.g. "Leeds Teaching Hospitals NHS Trust").
    #[serde(default)]
    pub description: String,
    /// Address space delegated to it: overlay blocks (inside a region's
    /// block), where its sites get their overlay addresses, and LAN space,
    /// where its own admins may give its sites LAN prefixes.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub delegated: BTreeSet<IpNet>,
}

/// `PATCH /v1/orgs/{name}` (a network-wide admin token only): what is
/// given is replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrg {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The whole delegated address space (an empty list takes it all
    /// back; sites keep the addresses and prefixes they have).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated: Option<BTreeSet<IpNet>>,
}

/// An organisation as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgView {
    pub name: Name,
    pub description: String,
    /// Its sites, any state.
    pub sites: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: UnixTime,
    /// Address space delegated to it (see [`CreateOrg`]).
    #[serde(default)]
    pub delegated: BTreeSet<IpNet>,
}

/// `POST /v1/sites`. Without `public_key` the site is pending and the
/// answer carries a one-time enrolment token; with it the site is an
/// agentless appliance, active at once, configured by `sites export`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSite {
    pub name: Name,
    pub region: Name,
    pub role: Role,
    /// The organisation the site belongs to; by default the admin token's
    /// own (an organisation's token), else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<Name>,
    #[serde(default)]
    pub lan_prefixes: BTreeSet<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKey>,
}

/// `PATCH /v1/sites/{name}`: change what may change without re-enrolling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateSite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan_prefixes: Option<BTreeSet<IpNet>>,
    /// `Some(None)` clears the endpoint.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub endpoint: Option<Option<Endpoint>>,
}

/// `POST /v1/sites/{name}/renumber`: move a site into its organisation's
/// overlay block (`finish` false), or drop its old addresses once every
/// agent carrying it has the new ones (`finish` true).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RenumberSite {
    #[serde(default)]
    pub finish: bool,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteView {
    pub name: Name,
    pub region: Name,
    /// The organisation the site belongs to.
    pub org: Name,
    pub role: Role,
    pub state: SiteState,
    pub agentless: bool,
    pub lan_prefixes: BTreeSet<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKey>,
    pub addresses: BTreeSet<IpNet>,
    /// During `sites renumber`: the old addresses, still the site's (in
    /// `addresses` too) until the move is finished.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub former_addresses: BTreeSet<IpNet>,
    /// Current revision of the site's rendered config.
    pub revision: u64,
    /// The revision the agent last reported applied.
    pub applied_revision: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: UnixTime,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::rfc3339_opt"
    )]
    pub enrolled_at: Option<UnixTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::rfc3339_opt"
    )]
    pub last_seen: Option<UnixTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSummary>,
}

/// Answer to `POST /v1/sites` and `POST /v1/sites/{name}/token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCreated {
    pub site: SiteView,
    /// One-time enrolment token (absent for agentless sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::rfc3339_opt"
    )]
    pub token_expires_at: Option<UnixTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "crate::time::rfc3339")]
    pub at: UnixTime,
    /// Id of the admin token that made the change (`local` for the bootstrap command).
    pub actor: String,
    pub action: String,
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSummary {
    pub regions: u64,
    pub sites_pending: u64,
    pub sites_active: u64,
    pub sites_revoked: u64,
    pub hubs: u64,
    pub spokes: u64,
    pub agents_online: u64,
    pub configs_pending_delivery: u64,
    pub long_poll_waiters: u64,
}

/// Every non-2xx answer carries this body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable machine-readable kind: `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `conflict`, `payload_too_large`, `internal`.
    pub error: String,
    /// What went wrong and what to fix.
    pub message: String,
}

// ---------------------------------------------------------------------------
// Fleet health.
// ---------------------------------------------------------------------------

/// `GET /v1/health`: every site's liveness and last health summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetHealth {
    /// A site is online when its agent was last seen within this many seconds
    /// (two long-poll periods and a margin).
    pub online_window_seconds: u64,
    pub sites: Vec<SiteHealth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteHealth {
    pub name: Name,
    pub region: Name,
    pub role: Role,
    pub state: SiteState,
    pub agentless: bool,
    pub online: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::rfc3339_opt"
    )]
    pub last_seen: Option<UnixTime>,
    pub revision: u64,
    pub applied_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSummary>,
}

/// `GET /v1/prometheus/targets`: one Prometheus file_sd target group
/// (`[{"targets": ["host:port"], "labels": {...}}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSdGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn site_config_parses_from_literal_json() {
        let json = format!(
            r#"{{
              "revision": 7, "site": "gp-leeds-1", "region": "north", "role": "spoke",
              "interface": {{"addresses": ["100.64.0.2/32"], "listen_port": 51820, "mtu": 1420}},
              "peers": [{{"name": "hub-north", "region": "north", "role": "hub",
                          "public_key": "{KEY}", "endpoint": "198.51.100.1:51820",
                          "allowed_ips": ["100.64.0.0/10", "10.0.0.0/8"],
                          "persistent_keepalive": 25}}],
              "routes": ["10.0.0.0/8", "100.64.0.0/10"]
            }}"#
        );
        let c: SiteConfig = serde_json::from_str(&json).expect("valid config");
        assert_eq!(c.revision, 7);
        assert_eq!(c.peers[0].public_key.to_string(), KEY);
        assert_eq!(
            c.peers[0].endpoint.map(|e| e.to_string()).as_deref(),
            Some("198.51.100.1:51820")
        );
        assert_eq!(c.routes.len(), 2);
    }

    #[test]
    fn requests_refuse_unknown_fields_and_name_them() {
        let e = serde_json::from_str::<CreateRegion>(r#"{"name":"north","meshh":true}"#)
            .expect_err("unknown field");
        assert!(e.to_string().contains("meshh"), "{e}");
        let e = serde_json::from_str::<CreateSite>(
            r#"{"name":"Bad Name","region":"n","role":"spoke"}"#,
        )
        .expect_err("bad name");
        assert!(e.to_string().contains("invalid name"), "{e}");
    }

    #[test]
    fn update_site_distinguishes_absent_from_null_endpoint() {
        let u: UpdateSite = serde_json::from_str("{}").expect("empty");
        assert_eq!(u.endpoint, None);
        let u: UpdateSite = serde_json::from_str(r#"{"endpoint":null}"#).expect("null");
        assert_eq!(u.endpoint, Some(None));
        let u: UpdateSite =
            serde_json::from_str(r#"{"endpoint":"203.0.113.9:51820"}"#).expect("set");
        assert!(matches!(u.endpoint, Some(Some(_))));
    }

    #[test]
    fn enroll_request_literal() {
        let r: EnrollRequest =
            serde_json::from_str(&format!(r#"{{"token":"wne_x","public_key":"{KEY}"}}"#))
                .expect("valid");
        assert_eq!(r.endpoint, None);
    }

    #[test]
    fn file_sd_literal() {
        let json = r#"[{"targets": ["198.51.100.7:9586"],
                        "labels": {"site": "gp-a", "region": "north", "role": "spoke"}}]"#;
        let g: Vec<FileSdGroup> = serde_json::from_str(json).expect("file_sd");
        assert_eq!(g[0].targets, ["198.51.100.7:9586"]);
        assert_eq!(g[0].labels.get("site").map(String::as_str), Some("gp-a"));
    }

    #[test]
    fn fleet_health_literal() {
        let json = r#"{"online_window_seconds": 130, "sites": [
            {"name": "gp-a", "region": "north", "role": "spoke", "state": "active",
             "agentless": false, "online": true, "last_seen": "2026-11-18T11:06:40Z",
             "revision": 4, "applied_revision": 3,
             "health": {"peers_up": 1, "peers_unknown": 1, "peers_total": 3, "worst_rtt_seconds": 0.012,
                        "worst_loss_ratio": 0.25, "worst_peer": "hub-north",
                        "metrics_address": "198.51.100.7:9586"}}]}"#;
        let f: FleetHealth = serde_json::from_str(json).expect("fleet health");
        let h = f.sites[0].health.as_ref().expect("health");
        assert_eq!((h.peers_up, h.peers_unknown, h.peers_total), (1, 1, 3));
        assert_eq!(h.worst_peer.as_ref().map(|n| n.as_str()), Some("hub-north"));
    }
}
