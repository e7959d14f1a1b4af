//! How the tasks around the agent's event loop talk to it: one [`Event`]
//! type on one channel, and the cloneable [`AgentHandle`] the HTTP
//! endpoints, the sync task and tests hold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use wardnet_common::wire::{HealthSummary, SiteConfig};
use wardnet_common::Name;

use crate::agent_state::SyncOutcome;
use crate::health::icmp::EchoReply;
use crate::status::AgentStatus;

/// What the tasks around the loop tell it.
pub(crate) enum Event {
    /// A new config from the controller; `done` says whether it applied
    /// (the error with its whole chain of causes when it did not).
    Config {
        config: SiteConfig,
        done: oneshot::Sender<anyhow::Result<()>>,
    },
    /// What the sync task learnt of the controller.
    Sync(SyncOutcome),
    Status(oneshot::Sender<AgentStatus>),
    /// The health summary for the controller.
    Health(oneshot::Sender<HealthSummary>),
    /// `/metrics` in the Prometheus text format.
    Metrics(oneshot::Sender<String>),
    /// Where the metrics endpoint on the overlay address listens now.
    OverlayMetrics(oneshot::Sender<Option<std::net::SocketAddr>>),
    /// An echo reply to one of our probes, and when it arrived.
    ProbeReply(EchoReply, Instant),
    /// A handshake with the peer completed, and when.
    Handshake(Name, Instant),
    /// Read the config file anew (SIGHUP).
    Reload,
}

/// A cloneable way to reach a running agent.
#[derive(Clone)]
pub struct AgentHandle {
    ready: Arc<AtomicBool>,
    events: mpsc::Sender<Event>,
}

impl AgentHandle {
    pub(crate) fn new(events: mpsc::Sender<Event>) -> Self {
        AgentHandle {
            ready: Arc::new(AtomicBool::new(false)),
            events,
        }
    }

    /// A config is applied and the data plane runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub(crate) async fn send(&self, event: Event) -> bool {
        self.events.send(event).await.is_ok()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.events.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// What `wardnet-agent status` shows; `None` once the agent stopped.
    pub async fn status(&self) -> Option<AgentStatus> {
        self.ask(Event::Status).await
    }

    pub async fn metrics(&self) -> Option<String> {
        self.ask(Event::Metrics).await
    }

    pub async fn health(&self) -> Option<HealthSummary> {
        self.ask(Event::Health).await
    }

    /// Where the metrics endpoint on the overlay address should listen now
    /// (it follows the site's address through a renumber).
    pub async fn overlay_metrics(&self) -> Option<Option<std::net::SocketAddr>> {
        self.ask(Event::OverlayMetrics).await
    }

    /// Re-read the config file, as SIGHUP does.
    pub async fn reload(&self) -> bool {
        self.send(Event::Reload).await
    }
}
