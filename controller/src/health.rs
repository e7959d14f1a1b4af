//! Fleet health from the agents' reports: online/offline, the Prometheus
//! file_sd target list, and the time from a config change to the agent
//! reporting it applied. Pure functions over the model (time is an
//! argument), plus one small piece of bookkeeping with its own lock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::Histogram;
use wardnet_common::wire::{FileSdGroup, FleetHealth, SiteHealth, SiteState, UnixTime};
use wardnet_common::Name;

use crate::model::Site;
use crate::reports::Report;

/// The reports of every site, by name (see `Controller::reports`).
pub(crate) type Reports = HashMap<Name, Report>;

fn report_for<'a>(reports: &'a Reports, s: &Site) -> &'a Report {
    static NONE: std::sync::OnceLock<Report> = std::sync::OnceLock::new();
    reports
        .get(&s.name)
        .unwrap_or_else(|| NONE.get_or_init(Report::default))
}

/// How long an agent counts as online after it was last seen: a live agent
/// polls again at once, and after a controller restart or a network blip
/// it is back within its retry backoff (at most a minute).
pub(crate) const ONLINE_WINDOW_SECS: i64 = 130;

/// An agent is online when it was last seen within `window` seconds.
pub(crate) fn online(last_seen: Option<UnixTime>, now: UnixTime, window: i64) -> bool {
    last_seen.is_some_and(|t| t >= now - window)
}

pub(crate) fn site_health(s: &Site, r: &Report, now: UnixTime, window: i64) -> SiteHealth {
    SiteHealth {
        name: s.name.clone(),
        region: s.region.clone(),
        role: s.role,
        state: s.state,
        agentless: s.agentless,
        // Only an active site's agent can be online: a revoked one's
        // credential is refused, whatever it was seen doing before.
        online: s.is_active() && online(r.last_seen, now, window),
        last_seen: r.last_seen,
        revision: s.revision,
        applied_revision: r.applied_revision,
        health: r.health.clone(),
    }
}

pub(crate) fn fleet_health<'a>(
    sites: impl Iterator<Item = &'a Site>,
    reports: &Reports,
    now: UnixTime,
    window: i64,
) -> FleetHealth {
    FleetHealth {
        online_window_seconds: window.max(0) as u64,
        sites: sites
            .map(|s| site_health(s, report_for(reports, s), now, window))
            .collect(),
    }
}

/// Prometheus file_sd groups: one per active agent site that reported a
/// metrics address, labelled site, site_region and site_role. Sites without an
/// address (metrics on loopback and no `metrics_advertise`) are left out.
pub(crate) fn file_sd<'a>(
    sites: impl IntoIterator<Item = &'a Site>,
    reports: &Reports,
) -> Vec<FileSdGroup> {
    let mut groups: Vec<FileSdGroup> = sites
        .into_iter()
        .filter(|s| s.state == SiteState::Active && !s.agentless)
        .filter_map(|s| {
            let addr = report_for(reports, s)
                .health
                .as_ref()?
                .metrics_address
                .clone()?;
            let labels = BTreeMap::from([
                ("site".to_owned(), s.name.to_string()),
                // Not `region`/`role`: the agent's peer metrics carry those
                // for the peer, and a target label would shadow them.
                ("site_region".to_owned(), s.region.to_string()),
                ("site_role".to_owned(), s.role.to_string()),
            ]);
            Some(FileSdGroup {
                targets: vec![addr],
                labels,
            })
        })
        .collect();
    groups.sort_by(|a, b| a.labels.get("site").cmp(&b.labels.get("site")));
    groups
}

/// Time from a config change to the agent reporting it applied.
///
/// Per site, the oldest change the agent has not yet reported applied
/// (revision and when it became deliverable). When a report covers it, the
/// time since then is observed once: with several changes queued for an
/// offline agent this measures how long the site was behind, not each
/// change separately, and the memory stays one entry per lagging site.
pub struct ApplyLatency {
    pending: Mutex<HashMap<Name, (u64, Instant)>>,
    histogram: Histogram,
}

impl ApplyLatency {
    pub fn new(histogram: Histogram) -> Self {
        ApplyLatency {
            pending: Mutex::new(HashMap::new()),
            histogram,
        }
    }

    /// A new revision of `site` became durable (deliverable) at `now`.
    pub fn changed(&self, site: &Name, revision: u64, now: Instant) {
        self.pending
            .lock()
            .entry(site.clone())
            .or_insert((revision, now));
    }

    /// The agent of `site` reported `applied` at `now`; returns what was observed.
    pub fn applied(&self, site: &Name, applied: u64, now: Instant) -> Option<Duration> {
        let mut pending = self.pending.lock();
        let (rev, since) = *pending.get(site)?;
        if applied < rev {
            return None;
        }
        pending.remove(site);
        let d = now.saturating_duration_since(since);
        self.histogram.observe(d.as_secs_f64());
        Some(d)
    }

    /// Forget a site (deleted).
    pub fn forget(&self, site: &Name) {
        self.pending.lock().remove(site);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn name(s: &str) -> Name {
        s.parse().expect("name")
    }

    #[test]
    fn online_window() {
        assert!(online(Some(100), 200, 100));
        assert!(!online(Some(99), 200, 100));
        assert!(!online(None, 200, 100));
    }

    #[test]
    fn apply_latency_observes_once_per_catch_up() {
        let h = Histogram::with_opts(HistogramOpts::new("t_seconds", "t")).expect("histogram");
        let l = ApplyLatency::new(h.clone());
        let t0 = Instant::now();
        let a = name("gp-a");
        l.changed(&a, 3, t0);
        l.changed(&a, 4, t0 + Duration::from_secs(1));
        // An older revision applied: still behind.
        assert_eq!(l.applied(&a, 2, t0 + Duration::from_secs(2)), None);
        assert_eq!(
            l.applied(&a, 4, t0 + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        // A heartbeat report of the same revision observes nothing.
        assert_eq!(l.applied(&a, 4, t0 + Duration::from_secs(60)), None);
        assert_eq!(h.get_sample_count(), 1);
        assert_eq!(h.get_sample_sum(), 5.0);
        // Unknown site; forgotten site.
        assert_eq!(l.applied(&name("gp-b"), 9, t0), None);
        l.changed(&a, 5, t0);
        l.forget(&a);
        assert_eq!(l.applied(&a, 5, t0), None);
    }
}
