//! The agent's userspace WireGuard data plane: one TUN device, one UDP
//! socket (IPv4 and IPv6 underlay), one `boringtun::noise::Tunn` per peer.
//!
//! Shape (docs/contributing.md): the decisions live in the sans-IO [`core`]; this file is
//! the thin shell. ONE tokio task owns the device, the socket and the core; it
//! selects over TUN reads, UDP reads, commands and a timer tick, so a packet
//! never hops through a channel on its way in. What comes out leaves in
//! batches through two writer threads ([`output`]), so the kernel's cost of
//! sending and of delivering runs on other cores while the loop works on
//! the next batch. Everyone else holds a cloneable [`DataPlaneHandle`] and
//! talks to the loop with [`Command`]s.
//!
//! Addresses and routes on the interface are not set here (netlink module).

mod codel;
mod core;
#[cfg(test)]
mod core_tests;
pub mod enforce;
mod lpm;
mod output;
mod tun;
mod udp;

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wardnet_common::filter::SiteFilter;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tun_rs::AsyncDevice;
use wardnet_common::{Name, PrivateKey};

use self::codel::{Codel, RingSizer};
use self::core::{is_bulk_data, is_handshake, Core, Transmit, HANDSHAKE_MAX};
use self::output::Writer;
use self::tun::{TunRead, TunWrite};
use self::udp::{RecvBatch, SendBatch, Socket, RECV_BATCH};
use crate::device_snapshot::{DeviceSnapshot, Handshakes};
use crate::reconcile::PeerOp;

/// Timer granularity; WireGuard's timers are specified in seconds.
const TICK: Duration = Duration::from_millis(250);
/// Packets handled per readiness event before yielding to the other sources.
const BATCH: usize = 128;
/// Underlay socket buffers. Set with SO_*BUFFORCE (we hold CAP_NET_ADMIN for
/// the TUN device anyway), so net.core.[rw]mem_max's small default does not
/// cap them: at ~100k packets/s the default 208 KiB overflows in ~1 ms of
/// scheduling delay, and every overflow is a TCP retransmit in the tunnel.
const SOCKET_BUFFER: usize = 8 << 20;
/// Handshake messages held behind the data messages (kernel WireGuard: 4,096);
/// a flood beyond this is dropped unread.
const HANDSHAKE_QUEUE: usize = 1024;
/// Handshake messages handled per wake-up: a legitimate one costs two DHs
/// (~100 µs), so data waits at most ~1.6 ms behind them.
const HANDSHAKE_BUDGET: usize = 16;

/// How to start a data plane.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// TUN interface name (at most 15 bytes, unique per host).
    pub interface: String,
    pub mtu: u16,
    pub private_key: PrivateKey,
    /// UDP listen port; 0 picks a free one (see the snapshot's `listen_port`).
    pub listen_port: u16,
    /// The region this site is a hub of (`None` for a spoke): the other
    /// hubs of that region may deliver traffic from any source.
    pub hub_of: Option<Name>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("failed to create TUN device {interface:?}")]
    Tun {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to bind the WireGuard UDP socket on port {port}")]
    Bind {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("failed to set MTU {mtu} on the TUN device")]
    SetMtu {
        mtu: u16,
        #[source]
        source: io::Error,
    },
    #[error("failed to start the data plane's writer threads")]
    Threads(#[source] io::Error),
    #[error("I/O error in the data plane loop")]
    Io(#[source] io::Error),
    #[error("the data plane has stopped")]
    Stopped,
}

/// What other tasks can ask of the loop.
enum Command {
    Apply(Vec<PeerOp>, oneshot::Sender<()>),
    Snapshot(oneshot::Sender<DeviceSnapshot>),
    Handshakes(oneshot::Sender<Handshakes>),
    SetMtu(u16, oneshot::Sender<Result<(), DataPlaneError>>),
    SetListenPort(u16, oneshot::Sender<Result<(), DataPlaneError>>),
    SetFilter(Option<SiteFilter>, oneshot::Sender<()>),
    Shutdown,
}

/// A cloneable way to talk to a running data plane.
#[derive(Clone)]
pub struct DataPlaneHandle {
    commands: mpsc::Sender<Command>,
}

/// The running data plane; `shutdown`/`wait` give back the loop's result.
pub struct DataPlane {
    handle: DataPlaneHandle,
    task: tokio::task::JoinHandle<Result<(), DataPlaneError>>,
    handshakes: Option<mpsc::UnboundedReceiver<Name>>,
}

impl DataPlane {
    /// Creates the TUN device (layer 3, no packet-info header, MTU set, up)
    /// and binds the UDP socket in the calling thread's network namespace,
    /// then spawns the event loop on the current tokio runtime.
    pub async fn start(config: DataPlaneConfig) -> Result<DataPlane, DataPlaneError> {
        let tun = tun_rs::DeviceBuilder::new()
            .name(&config.interface)
            .mtu(config.mtu)
            .layer(tun_rs::Layer::L3)
            .packet_information(false)
            .tx_queue_len(codel::RING_MAX)
            .offload(true)
            .enable(true)
            .build_async()
            .map_err(|source| DataPlaneError::Tun {
                interface: config.interface.clone(),
                source,
            })?;
        let socket = bind_udp(config.listen_port)?;
        let (tx, rx) = mpsc::channel(64);
        let (handshakes_tx, handshakes) = mpsc::unbounded_channel();
        let shell = Shell::new(
            tun,
            socket,
            Core::new(&config.private_key, config.hub_of.clone()),
            handshakes_tx,
        )
        .map_err(DataPlaneError::Threads)?;
        let task = tokio::spawn(shell.run(rx));
        Ok(DataPlane {
            handle: DataPlaneHandle { commands: tx },
            task,
            handshakes: Some(handshakes),
        })
    }

    pub fn handle(&self) -> DataPlaneHandle {
        self.handle.clone()
    }

    /// The peers' completed handshakes, by name, as they happen (once:
    /// later calls get `None`). At most a few per peer every two minutes.
    pub fn take_handshakes(&mut self) -> Option<mpsc::UnboundedReceiver<Name>> {
        self.handshakes.take()
    }

    /// Stops the loop (closing the device and socket) and returns its result.
    pub async fn shutdown(self) -> Result<(), DataPlaneError> {
        // If the loop is already gone the send fails; its result is below.
        let _ = self.handle.commands.send(Command::Shutdown).await;
        self.wait().await
    }

    /// Waits for the loop to end (after a shutdown or a fatal I/O error).
    pub async fn wait(self) -> Result<(), DataPlaneError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(DataPlaneError::Stopped),
        }
    }
}

impl DataPlaneHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DataPlaneError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| DataPlaneError::Stopped)?;
        rx.await.map_err(|_| DataPlaneError::Stopped)
    }

    /// Applies peer operations in order (a reconcile `Plan`'s `peer_ops`).
    /// Lenient by design: adding a known key updates it in place, updating an
    /// unknown key adds it, removing an unknown key does nothing.
    pub async fn apply(&self, ops: Vec<PeerOp>) -> Result<(), DataPlaneError> {
        self.ask(|tx| Command::Apply(ops, tx)).await
    }

    pub async fn snapshot(&self) -> Result<DeviceSnapshot, DataPlaneError> {
        self.ask(Command::Snapshot).await
    }

    /// Each peer's last handshake (cheaper than a snapshot).
    pub async fn handshakes(&self) -> Result<Handshakes, DataPlaneError> {
        self.ask(Command::Handshakes).await
    }

    pub async fn set_mtu(&self, mtu: u16) -> Result<(), DataPlaneError> {
        self.ask(|tx| Command::SetMtu(mtu, tx)).await?
    }

    /// Rebinds the UDP socket; peers and sessions are kept.
    pub async fn set_listen_port(&self, port: u16) -> Result<(), DataPlaneError> {
        self.ask(|tx| Command::SetListenPort(port, tx)).await?
    }

    /// Replaces the policy filter on what comes out of the tunnels.
    pub async fn set_filter(&self, filter: Option<SiteFilter>) -> Result<(), DataPlaneError> {
        self.ask(|tx| Command::SetFilter(filter, tx)).await
    }

    /// Asks the loop to stop; `DataPlane::shutdown` also waits for it.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

/// Dual-stack `[::]:port` with IPV6_V6ONLY off; IPv4-only if the host has
/// no IPv6.
fn bind_udp(port: u16) -> Result<UdpSocket, DataPlaneError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| DataPlaneError::Bind { port, source };
    let make = |domain: Domain, addr: SocketAddr| -> io::Result<Socket> {
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if domain == Domain::IPV6 {
            s.set_only_v6(false)?;
        }
        // Best effort: larger buffers absorb bursts.
        if force_buffer(&s, libc::SO_RCVBUFFORCE).is_err() {
            let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
        }
        if force_buffer(&s, libc::SO_SNDBUFFORCE).is_err() {
            let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        }
        // Best effort too: without it, replies go from the kernel's choice
        // of address (what the agent did before).
        if let Err(e) = udp::enable_pktinfo(&s, domain == Domain::IPV6) {
            tracing::warn!(error = %e, "cannot learn datagrams' local addresses; a host with several addresses may answer from the wrong one");
        }
        // Best effort: without it, one datagram per receive.
        if let Err(e) = udp::enable_gro(&s) {
            tracing::info!(error = %e, "UDP receive offload (GRO) unavailable");
        }
        // Best effort: without it, the receive queue is bounded by size only.
        if let Err(e) = udp::enable_timestamps(&s) {
            tracing::info!(error = %e, "cannot time the receive queue; it is bounded by size only");
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(s)
    };
    let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    let socket = match make(Domain::IPV6, v6) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            make(Domain::IPV4, SocketAddr::from(([0, 0, 0, 0], port))).map_err(err)?
        }
        Err(e) => return Err(err(e)),
    };
    UdpSocket::from_std(socket.into()).map_err(err)
}

/// SO_RCVBUFFORCE/SO_SNDBUFFORCE: like SO_RCVBUF/SO_SNDBUF but not capped by
/// net.core.[rw]mem_max; needs CAP_NET_ADMIN.
fn force_buffer(s: &socket2::Socket, option: libc::c_int) -> io::Result<()> {
    let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid fd and a c_int option value of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_ref(&size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The I/O shell: owns the device, the socket and the core.
struct Shell {
    io: Io,
    core: Core,
    udp_bufs: RecvBatch,
    tun_in: TunRead,
    handshakes: HandshakeQueue,
    /// Bounds the time datagrams wait in the socket's receive queue.
    codel: Codel,
    /// Bounds the TUN device's queue.
    ring: RingSizer,
    /// Datagrams in each slot of the last UDP receive (GRO trains).
    datagrams_per_slot: usize,
}

/// Handshake messages and cookie replies, taken off the socket with
/// everything else but handled after the data messages and at most
/// `HANDSHAKE_BUDGET` per wake-up: a flood of them (each worth a MAC, a
/// cookie or a DH) then costs the tunnels only the reading, and what does
/// not fit is dropped as a full NIC queue would.
#[derive(Default)]
struct HandshakeQueue {
    waiting: std::collections::VecDeque<(SocketAddr, Option<IpAddr>, usize, [u8; HANDSHAKE_MAX])>,
}

impl HandshakeQueue {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }

    fn pop(&mut self) -> Option<(SocketAddr, Option<IpAddr>, usize, [u8; HANDSHAKE_MAX])> {
        self.waiting.pop_front()
    }

    /// False when full (the message is dropped).
    fn push(&mut self, from: SocketAddr, local: Option<IpAddr>, message: &[u8]) -> bool {
        if self.waiting.len() >= HANDSHAKE_QUEUE || message.len() > HANDSHAKE_MAX {
            return false;
        }
        let mut copy = [0u8; HANDSHAKE_MAX];
        copy[..message.len()].copy_from_slice(message);
        self.waiting.push_back((from, local, message.len(), copy));
        true
    }
}

/// The sink the core writes into. UDP sends are collected into batches
/// (`sendmmsg`, GSO) and TUN writes into batches coalesced on the way out
/// (GRO); a batch goes to its writer thread when it is full or at the end
/// of the wake-up. While a writer still has both batches, the loop stops
/// reading what would add to the one it is filling (backpressure).
struct Io {
    socket: Arc<Socket>,
    tun: Arc<AsyncDevice>,
    udp_out: Writer<SendBatch>,
    tun_out: Writer<TunWrite>,
    /// Completed handshakes, for whoever listens (a closed channel is fine).
    handshakes: mpsc::UnboundedSender<Name>,
}

impl Io {
    fn local_port(&self) -> u16 {
        self.socket.udp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    fn target(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.socket.v6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }
}

impl Io {
    /// A full send batch goes to the writer now if it is free, else it
    /// keeps filling (up to its limit). A writer that is gone surfaces at
    /// the end of the wake-up (`Shell::flush`).
    fn make_udp_room(&mut self) {
        if self.udp_out.current().is_full() {
            let _ = self.udp_out.hand_off(&self.socket);
        }
    }
}

impl Transmit for Io {
    fn send_udp(&mut self, to: SocketAddr, from: Option<IpAddr>, packet: &[u8]) {
        let to = self.target(to);
        self.make_udp_room();
        if !self.udp_out.current().push(to, from, packet) {
            tracing::trace!(%to, "UDP queue full, datagram dropped");
        }
    }

    fn udp_room(&mut self, len: usize) -> &mut [u8] {
        self.make_udp_room();
        self.udp_out.current().room(len)
    }

    fn send_written(&mut self, to: SocketAddr, from: Option<IpAddr>, len: usize) {
        let to = self.target(to);
        if !self.udp_out.current().commit(to, from, len) {
            tracing::trace!(%to, "UDP queue full, datagram dropped");
        }
    }

    fn write_tun(&mut self, packet: &[u8]) {
        self.tun_room(packet.len()).copy_from_slice(packet);
        self.tun_written(packet.len());
    }

    fn tun_room(&mut self, len: usize) -> &mut [u8] {
        if self.tun_out.current().is_full() {
            let _ = self.tun_out.hand_off(&self.tun);
        }
        self.tun_out.current().room(len)
    }

    fn tun_written(&mut self, len: usize) {
        if !self.tun_out.current().commit(len) {
            tracing::trace!("TUN queue full, packet dropped");
        }
    }

    fn handshake(&mut self, peer: &Name) {
        let _ = self.handshakes.send(peer.clone());
    }
}

impl Shell {
    fn new(
        tun: AsyncDevice,
        socket: UdpSocket,
        core: Core,
        handshakes: mpsc::UnboundedSender<Name>,
    ) -> io::Result<Self> {
        let v6 = socket.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let gso = Arc::new(AtomicBool::new(udp::gso_supported(
            &socket2::SockRef::from(&socket),
        )));
        let udp_out = Writer::spawn(
            "wardnet-udp-out",
            SendBatch::new(gso.clone()),
            SendBatch::new(gso),
        )?;
        let tun_out = Writer::spawn("wardnet-tun-out", TunWrite::new(), TunWrite::new())?;
        Ok(Shell {
            io: Io {
                socket: Arc::new(Socket { udp: socket, v6 }),
                tun: Arc::new(tun),
                udp_out,
                tun_out,
                handshakes,
            },
            core,
            udp_bufs: RecvBatch::new(),
            tun_in: TunRead::new(),
            handshakes: HandshakeQueue::default(),
            codel: Codel::new(codel::TARGET, codel::INTERVAL, Instant::now()),
            ring: RingSizer::new(Instant::now()),
            datagrams_per_slot: 1,
        })
    }

    /// The one event loop. Every exit goes through the end of this function,
    /// which drops the device and socket.
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<(), DataPlaneError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            // Not `biased`: under load the UDP socket is always readable and
            // would starve TUN reads (the ACKs of a TCP flow), and vice versa.
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => break Ok(()),
                    Some(cmd) => self.command(cmd).await,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.core.tick(now, &mut self.io);
                    if let Some(size) = self.ring.tick(now) {
                        if let Err(e) = self.io.tun.set_tx_queue_len(size) {
                            tracing::debug!(error = %e, size, "cannot resize the TUN queue");
                        }
                    }
                }
                // A writer gave a batch back: the one waiting goes (below).
                () = self.io.udp_out.returned(), if self.io.udp_out.is_busy() => {}
                () = self.io.tun_out.returned(), if self.io.tun_out.is_busy() => {}
                r = self.io.socket.udp.readable(), if self.io.tun_out.is_clear() => {
                    if let Err(e) = r {
                        break Err(DataPlaneError::Io(e));
                    }
                    self.drain_udp();
                }
                r = self.io.tun.readable(), if self.io.udp_out.is_clear() => {
                    if let Err(e) = r {
                        break Err(DataPlaneError::Io(e));
                    }
                    if let Err(e) = self.drain_tun() {
                        break Err(DataPlaneError::Io(e));
                    }
                }
                // Handshakes still waiting: come back to them.
                () = std::future::ready(()), if !self.handshakes.is_empty() => {}
            }
            self.handle_handshakes();
            if let Err(e) = self.flush() {
                break Err(DataPlaneError::Io(e));
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "data plane stopped");
        }
        result
    }

    /// Reads and handles up to `BATCH` datagrams. With GRO one slot can
    /// hold a train of ~44, so it asks for as many slots as the budget
    /// left needs at the last train size: a wake-up is then ~128
    /// datagrams (~0.2 MB) whichever way they came, and the TUN side (a
    /// TCP flow's ACKs, a ping's reply) waits at most that long.
    fn drain_udp(&mut self) {
        let mut left = BATCH;
        while left > 0 {
            let slots = (left / self.datagrams_per_slot).clamp(1, RECV_BATCH);
            match self.udp_bufs.recv(&self.io.socket.udp, slots) {
                Ok(n) => {
                    let now = Instant::now();
                    let mut handled = 0;
                    for i in 0..n {
                        let waited = self.udp_bufs.waited(i);
                        let Some((from, local, datagrams)) = self.udp_bufs.get(i) else {
                            continue;
                        };
                        for datagram in datagrams {
                            handled += 1;
                            let late = waited.is_some_and(|w| {
                                is_bulk_data(datagram) && self.codel.should_drop(w, now)
                            });
                            if late {
                                self.core.queue_drop();
                            } else if !is_handshake(datagram) {
                                self.core
                                    .handle_datagram(from, local, datagram, now, &mut self.io);
                            } else if !self.handshakes.push(from, local, datagram) {
                                self.core.handshake_dropped();
                            }
                        }
                    }
                    left = left.saturating_sub(handled.max(1));
                    self.datagrams_per_slot = (handled / n.max(1)).max(1);
                    if n < slots {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors (port unreachable) surface here; not fatal.
                Err(e) => {
                    tracing::trace!(error = %e, "UDP receive error");
                    left = left.saturating_sub(1);
                }
            }
        }
    }

    /// Up to `HANDSHAKE_BUDGET` queued handshake messages; the core is
    /// told how many wait (many: under load, cookies demanded).
    fn handle_handshakes(&mut self) {
        if self.handshakes.is_empty() {
            return;
        }
        let now = Instant::now();
        for _ in 0..HANDSHAKE_BUDGET {
            self.core.set_handshake_backlog(self.handshakes.len());
            let Some((from, local, len, message)) = self.handshakes.pop() else {
                break;
            };
            self.core
                .handle_datagram(from, local, &message[..len], now, &mut self.io);
        }
        self.core.set_handshake_backlog(self.handshakes.len());
    }

    /// Reads and encrypts up to `BATCH` packets from the device, telling
    /// the ring sizer how many entries it took and whether it emptied it.
    fn drain_tun(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let mut packets = 0;
        let mut entries = 0;
        while packets < BATCH {
            match self.tun_in.recv(&self.io.tun) {
                Ok(n) => {
                    for i in 0..n {
                        if let Some(packet) = self.tun_in.get(i) {
                            self.core.handle_tun_packet(packet, now, &mut self.io);
                        }
                    }
                    packets += n.max(1);
                    entries += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ring.drained(entries, true, now);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A system call failure is fatal; anything else is tun-rs
                // refusing one malformed offload packet: drop it.
                Err(e) if e.raw_os_error().is_some() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "bad packet from the TUN device");
                    packets += 1;
                    entries += 1;
                }
            }
        }
        self.ring.drained(entries, false, now);
        Ok(())
    }

    /// Hands what this wake-up decrypted and encrypted to the writers
    /// (what a busy writer cannot take yet goes when it gives a batch back).
    fn flush(&mut self) -> io::Result<()> {
        self.io.tun_out.hand_off(&self.io.tun)?;
        self.io.udp_out.hand_off(&self.io.socket)
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Apply(ops, done) => {
                for op in ops {
                    self.core.apply(op);
                }
                let _ = done.send(());
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.core.snapshot(self.io.local_port()));
            }
            Command::Handshakes(reply) => {
                let _ = reply.send(self.core.handshakes());
            }
            Command::SetMtu(mtu, reply) => {
                let r = self
                    .io
                    .tun
                    .set_mtu(mtu)
                    .map_err(|source| DataPlaneError::SetMtu { mtu, source });
                let _ = reply.send(r);
            }
            Command::SetListenPort(port, reply) => {
                let r = bind_udp(port).map(|udp| {
                    let v6 = udp.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
                    // What is queued goes out on the new socket.
                    let gso = udp::gso_supported(&socket2::SockRef::from(&udp));
                    self.io.udp_out.current().set_gso(gso);
                    self.io.socket = Arc::new(Socket { udp, v6 });
                });
                let _ = reply.send(r);
            }
            Command::SetFilter(filter, done) => {
                self.core.policy.set(filter);
                let _ = done.send(());
            }
            Command::Shutdown => {}
        }
    }
}
