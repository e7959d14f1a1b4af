//! `wardnet-agent run`: one event loop that owns the applied state. The
//! controller client, the data plane, the `wg` control socket and the local
//! HTTP endpoint are tasks around it; they talk to it through channels.
//!
//! Start-up never waits on the controller when a cached config exists: the
//! tunnels come up from the cache and the sync task catches up in the
//! background.
//!
//! SIGHUP (`systemctl reload`) re-reads the config file: the probe
//! interval, forwarding, the advertised metrics address and the controller
//! settings change at once (a new controller client re-syncs at once); keys
//! that shape the interface, its sockets or the log writer wait for a
//! restart, and the log says so. A file that does not parse changes nothing.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use wardnet_common::delta::ConfigUpdate;
use wardnet_common::wire::{AgentReport, HealthSummary, SiteConfig};
use wardnet_common::Role;

use crate::backoff::Backoff;
use crate::client::{ClientError, ControllerClient};
use crate::config::Config;
use crate::dataplane::{DataPlane, DataPlaneConfig, DataPlaneHandle};
use crate::health::icmp::EchoReply;
use crate::health::io::ProbeSocket;
use crate::health::probe::ReplyOutcome;
use crate::health::{probe_address, summarize, PeerHealth, ProbeConfig, ProbeTarget, Scheduler};
use crate::metrics::{Metrics, PeerScrape, Scrape};
use crate::netlink::Netlink;
use crate::reconcile::{self, Applied};
use crate::snapshot::DeviceSnapshot;
use crate::state::{Enrolment, StateDir};
use crate::status::{peer_statuses, AgentStatus};
use crate::uapi::SnapshotSource;

impl SnapshotSource for DataPlaneHandle {
    fn snapshot(&self) -> impl Future<Output = Option<DeviceSnapshot>> + Send {
        let h = self.clone();
        async move { DataPlaneHandle::snapshot(&h).await.ok() }
    }
}

/// What the tasks around the loop tell it.
enum Event {
    /// A new config from the controller.
    Config(SiteConfig),
    /// The controller answered (true) or could not be reached (false).
    Sync {
        ok: bool,
        error: Option<String>,
    },
    Status(oneshot::Sender<AgentStatus>),
    /// The health summary for the controller.
    Health(oneshot::Sender<HealthSummary>),
    /// `/metrics` in the Prometheus text format.
    Metrics(oneshot::Sender<String>),
    /// An echo reply to one of our probes, and when it arrived.
    ProbeReply(EchoReply, Instant),
}

/// Shared with the HTTP endpoint.
#[derive(Clone)]
pub struct Shared {
    pub ready: Arc<AtomicBool>,
    events: mpsc::Sender<Event>,
}

impl Shared {
    pub async fn status(&self) -> Option<AgentStatus> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Event::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn metrics(&self) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Event::Metrics(tx)).await.ok()?;
        rx.await.ok()
    }
}

struct Agent {
    config: Config,
    enrolment: Enrolment,
    state: StateDir,
    dp: DataPlaneHandle,
    netlink: Netlink,
    ifindex: u32,
    applied: Applied,
    running: SiteConfig,
    source: &'static str,
    reachable: bool,
    controller_error: Option<String>,
    last_sync: Option<i64>,
    /// The revision the data plane runs; the sync task reports it.
    applied_tx: watch::Sender<u64>,
    probes: Scheduler,
    /// `None` when the raw ICMP socket could not be opened (no CAP_NET_RAW).
    probe_socket: Option<Arc<ProbeSocket>>,
    metrics: Metrics,
    /// Tells the sync task to report at once (a new metrics address).
    report_now: Arc<tokio::sync::Notify>,
    /// The sync task's client: which controller it uses now.
    controller: ControllerClient,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The controller client for `config`, falling back to the controller
/// enrolment recorded; and the URLs it uses, for logs.
fn controller_client(config: &Config, enrolment: &Enrolment) -> Result<(ControllerClient, String)> {
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

/// Run the agent until `shutdown` resolves. `reload` reads the config file
/// anew (on SIGHUP).
pub async fn run(
    config: Config,
    reload: impl Fn() -> Result<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Before anything else: SIGHUP's default action would end the agent.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("failed to install the SIGHUP handler")?;
    let state = StateDir::new(&config.state_dir);
    let enrolment = state.enrolment()?;
    let key = state.key()?;
    let (client, url) = controller_client(&config, &enrolment)?;
    tokio::pin!(shutdown);

    let (events_tx, mut events) = mpsc::channel::<Event>(16);
    let (applied_tx, applied_rx) = watch::channel(0u64);

    // The first config: the cache at once, else the controller.
    let (first, source) = match state.cached_config()? {
        Some(c) if c.site == enrolment.site => {
            tracing::info!(
                revision = c.revision,
                "bringing the tunnels up from the cached config"
            );
            (c, "cache")
        }
        _ => {
            tracing::info!(controller = %url, "no cached config; waiting for the first config from the controller");
            crate::notify::status(&format!("waiting for the first config from {url}"));
            let first = tokio::select! {
                c = crate::notify::with_watchdog(first_config(&client, &enrolment.credential)) => c?,
                () = &mut shutdown => {
                    crate::notify::stopping();
                    return Ok(());
                }
            };
            (first, "controller")
        }
    };

    let dp = DataPlane::start(DataPlaneConfig {
        interface: config.interface.clone(),
        mtu: first.interface.mtu,
        private_key: key.clone(),
        listen_port: first.interface.listen_port,
    })
    .await
    .with_context(|| format!("failed to start the data plane on {}", config.interface))?;
    let netlink = Netlink::new().context("failed to open a netlink socket")?;
    let ifindex = netlink
        .link_index(&config.interface)
        .await
        .with_context(|| format!("interface {} vanished", config.interface))?;
    netlink
        .set_link_up(ifindex)
        .await
        .context("failed to bring the interface up")?;
    // A hub forwards spoke-to-spoke traffic back out of the interface it came
    // in on; ICMP redirects would only tell spokes about a next hop that does
    // not exist on a point-to-point tunnel.
    let redirects = format!(
        "/proc/sys/net/ipv4/conf/{}/send_redirects",
        config.interface
    );
    if let Err(e) = std::fs::write(&redirects, "0") {
        tracing::debug!(error = %e, path = %redirects, "could not turn off ICMP redirects");
    }

    if enrolment.role == Role::Hub {
        check_forwarding(config.enable_ip_forwarding, &first);
    }

    let shared = Shared {
        ready: Arc::new(AtomicBool::new(false)),
        events: events_tx.clone(),
    };
    let stop = CancellationToken::new();

    let uapi_task = {
        let path = config.uapi_dir.join(format!("{}.sock", config.interface));
        let handle = dp.handle();
        let stop = stop.clone();
        let key = key.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::uapi::serve(path, key, handle, stop.cancelled_owned()).await {
                tracing::error!(error = ?e, "the WireGuard control socket failed; `wg show` will not work");
            }
        })
    };
    let http_task = {
        let shared = shared.clone();
        let stop = stop.clone();
        let listen = config.metrics_listen;
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listen, shared, stop.cancelled_owned()).await {
                tracing::error!(error = ?e, %listen, "the agent's HTTP endpoint failed");
            }
        })
    };
    // Probes go out as IPv4 packets on the WireGuard interface, so through
    // the TUN and our data plane; see health::io.
    let probe_socket = match ProbeSocket::open(&config.interface, rand::random()) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::error!(error = %e, interface = %config.interface, "cannot open the raw ICMP socket for health probes (needs CAP_NET_RAW); peers are judged by their handshakes alone");
            None
        }
    };
    let probe_reader = probe_socket.clone().map(|sock| {
        let events = events_tx.clone();
        tokio::spawn(async move {
            loop {
                match sock.recv().await {
                    Ok(reply) => {
                        if events
                            .send(Event::ProbeReply(reply, Instant::now()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading probe replies failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    });
    let probe_config = ProbeConfig::with_interval(config.probe_interval);
    let mut agent = Agent {
        config,
        enrolment,
        state,
        dp: dp.handle(),
        netlink,
        ifindex,
        applied: Applied::default(),
        running: first.clone(),
        source,
        reachable: source == "controller",
        controller_error: None,
        last_sync: (source == "controller").then(unix_now),
        applied_tx,
        probes: Scheduler::new(probe_config),
        probe_socket,
        metrics: Metrics::new(),
        report_now: Arc::new(tokio::sync::Notify::new()),
        controller: client.clone(),
    };
    let mut overlay_http = None;
    let mut sync_task = None;
    let result = async {
        agent.apply(first).await?;
        // The overlay address is on the interface now: serve the metrics
        // there, for the NOC's Prometheus to scrape through the tunnels.
        if let Some(listen) = agent.config.metrics_overlay(agent.overlay_v4()) {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => {
                    tracing::info!(%listen, "metrics endpoint on the overlay address (/metrics, /healthz, /readyz)");
                    let shared = shared.clone();
                    let stop = stop.clone();
                    overlay_http = Some(tokio::spawn(async move {
                        if let Err(e) =
                            crate::http::serve_overlay(listener, shared, stop.cancelled_owned()).await
                        {
                            tracing::error!(error = ?e, %listen, "the overlay metrics endpoint failed");
                        }
                    }));
                }
                Err(e) => tracing::error!(
                    error = %e, %listen,
                    "cannot serve metrics on the overlay address; Prometheus will not reach this agent (set metrics_overlay_port = 0 to turn it off)"
                ),
            }
        }
        shared.ready.store(true, Ordering::SeqCst);
        crate::notify::ready(&format!(
            "tunnels up on {} from the {} config",
            agent.config.interface, agent.source
        ));
        let mut watchdog = crate::notify::Watchdog::from_env();
        // Only now: the sync task asks from the revision that runs.
        sync_task = Some(tokio::spawn(sync_loop(
            client.clone(),
            agent.enrolment.credential.clone(),
            agent.config.long_poll_secs,
            events_tx.clone(),
            applied_rx,
            agent.report_now.clone(),
            agent.running.clone(),
        )));
        loop {
            let deadline = agent.probes.next_deadline();
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = sleep_until(deadline) => agent.probe_tick().await,
                // Pinged from this loop, so a wedged loop stops the pings.
                () = watchdog.tick() => crate::notify::watchdog(),
                Some(()) = hangups.recv() => {
                    if let Some(client) = agent.reload(&reload) {
                        // The new client re-syncs at once, from what runs.
                        if let Some(t) = sync_task.take() {
                            t.abort();
                        }
                        sync_task = Some(tokio::spawn(sync_loop(
                            client,
                            agent.enrolment.credential.clone(),
                            agent.config.long_poll_secs,
                            events_tx.clone(),
                            agent.applied_tx.subscribe(),
                            agent.report_now.clone(),
                            agent.running.clone(),
                        )));
                    }
                }
                ev = events.recv() => match ev {
                    Some(Event::Config(c)) => {
                        if let Err(e) = agent.apply(c).await {
                            tracing::error!(error = ?e, "failed to apply the new config; keeping what runs and retrying with the next one");
                        } else {
                            agent.source = "controller";
                        }
                    }
                    Some(Event::Sync { ok, error }) => {
                        agent.reachable = ok;
                        agent.controller_error = error;
                        if ok {
                            agent.last_sync = Some(unix_now());
                        }
                    }
                    Some(Event::Status(tx)) => {
                        let _ = tx.send(agent.status().await);
                    }
                    Some(Event::Health(tx)) => {
                        let _ = tx.send(agent.health().await);
                    }
                    Some(Event::Metrics(tx)) => {
                        let _ = tx.send(agent.render_metrics().await);
                    }
                    Some(Event::ProbeReply(reply, at)) => agent.probe_reply(reply, at),
                    None => return Ok(()),
                },
            }
        }
    }
    .await;

    tracing::info!("shutting down: closing the control socket, the tunnels and the interface");
    crate::notify::stopping();
    shared.ready.store(false, Ordering::SeqCst);
    stop.cancel();
    if let Some(t) = sync_task {
        t.abort();
    }
    if let Some(t) = probe_reader {
        t.abort();
    }
    let _ = uapi_task.await;
    let _ = http_task.await;
    if let Some(t) = overlay_http {
        let _ = t.await;
    }
    // Routes and addresses go with the interface when the TUN closes.
    if let Err(e) = dp.shutdown().await {
        tracing::warn!(error = ?e, "the data plane did not stop cleanly");
    }
    result
}

impl Agent {
    /// The site's overlay IPv4 address (from its enrolment).
    fn overlay_v4(&self) -> Option<std::net::Ipv4Addr> {
        self.enrolment.addresses.iter().find_map(|a| match a {
            ipnet::IpNet::V4(n) => Some(n.addr()),
            ipnet::IpNet::V6(_) => None,
        })
    }

    /// Re-read the config file (SIGHUP). Returns a new controller client
    /// when its settings changed; a file that does not load changes nothing.
    fn reload(&mut self, load: &impl Fn() -> Result<Config>) -> Option<ControllerClient> {
        crate::notify::reloading();
        let client = match load() {
            Err(e) => {
                tracing::error!(error = ?e, "reload: the config is not valid; keeping the one that runs");
                None
            }
            Ok(new) => {
                let (mut new, pending) = self.config.reloaded(new);
                for key in pending {
                    tracing::warn!(
                        key,
                        "reload: `{key}` changed; it takes effect at the next restart (systemctl restart wardnet-agent)"
                    );
                }
                let mut client = None;
                if new.controller_settings() != self.config.controller_settings() {
                    match controller_client(&new, &self.enrolment) {
                        Ok((c, url)) => {
                            tracing::info!(controller = %url, "reload: new controller settings; syncing now");
                            self.controller = c.clone();
                            client = Some(c);
                        }
                        Err(e) => {
                            tracing::error!(error = ?e, "reload: keeping the controller settings that run");
                            new.controller_urls.clone_from(&self.config.controller_urls);
                            new.ca_cert.clone_from(&self.config.ca_cert);
                            new.allow_plain_http = self.config.allow_plain_http;
                            new.long_poll_secs = self.config.long_poll_secs;
                        }
                    }
                }
                let probes_changed = new.probe_interval != self.config.probe_interval;
                let overlay = self.overlay_v4();
                let advertise_changed =
                    new.metrics_address(overlay) != self.config.metrics_address(overlay);
                let forwarding_changed =
                    new.enable_ip_forwarding != self.config.enable_ip_forwarding;
                self.config = new;
                if probes_changed {
                    // Peers start afresh at the new pace (windows reset).
                    self.probes =
                        Scheduler::new(ProbeConfig::with_interval(self.config.probe_interval));
                    let running = self.running.clone();
                    self.set_probe_targets(&running);
                }
                if advertise_changed {
                    // The NOC's target list follows now, not at the next sync.
                    self.report_now.notify_one();
                }
                if forwarding_changed && self.enrolment.role == Role::Hub {
                    check_forwarding(self.config.enable_ip_forwarding, &self.running);
                }
                tracing::info!(
                    probe_interval_ms = self.config.probe_interval.as_millis() as u64,
                    enable_ip_forwarding = self.config.enable_ip_forwarding,
                    "reloaded the config"
                );
                client
            }
        };
        crate::notify::ready(&format!(
            "tunnels up on {} (config reloaded)",
            self.config.interface
        ));
        client
    }

    /// Apply a config by difference: peers through the reconciler (unchanged
    /// peers untouched), addresses and routes against what the kernel has.
    async fn apply(&mut self, desired: SiteConfig) -> Result<()> {
        if desired.site != self.enrolment.site {
            anyhow::bail!(
                "the controller sent the config of site {} but this gateway is {}",
                desired.site,
                self.enrolment.site
            );
        }
        let plan = reconcile::plan(&desired, &self.applied);
        if let Some(mtu) = plan.mtu.filter(|_| self.applied.mtu.is_some()) {
            self.dp
                .set_mtu(mtu)
                .await
                .context("failed to set the MTU")?;
        }
        if let Some(port) = plan
            .listen_port
            .filter(|_| self.applied.listen_port.is_some())
        {
            self.dp
                .set_listen_port(port)
                .await
                .context("failed to move the listen port")?;
        }
        let peer_ops = plan.peer_ops.len();
        self.dp
            .apply(plan.peer_ops.clone())
            .await
            .context("the data plane stopped")?;
        let changed = self
            .netlink
            .apply(self.ifindex, &desired.interface.addresses, &desired.routes)
            .await
            .context("failed to set addresses and routes")?;
        self.applied = self.applied.after(&plan);
        if let Err(e) = self.state.save_config(&desired) {
            tracing::warn!(error = ?e, "could not cache the applied config; a restart without the controller would lack it");
        }
        tracing::info!(
            revision = desired.revision,
            peers = desired.peers.len(),
            peer_ops,
            addresses_added = changed.added_addresses.len(),
            routes_added = changed.added_routes.len(),
            routes_removed = changed.removed_routes.len(),
            "config applied"
        );
        self.applied_tx.send_replace(desired.revision);
        self.set_probe_targets(&desired);
        self.running = desired;
        Ok(())
    }

    /// Probe every peer of the new config at its overlay address, from ours.
    fn set_probe_targets(&mut self, desired: &SiteConfig) {
        let probing = self.probe_socket.is_some() && self.probe_source(desired).is_some();
        let targets: Vec<ProbeTarget> = desired
            .peers
            .iter()
            .map(|p| ProbeTarget {
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
        self.probes.set_peers(targets, Instant::now());
    }

    fn probe_source(&self, cfg: &SiteConfig) -> Option<Ipv4Addr> {
        cfg.interface.addresses.iter().find_map(|a| match a {
            ipnet::IpNet::V4(v4) => Some(v4.addr()),
            ipnet::IpNet::V6(_) => None,
        })
    }

    async fn probe_tick(&mut self) {
        let due = self.probes.on_tick(Instant::now());
        let (Some(sock), Some(src)) = (&self.probe_socket, self.probe_source(&self.running)) else {
            return;
        };
        for p in due {
            // A send error (no route yet, interface going down) is a lost
            // probe: the scheduler counts it when it times out.
            if let Err(e) = sock.send(src, p.address, p.seq).await {
                tracing::debug!(error = %e, peer = %p.peer, "probe not sent");
            }
        }
    }

    fn probe_reply(&mut self, reply: EchoReply, at: Instant) {
        let Some(peer) = self.probes.peer_for(reply.src).cloned() else {
            return;
        };
        if let ReplyOutcome::Answered { rtt } = self.probes.on_reply(&peer, reply.seq, at) {
            if let Some(t) = self.probes.target(&peer) {
                self.metrics.observe_rtt(&t.name, &t.region, t.role, rtt);
            }
        }
    }

    async fn health(&self) -> HealthSummary {
        let snap = self.dp.snapshot().await.unwrap_or_default();
        let peers: Vec<PeerHealth> = self
            .peer_statuses(&snap)
            .into_iter()
            .map(|p| PeerHealth {
                name: p.name,
                up: p.up,
                rtt: p.rtt_seconds.map(Duration::from_secs_f64),
                loss_ratio: p.loss_ratio,
            })
            .collect();
        summarize(&peers, self.config.metrics_address(self.overlay_v4()))
    }

    fn peer_statuses(&self, snap: &DeviceSnapshot) -> Vec<crate::status::PeerStatus> {
        let now = Instant::now();
        peer_statuses(snap, SystemTime::now(), |n| self.probes.view_of(n, now))
    }

    async fn render_metrics(&self) -> String {
        let snap = self.dp.snapshot().await.unwrap_or_default();
        let up: std::collections::BTreeMap<_, _> = self
            .peer_statuses(&snap)
            .into_iter()
            .map(|s| (s.name, s.up))
            .collect();
        let configured: std::collections::BTreeMap<_, _> =
            self.running.peers.iter().map(|c| (&c.name, c)).collect();
        let now = Instant::now();
        let peers = snap
            .peers
            .iter()
            .filter_map(|p| {
                let cfg = configured.get(&p.name)?;
                let up = up.get(&p.name).copied().unwrap_or(false);
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
                })
            })
            .collect();
        self.metrics.render(Scrape {
            applied_revision: self.running.revision,
            controller_reachable: self.reachable,
            last_sync: self.last_sync,
            counters: snap.counters,
            peers,
        })
    }

    async fn status(&self) -> AgentStatus {
        let snap = self.dp.snapshot().await.unwrap_or_default();
        AgentStatus {
            site: self.enrolment.site.clone(),
            region: self.enrolment.region.clone(),
            role: self.enrolment.role,
            interface: self.config.interface.clone(),
            listen_port: snap.listen_port,
            applied_revision: self.running.revision,
            config_source: self.source.to_owned(),
            controller_url: self.controller.url(),
            controller_reachable: self.reachable,
            controller_error: self.controller_error.clone(),
            last_sync: self.last_sync,
            peers: self.peer_statuses(&snap),
        }
    }
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
}

/// Fetch the first config, retrying with backoff (no cache to fall back on).
async fn first_config(client: &ControllerClient, credential: &str) -> Result<SiteConfig> {
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

/// The sync task: long-poll, turn the answers (steps since the config that
/// runs, or a full config) into the config to run and hand it to the loop,
/// report what was applied (with a health summary), back off on failure.
///
/// `base` is the config that runs; steps are applied to a copy of it. When
/// the steps do not chain to it (or the loop runs another revision than the
/// last config handed over), the task asks for the full config instead, so
/// the agent never ends on a config the controller did not render.
async fn sync_loop(
    client: ControllerClient,
    credential: String,
    long_poll_secs: u64,
    events: mpsc::Sender<Event>,
    mut applied: watch::Receiver<u64>,
    report_now: Arc<tokio::sync::Notify>,
    base: SiteConfig,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), SYNC_RETRY_MAX);
    // What was reported last, and when: every long-poll tells the
    // controller the agent is there, so a report goes only when the applied
    // revision or the shape of the health changed, or every REPORT_REFRESH.
    let mut reported: Option<(u64, HealthShape)> = None;
    let mut reported_at = Instant::now();
    let mut current = Some(base);
    loop {
        let known = *applied.borrow_and_update();
        if current.as_ref().is_some_and(|c| c.revision != known) {
            current = None;
        }
        let health = health(&events).await;
        let shape = HealthShape::of(health.as_ref());
        let stale = reported_at.elapsed() >= REPORT_REFRESH;
        if stale || reported.as_ref() != Some(&(known, shape.clone())) {
            let report = AgentReport {
                applied_revision: known,
                health,
            };
            match client.report(&credential, &report).await {
                Ok(()) => {
                    tracing::debug!(revision = known, "reported");
                    reported = Some((known, shape));
                    reported_at = Instant::now();
                    // The controller answered: reachable now, not only
                    // when the long-poll below returns.
                    let _ = events
                        .send(Event::Sync {
                            ok: true,
                            error: None,
                        })
                        .await;
                }
                // The long-poll below fails the same way and warns, with backoff.
                Err(e) => tracing::debug!(error = %e, "report failed"),
            }
        }
        // Without a base for steps, ask for the full config (revision 0
        // answers at once with it).
        let ask = if current.is_some() { known } else { 0 };
        let polled = tokio::select! {
            r = client.config(&credential, ask, Duration::from_secs(long_poll_secs)) => r,
            () = report_now.notified() => {
                tracing::debug!("reporting now (the metrics address changed)");
                // Report at the top of the loop, then wait again.
                reported = None;
                continue;
            }
        };
        let polled = match polled {
            Ok(Some(ConfigUpdate::Full { config })) => Ok(Some(config)),
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
                        Ok(Some(next))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "config steps do not apply to the running config; asking for the full config");
                        current = None;
                        continue;
                    }
                }
            }
            other => other.map(|_| None),
        };
        if let Ok(Some(c)) = &polled {
            current = Some(c.clone());
        }
        match polled {
            Ok(Some(cfg)) => {
                backoff.reset();
                let _ = events
                    .send(Event::Sync {
                        ok: true,
                        error: None,
                    })
                    .await;
                let rev = cfg.revision;
                if events.send(Event::Config(cfg)).await.is_err() {
                    return;
                }
                // Wait until the loop has applied it (or moved on).
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    while *applied.borrow_and_update() < rev {
                        if applied.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
            }
            Ok(None) => {
                // The long-poll itself refreshed last-seen at the controller;
                // the top of the loop reports if anything else changed.
                backoff.reset();
                let _ = events
                    .send(Event::Sync {
                        ok: true,
                        error: None,
                    })
                    .await;
            }
            Err(e) => {
                let delay = backoff.next_delay(rand::random());
                tracing::warn!(error = %e, retry_in = ?delay, "controller sync failed; the tunnels keep running");
                let _ = events
                    .send(Event::Sync {
                        ok: false,
                        error: Some(e.to_string()),
                    })
                    .await;
                if matches!(e, ClientError::Refused { status, .. } if status == reqwest::StatusCode::UNAUTHORIZED)
                {
                    tracing::error!("this site's credential was refused: it was revoked or re-enrolled; the tunnels stay as they are until the agent is stopped");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The longest wait between two attempts to reach the controller (jittered
/// between half and all of it): after an outage, every agent is back
/// within this of the controller's return. A fleet retrying this often
/// costs a down controller's host one refused connection per agent every
/// 4–8 s, which it handles.
const SYNC_RETRY_MAX: Duration = Duration::from_secs(8);

/// How often an agent reports even when nothing changed (RTT and loss
/// figures move all the time; the NOC sees them this fresh at least).
const REPORT_REFRESH: Duration = Duration::from_secs(300);

/// What of a health summary makes a report worth sending at once: the
/// counts and names, not the RTT and loss figures, which always move.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HealthShape {
    peers_up: u32,
    peers_total: u32,
    worst_peer: Option<wardnet_common::Name>,
    metrics_address: Option<String>,
}

impl HealthShape {
    fn of(h: Option<&HealthSummary>) -> Self {
        HealthShape {
            peers_up: h.map_or(0, |h| h.peers_up),
            peers_total: h.map_or(0, |h| h.peers_total),
            worst_peer: h.and_then(|h| h.worst_peer.clone()),
            metrics_address: h.and_then(|h| h.metrics_address.clone()),
        }
    }
}

async fn health(events: &mpsc::Sender<Event>) -> Option<HealthSummary> {
    let (tx, rx) = oneshot::channel();
    events.send(Event::Health(tx)).await.ok()?;
    rx.await.ok()
}

/// Sleep until `deadline`; never with none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
