//! What `wardnet-agent status` shows, and the agent's local HTTP endpoint
//! that serves it with `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use wardnet_common::{Name, Role};

use crate::snapshot::DeviceSnapshot;

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
    pub peers: Vec<PeerStatus>,
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
    pub up: bool,
}

/// WireGuard renews a session every 120 s (REKEY_AFTER_TIME) and gives up
/// on one after 180 s (REJECT_AFTER_TIME): a handshake younger than that
/// means a live session.
pub const HANDSHAKE_FRESH: Duration = Duration::from_secs(180);

pub fn peer_statuses(snap: &DeviceSnapshot, now: SystemTime) -> Vec<PeerStatus> {
    let mut peers: Vec<PeerStatus> = snap
        .peers
        .iter()
        .map(|p| {
            let age = p.last_handshake.and_then(|t| now.duration_since(t).ok());
            PeerStatus {
                name: p.name.clone(),
                public_key: p.public_key.to_string(),
                endpoint: p.endpoint,
                handshake_age_seconds: age.map(|a| a.as_secs()),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                up: age.is_some_and(|a| a < HANDSHAKE_FRESH),
            }
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers
}

/// Human form of a byte count.
pub fn bytes(n: u64) -> String {
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

/// Human form of an age in seconds.
pub fn age(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7200 => format!("{}m ago", s / 60),
        Some(s) => format!("{}h ago", s / 3600),
    }
}

/// The table `wardnet-agent status` prints.
pub fn render(s: &AgentStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "site {} ({}, region {}) on {} port {}\n",
        s.site, s.role, s.region, s.interface, s.listen_port
    ));
    out.push_str(&format!(
        "config revision {} (from {})\n",
        s.applied_revision, s.config_source
    ));
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
        "RECEIVED".into(),
        "SENT".into(),
    ]];
    for p in &s.peers {
        rows.push([
            p.name.to_string(),
            if p.up { "up" } else { "down" }.into(),
            p.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            age(p.handshake_age_seconds),
            bytes(p.rx_bytes),
            bytes(p.tx_bytes),
        ]);
    }
    let mut widths = [0usize; 6];
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
    }
}
