//! `AgentState` with injected time: no device, no sockets, no sleeps.

use std::path::Path;

use ipnet::IpNet;
use wardnet_common::{PeerConfig, PublicKey};

use super::*;
use crate::device_snapshot::PeerSnapshot;
use crate::reconcile::PeerOp;
use crate::status::PeerStatus;

const S: Duration = Duration::from_secs(1);

fn name(s: &str) -> Name {
    s.parse().expect("valid name")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid prefix")
}

fn enrolment() -> Enrolment {
    Enrolment {
        site: name("hub-north"),
        region: name("north"),
        role: Role::Hub,
        addresses: [net("100.64.0.1/32")].into(),
        controller_url: "https://127.0.0.1:1".into(),
        credential: "secret".into(),
        ca_cert: None,
        allow_plain_http: false,
    }
}

fn config() -> Config {
    Config::parse(Path::new("agent.toml"), "", |_| None).expect("defaults")
}

fn spoke(i: u8) -> PeerConfig {
    PeerConfig {
        name: name(&format!("gp-{i}")),
        region: name("north"),
        role: Role::Spoke,
        public_key: PublicKey::from_bytes([i; 32]),
        endpoint: None,
        allowed_ips: [net(&format!("100.64.0.{}/32", 10 + i))].into(),
        persistent_keepalive: None,
    }
}

fn site_config(revision: u64, peers: &[u8]) -> SiteConfig {
    SiteConfig {
        revision,
        site: name("hub-north"),
        region: name("north"),
        role: Role::Hub,
        interface: wardnet_common::wire::InterfaceConfig {
            addresses: [net("100.64.0.1/32")].into(),
            listen_port: 51820,
            mtu: 1420,
        },
        peers: peers.iter().map(|i| spoke(*i)).collect(),
        routes: [net("100.64.0.0/10")].into(),
        failover: Vec::new(),
        filter: None,
    }
}

/// A state running `peers` at revision 1, with probing on.
fn running(peers: &[u8], t0: Instant) -> AgentState {
    let first = site_config(1, peers);
    let mut s = AgentState::new(
        enrolment(),
        config(),
        &first,
        ConfigSource::Cache,
        true,
        1000,
    );
    let plan = s.plan(first).expect("our site");
    s.applied(plan, Some(ConfigSource::Cache), t0);
    s
}

/// What the device would show: the peers, handshakes as given.
fn snapshot(s: &AgentState, handshakes: &[(u8, SystemTime)]) -> DeviceSnapshot {
    DeviceSnapshot {
        listen_port: 51820,
        peers: s
            .running()
            .peers
            .iter()
            .map(|p| PeerSnapshot {
                name: p.name.clone(),
                public_key: p.public_key,
                endpoint: None,
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: None,
                last_handshake: handshakes
                    .iter()
                    .find(|(i, _)| spoke(*i).name == p.name)
                    .map(|(_, t)| *t),
                rx_bytes: 0,
                tx_bytes: 0,
                policy_denied: 0,
            })
            .collect(),
        counters: Default::default(),
        policy: Default::default(),
    }
}

fn peer<'a>(st: &'a AgentStatus, n: &str) -> &'a PeerStatus {
    st.peers
        .iter()
        .find(|p| p.name.as_str() == n)
        .expect("peer")
}

#[test]
fn a_config_for_another_site_is_refused_and_nothing_changes() {
    let t0 = Instant::now();
    let s = running(&[1], t0);
    let mut other = site_config(2, &[1, 2]);
    other.site = name("gp-9");
    assert!(matches!(
        s.plan(other),
        Err(ConfigRefused::OtherSite { .. })
    ));
    assert_eq!(s.running().revision, 1);
}

#[test]
fn a_change_plans_only_the_difference() {
    let t0 = Instant::now();
    let s = running(&[1, 2], t0);
    let plan = s.plan(site_config(2, &[2, 3])).expect("plan");
    assert!(!plan.first);
    let adds: Vec<_> = plan
        .plan
        .peer_ops
        .iter()
        .map(|op| match op {
            PeerOp::AddPeer(c) => format!("+{}", c.name),
            PeerOp::RemovePeer(k) if *k == spoke(1).public_key => "-gp-1".into(),
            PeerOp::RemovePeer(_) => "-?".into(),
            PeerOp::UpdatePeer(c) => format!("~{}", c.name),
        })
        .collect();
    assert_eq!(adds, ["-gp-1", "+gp-3"]);
}

#[test]
fn before_any_handshake_every_link_is_unknown_not_down() {
    // The demo's first `sites list`: nothing has shaken hands yet.
    let t0 = Instant::now();
    let s = running(&[1, 2, 3], t0);
    let wall = SystemTime::now();
    let snap = snapshot(&s, &[]);
    let handshakes: Vec<_> = snap
        .peers
        .iter()
        .map(|p| (p.name.clone(), p.last_handshake))
        .collect();
    let h = s.health(&handshakes, wall, t0 + 60 * S);
    assert_eq!((h.peers_up, h.peers_unknown, h.peers_total), (0, 3, 3));
    assert_eq!(h.worst_peer, None, "no link is down");
    let st = s.status(&snap, wall, t0 + 60 * S, "u".into());
    assert!(st.peers.iter().all(|p| p.state == LinkState::Unknown));
    // And the gauge is absent rather than 0, so no alert fires.
    let m = s.metrics(&snap, wall, t0 + 60 * S);
    assert!(!m.contains("wardnet_peer_up{"), "{m}");
}

#[test]
fn probes_start_at_the_handshake_and_its_rtt_is_the_links() {
    let t0 = Instant::now();
    let mut s = running(&[1, 2], t0);
    // Nothing to probe before a session: no timer at all.
    assert_eq!(s.poll_timeout(), None);
    assert!(s.on_timeout(t0 + 10 * S).is_empty());
    let hs = t0 + 12 * S;
    s.on_handshake(&name("gp-1"), hs, hs);
    assert_eq!(s.poll_timeout(), Some(hs));
    let actions = s.on_timeout(hs);
    let [Action::SendProbes { source, probes }] = actions.as_slice() else {
        panic!("expected one batch of probes, got {actions:?}");
    };
    assert_eq!(*source, Ipv4Addr::new(100, 64, 0, 1));
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].address, Ipv4Addr::new(100, 64, 0, 11));
    // The echo comes back 300 µs later: that is the RTT shown.
    let reply = EchoReply {
        src: probes[0].address,
        dst: *source,
        ident: 1,
        seq: probes[0].seq,
    };
    s.on_probe_reply(&reply, hs + Duration::from_micros(300));
    let wall = SystemTime::now();
    let snap = snapshot(&s, &[(1, wall - S)]);
    let st = s.status(&snap, wall, hs + S, "u".into());
    let p = peer(&st, "gp-1");
    assert_eq!(p.state, LinkState::Up);
    assert_eq!(p.rtt_seconds, Some(0.0003));
    assert_eq!(peer(&st, "gp-2").state, LinkState::Unknown);
}

#[test]
fn a_revoked_site_says_so_once_and_takes_its_peers_down() {
    let t0 = Instant::now();
    let mut s = running(&[1, 2], t0);
    let actions = s.on_sync(SyncOutcome::Revoked, 2000);
    assert_eq!(actions.first(), Some(&Action::AnnounceRevoked));
    let Some(Action::Apply(plan)) = actions.get(1) else {
        panic!("expected the peers to go: {actions:?}");
    };
    assert_eq!(plan.plan.peer_ops.len(), 2);
    assert!(plan
        .plan
        .peer_ops
        .iter()
        .all(|op| matches!(op, PeerOp::RemovePeer(_))));
    let plan = (**plan).clone();
    s.applied(plan, None, t0 + S);
    // Said once: the next refusal is quiet.
    assert!(s.on_sync(SyncOutcome::Revoked, 2600).is_empty());
    let st = s.status(&snapshot(&s, &[]), SystemTime::now(), t0 + S, "u".into());
    assert!(st.revoked);
    assert!(st.peers.is_empty());
    assert_eq!(st.config_source, "cache", "the agent's own change");
    assert!(st
        .controller_error
        .as_deref()
        .is_some_and(|e| e.contains("enroll")));
    // No config is taken while revoked.
    assert_eq!(s.plan(site_config(3, &[1])), Err(ConfigRefused::Revoked));
    assert!(s
        .metrics(&snapshot(&s, &[]), SystemTime::now(), t0)
        .contains("wardnet_agent_revoked 1"));
}

#[test]
fn reachability_follows_the_sync_task() {
    let t0 = Instant::now();
    let mut s = running(&[1], t0);
    let snap = snapshot(&s, &[]);
    let st = s.status(&snap, SystemTime::now(), t0, "u".into());
    assert!(!st.controller_reachable, "from the cache: not yet reached");
    s.on_sync(SyncOutcome::Failed("connection refused".into()), 1001);
    let st = s.status(&snap, SystemTime::now(), t0, "u".into());
    assert_eq!(st.controller_error.as_deref(), Some("connection refused"));
    s.on_sync(SyncOutcome::Reached, 1002);
    let st = s.status(&snap, SystemTime::now(), t0, "u".into());
    assert!(st.controller_reachable);
    assert_eq!((st.controller_error, st.last_sync), (None, Some(1002)));
}

#[test]
fn an_apply_error_shows_until_the_next_success() {
    let t0 = Instant::now();
    let mut s = running(&[1], t0);
    s.apply_failed("failed to set addresses and routes: busy".into());
    let snap = snapshot(&s, &[]);
    let st = s.status(&snap, SystemTime::now(), t0, "u".into());
    assert!(st.apply_error.is_some());
    assert_eq!(st.applied_revision, 1, "what ran before runs on");
    let plan = s.plan(site_config(2, &[1, 2])).expect("plan");
    s.applied(plan, Some(ConfigSource::Controller), t0 + S);
    let st = s.status(&snapshot(&s, &[]), SystemTime::now(), t0, "u".into());
    assert_eq!((st.apply_error, st.applied_revision), (None, 2));
    assert_eq!(st.config_source, "controller");
}

#[test]
fn a_reload_with_a_new_probe_interval_keeps_the_sessions() {
    let t0 = Instant::now();
    let mut s = running(&[1], t0);
    s.on_handshake(&name("gp-1"), t0, t0);
    let mut new = config();
    new.probe_interval = 2 * S;
    new.interface = "wn9".into();
    let r = s.reload(new, t0 + S);
    assert_eq!(r.pending, ["interface"]);
    assert!(!r.controller);
    assert_eq!(s.config().probe_interval, 2 * S);
    // Still probed: the session is known, at the new pace.
    assert_eq!(s.poll_timeout(), Some(t0 + S));
    assert_eq!(s.on_timeout(t0 + S).len(), 1);
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + S * 3),
        "2 s later: the next probe"
    );
}
