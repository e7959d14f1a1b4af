//! What `wardnet-agent status` shows, and the agent's local HTTP endpoint
//! that serves it with `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use wardnet_common::{Name, Role};

use crate::device_snapshot::DeviceSnapshot;
use crate::health::{link_state, LinkState, ProbeView};

/// What status says of a revoked site, and what to do about it.
pub(crate) const REVOKED_HELP: &str = "this site was revoked at the controller: its tunnels are down. To bring it back, get a new enrolment token from the NOC, run `wardnet-agent enroll --force --token ...`, then restart the agent";

/// The agent's view of itself, as JSON on `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    pub site: Name,
    pub region: Name,
    pub role: Role,
    pub interface: String,
    pub listen_port: u16,
    /// Revision of the config the data plane runs (0: none yet).
    pub applied_revision: u64,
    /// Where the running config came from: `controller` or `cache`.
    pub config_source: String,
    pub controller_url: String,
    pub controller_reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_error: Option<String>,
    /// Unix time of the last successful exchange with the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<i64>,
    /// The controller refused this site's credential: it was revoked.
    #[serde(default)]
    pub revoked: bool,
    /// Why the last config could not be applied (what ran before runs on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    pub peers: Vec<PeerStatus>,
    /// Failover groups (the hubs of a region with more than one) and the
    /// hub that carries each now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<crate::failover::GroupStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerStatus {
    pub name: Name,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the last completed handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_age_seconds: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Smoothed round-trip time of the probes through the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_seconds: Option<f64>,
    /// Probes lost over the recent window (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_ratio: Option<f64>,
    /// Whether the peer is probed (false: no overlay address to probe, or
    /// the probe socket could not be opened; up rests on the handshake).
    #[serde(default)]
    pub probed: bool,
    /// `up`, `down`, or `unknown` (no handshake since the agent started).
    pub state: LinkState,
    /// `state == up`, for scripts written before `state`.
    pub up: bool,
}

/// The peers of a snapshot with their probe health (`probe` finds a
/// peer's probe view by name); the state follows [`crate::health::link_state`].
pub(crate) fn peer_statuses(
    snap: &DeviceSnapshot,
    now: SystemTime,
    probe: impl Fn(&Name) -> Option<ProbeView>,
) -> Vec<PeerStatus> {
    let mut peers: Vec<PeerStatus> = snap
        .peers
        .iter()
        .map(|p| {
            // A handshake stamped in the future (clock step) counts as now.
            let age = p
                .last_handshake
                .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO));
            let v = probe(&p.name);
            let probe_ok = v.as_ref().and_then(|v| v.probe_ok);
            let state = link_state(age, probe_ok);
            PeerStatus {
                name: p.name.clone(),
                public_key: p.public_key.to_string(),
                endpoint: p.endpoint,
                handshake_age_seconds: age.map(|a| a.as_secs()),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rtt_seconds: v.as_ref().and_then(|v| v.srtt).map(|d| d.as_secs_f64()),
                loss_ratio: v.as_ref().and_then(|v| v.loss_ratio),
                probed: probe_ok.is_some(),
                state,
                up: state == LinkState::Up,
            }
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers
}

/// Human form of a byte count.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Human form of a round-trip time (`not probed` when the peer is not).
pub(crate) fn rtt(secs: Option<f64>, probed: bool) -> String {
    match secs {
        _ if !probed => "not probed".into(),
        None => "-".into(),
        Some(s) if s < 0.01 => format!("{:.2} ms", s * 1000.0),
        Some(s) => format!("{:.1} ms", s * 1000.0),
    }
}

/// Human form of a loss ratio.
pub(crate) fn loss(ratio: Option<f64>, probed: bool) -> String {
    match ratio {
        _ if !probed => "-".into(),
        None => "-".into(),
        Some(r) => format!("{:.0}%", r * 100.0),
    }
}

/// Human form of an age in seconds.
pub(crate) fn age(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7200 => format!("{}m ago", s / 60),
        Some(s) => format!("{}h ago", s / 3600),
    }
}

/// The table `wardnet-agent status` prints.
pub(crate) fn render(s: &AgentStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "site {} ({}, region {}) on {} port {}\n",
        s.site, s.role, s.region, s.interface, s.listen_port
    ));
    out.push_str(&format!(
        "config revision {} (from {})\n",
        s.applied_revision, s.config_source
    ));
    if s.revoked {
        out.push_str("REVOKED: ");
        out.push_str(REVOKED_HELP);
        out.push_str("\n\n");
        return out;
    }
    if let Some(e) = &s.apply_error {
        out.push_str(&format!(
            "the last config could not be applied ({e}); the one before runs, and the agent retries\n"
        ));
    }
    out.push_str(&format!(
        "controller {}: {}{}\n\n",
        s.controller_url,
        if s.controller_reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        },
        s.controller_error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    ));
    let mut rows = vec![[
        "PEER".to_owned(),
        "STATE".into(),
        "ENDPOINT".into(),
        "HANDSHAKE".into(),
        "RTT".into(),
        "LOSS".into(),
        "RECEIVED".into(),
        "SENT".into(),
    ]];
    for p in &s.peers {
        rows.push([
            p.name.to_string(),
            p.state.as_str().into(),
            p.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            age(p.handshake_age_seconds),
            rtt(p.rtt_seconds, p.probed),
            loss(p.loss_ratio, p.probed),
            bytes(p.rx_bytes),
            bytes(p.tx_bytes),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if s.peers.is_empty() {
        out.push_str("(no peers)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(age(None), "never");
        assert_eq!(age(Some(5)), "5s ago");
        assert_eq!(age(Some(600)), "10m ago");
        assert_eq!(rtt(Some(0.0234), true), "23.4 ms");
        assert_eq!(rtt(Some(0.0005), true), "0.50 ms");
        assert_eq!(rtt(None, false), "not probed");
        assert_eq!(loss(Some(0.2), true), "20%");
    }

    fn snap() -> DeviceSnapshot {
        let key = wardnet_common::PublicKey::from_bytes([7; 32]);
        DeviceSnapshot {
            listen_port: 51820,
            peers: vec![crate::device_snapshot::PeerSnapshot {
                name: "hub".parse().expect("name"),
                public_key: key,
                endpoint: None,
                allowed_ips: Default::default(),
                persistent_keepalive: None,
                last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1000)),
                rx_bytes: 10,
                tx_bytes: 20,
                policy_denied: 0,
            }],
            counters: Default::default(),
            policy: Default::default(),
        }
    }

    #[test]
    fn up_needs_a_fresh_handshake_and_probe_success() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1030);
        let view = |ok: Option<bool>| {
            move |n: &Name| {
                Some(ProbeView {
                    name: n.clone(),
                    region: "north".parse().expect("name"),
                    role: Role::Hub,
                    address: None,
                    sent_total: 4,
                    lost_total: 1,
                    last_rtt: Some(Duration::from_millis(20)),
                    srtt: Some(Duration::from_millis(20)),
                    loss_ratio: Some(0.25),
                    probe_ok: ok,
                })
            }
        };
        let p = &peer_statuses(&snap(), now, view(Some(true)))[0];
        assert!(p.up && p.probed);
        assert_eq!(p.handshake_age_seconds, Some(30));
        assert_eq!(p.rtt_seconds, Some(0.02));
        assert_eq!(p.loss_ratio, Some(0.25));
        assert!(!peer_statuses(&snap(), now, view(Some(false)))[0].up);
        let p = &peer_statuses(&snap(), now, |_| None)[0];
        assert!(p.up && !p.probed, "unprobed: the handshake decides");
        let late = SystemTime::UNIX_EPOCH + Duration::from_secs(1180);
        let p = &peer_statuses(&snap(), late, view(Some(true)))[0];
        assert_eq!(p.state, LinkState::Down, "the session lapsed");
        assert!(!p.up);
    }

    #[test]
    fn never_handshaken_is_unknown_not_down() {
        let mut s = snap();
        s.peers[0].last_handshake = None;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(5000);
        let p = &peer_statuses(&s, now, |_| None)[0];
        assert_eq!(p.state, LinkState::Unknown);
        assert!(!p.up);
    }
}
