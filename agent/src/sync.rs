//! Keeping in step with the controller: the sync task long-polls for the
//! config, turns the answers (steps since the config that runs, or a full
//! config) into the config to run, hands it to the event loop, reports what
//! was applied with a health summary, and backs off on failure.
//!
//! Its decisions live in the pure [`SyncPolicy`] (when to report, how long
//! to wait after which outcome); the task only moves requests.

use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use wardnet_common::delta::ConfigUpdate;
use wardnet_common::wire::{AgentReport, HealthSummary, SiteConfig};

use crate::agent_state::SyncOutcome;
use crate::backoff::Backoff;
use crate::client::{ClientError, ControllerClient};
use crate::handle::{AgentHandle, Event};

/// The longest wait between two attempts to reach the controller (jittered
/// between half and all of it): after an outage, every agent is back
/// within this of the controller's return. A fleet retrying this often
/// costs a down controller's host one refused connection per agent every
/// 4–8 s, which it handles.
pub const SYNC_RETRY_MAX: Duration = Duration::from_secs(8);

/// How often an agent reports even when nothing changed (RTT and loss
/// figures move all the time; the NOC sees them this fresh at least).
pub const REPORT_REFRESH: Duration = Duration::from_secs(300);

/// How often the health's shape is compared with what was reported while
/// a long-poll waits.
pub const HEALTH_CHECK: Duration = Duration::from_secs(5);

/// How often a revoked site asks again (in case the refusal was a mistake
/// put right at the controller, or the site was enrolled anew).
pub const REVOKED_RETRY: Duration = Duration::from_secs(600);

/// What of a health summary makes a report worth sending at once: the
/// counts and names, not the RTT and loss figures, which always move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthShape {
    peers_up: u32,
    peers_unknown: u32,
    peers_total: u32,
    worst_peer: Option<wardnet_common::Name>,
    metrics_address: Option<String>,
    active_hub: Option<wardnet_common::Name>,
}

impl HealthShape {
    pub fn of(h: Option<&HealthSummary>) -> Self {
        HealthShape {
            peers_up: h.map_or(0, |h| h.peers_up),
            peers_unknown: h.map_or(0, |h| h.peers_unknown),
            peers_total: h.map_or(0, |h| h.peers_total),
            worst_peer: h.and_then(|h| h.worst_peer.clone()),
            metrics_address: h.and_then(|h| h.metrics_address.clone()),
            active_hub: h.and_then(|h| h.active_hub.clone()),
        }
    }
}

/// The sync task's decisions, as pure logic.
#[derive(Debug)]
pub struct SyncPolicy {
    backoff: Backoff,
    /// What was reported last, and when.
    reported: Option<(u64, HealthShape, Instant)>,
    /// The last exchange failed: report as soon as one succeeds, so the
    /// controller sees the agent again at once after an outage.
    failed: bool,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy {
            backoff: Backoff::new(Duration::from_secs(1), SYNC_RETRY_MAX),
            reported: None,
            failed: false,
        }
    }
}

impl SyncPolicy {
    /// Whether to report now: the applied revision or the shape of the
    /// health changed, the last report is older than [`REPORT_REFRESH`], or
    /// the controller was just unreachable.
    pub fn should_report(&self, revision: u64, shape: &HealthShape, now: Instant) -> bool {
        self.failed
            || match &self.reported {
                None => true,
                Some((r, s, at)) => {
                    *r != revision
                        || s != shape
                        || now.saturating_duration_since(*at) >= REPORT_REFRESH
                }
            }
    }

    /// Whether to end a waiting long-poll to report: only for something
    /// new (the revision, the health's shape, an outage behind). Age alone
    /// waits for the poll's own end: ending it early would, over HTTP/1.1,
    /// close the agent's connection and open another each time.
    pub fn worth_interrupting(&self, revision: u64, shape: &HealthShape) -> bool {
        self.failed
            || match &self.reported {
                None => true,
                Some((r, s, _)) => *r != revision || s != shape,
            }
    }

    pub fn reported(&mut self, revision: u64, shape: HealthShape, now: Instant) {
        self.reported = Some((revision, shape, now));
        self.succeeded();
    }

    /// Report at the next turn whatever changed (a new metrics address).
    pub fn report_soon(&mut self) {
        self.reported = None;
    }

    /// The controller answered.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
        self.failed = false;
    }

    /// An exchange failed: how long to wait, and what the loop should know.
    pub fn failed(&mut self, revoked: bool, jitter: f64) -> (Duration, SyncOutcome) {
        self.failed = true;
        if revoked {
            self.backoff.reset();
            (
                REVOKED_RETRY.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)),
                SyncOutcome::Revoked,
            )
        } else {
            (
                self.backoff.next_delay(jitter),
                SyncOutcome::Failed(String::new()),
            )
        }
    }

    /// A config could not be applied: ask for it again (in full) soon, with
    /// the same backoff as a failed exchange (1 s, 2 s, … up to 8 s).
    pub fn apply_failed(&mut self, jitter: f64) -> Duration {
        self.backoff.next_delay(jitter)
    }
}

/// Whether an error means the controller refused this site's credential.
fn is_revoked(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused { status, .. } if *status == reqwest::StatusCode::UNAUTHORIZED)
}

/// Fetch the first config, retrying with backoff (no cache to fall back on).
pub async fn first_config(
    client: &ControllerClient,
    credential: &str,
) -> anyhow::Result<SiteConfig> {
    use anyhow::Context;
    let mut backoff = Backoff::new(Duration::from_secs(1), SYNC_RETRY_MAX);
    loop {
        match client.config(credential, 0, Duration::from_secs(0)).await {
            Ok(Some(ConfigUpdate::Full { config })) => return Ok(config),
            Ok(Some(ConfigUpdate::Deltas { .. })) => {
                tracing::warn!(
                    "the controller sent steps to an agent without a config; asking again"
                )
            }
            Ok(None) => tracing::warn!("the controller has no config for this site yet"),
            Err(e) if !e.is_transient() => {
                return Err(e).context("the controller refused this agent")
            }
            Err(e) => tracing::warn!(error = %e, "cannot fetch the first config; retrying"),
        }
        tokio::time::sleep(backoff.next_delay(rand::random())).await;
    }
}

/// The sync task. `base` is the config that runs; steps are applied to a
/// copy of it. When the steps do not chain to it (or the loop runs another
/// revision than the last config handed over, or a config failed to
/// apply), the task asks for the full config instead, so the agent never
/// ends on a config the controller did not render.
pub(crate) async fn sync_loop(
    client: ControllerClient,
    credential: String,
    long_poll_secs: u64,
    agent: AgentHandle,
    mut applied: watch::Receiver<u64>,
    report_now: std::sync::Arc<tokio::sync::Notify>,
    base: SiteConfig,
) {
    let mut policy = SyncPolicy::default();
    let mut current = Some(base);
    let tell = |o: SyncOutcome| {
        let agent = agent.clone();
        async move { agent.send(Event::Sync(o)).await }
    };
    loop {
        let known = *applied.borrow_and_update();
        if current.as_ref().is_some_and(|c| c.revision != known) {
            current = None;
        }
        let health = agent.health().await;
        let shape = HealthShape::of(health.as_ref());
        // Old by the end of the next long-poll (which age does not cut):
        // report now, so reports stay at most REPORT_REFRESH apart.
        let by_then = Instant::now() + Duration::from_secs(long_poll_secs);
        if policy.should_report(known, &shape, by_then) {
            let report = AgentReport {
                applied_revision: known,
                health,
            };
            match client.report(&credential, &report).await {
                Ok(()) => {
                    tracing::debug!(revision = known, "reported");
                    policy.reported(known, shape, Instant::now());
                    // The controller answered: reachable now, not only
                    // when the long-poll below returns.
                    tell(SyncOutcome::Reached).await;
                }
                // The long-poll below fails the same way and warns, with backoff.
                Err(e) => tracing::debug!(error = %e, "report failed"),
            }
        }
        // Without a base for steps, ask for the full config (revision 0
        // answers at once with it).
        let ask = if current.is_some() { known } else { 0 };
        let poll = client.config(&credential, ask, Duration::from_secs(long_poll_secs));
        tokio::pin!(poll);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + HEALTH_CHECK, HEALTH_CHECK);
        let polled = loop {
            tokio::select! {
                r = &mut poll => break Some(r),
                () = report_now.notified() => {
                    tracing::debug!("reporting now (the metrics address changed)");
                    policy.report_soon();
                    break None;
                }
                // A link came up or went down while the long-poll waits:
                // the NOC hears of it now, not when the poll ends.
                _ = check.tick() => {
                    let shape = HealthShape::of(agent.health().await.as_ref());
                    if policy.worth_interrupting(known, &shape) {
                        break None;
                    }
                }
            }
        };
        let Some(polled) = polled else {
            // Report at the top of the loop, then poll again.
            continue;
        };
        let next = match polled {
            Ok(Some(ConfigUpdate::Full { config })) => Some(config),
            Ok(Some(ConfigUpdate::Deltas { steps })) => {
                let Some(mut next) = current.clone() else {
                    continue;
                };
                match next.apply_deltas(&steps) {
                    Ok(()) => {
                        tracing::debug!(
                            from = known,
                            to = next.revision,
                            steps = steps.len(),
                            "config steps applied"
                        );
                        Some(next)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "config steps do not apply to the running config; asking for the full config");
                        current = None;
                        continue;
                    }
                }
            }
            Ok(None) => None,
            Err(e) => {
                let revoked = is_revoked(&e);
                let (delay, outcome) = policy.failed(revoked, rand::random());
                if revoked {
                    // The event loop says so once, clearly; here it is quiet.
                    tracing::debug!(error = %e, retry_in = ?delay, "credential refused");
                    tell(outcome).await;
                } else {
                    tracing::warn!(error = %e, retry_in = ?delay, "controller sync failed; the tunnels keep running");
                    tell(SyncOutcome::Failed(e.to_string())).await;
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        policy.succeeded();
        tell(SyncOutcome::Reached).await;
        let Some(cfg) = next else {
            // The long-poll itself refreshed last-seen at the controller;
            // the top of the loop reports if anything else changed.
            continue;
        };
        current = Some(cfg.clone());
        let (done, result) = oneshot::channel();
        if !agent.send(Event::Config { config: cfg, done }).await {
            return;
        }
        match result.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let delay = policy.apply_failed(rand::random());
                tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "the config could not be applied; asking for it again");
                current = None;
                tokio::time::sleep(delay).await;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(up: u32) -> HealthShape {
        HealthShape {
            peers_up: up,
            peers_unknown: 0,
            peers_total: 3,
            worst_peer: None,
            metrics_address: None,
            active_hub: None,
        }
    }

    #[test]
    fn reports_on_change_on_age_and_after_an_outage() {
        let t0 = Instant::now();
        let mut p = SyncPolicy::default();
        assert!(p.should_report(1, &shape(3), t0), "nothing reported yet");
        p.reported(1, shape(3), t0);
        assert!(!p.should_report(1, &shape(3), t0 + Duration::from_secs(10)));
        assert!(p.should_report(2, &shape(3), t0), "new revision");
        assert!(p.worth_interrupting(2, &shape(3)), "new revision");
        assert!(p.worth_interrupting(1, &shape(2)), "a link went down");
        // Old, but nothing new: reported when the long-poll ends, which is
        // not cut for it.
        let later = t0 + REPORT_REFRESH + Duration::from_secs(1);
        assert!(p.should_report(1, &shape(3), later));
        assert!(!p.worth_interrupting(1, &shape(3)));
        assert!(p.should_report(1, &shape(2), t0), "a link went down");
        assert!(p.should_report(1, &shape(3), t0 + REPORT_REFRESH), "stale");
        // An outage: the first exchange that works reports at once.
        let _ = p.failed(false, 0.5);
        assert!(p.should_report(1, &shape(3), t0 + Duration::from_secs(20)));
        p.reported(1, shape(3), t0 + Duration::from_secs(21));
        assert!(!p.should_report(1, &shape(3), t0 + Duration::from_secs(22)));
    }

    #[test]
    fn backoff_is_capped_and_reset_by_success() {
        let mut p = SyncPolicy::default();
        let delays: Vec<Duration> = (0..8).map(|_| p.failed(false, 1.0).0).collect();
        assert_eq!(delays[0], Duration::from_secs(1));
        assert_eq!(delays[3], Duration::from_secs(8));
        assert!(delays.iter().all(|d| *d <= SYNC_RETRY_MAX));
        p.succeeded();
        assert_eq!(p.failed(false, 1.0).0, Duration::from_secs(1));
    }

    #[test]
    fn a_failed_apply_is_retried_within_seconds() {
        let mut p = SyncPolicy::default();
        assert!(p.apply_failed(1.0) <= Duration::from_secs(1));
        assert!((0..10).all(|_| p.apply_failed(1.0) <= SYNC_RETRY_MAX));
    }

    #[test]
    fn a_revoked_site_asks_rarely() {
        let mut p = SyncPolicy::default();
        let (d, o) = p.failed(true, 0.0);
        assert_eq!(o, SyncOutcome::Revoked);
        assert!(d >= REVOKED_RETRY / 2);
    }
}
