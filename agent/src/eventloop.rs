//! The thin shell around [`AgentState`]: one loop that owns it, waits for
//! the next event or timer, hands it to the state and carries out what the
//! state answers, against a [`Device`] and [`Routes`] (the real data plane
//! and netlink, or in-memory ones in tests). [`Eventloop::tick`] handles one
//! thing and says whether to go on; [`Eventloop::run`] is `tick` until it
//! says stop, on success and on error alike, and then stops the sync task.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wardnet_common::wire::SiteConfig;
use wardnet_common::Role;

use crate::agent_state::{Action, AgentState, ApplyPlan, ConfigSource};
use crate::client::ControllerClient;
use crate::config::Config;
use crate::device::{Device, Routes};
use crate::handle::{AgentHandle, Event};
use crate::health::io::ProbeSocket;
use crate::state_dir::{Enrolment, StateDir};
use crate::status::REVOKED_HELP;
use crate::sync::sync_loop;

/// Reads the config file anew (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Config> + Send>;

pub struct Eventloop<D: Device, R: Routes> {
    state: AgentState,
    device: D,
    routes: R,
    cache: StateDir,
    probe_socket: Option<Arc<ProbeSocket>>,
    events: mpsc::Receiver<Event>,
    handle: AgentHandle,
    /// The revision that runs; the sync task asks from it.
    applied_tx: watch::Sender<u64>,
    /// Tells the sync task to report at once (a new metrics address).
    report_now: Arc<Notify>,
    controller: ControllerClient,
    sync_task: Option<JoinHandle<()>>,
    reload: Reload,
    shutdown: CancellationToken,
    watchdog: crate::notify::Watchdog,
}

/// What an event loop needs besides its device and routes.
pub struct Parts {
    pub config: Config,
    pub enrolment: Enrolment,
    pub cache: StateDir,
    pub controller: ControllerClient,
    pub probe_socket: Option<Arc<ProbeSocket>>,
    pub reload: Reload,
    /// Cancelled: the loop stops (SIGTERM, or a test's end).
    pub shutdown: CancellationToken,
}

impl<D: Device, R: Routes> Eventloop<D, R> {
    /// A loop that will bring up `first` (from `source`); nothing runs yet.
    pub fn new(
        parts: Parts,
        device: D,
        routes: R,
        first: &SiteConfig,
        source: ConfigSource,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(64);
        let state = AgentState::new(
            parts.enrolment,
            parts.config,
            first,
            source,
            parts.probe_socket.is_some(),
            unix_now(),
        );
        Eventloop {
            state,
            device,
            routes,
            cache: parts.cache,
            probe_socket: parts.probe_socket,
            events,
            handle: AgentHandle::new(events_tx),
            applied_tx: watch::channel(0).0,
            report_now: Arc::new(Notify::new()),
            controller: parts.controller,
            sync_task: None,
            reload: parts.reload,
            shutdown: parts.shutdown,
            watchdog: crate::notify::Watchdog::from_env(),
        }
    }

    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// Apply the first config; the agent is ready after this.
    pub async fn start(&mut self, first: SiteConfig, source: ConfigSource) -> Result<()> {
        let plan = self.state.plan(first)?;
        self.apply(plan, Some(source)).await?;
        self.check_forwarding_if_needed(true);
        self.handle.set_ready(true);
        Ok(())
    }

    /// Run until shut down (or every handle and task is gone). The sync
    /// task starts here, asking from the revision that runs.
    pub async fn run(mut self) -> Result<()> {
        self.restart_sync(self.controller.clone());
        let result = loop {
            if let ControlFlow::Break(r) = self.tick().await {
                break r;
            }
        };
        self.handle.set_ready(false);
        if let Some(t) = self.sync_task.take() {
            t.abort();
        }
        result
    }

    /// Wait for one event or timer and handle it.
    pub async fn tick(&mut self) -> ControlFlow<Result<()>> {
        let deadline = self.state.poll_timeout();
        tokio::select! {
            () = self.shutdown.cancelled() => return ControlFlow::Break(Ok(())),
            () = sleep_until(deadline) => {
                let actions = self.state.on_timeout(Instant::now());
                self.perform(actions).await;
            }
            // Pinged from this loop, so a wedged loop stops the pings.
            () = self.watchdog.tick() => crate::notify::watchdog(),
            ev = self.events.recv() => match ev {
                // Unreachable while the loop holds a handle; kept total.
                None => return ControlFlow::Break(Ok(())),
                Some(ev) => self.event(ev).await,
            },
        }
        ControlFlow::Continue(())
    }

    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Config { config, done } => {
                let lans_before = own_lans(self.state.running());
                let result = match self.state.plan(config) {
                    Ok(plan) => self.apply(plan, Some(ConfigSource::Controller)).await,
                    Err(e) => Err(e.into()),
                };
                // A LAN newly routed here needs forwarding too.
                if result.is_ok() && own_lans(self.state.running()) != lans_before {
                    self.check_forwarding_if_needed(false);
                }
                if let Err(e) = &result {
                    tracing::error!(error = ?e, "failed to apply the new config; keeping what runs and asking again");
                    self.state.apply_failed(format!("{e:#}"));
                }
                let _ = done.send(result);
            }
            Event::Sync(outcome) => {
                let actions = self.state.on_sync(outcome, unix_now());
                self.perform(actions).await;
            }
            Event::Status(tx) => {
                let snap = self.device.snapshot().await;
                let url = self.controller.url();
                let _ = tx.send(
                    self.state
                        .status(&snap, SystemTime::now(), Instant::now(), url),
                );
            }
            Event::Health(tx) => {
                let handshakes = self.device.handshakes().await;
                let _ = tx.send(
                    self.state
                        .health(&handshakes, SystemTime::now(), Instant::now()),
                );
            }
            Event::Metrics(tx) => {
                let snap = self.device.snapshot().await;
                let _ = tx.send(self.state.metrics(&snap, SystemTime::now(), Instant::now()));
            }
            Event::OverlayMetrics(tx) => {
                let _ = tx.send(self.state.config().metrics_overlay(self.state.overlay_v4()));
            }
            Event::ProbeReply(reply, at) => self.state.on_probe_reply(&reply, at),
            Event::Handshake(peer, at) => self.state.on_handshake(&peer, at, Instant::now()),
            Event::Reload => self.reload(),
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Apply(plan) => {
                    if let Err(e) = self.apply(*plan, None).await {
                        tracing::warn!(error = ?e, "could not take the peers down");
                    }
                }
                Action::SendProbes { source, probes } => {
                    let Some(sock) = &self.probe_socket else {
                        continue;
                    };
                    for p in probes {
                        // A send error (no route yet, interface going down)
                        // is a lost probe: the scheduler counts it.
                        if let Err(e) = sock.send(source, p.address, p.seq).await {
                            tracing::debug!(error = %e, peer = %p.peer, "probe not sent");
                        }
                    }
                }
                Action::AnnounceRevoked => {
                    tracing::error!("{REVOKED_HELP}");
                    crate::notify::status("revoked: enrol the site again");
                }
            }
        }
    }

    /// Apply a plan: MTU and port (after the first time), peers through
    /// the device, addresses and routes by difference. `source`: a config
    /// to run and cache; `None`: the agent's own change (not cached).
    async fn apply(&mut self, done: ApplyPlan, source: Option<ConfigSource>) -> Result<()> {
        let plan = &done.plan;
        if !done.first {
            if let Some(mtu) = plan.mtu {
                self.device
                    .set_mtu(mtu)
                    .await
                    .context("failed to set the MTU")?;
            }
            if let Some(port) = plan.listen_port {
                self.device
                    .set_listen_port(port)
                    .await
                    .context("failed to move the listen port")?;
            }
        }
        if let Some(filter) = &plan.filter {
            self.device
                .set_filter(filter.clone())
                .await
                .context("failed to set the policy filter")?;
        }
        let peer_ops = plan.peer_ops.len();
        self.device
            .apply(plan.peer_ops.clone())
            .await
            .context("failed to apply the peers")?;
        let desired = &done.desired;
        self.routes
            .apply(&desired.interface.addresses, &desired.routes)
            .await
            .context("failed to set addresses and routes")?;
        if source.is_some() {
            if let Err(e) = self.cache.save_config(desired) {
                tracing::warn!(error = ?e, "could not cache the applied config; a restart without the controller would lack it");
            }
        }
        tracing::info!(
            revision = desired.revision,
            peers = desired.peers.len(),
            peer_ops,
            routes = desired.routes.len(),
            "config applied"
        );
        let revision = desired.revision;
        self.state.applied(done, source, Instant::now());
        if source.is_some() {
            self.applied_tx.send_replace(revision);
        }
        Ok(())
    }

    fn restart_sync(&mut self, client: ControllerClient) {
        if let Some(t) = self.sync_task.take() {
            t.abort();
        }
        self.sync_task = Some(tokio::spawn(sync_loop(
            client,
            self.state.enrolment().credential.clone(),
            self.state.config().long_poll_secs,
            self.handle.clone(),
            self.applied_tx.subscribe(),
            self.report_now.clone(),
            self.state.running().clone(),
        )));
    }

    /// Re-read the config file. A file that does not load changes nothing;
    /// new controller settings restart the sync at once.
    fn reload(&mut self) {
        crate::notify::reloading();
        match (self.reload)() {
            Err(e) => {
                tracing::error!(error = ?e, "reload: the config is not valid; keeping the one that runs")
            }
            Ok(new) => {
                let before = self.state.config().clone();
                let changed = self.state.reload(new, Instant::now());
                for key in &changed.pending {
                    tracing::warn!(
                        key,
                        "reload: `{key}` changed; it takes effect at the next restart (systemctl restart wardnet-agent)"
                    );
                }
                if changed.controller {
                    match controller_client(self.state.config(), self.state.enrolment()) {
                        Ok((client, url)) => {
                            tracing::info!(controller = %url, "reload: new controller settings; syncing now");
                            self.controller = client.clone();
                            self.restart_sync(client);
                        }
                        Err(e) => {
                            tracing::error!(error = ?e, "reload: keeping the controller settings that run");
                            self.state.keep_controller_settings(&before);
                        }
                    }
                }
                if changed.metrics_address {
                    // The NOC's target list follows now, not at the next sync.
                    self.report_now.notify_one();
                }
                if changed.forwarding {
                    self.check_forwarding_if_needed(true);
                }
                tracing::info!(
                    probe_interval_ms = self.state.config().probe_interval.as_millis() as u64,
                    enable_ip_forwarding = self.state.config().enable_ip_forwarding,
                    "reloaded the config"
                );
            }
        }
        crate::notify::ready(&format!(
            "tunnels up on {} (config reloaded)",
            self.state.config().interface
        ));
    }
}

/// The controller client for `config`, falling back to the controller
/// enrolment recorded; and the URLs it uses, for logs.
pub fn controller_client(
    config: &Config,
    enrolment: &Enrolment,
) -> Result<(ControllerClient, String)> {
    let urls = if config.controller_urls.is_empty() {
        vec![enrolment.controller_url.clone()]
    } else {
        config.controller_urls.clone()
    };
    let ca = config.ca_cert.clone().or_else(|| enrolment.ca_cert.clone());
    let client = ControllerClient::with_urls(
        &urls,
        ca.as_deref(),
        config.allow_plain_http || enrolment.allow_plain_http,
    )
    .context("failed to set up the controller client")?;
    Ok((client, urls.join(", ")))
}

/// A hub forwards between its spokes: say what to do when the host does
/// not (or do it, with `enable_ip_forwarding`).
impl<D: Device, R: Routes> Eventloop<D, R> {
    /// A hub forwards between its spokes, a site with a LAN between the
    /// LAN and its tunnels: check (and with `enable_ip_forwarding`, turn
    /// on) forwarding for either. `hub_too`: a hub's check as well (at
    /// start and on reload; a new config only adds LANs).
    fn check_forwarding_if_needed(&self, hub_too: bool) {
        let enable = self.state.config().enable_ip_forwarding;
        let cfg = self.state.running();
        if self.state.role() == Role::Hub {
            if hub_too {
                check_forwarding(enable, cfg);
            }
            return;
        }
        let lans = own_lans(cfg);
        if lans.is_empty() {
            return;
        }
        match crate::forwarding::ip_forwarding() {
            Ok((v4, v6)) => {
                if let Some(help) = crate::forwarding::lan_forwarding_help(&lans, v4, v6) {
                    if enable {
                        match crate::forwarding::enable_ip_forwarding() {
                            Ok(()) => tracing::info!(
                                "enabled IP forwarding for the site's LAN (enable_ip_forwarding = true)"
                            ),
                            Err(e) => tracing::error!(error = ?e, "{help}"),
                        }
                    } else {
                        tracing::error!("{help}");
                    }
                }
            }
            Err(e) => tracing::warn!(error = ?e, "cannot read the IP forwarding setting"),
        }
    }
}

/// The LAN prefixes this site routes through the overlay: what its filter
/// holds as its own besides its overlay addresses (none known from a
/// controller that sends no filter).
fn own_lans(cfg: &SiteConfig) -> Vec<ipnet::IpNet> {
    let Some(f) = &cfg.filter else {
        return Vec::new();
    };
    f.local
        .iter()
        .filter(|p| !cfg.interface.addresses.contains(p))
        .copied()
        .collect()
}

fn check_forwarding(enable: bool, cfg: &SiteConfig) {
    let uses_v6 = cfg
        .interface
        .addresses
        .iter()
        .any(|a| matches!(a, ipnet::IpNet::V6(_)));
    match crate::forwarding::ip_forwarding() {
        Ok((v4, v6)) => {
            if let Some(help) = crate::forwarding::hub_forwarding_help(v4, v6, uses_v6) {
                if enable {
                    match crate::forwarding::enable_ip_forwarding() {
                        Ok(()) => {
                            tracing::info!("enabled IP forwarding (enable_ip_forwarding = true)")
                        }
                        Err(e) => tracing::error!(error = ?e, "{help}"),
                    }
                } else {
                    tracing::error!("{help}");
                }
            }
        }
        Err(e) => tracing::warn!(error = ?e, "cannot read the IP forwarding setting"),
    }
    // Only with enable_ip_forwarding does the agent change the host's
    // settings; otherwise it says what to set.
    let help = crate::forwarding::REDIRECTS_HELP;
    match crate::forwarding::redirects_on() {
        Ok(false) => {}
        Ok(true) if enable => match crate::forwarding::quiet_redirects() {
            Ok(_) => tracing::info!(
                "turned off ICMP redirects (net.ipv4.conf.all.send_redirects = 0; enable_ip_forwarding = true)"
            ),
            Err(e) => tracing::error!(error = ?e, "{help}"),
        },
        Ok(true) => tracing::warn!("{help}"),
        Err(e) => tracing::warn!(error = ?e, "cannot read the ICMP redirects setting"),
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Sleep until `deadline`; never with none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
