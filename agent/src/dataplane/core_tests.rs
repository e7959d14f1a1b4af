//! The core driven in memory: two (or three) cores exchange datagrams
//! through a test harness, no root, no sockets.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use ipnet::IpNet;
use wardnet_common::{PeerConfig, PrivateKey, PublicKey, Role};

use super::core::{Core, Transmit};
use crate::reconcile::PeerOp;

#[derive(Default)]
struct Sink {
    /// The last room handed out for a datagram written in place.
    room: Vec<u8>,
    udp: Vec<(SocketAddr, Vec<u8>)>,
    /// The local source each UDP send asked for.
    sources: Vec<Option<std::net::IpAddr>>,
    tun: Vec<Vec<u8>>,
    handshakes: Vec<wardnet_common::Name>,
}

impl Transmit for Sink {
    fn send_udp(&mut self, to: SocketAddr, from: Option<std::net::IpAddr>, packet: &[u8]) {
        self.udp.push((to, packet.to_vec()));
        self.sources.push(from);
    }
    fn udp_room(&mut self, len: usize) -> &mut [u8] {
        self.room = vec![0; len];
        &mut self.room
    }
    fn send_written(&mut self, to: SocketAddr, from: Option<std::net::IpAddr>, len: usize) {
        self.udp.push((to, self.room[..len].to_vec()));
        self.sources.push(from);
    }
    fn write_tun(&mut self, packet: &[u8]) {
        self.tun.push(packet.to_vec());
    }
    fn tun_room(&mut self, len: usize) -> &mut [u8] {
        // Not zeroed: what the last packet left must not leak into the next.
        self.room.resize(len, 0xee);
        &mut self.room[..len]
    }
    fn tun_written(&mut self, len: usize) {
        self.tun.push(self.room[..len].to_vec());
    }
    fn handshake(&mut self, peer: &wardnet_common::Name) {
        self.handshakes.push(peer.clone());
    }
}

struct Node {
    core: Core,
    key: PrivateKey,
    addr: SocketAddr,
    tun: Vec<Vec<u8>>,
    handshakes: Vec<wardnet_common::Name>,
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}
fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

fn node(addr: &str) -> Node {
    let key = PrivateKey::generate();
    Node {
        core: Core::new(&key, None),
        key,
        addr: sa(addr),
        tun: Vec::new(),
        handshakes: Vec::new(),
    }
}

fn peer_config(of: &Node, endpoint: Option<SocketAddr>, allowed: &[&str]) -> PeerConfig {
    PeerConfig {
        name: format!("site-{}", of.addr.port()).parse().expect("name"),
        region: "north".parse().expect("name"),
        role: Role::Spoke,
        public_key: of.key.public_key(),
        endpoint: endpoint.map(|e| wardnet_common::Endpoint::new(e).expect("endpoint")),
        allowed_ips: allowed.iter().map(|a| net(a)).collect::<BTreeSet<_>>(),
        persistent_keepalive: None,
    }
}

fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).expect("small packet").to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(payload);
    p
}

/// Delivers datagrams between nodes until nothing is in flight.
fn pump(nodes: &mut [&mut Node], mut queue: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>) {
    let mut hops = 0;
    while let Some((from, to, packet)) = queue.pop_front() {
        hops += 1;
        assert!(hops < 100, "packet storm");
        let Some(n) = nodes.iter_mut().find(|n| n.addr == to) else {
            continue;
        };
        let mut sink = Sink::default();
        n.core
            .handle_datagram(from, None, &packet, Instant::now(), &mut sink);
        n.tun.extend(sink.tun);
        n.handshakes.extend(sink.handshakes);
        let here = n.addr;
        queue.extend(sink.udp.into_iter().map(|(t, p)| (here, t, p)));
    }
}

fn send_from_tun(n: &mut Node, packet: &[u8]) -> VecDeque<(SocketAddr, SocketAddr, Vec<u8>)> {
    let mut sink = Sink::default();
    n.core.handle_tun_packet(packet, Instant::now(), &mut sink);
    let here = n.addr;
    sink.udp.into_iter().map(|(t, p)| (here, t, p)).collect()
}

fn pair() -> (Node, Node) {
    let mut a = node("198.51.100.1:51820");
    let mut b = node("198.51.100.2:51820");
    let to_b = peer_config(&b, Some(b.addr), &["100.64.0.2/32"]);
    let to_a = peer_config(&a, None, &["100.64.0.1/32"]);
    a.core.apply(PeerOp::AddPeer(to_b));
    b.core.apply(PeerOp::AddPeer(to_a));
    (a, b)
}

fn peer_of(n: &Node, key: PublicKey) -> crate::device_snapshot::PeerSnapshot {
    n.core
        .snapshot(n.addr.port())
        .peers
        .into_iter()
        .find(|p| p.public_key == key)
        .expect("peer present")
}

/// A peer that sends to one of our two addresses hears back from that one;
/// a peer the controller moves is sent to at its new endpoint, and a late
/// packet from the old one does not pull us back.
#[test]
fn answers_go_from_the_address_the_peer_uses_and_a_moved_peer_stays_moved() {
    let (mut a, mut b) = pair();
    let ping = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"hello");
    let out = send_from_tun(&mut a, &ping);
    // B's initiation arrives at B's second address.
    let second: std::net::IpAddr = "203.0.113.2".parse().expect("address");
    for (from, _, p) in out {
        let mut sink = Sink::default();
        b.core
            .handle_datagram(from, Some(second), &p, Instant::now(), &mut sink);
        assert_eq!(sink.sources, [Some(second)], "the response goes from it");
        let here = b.addr;
        pump(
            &mut [&mut a, &mut b],
            sink.udp.into_iter().map(|(t, p)| (here, t, p)).collect(),
        );
    }
    let pong = ipv4_packet([100, 64, 0, 2], [100, 64, 0, 1], b"world");
    let mut sink = Sink::default();
    b.core.handle_tun_packet(&pong, Instant::now(), &mut sink);
    assert_eq!(sink.sources, [Some(second)], "and so does its traffic");

    // The controller moves B: A sends to the new endpoint at once...
    let new = sa("203.0.113.9:51820");
    a.core.apply(PeerOp::UpdatePeer(peer_config(
        &b,
        Some(new),
        &["100.64.0.2/32"],
    )));
    assert_eq!(peer_of(&a, b.key.public_key()).endpoint, Some(new));
    // ...and a packet still coming from the old one does not move it back.
    let late = send_from_tun(&mut b, &pong);
    pump(&mut [&mut a, &mut b], late);
    assert_eq!(a.tun.len(), 1, "the late packet is delivered");
    assert_eq!(peer_of(&a, b.key.public_key()).endpoint, Some(new));
    // Traffic from a third address is a real roam.
    let roamed: VecDeque<_> = send_from_tun(&mut b, &pong)
        .into_iter()
        .map(|(_, t, p)| (sa("203.0.113.77:40000"), t, p))
        .collect();
    pump(&mut [&mut a, &mut b], roamed);
    assert_eq!(
        peer_of(&a, b.key.public_key()).endpoint,
        Some(sa("203.0.113.77:40000"))
    );
}

#[test]
fn handshake_then_traffic_both_ways_and_roaming() {
    let (mut a, mut b) = pair();
    let ping = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"hello");
    let out = send_from_tun(&mut a, &ping);
    assert_eq!(out.len(), 1, "a handshake initiation");
    assert_eq!(out[0].2[0], 1);
    pump(&mut [&mut a, &mut b], out);
    // The packet queued during the handshake arrives.
    assert_eq!(b.tun, vec![ping.clone()]);
    // B learned A's endpoint from the authenticated initiation.
    assert_eq!(peer_of(&b, a.key.public_key()).endpoint, Some(a.addr));
    let sa_ = a.core.snapshot(0);
    assert_eq!(sa_.counters.handshakes_completed, 1);
    assert_eq!(b.core.snapshot(0).counters.handshakes_completed, 1);
    let hs = peer_of(&a, b.key.public_key()).last_handshake;
    assert!(hs.is_some());

    // Reply B -> A.
    let pong = ipv4_packet([100, 64, 0, 2], [100, 64, 0, 1], b"world");
    let out = send_from_tun(&mut b, &pong);
    assert_eq!(out[0].2[0], 4, "data on the existing session");
    pump(&mut [&mut a, &mut b], out);
    assert_eq!(a.tun, vec![pong.clone()]);
    let pb = peer_of(&a, b.key.public_key());
    assert!(pb.rx_bytes > 0 && pb.tx_bytes > 0);

    // B roams: A answers to the new source.
    let out: VecDeque<_> = send_from_tun(&mut b, &pong)
        .into_iter()
        .map(|(_, t, p)| (sa("203.0.113.2:40000"), t, p))
        .collect();
    pump(&mut [&mut a, &mut b], out);
    assert_eq!(
        peer_of(&a, b.key.public_key()).endpoint,
        Some(sa("203.0.113.2:40000"))
    );
    // A re-sync of the same configured endpoint does not undo roaming...
    let same = peer_config(&b, Some(b.addr), &["100.64.0.2/32"]);
    a.core.apply(PeerOp::UpdatePeer(same));
    assert_eq!(
        peer_of(&a, b.key.public_key()).endpoint,
        Some(sa("203.0.113.2:40000"))
    );
    // ...a changed one does.
    let moved = peer_config(&b, Some(sa("203.0.113.9:51820")), &["100.64.0.2/32"]);
    a.core.apply(PeerOp::UpdatePeer(moved));
    assert_eq!(
        peer_of(&a, b.key.public_key()).endpoint,
        Some(sa("203.0.113.9:51820"))
    );
}

#[test]
fn update_in_place_keeps_the_session_and_counters() {
    let (mut a, mut b) = pair();
    let ping = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"x");
    let out = send_from_tun(&mut a, &ping);
    pump(&mut [&mut a, &mut b], out);
    let before = peer_of(&a, b.key.public_key());

    let mut c = peer_config(&b, Some(b.addr), &["100.64.0.2/32", "10.9.0.0/16"]);
    c.persistent_keepalive = Some(25);
    a.core.apply(PeerOp::UpdatePeer(c));
    let after = peer_of(&a, b.key.public_key());
    assert_eq!(after.last_handshake, before.last_handshake);
    assert_eq!(after.tx_bytes, before.tx_bytes);
    assert_eq!(after.persistent_keepalive, Some(25));
    assert!(after.allowed_ips.contains(&net("10.9.0.0/16")));

    // The new prefix routes to B at once, on the same session (data, not a handshake).
    let lan = ipv4_packet([100, 64, 0, 1], [10, 9, 1, 1], b"lan");
    let out = send_from_tun(&mut a, &lan);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].2[0], 4);
    pump(&mut [&mut a, &mut b], out);
    assert_eq!(b.tun.last(), Some(&lan));
    assert_eq!(a.core.snapshot(0).counters.handshakes_completed, 1);
}

#[test]
fn bad_input_is_dropped_and_counted_never_panics() {
    let (mut a, mut b) = pair();
    let ping = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"x");
    let out = send_from_tun(&mut a, &ping);
    pump(&mut [&mut a, &mut b], out);

    let from = sa("198.51.100.66:1234");
    let mut sink = Sink::default();
    let now = Instant::now();
    // Garbage and truncated messages of every type.
    for len in [0usize, 1, 3, 4, 31, 32, 64, 91, 92, 147, 148, 149, 1500] {
        for ty in [0u8, 1, 2, 3, 4, 0xff] {
            let mut p = vec![0xa5u8; len];
            if let Some(x) = p.first_mut() {
                *x = ty;
            }
            if len >= 4 {
                p[1..4].fill(0);
            }
            a.core.handle_datagram(from, None, &p, now, &mut sink);
        }
    }
    // Random bytes.
    for i in 0..200 {
        let p: Vec<u8> = (0..(i * 7 % 300)).map(|_| rand::random::<u8>()).collect();
        a.core.handle_datagram(from, None, &p, now, &mut sink);
    }
    assert!(sink.tun.is_empty());
    let c = a.core.snapshot(0).counters;
    assert!(c.drops.malformed > 0, "{c:?}");
    assert!(c.drops.unknown_peer + c.drops.decrypt > 0, "{c:?}");

    // A peer we do not know initiates: dropped as unknown.
    let mut stranger = node("198.51.100.9:51820");
    stranger.core.apply(PeerOp::AddPeer(peer_config(
        &a,
        Some(a.addr),
        &["100.64.0.1/32"],
    )));
    let out = send_from_tun(
        &mut stranger,
        &ipv4_packet([100, 64, 0, 9], [100, 64, 0, 1], b"hi"),
    );
    let before = a.core.snapshot(0).counters.drops.unknown_peer;
    pump(&mut [&mut a, &mut stranger], out);
    assert_eq!(a.core.snapshot(0).counters.drops.unknown_peer, before + 1);

    // No route.
    let out = send_from_tun(&mut a, &ipv4_packet([100, 64, 0, 1], [8, 8, 8, 8], b"x"));
    assert!(out.is_empty());
    assert_eq!(a.core.snapshot(0).counters.drops.no_route, 1);

    // B sends from an inner source outside its AllowedIPs on A.
    let spoof = ipv4_packet([100, 64, 9, 9], [100, 64, 0, 1], b"spoof");
    let out = send_from_tun(&mut b, &spoof);
    let tun_before = a.tun.len();
    pump(&mut [&mut a, &mut b], out);
    assert_eq!(a.tun.len(), tun_before);
    assert_eq!(a.core.snapshot(0).counters.drops.source_not_allowed, 1);

    // The session still works after all that.
    let pong = ipv4_packet([100, 64, 0, 2], [100, 64, 0, 1], b"ok");
    let out = send_from_tun(&mut b, &pong);
    pump(&mut [&mut a, &mut b], out);
    assert_eq!(a.tun.last(), Some(&pong));
}

#[test]
fn removed_peer_is_forgotten_and_keepalive_starts_a_handshake() {
    let (mut a, mut b) = pair();
    let ping = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"x");
    let out = send_from_tun(&mut a, &ping);
    pump(&mut [&mut a, &mut b], out);
    a.core.apply(PeerOp::RemovePeer(b.key.public_key()));
    assert!(a.core.snapshot(0).peers.is_empty());
    assert!(send_from_tun(&mut a, &ping).is_empty());
    let out = send_from_tun(&mut b, &ipv4_packet([100, 64, 0, 2], [100, 64, 0, 1], b"x"));
    pump(&mut [&mut a, &mut b], out);
    assert_eq!(a.core.snapshot(0).counters.drops.unknown_peer, 1);

    // Persistent keepalive on a fresh peer initiates at the first tick.
    let mut c = peer_config(&b, Some(b.addr), &["100.64.0.2/32"]);
    c.persistent_keepalive = Some(25);
    a.core.apply(PeerOp::AddPeer(c));
    let mut sink = Sink::default();
    a.core.tick(Instant::now(), &mut sink);
    assert_eq!(sink.udp.len(), 1);
    assert_eq!(sink.udp[0].0, b.addr);
    assert_eq!(sink.udp[0].1[0], 1, "handshake initiation");
}

#[test]
fn idle_peers_cost_no_tunnel_state_and_no_handshakes() {
    // A hub with 1,000 spokes that never came (no endpoint known) and one
    // that is there.
    let (mut a, mut b) = pair();
    for i in 0..1000u32 {
        let spoke = PrivateKey::generate();
        let ip = std::net::Ipv4Addr::from(0x6440_1000 + i);
        a.core.apply(PeerOp::AddPeer(PeerConfig {
            name: format!("gp-{i}").parse().expect("name"),
            region: "north".parse().expect("name"),
            role: Role::Spoke,
            public_key: spoke.public_key(),
            endpoint: None,
            allowed_ips: [IpNet::from(ipnet::Ipv4Net::from(ip))].into(),
            persistent_keepalive: None,
        }));
    }
    assert_eq!(a.core.live_tunnels(), 0, "no state before there is work");
    // Traffic (a probe) to a spoke with no endpoint: dropped, no handshake
    // maths, no state.
    let out = send_from_tun(
        &mut a,
        &ipv4_packet([100, 64, 0, 1], [100, 64, 16, 7], b"p"),
    );
    assert!(out.is_empty());
    assert_eq!(a.core.live_tunnels(), 0);
    assert_eq!(a.core.snapshot(0).counters.drops.no_endpoint, 1);
    let mut sink = Sink::default();
    a.core.tick(Instant::now(), &mut sink);
    assert!(sink.udp.is_empty(), "the tick has nothing to do");
    // The one that is there: a session, on both sides, reported once each.
    let out = send_from_tun(&mut a, &ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"p"));
    pump(&mut [&mut a, &mut b], out);
    assert_eq!(a.core.live_tunnels(), 1);
    assert_eq!(b.core.live_tunnels(), 1);
    assert_eq!(a.handshakes.len() + b.handshakes.len(), 2);
    assert_eq!(b.handshakes, [peer_config(&a, None, &[]).name]);
}

/// A spoke with two hubs of its region: hub A carries the routed prefixes,
/// hub B only its own address. What B delivers from anywhere in A's
/// prefixes is accepted (the hubs stand in for each other); what a spoke
/// peer sends from outside its own prefixes is not.
#[test]
fn a_hub_may_deliver_what_another_hub_of_its_region_carries() {
    let mut spoke = node("198.51.100.10:51820");
    let mut hub_a = node("198.51.100.1:51820");
    let mut hub_b = node("198.51.100.2:51820");
    let mut other = node("198.51.100.11:51820");
    let hub = |n: &Node, name: &str, allowed: &[&str]| PeerConfig {
        name: name.parse().expect("name"),
        role: Role::Hub,
        ..peer_config(n, Some(n.addr), allowed)
    };
    spoke.core.apply(PeerOp::AddPeer(hub(
        &hub_a,
        "hub-a",
        &["100.64.0.1/32", "100.64.0.0/10"],
    )));
    spoke
        .core
        .apply(PeerOp::AddPeer(hub(&hub_b, "hub-b", &["100.64.0.2/32"])));
    let spoke_other = PeerConfig {
        name: "gp-other".parse().expect("name"),
        ..peer_config(&other, Some(other.addr), &["100.64.0.11/32"])
    };
    spoke.core.apply(PeerOp::AddPeer(spoke_other));
    for n in [&mut hub_a, &mut hub_b, &mut other] {
        let me = peer_config(&spoke, Some(spoke.addr), &["100.64.0.10/32"]);
        n.core.apply(PeerOp::AddPeer(me));
    }

    // From hub B, a packet from a site behind the other hub: delivered.
    let p = ipv4_packet([100, 64, 3, 7], [100, 64, 0, 10], b"via b");
    let q = send_from_tun(&mut hub_b, &p);
    pump(&mut [&mut spoke, &mut hub_b], q);
    assert_eq!(spoke.tun, std::slice::from_ref(&p));

    // From a spoke peer, the same source: dropped.
    spoke.tun.clear();
    let q = send_from_tun(&mut other, &p);
    pump(&mut [&mut spoke, &mut other], q);
    assert!(spoke.tun.is_empty());
    assert_eq!(spoke.core.snapshot(0).counters.drops.source_not_allowed, 1);

    // A hub of another region is no stand-in for this one.
    let mut far = node("198.51.100.20:51820");
    let far_hub = PeerConfig {
        name: "hub-far".parse().expect("name"),
        region: "south".parse().expect("name"),
        role: Role::Hub,
        ..peer_config(&far, Some(far.addr), &["100.64.16.1/32"])
    };
    spoke.core.apply(PeerOp::AddPeer(far_hub));
    far.core.apply(PeerOp::AddPeer(peer_config(
        &spoke,
        Some(spoke.addr),
        &["100.64.0.10/32"],
    )));
    let q = send_from_tun(&mut far, &p);
    pump(&mut [&mut spoke, &mut far], q);
    assert!(spoke.tun.is_empty());
    assert_eq!(spoke.core.snapshot(0).counters.drops.source_not_allowed, 2);
}

/// A hub accepts from another hub of its own region packets from any
/// source: it forwards for the sites behind it (an agentless spoke).
#[test]
fn a_hub_accepts_any_source_from_a_hub_of_its_own_region() {
    let key = PrivateKey::generate();
    let mut hub_a = Node {
        core: Core::new(&key, Some("north".parse().expect("name"))),
        key,
        addr: sa("198.51.100.1:51820"),
        tun: Vec::new(),
        handshakes: Vec::new(),
    };
    let mut hub_b = node("198.51.100.2:51820");
    let b_entry = PeerConfig {
        name: "hub-b".parse().expect("name"),
        role: Role::Hub,
        ..peer_config(&hub_b, Some(hub_b.addr), &["100.64.0.2/32"])
    };
    hub_a.core.apply(PeerOp::AddPeer(b_entry));
    hub_b.core.apply(PeerOp::AddPeer(peer_config(
        &hub_a,
        Some(hub_a.addr),
        &["100.64.0.0/10"],
    )));
    let p = ipv4_packet([100, 64, 16, 9], [100, 64, 0, 30], b"forwarded");
    let q = send_from_tun(&mut hub_b, &p);
    pump(&mut [&mut hub_a, &mut hub_b], q);
    assert_eq!(hub_a.tun, [p]);
}

/// Local indexes are drawn at random, not counted up from a random start.
#[test]
fn session_indexes_are_random() {
    let mut n = node("198.51.100.1:51820");
    for i in 0..1000u32 {
        let other = PrivateKey::generate();
        n.core.apply(PeerOp::AddPeer(PeerConfig {
            name: format!("gp-{i}").parse().expect("name"),
            region: "north".parse().expect("name"),
            role: Role::Spoke,
            public_key: other.public_key(),
            endpoint: None,
            allowed_ips: [net(&format!("100.64.{}.{}/32", i / 250, i % 250 + 1))].into(),
            persistent_keepalive: None,
        }));
    }
    let mut ix = n.core.indexes();
    assert_eq!(ix.len(), 1000);
    ix.sort_unstable();
    let adjacent = ix.windows(2).filter(|w| w[1] == w[0] + 1).count();
    assert!(
        adjacent < 5,
        "{adjacent} of 999 indexes follow the one before"
    );
}

/// The replay window: a captured transport datagram delivered again is
/// dropped; one held back is taken late while it is within 8,192 packets of
/// the newest (once), and dropped beyond.
#[test]
fn replays_are_dropped_and_reordering_within_8192_is_taken() {
    let (mut a, mut b) = pair();
    let hello = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"hello");
    let out = send_from_tun(&mut a, &hello);
    pump(&mut [&mut a, &mut b], out);
    assert_eq!(b.tun.len(), 1, "session up");

    let captured: Vec<Vec<u8>> = (0..9_000u32)
        .map(|i| {
            let packet = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], &i.to_be_bytes());
            let mut out = send_from_tun(&mut a, &packet);
            assert_eq!(out.len(), 1);
            out.pop_front().expect("one datagram").2
        })
        .collect();
    let from = a.addr;
    // Whether B delivers the datagram to its TUN device.
    let mut deliver = |datagram: &[u8]| {
        let mut sink = Sink::default();
        b.core
            .handle_datagram(from, None, datagram, Instant::now(), &mut sink);
        sink.tun.len() == 1
    };
    let held = [100, 500];
    for (i, d) in captured.iter().enumerate().take(8_201) {
        if !held.contains(&i) {
            assert!(deliver(d), "datagram {i} in order");
        }
    }
    assert!(deliver(&captured[100]), "8,100 behind the newest: taken");
    assert!(!deliver(&captured[100]), "but only once");
    for (i, d) in captured.iter().enumerate().skip(8_201) {
        assert!(deliver(d), "datagram {i} in order");
    }
    assert!(!deliver(&captured[500]), "8,499 behind: outside the window");
    for (i, d) in captured.iter().enumerate().step_by(97) {
        assert!(!deliver(d), "datagram {i} replayed");
    }
    assert!(!deliver(&captured[8_999]), "the newest replayed");
}

/// Under load a handshake initiation without a cookie is answered with a
/// cookie reply and costs no DH; with the cookie it is taken, up to the
/// source's share; the cookie is worth nothing from another address.
#[test]
fn under_load_handshakes_need_a_cookie_and_each_source_gets_its_share() {
    use boringtun::noise::{Tunn, TunnResult};
    let (_, mut b) = pair();
    b.core
        .set_handshake_backlog(super::core::UNDER_LOAD_BACKLOG);
    // A stranger: a valid initiation (mac1 and all) from a key B does not know.
    let stranger = PrivateKey::generate();
    let mut x = Tunn::new(
        stranger.to_dalek(),
        b.key.public_key().to_dalek(),
        None,
        None,
        7,
        None,
    );
    let mut buf = vec![0u8; 2048];
    let mut initiation = |x: &mut Tunn| match x.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("an initiation"),
    };
    let from = sa("203.0.113.50:40000");
    let counters = |b: &Node| b.core.snapshot(0).counters;

    let mut sink = Sink::default();
    let first = initiation(&mut x);
    b.core
        .handle_datagram(from, None, &first, Instant::now(), &mut sink);
    assert_eq!(sink.udp.len(), 1);
    let (to, cookie) = &sink.udp[0];
    assert_eq!(
        (*to, cookie[0], cookie.len()),
        (from, 3, 64),
        "a cookie reply"
    );
    assert_eq!(counters(&b).cookie_replies, 1);
    assert_eq!(counters(&b).drops.unknown_peer, 0, "no DH done");

    let mut scratch = vec![0u8; 2048];
    let _ = x.decapsulate(Some(from.ip()), cookie, &mut scratch);
    for _ in 0..8 {
        let mut sink = Sink::default();
        let with_cookie = initiation(&mut x);
        b.core
            .handle_datagram(from, None, &with_cookie, Instant::now(), &mut sink);
        assert!(sink.udp.is_empty(), "no reply to a stranger");
    }
    let c = counters(&b);
    assert_eq!(
        c.drops.unknown_peer, 5,
        "a burst of five gets as far as the key"
    );
    assert_eq!(c.drops.handshake_limited, 3, "the rest are over the share");
    assert_eq!(c.cookie_replies, 1);

    let mut sink = Sink::default();
    let elsewhere = initiation(&mut x);
    b.core.handle_datagram(
        sa("203.0.113.51:40000"),
        None,
        &elsewhere,
        Instant::now(),
        &mut sink,
    );
    assert_eq!(sink.udp.len(), 1, "another address needs its own cookie");
    assert_eq!(counters(&b).cookie_replies, 2);

    // Not under load: no cookie asked for.
    b.core.set_handshake_backlog(0);
    let mut sink = Sink::default();
    let calm = initiation(&mut x);
    b.core.handle_datagram(
        sa("203.0.113.52:40000"),
        None,
        &calm,
        Instant::now(),
        &mut sink,
    );
    assert!(sink.udp.is_empty());
    assert_eq!(counters(&b).drops.unknown_peer, 6);
}

/// A UDP packet from `src:sport` to `dst:dport`.
fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut payload = vec![0u8; 12];
    payload[0..2].copy_from_slice(&sport.to_be_bytes());
    payload[2..4].copy_from_slice(&dport.to_be_bytes());
    ipv4_packet(src, dst, &payload)
}

/// With a filter, what comes out of a tunnel reaches the TUN only when the
/// policy admits it or it answers a flow this side started; what is
/// dropped is counted against the peer it came from; and a packet whose
/// source is not the peer's is dropped before the policy sees it (it
/// neither counts as denied nor starts a flow).
#[test]
fn the_policy_filter_admits_replies_and_what_a_rule_allows_and_nothing_else() {
    use wardnet_common::filter::{FilterRule, SiteFilter, Traffic};
    use wardnet_common::policy::{PortRange, Proto, Reason};
    let (mut a, mut b) = pair();
    a.core.policy.set(Some(SiteFilter {
        local: vec![net("100.64.0.1/32")],
        rules: vec![FilterRule {
            reason: Reason::Rule(1),
            from: vec![net("100.64.0.2/32")],
            to: Vec::new(),
            traffic: vec![Traffic {
                proto: Proto::Udp,
                ports: vec![PortRange { lo: 53, hi: 53 }],
            }],
        }],
    }));
    let (me, them) = ([100, 64, 0, 1], [100, 64, 0, 2]);
    let from_b = |a: &mut Node, b: &mut Node, packet: Vec<u8>| {
        let before = a.tun.len();
        let out = send_from_tun(b, &packet);
        pump(&mut [a, b], out);
        a.tun.len() > before
    };
    // B has no endpoint for A: A's first packet makes the session.
    let out = send_from_tun(&mut a, &udp(me, 1000, them, 1000));
    pump(&mut [&mut a, &mut b], out);
    assert!(from_b(&mut a, &mut b, udp(them, 5000, me, 53)), "admitted");
    assert!(from_b(&mut a, &mut b, udp(them, 5000, me, 53)));
    assert!(
        !from_b(&mut a, &mut b, udp(them, 5000, me, 54)),
        "not admitted"
    );
    assert_eq!(peer_of(&a, b.key.public_key()).policy_denied, 1);
    // A starts a flow to B: B's answers pass.
    let out = send_from_tun(&mut a, &udp(me, 7000, them, 9000));
    pump(&mut [&mut a, &mut b], out);
    assert!(from_b(&mut a, &mut b, udp(them, 9000, me, 7000)), "a reply");
    assert!(!from_b(&mut a, &mut b, udp(them, 9001, me, 7000)));
    let counters = a.core.snapshot(0).policy;
    assert_eq!(counters.denied, 2);
    assert_eq!(counters.replies, 1);
    assert_eq!(counters.admitted.get("rule:1"), Some(&1));
    // A spoofed source: dropped for its source, unseen by the policy.
    let tracked = counters.tracked;
    assert!(!from_b(&mut a, &mut b, udp([100, 64, 9, 9], 5000, me, 53)));
    let after = a.core.snapshot(0);
    assert_eq!(after.counters.drops.source_not_allowed, 1);
    assert_eq!(after.policy.denied, 2);
    assert_eq!(after.policy.tracked, tracked);
}

/// A tunnel delivers only what the site owns: a spoke whose own WireGuard
/// sends its hub packets for addresses the hub does not own gets through
/// only to another peer of the hub that owns the destination; the hub's
/// other addresses, a LAN it never listed and the sender's own prefixes
/// (a hairpin) are dropped and counted as transit. A spoke forwards
/// nothing on.
#[test]
fn a_tunnel_delivers_only_what_the_site_owns_or_a_hub_forwards_to_its_owner() {
    use wardnet_common::filter::{FilterRule, SiteFilter, Traffic};
    use wardnet_common::policy::{Proto, Reason};
    let open = |local: &str| SiteFilter {
        local: vec![net(local)],
        rules: vec![FilterRule {
            reason: Reason::Unfiltered,
            from: vec![net("0.0.0.0/0"), net("::/0")],
            to: Vec::new(),
            traffic: vec![Traffic {
                proto: Proto::Any,
                ports: Vec::new(),
            }],
        }],
    };
    let key = PrivateKey::generate();
    let mut hub = Node {
        core: Core::new(&key, Some("north".parse().expect("name"))),
        key,
        addr: sa("198.51.100.1:51820"),
        tun: Vec::new(),
        handshakes: Vec::new(),
    };
    hub.core.policy.set(Some(open("100.64.0.1/32")));
    let mut attacker = node("198.51.100.10:51820");
    let mut victim = node("198.51.100.11:51820");
    victim.core.policy.set(Some(open("100.64.0.11/32")));
    hub.core.apply(PeerOp::AddPeer(peer_config(
        &attacker,
        Some(attacker.addr),
        &["100.64.0.10/32", "100.70.1.0/24"],
    )));
    hub.core.apply(PeerOp::AddPeer(peer_config(
        &victim,
        Some(victim.addr),
        &["100.64.0.11/32"],
    )));
    // The attacker's own WireGuard: its hub and the victim with AllowedIPs
    // as wide as it likes.
    attacker.core.apply(PeerOp::AddPeer(PeerConfig {
        role: Role::Hub,
        ..peer_config(&hub, Some(hub.addr), &["100.64.0.0/11"])
    }));
    attacker.core.apply(PeerOp::AddPeer(peer_config(
        &victim,
        Some(victim.addr),
        &["100.96.0.0/11"],
    )));
    victim.core.apply(PeerOp::AddPeer(peer_config(
        &attacker,
        Some(attacker.addr),
        &["100.64.0.10/32"],
    )));
    let me = [100, 64, 0, 10];
    let attacker_key = attacker.key.public_key();
    let mut send = |dst: [u8; 4], hub: &mut Node, victim: &mut Node| {
        let out = send_from_tun(&mut attacker, &udp(me, 5000, dst, 22));
        pump(&mut [&mut attacker, hub, victim], out);
    };
    send([100, 64, 0, 11], &mut hub, &mut victim);
    assert_eq!(hub.tun.len(), 1, "forwarded to the peer that owns it");
    send([100, 64, 0, 1], &mut hub, &mut victim);
    assert_eq!(hub.tun.len(), 2, "the hub's own overlay address");
    send([100, 64, 9, 1], &mut hub, &mut victim);
    send([100, 70, 1, 5], &mut hub, &mut victim);
    assert_eq!(hub.tun.len(), 2, "no owner, and the sender's own LAN");
    assert_eq!(hub.core.snapshot(0).policy.transit, 2);
    assert_eq!(peer_of(&hub, attacker_key).policy_denied, 2);
    // Straight to the victim, a spoke: an address it does not own.
    send([100, 99, 0, 1], &mut hub, &mut victim);
    assert!(victim.tun.is_empty());
    assert_eq!(victim.core.snapshot(0).policy.transit, 1);
}
