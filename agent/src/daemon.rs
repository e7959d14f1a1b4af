//! `wardnet-agent run`: sets up the real things (the state directory, the
//! data plane on a TUN device, netlink, the raw probe socket, the `wg`
//! control socket and the HTTP endpoints) around one [`Eventloop`], runs
//! it, and takes everything down again through one path, on success and on
//! error alike.
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

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::agent_state::ConfigSource;
use crate::config::Config;
use crate::dataplane::{DataPlane, DataPlaneConfig, DataPlaneHandle};
use crate::device::KernelRoutes;
use crate::device_snapshot::DeviceSnapshot;
use crate::eventloop::{controller_client, Eventloop, Parts};
use crate::handle::{AgentHandle, Event};
use crate::health::io::ProbeSocket;
use crate::netlink::Netlink;
use crate::state_dir::StateDir;
use crate::sync::first_config;
use crate::uapi::SnapshotSource;

impl SnapshotSource for DataPlaneHandle {
    fn snapshot(&self) -> impl Future<Output = Option<DeviceSnapshot>> + Send {
        let h = self.clone();
        async move { DataPlaneHandle::snapshot(&h).await.ok() }
    }
}

/// Run the agent until `shutdown` resolves. `reload` reads the config file
/// anew (on SIGHUP).
pub(crate) async fn run(
    config: Config,
    reload: impl Fn() -> Result<Config> + Send + 'static,
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

    // The first config: the cache at once, else the controller.
    let (first, source) = match state.cached_config()? {
        Some(c) if c.site == enrolment.site => {
            tracing::info!(
                revision = c.revision,
                "bringing the tunnels up from the cached config"
            );
            (c, ConfigSource::Cache)
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
            (first, ConfigSource::Controller)
        }
    };

    let mut dp = DataPlane::start(DataPlaneConfig {
        interface: config.interface.clone(),
        mtu: first.interface.mtu,
        private_key: key.clone(),
        listen_port: first.interface.listen_port,
        hub_of: (enrolment.role == wardnet_common::Role::Hub).then(|| enrolment.region.clone()),
    })
    .await
    .with_context(|| format!("failed to start the data plane on {}", config.interface))?;
    let mut handshakes = dp.take_handshakes();
    let stop = CancellationToken::new();
    let result = async {
        let netlink = Netlink::new().context("failed to open a netlink socket")?;
        let ifindex = netlink
            .link_index(&config.interface)
            .await
            .with_context(|| format!("interface {} vanished", config.interface))?;
        netlink
            .set_link_up(ifindex)
            .await
            .context("failed to bring the interface up")?;
        // A hub forwards spoke-to-spoke traffic back out of the interface it
        // came in on; ICMP redirects would only tell spokes about a next hop
        // that does not exist on a point-to-point tunnel.
        let redirects = format!("/proc/sys/net/ipv4/conf/{}/send_redirects", config.interface);
        if let Err(e) = std::fs::write(&redirects, "0") {
            tracing::debug!(error = %e, path = %redirects, "could not turn off ICMP redirects");
        }
        // Probes go out as IPv4 packets on the WireGuard interface, so
        // through the TUN and our data plane; see health::io.
        let probe_socket = match ProbeSocket::open(&config.interface, rand::random()) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::error!(error = %e, interface = %config.interface, "cannot open the raw ICMP socket for health probes (needs CAP_NET_RAW); peers are judged by their handshakes alone");
                None
            }
        };
        let listen = config.metrics_listen;
        let local = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("failed to listen on {listen} (metrics_listen)"))?;
        let uapi = config.uapi_dir.join(format!("{}.sock", config.interface));
        let control = match crate::uapi::ControlSocket::bind(&uapi).await {
            Ok(c) => {
                tracing::info!(path = %uapi.display(), "serving the WireGuard control socket (`wg show`)");
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = ?e, "the WireGuard control socket failed; `wg show` will not work");
                None
            }
        };
        let mut eventloop = Eventloop::new(
            Parts {
                config,
                enrolment,
                cache: state,
                controller: client,
                probe_socket: probe_socket.clone(),
                reload: Box::new(reload),
                shutdown: stop.clone(),
            },
            dp.handle(),
            KernelRoutes { netlink, ifindex },
            &first,
            source,
        );
        let agent = eventloop.handle();
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(control) = control {
            let handle = dp.handle();
            let stop = stop.clone();
            tasks.spawn(async move {
                if let Err(e) = crate::uapi::serve(control, key, handle, stop.cancelled_owned()).await {
                    tracing::error!(error = ?e, "the WireGuard control socket failed; `wg show` will not work");
                }
            });
        }
        tracing::info!(%listen, "agent HTTP endpoint (/healthz, /readyz, /v1/status, /metrics)");
        tasks.spawn(serve_http(local, agent.clone(), stop.clone(), false));
        if let Some(sock) = probe_socket {
            tasks.spawn(read_probe_replies(sock, agent.clone(), stop.clone()));
        }
        if let Some(rx) = handshakes.take() {
            tasks.spawn(forward_handshakes(rx, agent.clone(), stop.clone()));
        }
        {
            let agent = agent.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        Some(()) = hangups.recv() => { agent.reload().await; }
                    }
                }
            });
        }

        eventloop.start(first, source).await?;
        // The overlay address is on the interface now: serve the metrics
        // there, for the NOC's Prometheus to scrape through the tunnels.
        let state = eventloop.state();
        let first = state.config().metrics_overlay(state.overlay_v4());
        tasks.spawn(serve_overlay_metrics(agent.clone(), first, stop.clone()));
        crate::notify::ready(&format!(
            "tunnels up on {} from the {} config",
            state.config().interface,
            source.as_str()
        ));
        // The loop's own shutdown path runs either way: a signal cancels
        // `stop`, which the loop sees.
        let run = eventloop.run();
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            () = &mut shutdown => {
                stop.cancel();
                run.await
            }
        };
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        result
    }
    .await;

    tracing::info!("shutting down: closing the control socket, the tunnels and the interface");
    crate::notify::stopping();
    stop.cancel();
    // Routes and addresses go with the interface when the TUN closes.
    if let Err(e) = dp.shutdown().await {
        tracing::warn!(error = ?e, "the data plane did not stop cleanly");
    }
    result
}

/// The metrics endpoint on the overlay address, following the address:
/// a renumbered site's agent moves it to the new address once the old one
/// has left its config (checked every few seconds).
async fn serve_overlay_metrics(
    agent: AgentHandle,
    mut want: Option<std::net::SocketAddr>,
    stop: CancellationToken,
) {
    let mut serving: Option<(std::net::SocketAddr, CancellationToken)> = None;
    // An address that would not bind is tried again, and said once.
    let mut failed = None;
    loop {
        if serving.as_ref().map(|(a, _)| *a) != want {
            if let Some((old, s)) = serving.take() {
                s.cancel();
                tracing::info!(%old, "the overlay address moved: metrics endpoint closed there");
            }
            if let Some(listen) = want {
                match tokio::net::TcpListener::bind(listen).await {
                    Ok(listener) => {
                        tracing::info!(%listen, "metrics endpoint on the overlay address (/metrics, /healthz, /readyz)");
                        let s = stop.child_token();
                        tokio::spawn(serve_http(listener, agent.clone(), s.clone(), true));
                        serving = Some((listen, s));
                    }
                    Err(e) if failed != Some(listen) => {
                        failed = Some(listen);
                        tracing::error!(
                            error = %e, %listen,
                            "cannot serve metrics on the overlay address; Prometheus will not reach this agent (set metrics_overlay_port = 0 to turn it off)"
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        match agent.overlay_metrics().await {
            Some(now) => want = now,
            None => return,
        }
    }
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    agent: AgentHandle,
    stop: CancellationToken,
    overlay: bool,
) {
    let served = if overlay {
        crate::http::serve_overlay(listener, agent, stop.cancelled_owned()).await
    } else {
        crate::http::serve(listener, agent, stop.cancelled_owned()).await
    };
    if let Err(e) = served {
        tracing::error!(error = ?e, overlay, "the agent's HTTP endpoint failed");
    }
}

async fn read_probe_replies(sock: Arc<ProbeSocket>, agent: AgentHandle, stop: CancellationToken) {
    loop {
        let reply = tokio::select! {
            () = stop.cancelled() => return,
            r = sock.recv() => r,
        };
        match reply {
            Ok(reply) => {
                if !agent.send(Event::ProbeReply(reply, Instant::now())).await {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading probe replies failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn forward_handshakes(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<wardnet_common::Name>,
    agent: AgentHandle,
    stop: CancellationToken,
) {
    loop {
        let peer = tokio::select! {
            () = stop.cancelled() => return,
            p = rx.recv() => p,
        };
        let Some(peer) = peer else { return };
        if !agent.send(Event::Handshake(peer, Instant::now())).await {
            return;
        }
    }
}
