//! Soft state made durable: agents' reports written in one batch every
//! `report_persist_interval` (see [`crate::reports`]), and merged with what
//! other replicas' agents reported.

use std::sync::Weak;

use super::Controller;
use crate::reports::REPLICA_SEEN_PERSIST;

impl Controller {
    /// Write every report changed since the last time, in one transaction.
    /// On failure they stay dirty for the next round.
    pub async fn persist_reports(&self) {
        self.persist(false).await;
    }

    /// The last persist before a stop: also every last-seen time not yet
    /// stored (see [`Heartbeats::mark_all_seen`]).
    pub async fn persist_reports_at_stop(&self) {
        self.persist(true).await;
    }

    async fn persist(&self, stopping: bool) {
        // One persist at a time: a caller returns only once what was dirty
        // when it called is written (or has failed and is dirty again).
        let _one = self.heartbeats.persisting().await;
        let now = self.now();
        if stopping {
            self.heartbeats.mark_all_seen(now);
        } else if self.replicated {
            self.heartbeats.refresh_connected(now, REPLICA_SEEN_PERSIST);
        }
        if self.replicated && !stopping {
            // Other replicas' agents, as they stored them.
            let since = now - crate::health::ONLINE_WINDOW_SECS;
            match self.store.reports_since(since).await {
                Ok(stored) => {
                    let world = self.published.load();
                    self.heartbeats
                        .merge_stored(stored, |s| world.model.sites.contains_key(s));
                }
                Err(e) => tracing::warn!(error = %e, "cannot read other replicas' agent reports"),
            }
        }
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
        c.persist(stopping).await;
        if stopping {
            return;
        }
    }
}
