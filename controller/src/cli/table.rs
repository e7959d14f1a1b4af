//! Human tables for the CLI.

use std::fmt;

use wardnet_common::wire::{FleetHealth, HealthSummary, SiteHealth, SiteView, UnixTime};

pub(super) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }
    pub(super) fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
                .collect();
            writeln!(f, "{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

/// A Unix time as RFC 3339 UTC, or `-`.
pub(super) fn time(t: Option<UnixTime>) -> String {
    t.map_or_else(|| "-".into(), wardnet_common::time::format_rfc3339)
}

/// The site's addresses; during a renumber the old ones marked so.
fn addresses(s: &SiteView) -> String {
    s.addresses
        .iter()
        .map(|a| {
            if s.former_addresses.contains(a) {
                format!(
                    "{} (old, until `sites renumber {} --finish`)",
                    a.addr(),
                    s.name
                )
            } else {
                a.addr().to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn health_of<'a>(fleet: &'a FleetHealth, s: &SiteView) -> Option<&'a SiteHealth> {
    fleet.sites.iter().find(|h| h.name == s.name)
}

/// `online`, `offline`, or `-` for a site without an agent (agentless, or
/// not enrolled yet).
fn liveness(s: &SiteView, h: Option<&SiteHealth>) -> String {
    if s.agentless || s.enrolled_at.is_none() {
        return "-".into();
    }
    match h {
        Some(h) if h.online => "online".into(),
        _ => "offline".into(),
    }
}

/// The worst link of a health summary: `gp-a down`, `gp-a 12.3ms 20%`.
pub(super) fn worst_link(h: Option<&HealthSummary>) -> String {
    let Some(h) = h else { return "-".into() };
    let Some(peer) = &h.worst_peer else {
        return "-".into();
    };
    if h.peers_up + h.peers_unknown < h.peers_total {
        // The summary names a down peer first (never an unknown one).
        return format!("{peer} down");
    }
    let mut out = peer.to_string();
    if let Some(rtt) = h.worst_rtt_seconds {
        out.push_str(&format!(" {:.1}ms", rtt * 1000.0));
    }
    if let Some(loss) = h.worst_loss_ratio {
        out.push_str(&format!(" {:.0}%", loss * 100.0));
    }
    out
}

fn peers(h: Option<&HealthSummary>) -> String {
    h.map_or_else(
        || "-".into(),
        |h| match h.peers_unknown {
            0 => format!("{}/{}", h.peers_up, h.peers_total),
            n => format!("{}/{} ({n} unknown)", h.peers_up, h.peers_total),
        },
    )
}

pub(super) fn sites(sites: &[SiteView], fleet: &FleetHealth) -> Table {
    let mut t = Table::new(&[
        "SITE",
        "ORG",
        "REGION",
        "ROLE",
        "STATE",
        "ADDRESS",
        "AGENT",
        "REVISION",
        "PEERS UP",
        "WORST LINK",
        "LAST SEEN",
    ]);
    for s in sites {
        let h = health_of(fleet, s);
        let behind = if s.applied_revision < s.revision && !s.agentless {
            " (behind)"
        } else {
            ""
        };
        t.row(vec![
            s.name.to_string(),
            s.org.to_string(),
            s.region.to_string(),
            s.role.to_string(),
            s.state.to_string(),
            addresses(s),
            liveness(s, h),
            format!("{}/{}{behind}", s.applied_revision, s.revision),
            peers(s.health.as_ref()),
            worst_link(s.health.as_ref()),
            time(s.last_seen),
        ]);
    }
    t
}

/// The health rows `sites show` adds to the detail table.
pub(super) fn site_health_rows(t: &mut Table, s: &SiteView, fleet: &FleetHealth) {
    let h = s.health.as_ref();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for (k, v) in [
        (
            "agent",
            format!(
                "{} (online = seen within the last {} s)",
                liveness(s, health_of(fleet, s)),
                fleet.online_window_seconds
            ),
        ),
        ("peers up", peers(h)),
        ("worst link", worst_link(h)),
        (
            "worst rtt",
            opt(h
                .and_then(|h| h.worst_rtt_seconds)
                .map(|r| format!("{:.1} ms", r * 1000.0))),
        ),
        (
            "worst loss",
            opt(h
                .and_then(|h| h.worst_loss_ratio)
                .map(|l| format!("{:.1}%", l * 100.0))),
        ),
        (
            "metrics endpoint",
            opt(h.and_then(|h| h.metrics_address.clone())),
        ),
        (
            "active hub",
            opt(h.and_then(|h| h.active_hub.as_ref()).map(|a| {
                let n = h.map_or(0, |h| h.failovers);
                format!("{a} ({n} failovers since the agent started)")
            })),
        ),
    ] {
        t.row(vec![k.to_owned(), v]);
    }
}

pub(super) fn site_detail(s: &SiteView) -> Table {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    let lan = s
        .lan_prefixes
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for (k, v) in [
        ("name", s.name.to_string()),
        ("organisation", s.org.to_string()),
        ("region", s.region.to_string()),
        ("role", s.role.to_string()),
        ("state", s.state.to_string()),
        ("agentless", s.agentless.to_string()),
        ("addresses", addresses(s)),
        (
            "lan prefixes",
            if lan.is_empty() { "-".into() } else { lan },
        ),
        (
            "endpoint",
            s.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "public key",
            s.public_key
                .map(|k| k.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "revision (applied/current)",
            format!("{}/{}", s.applied_revision, s.revision),
        ),
        ("created", time(Some(s.created_at))),
        ("enrolled", time(s.enrolled_at)),
        ("last seen", time(s.last_seen)),
    ] {
        t.row(vec![k.to_owned(), v]);
    }
    t
}

/// `prometheus targets` for people: one row per agent.
pub(super) fn targets(groups: &[wardnet_common::wire::FileSdGroup]) -> Table {
    let mut t = Table::new(&["TARGET", "SITE", "REGION", "ROLE"]);
    for g in groups {
        let label = |k: &str| g.labels.get(k).cloned().unwrap_or_else(|| "-".into());
        for target in &g.targets {
            t.row(vec![
                target.clone(),
                label("site"),
                label("site_region"),
                label("site_role"),
            ]);
        }
    }
    t
}

/// Rules, then services, in one table.
pub(super) fn policy(
    rules: &[wardnet_common::policy::RuleView],
    services: &[wardnet_common::policy::ServiceView],
) -> Table {
    use wardnet_common::policy::{traffic_text, SharedWith};
    let mut t = Table::new(&["WHAT", "FROM", "TO", "TRAFFIC", "OWNER", "DESCRIPTION"]);
    for r in rules {
        t.row(vec![
            format!("rule {}", r.rule.id),
            r.rule.from.to_string(),
            r.rule.to.to_string(),
            traffic_text(r.rule.proto, &r.rule.ports),
            r.org.to_string(),
            r.rule.description.clone(),
        ]);
    }
    for s in services {
        let svc = &s.service;
        let shared = match &svc.shared_with {
            SharedWith::All => "all".to_owned(),
            SharedWith::Orgs(o) => o
                .iter()
                .map(|n| format!("org:{n}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        let mut at = format!("site:{}", svc.site);
        if !svc.prefixes.is_empty() {
            let p: Vec<String> = svc.prefixes.iter().map(ToString::to_string).collect();
            at = format!("{at} {}", p.join(","));
        }
        t.row(vec![
            format!("service {}/{}", s.org, svc.name),
            shared,
            at,
            traffic_text(svc.proto, &svc.ports),
            s.org.to_string(),
            svc.description.clone(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats_utc() {
        assert_eq!(time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(time(Some(1_795_000_000)), "2026-11-18T11:06:40Z");
        assert_eq!(time(None), "-");
    }

    #[test]
    fn worst_link_forms() {
        let mut h = HealthSummary {
            peers_up: 2,
            peers_unknown: 0,
            peers_total: 2,
            worst_rtt_seconds: Some(0.0123),
            worst_loss_ratio: Some(0.2),
            worst_peer: Some("gp-a".parse().expect("name")),
            metrics_address: None,
            ..HealthSummary::default()
        };
        assert_eq!(worst_link(Some(&h)), "gp-a 12.3ms 20%");
        h.peers_up = 1;
        assert_eq!(worst_link(Some(&h)), "gp-a down");
        assert_eq!(worst_link(None), "-");
        assert_eq!(peers(Some(&h)), "1/2");
        // Not heard from since the agent started: not a down link.
        h.peers_unknown = 1;
        assert_eq!(worst_link(Some(&h)), "gp-a 12.3ms 20%");
        assert_eq!(peers(Some(&h)), "1/2 (1 unknown)");
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["A", "BB"]);
        t.row(vec!["xxx".into(), "y".into()]);
        assert_eq!(t.to_string(), "A    BB\nxxx  y\n");
    }
}
