//! Soft state: what agents report with every sync (last seen, applied
//! revision, health). It changes every minute for every agent, so it is
//! kept in memory and written to the database in one batch every
//! `report_persist_interval`, never one fsync per report. A crash loses at
//! most that interval of reports; nothing an admin or an enrolment was told
//! is stored is ever in that window (those go through the writer).

use std::collections::{HashMap, HashSet};
use std::sync::Weak;

use wardnet_common::wire::{HealthSummary, UnixTime};
use wardnet_common::Name;

use super::Controller;
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
}

#[derive(Default)]
pub struct Heartbeats(parking_lot::Mutex<Inner>);

impl Heartbeats {
    /// Start from what the database holds.
    pub fn load(sites: &[Site]) -> Self {
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
        Heartbeats(parking_lot::Mutex::new(Inner {
            live,
            dirty: HashSet::new(),
        }))
    }

    pub fn record(&self, site: &Name, report: Report) {
        let mut i = self.0.lock();
        i.live.insert(site.clone(), report);
        i.dirty.insert(site.clone());
    }

    /// The agent was seen (its long-poll arrived): last-seen only.
    pub fn seen(&self, site: &Name, now: UnixTime) {
        let mut i = self.0.lock();
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
        i.dirty.insert(site.clone());
    }

    pub fn get(&self, site: &Name) -> Report {
        self.0.lock().live.get(site).cloned().unwrap_or_default()
    }

    /// Every site's last report (one lock for a whole listing).
    pub fn all(&self) -> HashMap<Name, Report> {
        self.0.lock().live.clone()
    }

    /// A deleted or re-created site starts with no report.
    pub fn forget(&self, site: &Name) {
        let mut i = self.0.lock();
        i.live.remove(site);
        i.dirty.remove(site);
    }

    /// The writes for every report changed since the last persist.
    fn take_dirty(&self) -> (Vec<Name>, Vec<Write>) {
        let mut i = self.0.lock();
        let names: Vec<Name> = i.dirty.drain().collect();
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

    fn mark_dirty(&self, names: Vec<Name>) {
        let mut i = self.0.lock();
        for n in names {
            if i.live.contains_key(&n) {
                i.dirty.insert(n);
            }
        }
    }
}

impl Controller {
    /// Write every report changed since the last time, in one transaction.
    /// On failure they stay dirty for the next round.
    pub async fn persist_reports(&self) {
        let (names, writes) = self.heartbeats.take_dirty();
        if writes.is_empty() {
            return;
        }
        let n = writes.len();
        match self.store.commit(writes).await {
            Ok(()) => tracing::debug!(reports = n, "agent reports persisted"),
            Err(e) => {
                self.metrics
                    .store_failures
                    .with_label_values(&[e.kind()])
                    .inc();
                tracing::warn!(error = %e, reports = n, "cannot persist agent reports; retrying next round");
                self.heartbeats.mark_dirty(names);
            }
        }
    }
}

/// Persist reports every interval until the controller is dropped, and once
/// more at shutdown.
pub(super) async fn persist_loop(controller: Weak<Controller>) {
    let (interval, shutdown) = match controller.upgrade() {
        Some(c) => (c.settings.report_persist_interval, c.shutdown.clone()),
        None => return,
    };
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = shutdown.cancelled() => true,
        };
        let Some(c) = controller.upgrade() else {
            return;
        };
        c.persist_reports().await;
        if stopping {
            return;
        }
    }
}
