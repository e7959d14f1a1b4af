//! What the data plane reports about itself: the seam between the data plane
//! (which owns the tunnels) and its readers (the `wg show` control socket,
//! `status`, metrics, the reconciler's view of what is applied).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use wardnet_common::{Name, PublicKey};

/// A point-in-time view of one WireGuard interface.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceSnapshot {
    pub listen_port: u16,
    /// Peers sorted by public key.
    pub peers: Vec<PeerSnapshot>,
    /// Interface-wide packet and handshake counters since the data plane started.
    pub counters: DeviceCounters,
    /// What the policy filter admitted and denied.
    pub policy: crate::dataplane::enforce::PolicyCounters,
}

/// Monotonic interface-wide counters (for metrics: `_total` counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Handshakes that established a session (as initiator or responder).
    pub handshakes_completed: u64,
    /// Handshake messages from a known peer that failed to verify or were stale.
    pub handshakes_failed: u64,
    /// Cookie replies sent: handshake messages answered, while under load,
    /// with a cookie to prove their source address before any DH is done.
    pub cookie_replies: u64,
    pub drops: DropCounters,
}

/// Packets dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// From the TUN: no peer's AllowedIPs cover the destination (or not an IP packet).
    pub no_route: u64,
    /// From the TUN: the peer has no endpoint to send to.
    pub no_endpoint: u64,
    /// From the network: not a WireGuard message (garbage, truncated).
    pub malformed: u64,
    /// From the network: failed decryption or authentication (wrong key,
    /// replay, no session for that index).
    pub decrypt: u64,
    /// From the network: a receiver index or initiator key we do not know.
    pub unknown_peer: u64,
    /// From the network: the inner source address is not in the sending
    /// peer's AllowedIPs.
    pub source_not_allowed: u64,
    /// From the network: handshake messages beyond what the agent takes
    /// while under load (its handshake queue full, or a source over its
    /// share even with a valid cookie).
    pub handshake_limited: u64,
    /// From the network: bulk data dropped because the receive queue kept
    /// datagrams waiting too long (CoDel), so TCP slows down before the
    /// queue adds milliseconds of delay for everyone.
    pub queue_delay: u64,
}

/// Each peer's name and last completed handshake: what the health summary
/// needs, without copying every peer's whole state (a hub asks often).
pub type Handshakes = Vec<(Name, Option<SystemTime>)>;

#[derive(Debug, Clone, PartialEq)]
pub struct PeerSnapshot {
    /// The peer's site name, from the controller's config.
    pub name: Name,
    pub public_key: PublicKey,
    /// Current endpoint: configured, or learned from the last authenticated packet.
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: BTreeSet<IpNet>,
    pub persistent_keepalive: Option<u16>,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Packets from this peer the policy filter dropped.
    pub policy_denied: u64,
}
