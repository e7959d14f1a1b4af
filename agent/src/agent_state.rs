//! The agent's sans-IO core: what runs (the applied config), the probe
//! schedule and the links' health, what the agent knows of its controller
//! (reachable, revoked) and what `status`, `/metrics` and the controller's
//! health summary show. It takes `now` and events and answers with what the
//! shell must do; it never touches a device, a socket or a file, so every
//! rule here is tested with injected time (`agent_state_tests.rs`).
//!
//! The shell (`eventloop`) carries the answers out: it applies an
//! [`ApplyPlan`] to the device and the routes and reports back with
//! [`AgentState::applied`], sends the probes [`AgentState::on_timeout`]
//! returns, saves the cache.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use wardnet_common::wire::{HealthSummary, SiteConfig};
use wardnet_common::{Name, Role};

use crate::config::Config;
use crate::device_snapshot::{DeviceSnapshot, Handshakes};
use crate::failover::{Failover, FailoverConfig, Reason};
use crate::health::icmp::EchoReply;
use crate::health::probe::ReplyOutcome;
use crate::health::{
    link_state, probe_address, summarize, LinkState, PeerHealth, ProbeConfig, ProbeTarget,
    ProbeToSend, Scheduler,
};
use crate::metrics::{Metrics, PeerScrape, Scrape};
use crate::reconcile::{self, Applied, Plan};
use crate::state_dir::Enrolment;
use crate::status::{peer_statuses, AgentStatus, PeerStatus, REVOKED_HELP};

/// Where the running config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Cache,
    Controller,
}

impl ConfigSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::Cache => "cache",
            ConfigSource::Controller => "controller",
        }
    }
}

/// What the sync task learnt from the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The controller answered.
    Reached,
    /// It could not be reached, or failed (the message says how).
    Failed(String),
    /// It refused this site's credential: the site was revoked (or
    /// re-enrolled elsewhere with a new key).
    Revoked,
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Apply this plan to the device and routes, then report back.
    Apply(Box<ApplyPlan>),
    /// Send these probes from `source` through the tunnels.
    SendProbes {
        source: Ipv4Addr,
        probes: Vec<ProbeToSend>,
    },
    /// The site was revoked: say so once, clearly.
    AnnounceRevoked,
}

/// The differences between what runs and a wanted config.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyPlan {
    pub desired: SiteConfig,
    pub plan: Plan,
    /// Whether this is the first config applied since start: the interface
    /// was just set up with its MTU and port, so only a later config's
    /// change of them is applied to the device.
    pub first: bool,
}

/// Why a config is not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigRefused {
    #[error("the controller sent the config of site {got} but this gateway is {ours}")]
    OtherSite { got: Name, ours: Name },
    #[error("this site was revoked; it runs no tunnels until it is enrolled again")]
    Revoked,
}

pub struct AgentState {
    enrolment: Enrolment,
    config: Config,
    applied: Applied,
    running: SiteConfig,
    source: ConfigSource,
    reachable: bool,
    controller_error: Option<String>,
    /// Unix time of the last successful exchange with the controller.
    last_sync: Option<i64>,
    /// The last apply failed: why (shown in `status` until one succeeds).
    apply_error: Option<String>,
    revoked: bool,
    probes: Scheduler,
    /// Which hub of each failover group carries its prefixes.
    failover: Failover,
    /// Whether probes can be sent (the raw ICMP socket opened).
    probing: bool,
    metrics: Metrics,
}

/// The probe settings `config` asks for.
fn probe_config(config: &Config) -> ProbeConfig {
    ProbeConfig {
        fast_interval: config.hub_probe_interval,
        ..ProbeConfig::with_interval(config.probe_interval)
    }
}

/// The failover settings `config` asks for.
fn failover_config(config: &Config) -> FailoverConfig {
    FailoverConfig {
        misses: config.failover_misses,
        hold_down: config.failback_hold_down,
        ..FailoverConfig::default()
    }
}

impl AgentState {
    /// The state before the first config is applied: `first` is what the
    /// shell will apply at once (from the cache or the controller).
    pub fn new(
        enrolment: Enrolment,
        config: Config,
        first: &SiteConfig,
        source: ConfigSource,
        probing: bool,
        wall: i64,
    ) -> Self {
        let probes = Scheduler::new(probe_config(&config));
        let failover = Failover::new(failover_config(&config), &enrolment.site);
        AgentState {
            enrolment,
            config,
            applied: Applied::default(),
            running: SiteConfig {
                peers: Vec::new(),
                routes: BTreeSet::new(),
                ..first.clone()
            },
            source,
            reachable: source == ConfigSource::Controller,
            controller_error: None,
            last_sync: (source == ConfigSource::Controller).then_some(wall),
            apply_error: None,
            revoked: false,
            probes,
            failover,
            probing,
            metrics: Metrics::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn enrolment(&self) -> &Enrolment {
        &self.enrolment
    }

    pub fn running(&self) -> &SiteConfig {
        &self.running
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked
    }

    /// The site's overlay IPv4 address: the one it enrolled with while
    /// the running config holds it, else the running config's (after the
    /// site was renumbered).
    pub fn overlay_v4(&self) -> Option<Ipv4Addr> {
        let enrolled = self.enrolment.addresses.iter().find_map(|a| match a {
            ipnet::IpNet::V4(n) => Some(n.addr()),
            ipnet::IpNet::V6(_) => None,
        });
        let held = |a: &Ipv4Addr| {
            self.running
                .interface
                .addresses
                .iter()
                .any(|p| p.addr() == std::net::IpAddr::V4(*a))
        };
        enrolled
            .filter(|a| held(a) || self.running.interface.addresses.is_empty())
            .or_else(|| source_v4(&self.running))
    }

    /// What the NOC's Prometheus should scrape (reported to the controller).
    pub fn metrics_address(&self) -> Option<String> {
        self.config.metrics_address(self.overlay_v4())
    }

    /// A config to run: the plan to get there from what runs.
    pub fn plan(&self, desired: SiteConfig) -> Result<ApplyPlan, ConfigRefused> {
        if self.revoked {
            return Err(ConfigRefused::Revoked);
        }
        if desired.site != self.enrolment.site {
            return Err(ConfigRefused::OtherSite {
                got: desired.site,
                ours: self.enrolment.site.clone(),
            });
        }
        Ok(self.plan_for(desired))
    }

    /// The plan for `desired` with each failover group's prefixes on the
    /// hub that carries them now.
    fn plan_for(&self, desired: SiteConfig) -> ApplyPlan {
        ApplyPlan {
            plan: reconcile::plan(&self.failover.effective(&desired), &self.applied),
            first: self.applied.mtu.is_none(),
            desired,
        }
    }

    /// The shell applied `done`: it runs now. Probes follow the new peers.
    /// `source`: where the config came from (`None`: the agent's own
    /// change, the source stays).
    pub fn applied(&mut self, done: ApplyPlan, source: Option<ConfigSource>, now: Instant) {
        self.applied = self.applied.after(&done.plan);
        self.failover.set_groups(&done.desired.failover, now);
        self.set_probe_targets(&done.desired, now);
        self.running = done.desired;
        if let Some(source) = source {
            self.source = source;
        }
        self.apply_error = None;
    }

    /// The shell could not apply a config; what ran before keeps running
    /// (with whatever part of the plan did get applied).
    pub fn apply_failed(&mut self, error: String) {
        self.apply_error = Some(error);
    }

    /// What the sync task learnt. Returns what to do (an announcement when
    /// the site has just been revoked).
    pub fn on_sync(&mut self, outcome: SyncOutcome, wall: i64) -> Vec<Action> {
        match outcome {
            SyncOutcome::Reached => {
                self.reachable = true;
                self.controller_error = None;
                self.last_sync = Some(wall);
                Vec::new()
            }
            SyncOutcome::Failed(e) => {
                self.reachable = false;
                self.controller_error = Some(e);
                Vec::new()
            }
            SyncOutcome::Revoked => {
                // The controller answered: it is reachable, and it said no.
                self.reachable = true;
                self.last_sync = Some(wall);
                self.controller_error = Some(REVOKED_HELP.into());
                if self.revoked {
                    return Vec::new();
                }
                self.revoked = true;
                let mut actions = vec![Action::AnnounceRevoked];
                // Every peer goes: the others dropped this site, so its
                // handshakes would only be refused every few seconds.
                let empty = SiteConfig {
                    peers: Vec::new(),
                    routes: BTreeSet::new(),
                    ..self.running.clone()
                };
                actions.push(Action::Apply(Box::new(ApplyPlan {
                    plan: reconcile::plan(&empty, &self.applied),
                    first: self.applied.mtu.is_none(),
                    desired: empty,
                })));
                actions
            }
        }
    }

    /// A handshake with `peer` completed.
    pub fn on_handshake(&mut self, peer: &Name, at: Instant, now: Instant) {
        self.probes.on_handshake(peer, at, now);
    }

    /// An echo reply arrived at `at`.
    pub fn on_probe_reply(&mut self, reply: &EchoReply, at: Instant) {
        let Some(peer) = self.probes.peer_for(reply.src).cloned() else {
            return;
        };
        if let ReplyOutcome::Answered { rtt: Some(rtt) } =
            self.probes.on_reply(&peer, reply.seq, at)
        {
            if let Some(t) = self.probes.target(&peer) {
                self.metrics.observe_rtt(&t.name, &t.region, t.role, rtt);
            }
        }
    }

    /// When [`AgentState::on_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.probes.next_deadline()
    }

    /// Timers due by `now`: the probes to send, and a move of a failover
    /// group's prefixes when a hub failed or came back.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        let probes = self.probes.on_tick(now);
        let mut actions = match self.probe_source() {
            Some(source) if !probes.is_empty() => vec![Action::SendProbes { source, probes }],
            _ => Vec::new(),
        };
        if self.revoked {
            return actions;
        }
        let scheduler = &self.probes;
        let moves = self
            .failover
            .evaluate(now, |hub| scheduler.hub_view(hub).unwrap_or_default());
        if !moves.is_empty() {
            for m in &moves {
                match m.reason {
                    Reason::Failed => tracing::warn!(
                        region = %m.region, from = %m.from, to = %m.to,
                        "hub stopped answering; traffic moved to another hub of the region"
                    ),
                    Reason::Failback => tracing::info!(
                        region = %m.region, from = %m.from, to = %m.to,
                        "preferred hub answered through its hold-down; traffic moved back"
                    ),
                }
            }
            actions.push(Action::Apply(Box::new(self.plan_for(self.running.clone()))));
        }
        actions
    }

    /// A reloaded config file (SIGHUP). Returns the keys that wait for a
    /// restart and what changed now.
    pub fn reload(&mut self, new: Config, now: Instant) -> Reloaded {
        let (new, pending) = self.config.reloaded(new);
        let overlay = self.overlay_v4();
        let out = Reloaded {
            pending,
            controller: new.controller_settings() != self.config.controller_settings(),
            metrics_address: new.metrics_address(overlay) != self.config.metrics_address(overlay),
            forwarding: new.enable_ip_forwarding != self.config.enable_ip_forwarding,
        };
        if probe_config(&new) != probe_config(&self.config) {
            // Peers start afresh at the new pace (windows reset).
            self.probes.set_config(probe_config(&new), now);
        }
        self.failover.set_config(failover_config(&new));
        self.config = new;
        out
    }

    /// Keep the controller settings that run (a reload's new ones did not
    /// make a client).
    pub fn keep_controller_settings(&mut self, from: &Config) {
        self.config
            .controller_urls
            .clone_from(&from.controller_urls);
        self.config.ca_cert.clone_from(&from.ca_cert);
        self.config.allow_plain_http = from.allow_plain_http;
        self.config.long_poll_secs = from.long_poll_secs;
    }

    fn probe_source(&self) -> Option<Ipv4Addr> {
        source_v4(&self.running)
    }

    /// Probe every peer of the new config at its overlay address, from ours.
    fn set_probe_targets(&mut self, desired: &SiteConfig, now: Instant) {
        let probing = self.probing && source_v4(desired).is_some();
        let fast = self.failover.active_hubs();
        let targets: Vec<ProbeTarget> = desired
            .peers
            .iter()
            .map(|p| ProbeTarget {
                fast: fast.contains(&p.name),
                name: p.name.clone(),
                region: p.region.clone(),
                role: p.role,
                address: probing.then(|| probe_address(&p.allowed_ips)).flatten(),
            })
            .collect();
        let key = |c: &SiteConfig| -> BTreeSet<_> {
            c.peers
                .iter()
                .map(|p| (p.name.clone(), p.region.clone(), p.role))
                .collect()
        };
        self.metrics
            .retain_peers(&key(desired), &key(&self.running));
        self.probes.set_peers(targets, now);
    }

    fn peer_statuses(
        &self,
        snap: &DeviceSnapshot,
        wall: SystemTime,
        now: Instant,
    ) -> Vec<PeerStatus> {
        peer_statuses(snap, wall, |n| self.probes.view_of(n, now))
    }

    pub fn status(
        &self,
        snap: &DeviceSnapshot,
        wall: SystemTime,
        now: Instant,
        controller_url: String,
    ) -> AgentStatus {
        AgentStatus {
            site: self.enrolment.site.clone(),
            region: self.enrolment.region.clone(),
            role: self.enrolment.role,
            interface: self.config.interface.clone(),
            listen_port: snap.listen_port,
            applied_revision: self.running.revision,
            config_source: self.source.as_str().to_owned(),
            controller_url,
            controller_reachable: self.reachable,
            controller_error: self.controller_error.clone(),
            last_sync: self.last_sync,
            revoked: self.revoked,
            apply_error: self.apply_error.clone(),
            peers: self.peer_statuses(snap, wall, now),
            failover: self.failover.status(now),
        }
    }

    /// The summary for the controller. The sync task asks for it every few
    /// seconds, so it is built straight from the snapshot (no per-peer
    /// status with its encoded key): a hub has thousands of peers.
    pub fn health(&self, handshakes: &Handshakes, wall: SystemTime, now: Instant) -> HealthSummary {
        let peers: Vec<PeerHealth> = handshakes
            .iter()
            .map(|(name, last)| {
                let age = last.map(|t| wall.duration_since(t).unwrap_or(Duration::ZERO));
                let v = self.probes.view_of(name, now);
                PeerHealth {
                    name: name.clone(),
                    state: link_state(age, v.as_ref().and_then(|v| v.probe_ok)),
                    rtt: v.as_ref().and_then(|v| v.srtt),
                    loss_ratio: v.as_ref().and_then(|v| v.loss_ratio),
                }
            })
            .collect();
        let mut summary = summarize(&peers, self.metrics_address());
        // A spoke's one group is its own region's hubs.
        summary.active_hub = self.failover.active(&self.enrolment.region).cloned();
        summary.failovers = self.failover.failovers_total();
        summary
    }

    pub fn metrics(&self, snap: &DeviceSnapshot, wall: SystemTime, now: Instant) -> String {
        let states: BTreeMap<_, _> = self
            .peer_statuses(snap, wall, now)
            .into_iter()
            .map(|s| (s.name, s.state))
            .collect();
        let configured: BTreeMap<_, _> = self.running.peers.iter().map(|c| (&c.name, c)).collect();
        let peers = snap
            .peers
            .iter()
            .filter_map(|p| {
                let cfg = configured.get(&p.name)?;
                let up = match states.get(&p.name) {
                    Some(LinkState::Up) => Some(true),
                    Some(LinkState::Down) => Some(false),
                    Some(LinkState::Unknown) | None => None,
                };
                let v = self.probes.view_of(&p.name, now);
                Some(PeerScrape {
                    name: p.name.clone(),
                    region: cfg.region.clone(),
                    role: cfg.role,
                    up,
                    last_handshake: p.last_handshake,
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    probes_sent: v.as_ref().map_or(0, |v| v.sent_total),
                    probes_lost: v.as_ref().map_or(0, |v| v.lost_total),
                    policy_denied: p.policy_denied,
                })
            })
            .collect();
        self.metrics.render(Scrape {
            applied_revision: self.running.revision,
            controller_reachable: self.reachable,
            last_sync: self.last_sync,
            revoked: self.revoked,
            counters: snap.counters,
            peers,
            failover: self.failover.status(now),
            policy: snap.policy.clone(),
        })
    }

    pub fn role(&self) -> Role {
        self.enrolment.role
    }
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys that changed but take effect at the next restart.
    pub pending: Vec<&'static str>,
    /// The controller settings changed: a new client, a new sync.
    pub controller: bool,
    /// The advertised metrics address changed: report it now.
    pub metrics_address: bool,
    /// `enable_ip_forwarding` changed: check forwarding again (hubs).
    pub forwarding: bool,
}

/// Our overlay IPv4 address in a config: the source of our probes.
fn source_v4(cfg: &SiteConfig) -> Option<Ipv4Addr> {
    cfg.interface.addresses.iter().find_map(|a| match a {
        ipnet::IpNet::V4(v4) => Some(v4.addr()),
        ipnet::IpNet::V6(_) => None,
    })
}

#[cfg(test)]
#[path = "agent_state_tests.rs"]
mod tests;
