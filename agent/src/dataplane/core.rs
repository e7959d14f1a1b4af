//! The data plane's sans-IO core: the peer table, cryptokey routing and the
//! WireGuard state machines (`boringtun::noise::Tunn`). It never touches a
//! socket or a device: packets come in as slices with `now`, and what must go
//! out is handed to a [`Transmit`] sink. The I/O shell (`mod.rs`) moves bytes.
//!
//! A hub carries thousands of peers, most of them idle or down at any time,
//! so an idle peer costs next to nothing: its `Tunn` (11 KiB of handshake and
//! session state) exists only while the peer has something to do (a packet
//! to send, a handshake to answer, a keepalive to keep), and is dropped once
//! boringtun declares the connection expired. The timer tick visits only the
//! peers that have one.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnet::IpNet;
use wardnet_common::{Endpoint, Name, PeerConfig, PrivateKey, PublicKey};

use super::enforce::PolicyFilter;
use super::lpm::AllowedIps;
use crate::device_snapshot::{DeviceCounters, DeviceSnapshot, Handshakes, PeerSnapshot};
use crate::reconcile::PeerOp;

/// Largest datagram or IP packet we handle, plus room for WireGuard overhead.
pub(crate) const BUF_SIZE: usize = 65_535 + 64;

/// Handshake messages taken per second before the agent counts itself under
/// load. A DH costs ~50 µs, so this is ~5 % of a core; a hub whose 4,000
/// spokes all come back at once goes over it, and the rest prove their
/// address with a cookie on their next attempt (5 s later).
const HANDSHAKES_PER_SEC: u32 = 1_000;
/// Handshake messages waiting (in the shell's queue) above which the agent
/// is under load, whatever the rate (kernel WireGuard: 1/8 of its queue).
pub(crate) const UNDER_LOAD_BACKLOG: usize = 64;
/// Under load, each source address (an IPv6 /64) may start this many
/// handshakes a second with a valid cookie, in bursts of `SOURCE_BURST`
/// (kernel WireGuard's figures).
const SOURCE_PER_SEC: f64 = 20.0;
const SOURCE_BURST: f64 = 5.0;
/// Sources the limiter tracks at most; beyond, new sources wait.
const MAX_SOURCES: usize = 16_384;

/// WireGuard message types, first byte of every message.
const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESPONSE: u8 = 2;
const MSG_COOKIE_REPLY: u8 = 3;
const MSG_DATA: u8 = 4;

/// Whether a datagram is a handshake message or a cookie reply (costly, and
/// what a flood is made of), which the shell queues behind data messages.
pub(crate) fn is_handshake(datagram: &[u8]) -> bool {
    matches!(
        datagram.first(),
        Some(&(MSG_HANDSHAKE_INIT | MSG_HANDSHAKE_RESPONSE | MSG_COOKIE_REPLY))
    ) && datagram.len() <= HANDSHAKE_MAX
}

/// Whether a datagram is bulk data, what a standing queue is dropped from:
/// a transport data message carrying a large packet (not a keepalive, an
/// ACK or a ping).
pub(crate) fn is_bulk_data(datagram: &[u8]) -> bool {
    datagram.first() == Some(&MSG_DATA) && datagram.len() >= BULK_DATA_MIN
}

/// Datagrams from this size on are bulk data (a 512-byte packet plus
/// WireGuard's 32 bytes).
const BULK_DATA_MIN: usize = 544;

/// What WireGuard adds to a packet: a 16-byte header and a 16-byte tag.
const DATA_OVERHEAD: usize = 32;

/// The longest handshake message (an initiation).
pub(crate) const HANDSHAKE_MAX: usize = 148;

/// Where the core's output goes.
pub(crate) trait Transmit {
    /// Send `packet` to `to`, from the local address `from` when given (the
    /// address the peer's own packets arrive on), else from whatever
    /// address the kernel picks.
    fn send_udp(&mut self, to: SocketAddr, from: Option<IpAddr>, packet: &[u8]);
    /// Room for a datagram of up to `len` bytes, to be written in place
    /// (encrypted straight into the send queue) and then sent with
    /// `send_written`.
    fn udp_room(&mut self, len: usize) -> &mut [u8];
    /// Send the first `len` bytes of the last `udp_room`, like `send_udp`.
    fn send_written(&mut self, to: SocketAddr, from: Option<IpAddr>, len: usize);
    fn write_tun(&mut self, packet: &[u8]);
    /// Room for a packet of up to `len` bytes, to be written in place
    /// (decrypted straight into the device's queue) and then queued with
    /// `tun_written`.
    fn tun_room(&mut self, len: usize) -> &mut [u8];
    /// Queue the first `len` bytes of the last `tun_room`, like `write_tun`.
    fn tun_written(&mut self, len: usize);
    /// A handshake with `peer` completed: a new session (the agent's health
    /// probes go only through live sessions).
    fn handshake(&mut self, _peer: &Name) {}
}

struct Peer {
    name: Name,
    /// The region the peer is a hub of (`None`: a spoke).
    hub_of: Option<Name>,
    public_key: PublicKey,
    /// The endpoint from the controller's config, to tell a real config
    /// change from a re-sync of the same value.
    configured_endpoint: Option<Endpoint>,
    /// Where we send: configured, or the source of the last authenticated packet.
    endpoint: Option<SocketAddr>,
    /// The local address the peer's authenticated packets arrive on: we
    /// answer from it, so a peer that sends to one of several addresses
    /// hears back from that one (and does not roam to another).
    local: Option<IpAddr>,
    /// The endpoint the controller configured before the current one:
    /// packets still arriving from it do not pull us back to it.
    abandoned: Option<SocketAddr>,
    allowed_ips: BTreeSet<IpNet>,
    /// Our own persistent keepalive (Tunn cannot change its own in place).
    keepalive: Option<u16>,
    /// The WireGuard state machine, while the peer has something to do.
    tunn: Option<Box<Tunn>>,
    last_sent: Option<Instant>,
    last_handshake: Option<SystemTime>,
    rx_bytes: u64,
    tx_bytes: u64,
    /// Packets from this peer the policy filter dropped.
    policy_denied: u64,
}

pub(crate) struct Core {
    private: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
    /// Checks mac1 only (its limit is never reached); every `Tunn` shares it.
    rate_limiter: Arc<RateLimiter>,
    /// Under load: demands a valid mac2 and makes the cookie replies.
    cookies: RateLimiter,
    guard: HandshakeGuard,
    /// Keyed by local index (the top 24 bits of every receiver index boringtun
    /// hands out for this peer).
    peers: HashMap<u32, Peer>,
    by_key: HashMap<PublicKey, u32>,
    /// The peers the timer tick visits: those with a `Tunn` or a keepalive.
    active: BTreeSet<u32>,
    allowed: AllowedIps,
    /// The region this site is a hub of.
    hub_of: Option<Name>,
    counters: DeviceCounters,
    /// The policy between organisations, on what comes out of the tunnels.
    pub(crate) policy: PolicyFilter,
    buf: Box<[u8]>,
}

/// Local indexes are 24 bits: boringtun shifts them left by 8 for the session.
const INDEX_MASK: u32 = 0x00ff_ffff;

impl Core {
    pub(crate) fn new(private_key: &PrivateKey, hub_of: Option<Name>) -> Self {
        let private = private_key.to_dalek();
        let public = x25519_dalek::PublicKey::from(&private);
        Self {
            rate_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            cookies: RateLimiter::new(&public, 0),
            guard: HandshakeGuard::default(),
            private,
            public,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            active: BTreeSet::new(),
            allowed: AllowedIps::default(),
            hub_of,
            counters: DeviceCounters::default(),
            policy: PolicyFilter::default(),
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
        }
    }

    pub(crate) fn apply(&mut self, op: PeerOp) {
        match op {
            PeerOp::RemovePeer(key) => self.remove_peer(&key),
            PeerOp::UpdatePeer(c) | PeerOp::AddPeer(c) => {
                if self.by_key.contains_key(&c.public_key) {
                    self.update_peer(c);
                } else {
                    self.add_peer(c);
                }
            }
        }
    }

    /// A random free local index: receiver indexes on the wire say nothing
    /// of how many peers there are or in which order they came (they
    /// were sequential from a random start).
    fn alloc_index(&mut self) -> u32 {
        loop {
            let i = rand::random::<u32>() & INDEX_MASK;
            if !self.peers.contains_key(&i) {
                return i;
            }
        }
    }

    /// The local indexes in use (tests).
    #[cfg(test)]
    pub(crate) fn indexes(&self) -> Vec<u32> {
        self.peers.keys().copied().collect()
    }

    fn add_peer(&mut self, c: PeerConfig) {
        let index = self.alloc_index();
        for net in &c.allowed_ips {
            self.allowed.insert(*net, index);
        }
        self.by_key.insert(c.public_key, index);
        self.peers.insert(
            index,
            Peer {
                hub_of: hub_region(&c),
                name: c.name,
                public_key: c.public_key,
                configured_endpoint: c.endpoint,
                endpoint: c.endpoint.map(|e| e.addr()),
                local: None,
                abandoned: None,
                allowed_ips: c.allowed_ips,
                keepalive: c.persistent_keepalive.filter(|k| *k > 0),
                tunn: None,
                last_sent: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                policy_denied: 0,
            },
        );
        self.track(index);
    }

    /// Keeps `active` true to the peer: visited by the tick while it has a
    /// `Tunn` or a keepalive to send.
    fn track(&mut self, index: u32) {
        match self.peers.get(&index) {
            Some(p) if p.tunn.is_some() || p.keepalive.is_some() => {
                self.active.insert(index);
            }
            _ => {
                self.active.remove(&index);
            }
        }
    }

    /// The peer's `Tunn`, created when it is first needed.
    fn tunn<'p>(
        private: &x25519_dalek::StaticSecret,
        limiter: &Arc<RateLimiter>,
        index: u32,
        peer: &'p mut Peer,
    ) -> &'p mut Tunn {
        peer.tunn.get_or_insert_with(|| {
            Box::new(Tunn::new(
                private.clone(),
                peer.public_key.to_dalek(),
                None,
                None,
                index,
                Some(limiter.clone()),
            ))
        })
    }

    /// How many peers have a `Tunn` now (the rest cost only their config).
    #[cfg(test)]
    pub(crate) fn live_tunnels(&self) -> usize {
        self.peers.values().filter(|p| p.tunn.is_some()).count()
    }

    /// In place: the Tunn (session, timers, counters) is kept.
    fn update_peer(&mut self, c: PeerConfig) {
        let Some(&index) = self.by_key.get(&c.public_key) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        for gone in peer.allowed_ips.difference(&c.allowed_ips) {
            self.allowed.remove_if(*gone, index);
        }
        for net in &c.allowed_ips {
            self.allowed.insert(*net, index);
        }
        if peer.configured_endpoint != c.endpoint {
            // The peer moved: send to the new endpoint from now on, and
            // do not roam back to the old one on a late packet from it.
            peer.abandoned = peer.configured_endpoint.map(|e| e.addr());
            peer.configured_endpoint = c.endpoint;
            if let Some(e) = c.endpoint {
                peer.endpoint = Some(e.addr());
                peer.local = None;
            }
        }
        peer.hub_of = hub_region(&c);
        peer.name = c.name;
        peer.allowed_ips = c.allowed_ips;
        peer.keepalive = c.persistent_keepalive.filter(|k| *k > 0);
        self.track(index);
    }

    fn remove_peer(&mut self, key: &PublicKey) {
        let Some(index) = self.by_key.remove(key) else {
            return;
        };
        if let Some(peer) = self.peers.remove(&index) {
            for net in &peer.allowed_ips {
                self.allowed.remove_if(*net, index);
            }
        }
        self.active.remove(&index);
    }

    /// An IP packet read from the TUN device.
    pub(crate) fn handle_tun_packet(
        &mut self,
        packet: &[u8],
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let Some(dst) = Tunn::dst_address(packet) else {
            self.counters.drops.no_route += 1;
            return;
        };
        let Some(index) = self.allowed.lookup(dst) else {
            self.counters.drops.no_route += 1;
            return;
        };
        let Some(peer) = self.peers.get_mut(&index) else {
            self.counters.drops.no_route += 1;
            return;
        };
        self.policy.outbound(packet, now);
        // Without a session and nowhere to send, a handshake would be maths
        // for nothing: the peer (a spoke behind NAT) comes to us.
        if peer.tunn.is_none() && peer.endpoint.is_none() {
            self.counters.drops.no_endpoint += 1;
            return;
        }
        let fresh = peer.tunn.is_none();
        let tunn = Self::tunn(&self.private, &self.rate_limiter, index, peer);
        // Encrypted straight into the send queue: a data message is the
        // packet plus 32 bytes, a handshake initiation 148.
        let room = tx.udp_room((packet.len() + DATA_OVERHEAD).max(HANDSHAKE_MAX));
        let written = match tunn.encapsulate(packet, room) {
            TunnResult::WriteToNetwork(out) => Some(out.len()),
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.name, error = ?e, "encapsulate failed");
                None
            }
            _ => None,
        };
        if fresh {
            self.active.insert(index);
        }
        let Some(len) = written else {
            return;
        };
        match peer.endpoint {
            Some(to) => {
                tx.send_written(to, peer.local, len);
                peer.tx_bytes += len as u64;
                peer.last_sent = Some(now);
            }
            None => self.counters.drops.no_endpoint += 1,
        }
    }

    /// A UDP datagram received from `from` on the listen socket, sent to
    /// our local address `local` (when the socket says).
    pub(crate) fn handle_datagram(
        &mut self,
        from: SocketAddr,
        local: Option<IpAddr>,
        datagram: &[u8],
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.counters.drops.malformed += 1;
                return;
            }
        };
        if matches!(
            packet,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        ) && !self.admit_handshake(from, local, datagram, now, tx)
        {
            return;
        }
        let index = match packet {
            Packet::HandshakeInit(ref init) => {
                let Ok(half) = parse_handshake_anon(&self.private, &self.public, init) else {
                    self.counters.drops.decrypt += 1;
                    return;
                };
                match self
                    .by_key
                    .get(&PublicKey::from_bytes(half.peer_static_public))
                {
                    Some(&i) => i,
                    None => {
                        self.counters.drops.unknown_peer += 1;
                        return;
                    }
                }
            }
            Packet::HandshakeResponse(p) => p.receiver_idx >> 8,
            Packet::PacketCookieReply(p) => p.receiver_idx >> 8,
            Packet::PacketData(p) => p.receiver_idx >> 8,
        };
        let Some(peer) = self.peers.get_mut(&index) else {
            self.counters.drops.unknown_peer += 1;
            return;
        };
        let kind = datagram.first().copied();
        // Only an initiation starts a `Tunn`; anything else for a peer
        // without one belongs to a session long gone.
        if peer.tunn.is_none() && kind != Some(MSG_HANDSHAKE_INIT) {
            self.counters.drops.decrypt += 1;
            return;
        }
        if peer.tunn.is_none() {
            self.active.insert(index);
        }
        let tunn = Self::tunn(&self.private, &self.rate_limiter, index, peer);
        if kind == Some(MSG_DATA) {
            // Transport data, nearly all traffic: decrypted straight into
            // the device's queue.
            let room = tx.tun_room(datagram.len());
            let (len, src, seen) = match tunn.decapsulate(Some(from.ip()), datagram, room) {
                TunnResult::WriteToTunnelV4(packet, v4) => {
                    (packet.len(), IpAddr::from(v4), self.policy.look(packet))
                }
                TunnResult::WriteToTunnelV6(packet, v6) => {
                    (packet.len(), IpAddr::from(v6), self.policy.look(packet))
                }
                // An empty data message is an authenticated keepalive.
                TunnResult::Done => {
                    authenticated(peer, from, local, datagram.len());
                    return;
                }
                TunnResult::Err(e) => {
                    self.counters.drops.decrypt += 1;
                    tracing::trace!(peer = %peer.name, error = ?e, "dropped datagram");
                    return;
                }
                // boringtun answers a data message with data for the tunnel
                // or nothing; never with something to send.
                TunnResult::WriteToNetwork(_) => return,
            };
            authenticated(peer, from, local, datagram.len());
            if !source_allowed(&self.peers, &self.allowed, &self.hub_of, index, src) {
                self.counters.drops.source_not_allowed += 1;
            } else if self.policy.judge(seen, now, |dst| {
                forwards(&self.allowed, self.hub_of.is_some(), index, dst)
            }) {
                tx.tun_written(len);
            } else if let Some(peer) = self.peers.get_mut(&index) {
                peer.policy_denied += 1;
            }
            return;
        }
        let mut result = tunn.decapsulate(Some(from.ip()), datagram, &mut self.buf);
        let mut first = true;
        loop {
            match result {
                TunnResult::Done => {
                    // An empty data message is an authenticated keepalive.
                    if first && kind == Some(MSG_DATA) {
                        authenticated(peer, from, local, datagram.len());
                    }
                }
                TunnResult::Err(e) => {
                    if first && matches!(kind, Some(MSG_HANDSHAKE_INIT | MSG_HANDSHAKE_RESPONSE)) {
                        self.counters.handshakes_failed += 1;
                    } else if first {
                        self.counters.drops.decrypt += 1;
                    }
                    tracing::trace!(peer = %peer.name, error = ?e, "dropped datagram");
                }
                TunnResult::WriteToNetwork(out) => {
                    if first {
                        // A handshake response answering an initiation (we are
                        // the responder), or a keepalive answering a response
                        // (we are the initiator): either way a new session.
                        // Anything else here is a cookie reply under load.
                        let established = matches!(
                            (kind, out.first()),
                            (Some(MSG_HANDSHAKE_INIT), Some(&MSG_HANDSHAKE_RESPONSE))
                                | (Some(MSG_HANDSHAKE_RESPONSE), Some(&MSG_DATA))
                        );
                        if established {
                            self.counters.handshakes_completed += 1;
                            peer.last_handshake = Some(SystemTime::now());
                            tx.handshake(&peer.name);
                            authenticated(peer, from, local, datagram.len());
                        } else {
                            // Cookie reply: answer the sender, do not roam.
                            tx.send_udp(from, local, out);
                            return;
                        }
                    }
                    send_to_peer(peer, out, now, tx);
                    // Drain the packets queued while the handshake ran.
                    first = false;
                    let Some(tunn) = peer.tunn.as_mut() else {
                        return;
                    };
                    result = tunn.decapsulate(None, &[], &mut self.buf);
                    continue;
                }
                TunnResult::WriteToTunnelV4(packet, v4) => {
                    authenticated(peer, from, local, datagram.len());
                    let ok =
                        source_allowed(&self.peers, &self.allowed, &self.hub_of, index, v4.into());
                    let gate = Gate {
                        policy: &mut self.policy,
                        counters: &mut self.counters,
                        peers: &mut self.peers,
                        allowed: &self.allowed,
                        hub: self.hub_of.is_some(),
                    };
                    gate.deliver(ok, index, packet, now, tx);
                }
                TunnResult::WriteToTunnelV6(packet, v6) => {
                    authenticated(peer, from, local, datagram.len());
                    let ok =
                        source_allowed(&self.peers, &self.allowed, &self.hub_of, index, v6.into());
                    let gate = Gate {
                        policy: &mut self.policy,
                        counters: &mut self.counters,
                        peers: &mut self.peers,
                        allowed: &self.allowed,
                        hub: self.hub_of.is_some(),
                    };
                    gate.deliver(ok, index, packet, now, tx);
                }
            }
            return;
        }
    }

    /// The cheap checks before a handshake message costs a DH: mac1 always;
    /// under load also mac2 (a cookie proving the source address, else a
    /// cookie reply and nothing more) and the source's share. False: the
    /// message goes no further.
    fn admit_handshake(
        &mut self,
        from: SocketAddr,
        local: Option<IpAddr>,
        datagram: &[u8],
        now: Instant,
        tx: &mut impl Transmit,
    ) -> bool {
        let under_load = self.guard.under_load(now);
        let limiter = if under_load {
            &self.cookies
        } else {
            self.rate_limiter.as_ref()
        };
        match limiter.verify_packet(Some(from.ip()), datagram, &mut self.buf) {
            Ok(_) => {}
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.counters.cookie_replies += 1;
                tx.send_udp(from, local, cookie);
                return false;
            }
            Err(_) => {
                // A bad mac1: not even meant for us.
                self.counters.drops.decrypt += 1;
                return false;
            }
        }
        if under_load && !self.guard.source_allowed(from.ip(), now) {
            self.counters.drops.handshake_limited += 1;
            return false;
        }
        true
    }

    /// Handshake messages waiting in the shell's queue: many means under
    /// load (cookies demanded).
    pub(crate) fn set_handshake_backlog(&mut self, waiting: usize) {
        self.guard.backlog = waiting;
    }

    /// A data message the shell dropped because the receive queue stood
    /// too long (CoDel).
    pub(crate) fn queue_drop(&mut self) {
        self.counters.drops.queue_delay += 1;
    }

    /// A handshake message the shell dropped unread (its queue was full).
    pub(crate) fn handshake_dropped(&mut self) {
        self.counters.drops.handshake_limited += 1;
    }

    /// The regular timer tick (every ~250 ms): WireGuard timers and our
    /// persistent keepalive, for the active peers only. A peer whose
    /// connection boringtun declares expired (handshake attempts given up,
    /// or no new keys for 9 minutes: keys are zeroed, queued packets
    /// dropped) loses its `Tunn` and costs nothing until it is needed again.
    pub(crate) fn tick(&mut self, now: Instant, tx: &mut impl Transmit) {
        self.guard.forget_idle_sources(now);
        self.policy.sweep(now);
        let mut idle = Vec::new();
        for &index in &self.active {
            let Some(peer) = self.peers.get_mut(&index) else {
                idle.push(index);
                continue;
            };
            if let Some(tunn) = peer.tunn.as_mut() {
                match tunn.update_timers(&mut self.buf) {
                    TunnResult::WriteToNetwork(out) => {
                        send_to_peer(peer, out, now, tx);
                    }
                    TunnResult::Err(WireGuardError::ConnectionExpired) => {
                        peer.tunn = None;
                    }
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = %peer.name, error = ?e, "timer error")
                    }
                    _ => {}
                }
            }
            let Some(every) = peer.keepalive else {
                if peer.tunn.is_none() {
                    idle.push(index);
                }
                continue;
            };
            let due = peer.last_sent.is_none_or(|t| {
                now.saturating_duration_since(t) >= Duration::from_secs(u64::from(every))
            });
            if due && peer.endpoint.is_some() {
                let tunn = Self::tunn(&self.private, &self.rate_limiter, index, peer);
                if let TunnResult::WriteToNetwork(out) = tunn.encapsulate(&[], &mut self.buf) {
                    send_to_peer(peer, out, now, tx);
                }
            }
        }
        for index in idle {
            self.active.remove(&index);
        }
    }

    pub(crate) fn handshakes(&self) -> Handshakes {
        self.peers
            .values()
            .map(|p| (p.name.clone(), p.last_handshake))
            .collect()
    }

    pub(crate) fn snapshot(&self, listen_port: u16) -> DeviceSnapshot {
        let mut peers: Vec<PeerSnapshot> = self
            .peers
            .values()
            .map(|p| PeerSnapshot {
                name: p.name.clone(),
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: p.keepalive,
                last_handshake: p.last_handshake,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                policy_denied: p.policy_denied,
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        DeviceSnapshot {
            listen_port,
            peers,
            counters: self.counters,
            policy: self.policy.counters(),
        }
    }
}

/// When the agent is under load and how much each source may have then.
#[derive(Default)]
struct HandshakeGuard {
    /// Handshake messages waiting in the shell's queue.
    backlog: usize,
    /// Handshake messages seen in the current one-second window.
    window: Option<(Instant, u32)>,
    /// Token buckets per source (IPv4 address or IPv6 /64): tokens, last refill.
    sources: HashMap<IpAddr, (f64, Instant)>,
}

impl HandshakeGuard {
    /// Counts one handshake message and says whether we are under load.
    fn under_load(&mut self, now: Instant) -> bool {
        let (start, seen) = match self.window {
            Some((start, seen))
                if now.saturating_duration_since(start) < Duration::from_secs(1) =>
            {
                (start, seen + 1)
            }
            _ => (now, 1),
        };
        self.window = Some((start, seen));
        self.backlog >= UNDER_LOAD_BACKLOG || seen > HANDSHAKES_PER_SEC
    }

    /// Takes a token from the source's bucket.
    fn source_allowed(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            return false;
        }
        let (tokens, last) = self.sources.entry(key).or_insert((SOURCE_BURST, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * SOURCE_PER_SEC).min(SOURCE_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the buckets that have refilled (they are as good as new).
    fn forget_idle_sources(&mut self, now: Instant) {
        let full = Duration::from_secs_f64(SOURCE_BURST / SOURCE_PER_SEC);
        self.sources
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < full);
    }
}

/// The limiter's key for a source: the IPv4 address, or the IPv6 /64 (one
/// host usually holds a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// Cryptokey routing's inbound rule, widened for hub pairs: a packet from
/// peer `from` may carry a source address that peer's AllowedIPs hold. A
/// hub of a region may also deliver what another hub of the same region
/// holds here (the region's hubs stand in for each other, and only one of
/// them can hold a prefix at a time); and a hub of this site's own region
/// (`own_hub_of`) may deliver from any source (it forwards for its peers).
fn source_allowed(
    peers: &HashMap<u32, Peer>,
    allowed: &AllowedIps,
    own_hub_of: &Option<Name>,
    from: u32,
    src: IpAddr,
) -> bool {
    let owner = allowed.lookup(src);
    if owner == Some(from) {
        return true;
    }
    let Some(region) = peers.get(&from).and_then(|p| p.hub_of.as_ref()) else {
        return false;
    };
    if own_hub_of.as_ref() == Some(region) {
        return true;
    }
    owner
        .and_then(|o| peers.get(&o))
        .is_some_and(|o| o.hub_of.as_ref() == Some(region))
}

/// Whether a packet from peer `from` to `dst`, an address that is not
/// this site's own, is forwarded on: only by a hub, and only to another
/// of its peers that owns `dst` (a peer's own AllowedIPs never make it a
/// relay for itself, and nothing goes to the gateway's other addresses).
fn forwards(allowed: &AllowedIps, hub: bool, from: u32, dst: IpAddr) -> bool {
    hub && allowed.lookup(dst).is_some_and(|owner| owner != from)
}

/// What a decrypted packet meets on its way to the TUN device.
struct Gate<'a> {
    policy: &'a mut PolicyFilter,
    counters: &'a mut DeviceCounters,
    peers: &'a mut HashMap<u32, Peer>,
    allowed: &'a AllowedIps,
    /// Whether this site is a hub (forwards between its peers).
    hub: bool,
}

impl Gate<'_> {
    /// Write a decrypted packet from peer `index` to the TUN device when
    /// its source is the peer's (`ok`) and the policy admits it, or count
    /// it dropped.
    fn deliver(self, ok: bool, index: u32, packet: &[u8], now: Instant, tx: &mut impl Transmit) {
        if !ok {
            self.counters.drops.source_not_allowed += 1;
        } else if self.policy.inbound(packet, now, |dst| {
            forwards(self.allowed, self.hub, index, dst)
        }) {
            tx.write_tun(packet);
        } else if let Some(peer) = self.peers.get_mut(&index) {
            peer.policy_denied += 1;
        }
    }
}

/// The region a peer is a hub of.
fn hub_region(c: &PeerConfig) -> Option<Name> {
    (c.role == wardnet_common::Role::Hub).then(|| c.region.clone())
}

/// Bookkeeping after a datagram from `from` authenticated as this peer.
fn authenticated(peer: &mut Peer, from: SocketAddr, local: Option<IpAddr>, len: usize) {
    if peer.abandoned != Some(from) {
        // A socket that does not say keeps what was learnt on this path.
        if local.is_some() || peer.endpoint != Some(from) {
            peer.local = local;
        }
        peer.endpoint = Some(from);
    }
    peer.rx_bytes += len as u64;
}

/// Sends to the peer's current endpoint; false when it has none.
fn send_to_peer(peer: &mut Peer, packet: &[u8], now: Instant, tx: &mut impl Transmit) -> bool {
    let Some(to) = peer.endpoint else {
        return false;
    };
    tx.send_udp(to, peer.local, packet);
    peer.tx_bytes += packet.len() as u64;
    peer.last_sent = Some(now);
    true
}
