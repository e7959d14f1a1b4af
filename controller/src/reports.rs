//! Soft state: what agents report (applied revision, health) and when they
//! were last seen. It is kept in memory and written to the database in one
//! batch every `report_persist_interval`, never one fsync per report. A
//! crash loses at most that interval of reports, and of last-seen times at
//! most SEEN_PERSIST (5 minutes: a long-poll alone refreshes the stored time
//! only that often); nothing an admin or an enrolment was told is stored is
//! ever in that window (those go through the writer).
//!
//! Presence: an agent whose long-poll is waiting is connected *now*, so its
//! last-seen time is now for as long as it waits, and becomes the time it
//! left when the request ends (answered, or the connection closed: TCP
//! keepalive finds a peer that vanished silently). A live agent polls again
//! at once, so long polls cost nothing in how fresh "online" is.

use std::collections::{HashMap, HashSet};

use wardnet_common::wire::{HealthSummary, UnixTime};
use wardnet_common::Name;

use crate::model::Site;
use crate::store::Write;

/// One site's last report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub applied_revision: u64,
    pub last_seen: Option<UnixTime>,
    pub health: Option<HealthSummary>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<Name, Report>,
    dirty: HashSet<Name>,
    /// When each site's last-seen was last written: a long-poll alone marks
    /// it dirty only every SEEN_PERSIST (18,000 agents would otherwise be
    /// 18,000 row updates a minute for a time stamp).
    seen_written: HashMap<Name, UnixTime>,
    /// Long-polls waiting per site (normally one).
    connected: HashMap<Name, u32>,
}

/// How stale a stored last-seen may get while only long-polls arrive.
pub(crate) const SEEN_PERSIST: UnixTime = 300;
/// The same with replicas: the others read it to tell whether a site is
/// online (within ONLINE_WINDOW_SECS, 130 s), so it must be fresher than
/// that, with a persist interval to spare.
pub(crate) const REPLICA_SEEN_PERSIST: UnixTime = 60;

#[derive(Default)]
pub(crate) struct Heartbeats(parking_lot::Mutex<Inner>, tokio::sync::Mutex<()>);

impl Heartbeats {
    /// Held while one persist runs: two never overlap.
    pub(crate) async fn persisting(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.1.lock().await
    }

    /// Start from what the database holds.
    pub(crate) fn load(sites: &[Site]) -> Self {
        let live = sites
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Report {
                        applied_revision: s.applied_revision,
                        last_seen: s.last_seen,
                        health: s.health.clone(),
                    },
                )
            })
            .collect();
        Heartbeats(
            parking_lot::Mutex::new(Inner {
                live,
                ..Inner::default()
            }),
            tokio::sync::Mutex::new(()),
        )
    }

    pub(crate) fn record(&self, site: &Name, report: Report) {
        let mut i = self.0.lock();
        i.live.insert(site.clone(), report);
        i.dirty.insert(site.clone());
    }

    /// The agent was seen at `now`: last-seen only.
    fn seen_locked(i: &mut Inner, site: &Name, now: UnixTime) {
        Self::seen_every(i, site, now, SEEN_PERSIST);
    }

    /// Seen at `now`; to be written when the stored last-seen is `every` old.
    fn seen_every(i: &mut Inner, site: &Name, now: UnixTime, every: UnixTime) {
        if let Some(r) = i.live.get_mut(site) {
            r.last_seen = Some(now);
        } else {
            i.live.insert(
                site.clone(),
                Report {
                    last_seen: Some(now),
                    ..Report::default()
                },
            );
        }
        let written = i.seen_written.get(site).copied().unwrap_or(UnixTime::MIN);
        if now.saturating_sub(written) >= every {
            i.dirty.insert(site.clone());
        }
    }

    /// A long-poll of `site` begins waiting.
    pub(crate) fn arrive(&self, site: &Name, now: UnixTime) {
        let mut i = self.0.lock();
        Self::seen_locked(&mut i, site, now);
        *i.connected.entry(site.clone()).or_default() += 1;
    }

    /// A long-poll of `site` ended (answered, or its connection closed).
    /// A site deleted meanwhile was forgotten and stays so.
    pub(crate) fn leave(&self, site: &Name, now: UnixTime) {
        let mut i = self.0.lock();
        let Some(n) = i.connected.get_mut(site) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            i.connected.remove(site);
        }
        Self::seen_locked(&mut i, site, now);
    }

    /// Long-polls waiting here, of these sites.
    pub(crate) fn waiting_among<'a>(&self, sites: impl Iterator<Item = &'a Name>) -> u64 {
        let i = self.0.lock();
        sites
            .map(|s| u64::from(i.connected.get(s).copied().unwrap_or(0)))
            .sum()
    }

    /// A site's last report; last-seen is `now` while it is connected.
    pub(crate) fn get(&self, site: &Name, now: UnixTime) -> Report {
        let i = self.0.lock();
        let mut r = i.live.get(site).cloned().unwrap_or_default();
        if i.connected.contains_key(site) {
            r.last_seen = Some(now);
        }
        r
    }

    /// Every site's last report (one lock for a whole listing).
    pub(crate) fn all(&self, now: UnixTime) -> HashMap<Name, Report> {
        let i = self.0.lock();
        let mut all = i.live.clone();
        for site in i.connected.keys() {
            if let Some(r) = all.get_mut(site) {
                r.last_seen = Some(now);
            }
        }
        all
    }

    /// Before the last persist at a stop: every last-seen newer than the
    /// stored one, and every connected site as seen `now`, so a restart
    /// does not show live sites as offline until they reconnect.
    pub(crate) fn mark_all_seen(&self, now: UnixTime) {
        let mut i = self.0.lock();
        let Inner {
            live,
            dirty,
            seen_written,
            connected,
        } = &mut *i;
        for (site, r) in live.iter_mut() {
            if connected.contains_key(site) {
                r.last_seen = Some(now);
            }
            if r.last_seen > seen_written.get(site).copied() {
                dirty.insert(site.clone());
            }
        }
    }

    /// With replicas: every connected site is seen `now`, and written again
    /// once its stored last-seen is `every` old, so the other replicas
    /// (which read the database) see it online.
    pub(crate) fn refresh_connected(&self, now: UnixTime, every: UnixTime) {
        let mut i = self.0.lock();
        let connected: Vec<Name> = i.connected.keys().cloned().collect();
        for site in &connected {
            Self::seen_every(&mut i, site, now, every);
        }
    }

    /// With replicas: take what other replicas stored of their agents, for
    /// sites not connected here and newer than what this one knows.
    pub(crate) fn merge_stored(
        &self,
        stored: Vec<crate::store::StoredReport>,
        exists: impl Fn(&Name) -> bool,
    ) {
        let mut i = self.0.lock();
        for s in stored {
            if i.connected.contains_key(&s.site) || !exists(&s.site) {
                continue;
            }
            let newer = i
                .live
                .get(&s.site)
                .is_none_or(|r| r.last_seen.is_none_or(|t| t < s.last_seen));
            if newer {
                i.seen_written.insert(s.site.clone(), s.last_seen);
                i.live.insert(
                    s.site,
                    Report {
                        applied_revision: s.applied_revision,
                        last_seen: Some(s.last_seen),
                        health: s.health,
                    },
                );
            }
        }
    }

    /// A deleted or re-created site starts with no report.
    pub(crate) fn forget(&self, site: &Name) {
        let mut i = self.0.lock();
        i.live.remove(site);
        i.dirty.remove(site);
        i.seen_written.remove(site);
        i.connected.remove(site);
    }

    /// The writes for every report changed since the last persist.
    pub(crate) fn take_dirty(&self) -> (Vec<Name>, Vec<Write>) {
        let mut i = self.0.lock();
        // In name order: replicas that persist overlapping sites (an agent
        // that moved) lock the rows in one order, so they never deadlock.
        let mut names: Vec<Name> = i.dirty.drain().collect();
        names.sort_unstable();
        for n in &names {
            if let Some(t) = i.live.get(n).and_then(|r| r.last_seen) {
                i.seen_written.insert(n.clone(), t);
            }
        }
        let writes = names
            .iter()
            .filter_map(|n| {
                let r = i.live.get(n)?;
                Some(Write::Report {
                    site: n.clone(),
                    applied_revision: r.applied_revision,
                    last_seen: r.last_seen?,
                    health: r.health.clone(),
                })
            })
            .collect();
        (names, writes)
    }

    pub(crate) fn mark_dirty(&self, names: Vec<Name>) {
        let mut i = self.0.lock();
        for n in names {
            if i.live.contains_key(&n) {
                i.dirty.insert(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        s.parse().expect("name")
    }

    #[test]
    fn presence_counts_polls_and_a_forgotten_site_stays_forgotten() {
        let h = Heartbeats::default();
        let a = name("gp-a");
        h.arrive(&a, 100);
        h.arrive(&a, 110);
        assert_eq!(h.get(&a, 500).last_seen, Some(500), "connected: seen now");
        h.leave(&a, 120);
        assert_eq!(h.get(&a, 500).last_seen, Some(500), "one poll still waits");
        h.leave(&a, 130);
        assert_eq!(
            h.get(&a, 500).last_seen,
            Some(130),
            "seen when the last left"
        );
        assert_eq!(h.all(500)[&a].last_seen, Some(130));

        // Deleted while its poll waited: the poll's end does not bring it back.
        h.arrive(&a, 200);
        h.forget(&a);
        h.leave(&a, 210);
        assert_eq!(h.get(&a, 500), Report::default());
        assert!(h.all(500).is_empty());
    }

    /// Reports are written in site order, whatever order they came in:
    /// two replicas persisting overlapping sites lock rows in one order.
    #[test]
    fn reports_are_persisted_in_site_order() {
        let h = Heartbeats::default();
        let names: Vec<Name> = (0..200).rev().map(|i| name(&format!("gp-{i}"))).collect();
        for n in &names {
            h.record(
                n,
                Report {
                    applied_revision: 1,
                    last_seen: Some(100),
                    health: None,
                },
            );
        }
        let (taken, writes) = h.take_dirty();
        let sites: Vec<Name> = writes
            .iter()
            .map(|w| match w {
                Write::Report { site, .. } => site.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!((taken, sites), (sorted.clone(), sorted));
    }
}
