//! Probe scheduler tests: injected time only, no sleeps.

use super::*;

const S: Duration = Duration::from_secs(1);

fn name(s: &str) -> Name {
    s.parse().expect("valid name")
}

fn target(n: &str, last: u8) -> ProbeTarget {
    ProbeTarget {
        fast: false,
        name: name(n),
        region: name("north"),
        role: Role::Spoke,
        address: Some(Ipv4Addr::new(100, 64, 0, last)),
    }
}

/// One peer with a session that started at `t0`.
fn one_peer() -> (Scheduler, Instant) {
    let t0 = Instant::now();
    let mut s = Scheduler::new(ProbeConfig::default());
    s.set_peers(vec![target("hub", 1)], t0);
    s.on_handshake(&name("hub"), t0, t0);
    (s, t0)
}

/// Handshakes for every peer at `now` (sessions keep being rekeyed).
fn rekey(s: &mut Scheduler, now: Instant) {
    let names: Vec<Name> = s.views(now).into_iter().map(|v| v.name).collect();
    for n in names {
        s.on_handshake(&n, now, now);
    }
}

#[test]
fn sends_every_interval_with_growing_sequence() {
    let (mut s, t0) = one_peer();
    let p = s.on_tick(t0);
    assert_eq!(
        p,
        vec![ProbeToSend {
            peer: name("hub"),
            address: Ipv4Addr::new(100, 64, 0, 1),
            seq: 0
        }]
    );
    assert!(s.on_tick(t0 + 4 * S).is_empty(), "not due before 5 s");
    assert_eq!(s.next_deadline(), Some(t0 + 5 * S));
    let p = s.on_tick(t0 + 5 * S);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].seq, 1);
    let v = s.view_of(&name("hub"), t0 + 5 * S).expect("peer");
    assert_eq!(v.sent_total, 2);
    // The first went unanswered for a whole timeout: lost.
    assert_eq!(v.lost_total, 1);
}

#[test]
fn configurable_interval() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(ProbeConfig::with_interval(Duration::from_millis(500)));
    s.set_peers(vec![target("hub", 1)], t0);
    rekey(&mut s, t0);
    let sent: usize = (0..10)
        .map(|i| s.on_tick(t0 + Duration::from_millis(100) * i).len())
        .sum();
    // Ticks at 0..0.9 s: sends at 0 and 0.5 s.
    assert_eq!(sent, 2);
}

#[test]
fn reply_gives_rtt_and_is_counted_once() {
    let (mut s, t0) = one_peer();
    let p = s.on_tick(t0);
    let rtt = Duration::from_millis(23);
    assert_eq!(
        s.on_reply(&name("hub"), p[0].seq, t0 + rtt),
        ReplyOutcome::Answered { rtt: Some(rtt) }
    );
    // A duplicate does not count again.
    assert_eq!(
        s.on_reply(&name("hub"), p[0].seq, t0 + rtt),
        ReplyOutcome::Ignored
    );
    // Unknown peer or sequence.
    assert_eq!(s.on_reply(&name("nope"), 0, t0), ReplyOutcome::Ignored);
    assert_eq!(s.on_reply(&name("hub"), 99, t0), ReplyOutcome::Ignored);
    let v = s.view_of(&name("hub"), t0 + S).expect("peer");
    assert_eq!(v.last_rtt, Some(rtt));
    assert_eq!(v.srtt, Some(rtt));
    assert_eq!(v.loss_ratio, Some(0.0));
    assert_eq!(v.lost_total, 0);
    assert_eq!(v.probe_ok, Some(true));
}

#[test]
fn late_reply_is_lost_not_answered() {
    let (mut s, t0) = one_peer();
    let p = s.on_tick(t0);
    // Not expired by a tick yet, but past the timeout.
    assert_eq!(
        s.on_reply(&name("hub"), p[0].seq, t0 + 6 * S),
        ReplyOutcome::Ignored
    );
    let v = s.view_of(&name("hub"), t0 + 6 * S).expect("peer");
    assert_eq!(v.lost_total, 1);
    assert_eq!(v.loss_ratio, Some(1.0));
    // And it is not counted a second time at the next tick.
    s.on_tick(t0 + 10 * S);
    assert_eq!(
        s.view_of(&name("hub"), t0 + 10 * S).map(|v| v.lost_total),
        Some(1)
    );
}

#[test]
fn smoothed_rtt() {
    let (mut s, t0) = one_peer();
    let mut now = t0;
    for ms in [80u64, 0, 0] {
        let p = s.on_tick(now);
        s.on_reply(&name("hub"), p[0].seq, now + Duration::from_millis(ms));
        now += 5 * S;
    }
    let v = s.view_of(&name("hub"), now).expect("peer");
    // 80, then 80*7/8 = 70, then 70*7/8 = 61.25 ms.
    assert_eq!(v.srtt, Some(Duration::from_micros(61_250)));
    assert_eq!(v.last_rtt, Some(Duration::ZERO));
}

/// Answer every probe except those `lose` picks; returns the time after.
fn run(s: &mut Scheduler, t0: Instant, probes: u32, lose: impl Fn(u32) -> bool) -> Instant {
    let mut now = t0;
    for i in 0..probes {
        if i % 24 == 0 {
            rekey(s, now);
        }
        for p in s.on_tick(now) {
            if !lose(i) {
                s.on_reply(&p.peer, p.seq, now + Duration::from_millis(10));
            }
        }
        now += 5 * S;
    }
    now
}

#[test]
fn loss_ratio_over_the_sliding_window() {
    let (mut s, t0) = one_peer();
    // One in five lost, over 200 probes: 20 % in the window of 60.
    let now = run(&mut s, t0, 200, |i| i % 5 == 0);
    let v = s.view_of(&name("hub"), now).expect("peer");
    assert_eq!(v.sent_total, 200);
    assert_eq!(v.lost_total, 40);
    let l = v.loss_ratio.expect("ratio");
    assert!((l - 0.2).abs() < 1e-9, "{l}");

    // Then a clean stretch longer than the window: the old losses age out,
    // the counter keeps them.
    let now = run(&mut s, now, 60, |_| false);
    let v = s.view_of(&name("hub"), now).expect("peer");
    assert_eq!(v.loss_ratio, Some(0.0));
    assert_eq!(v.lost_total, 40);
}

#[test]
fn down_after_two_intervals_without_success() {
    let (mut s, t0) = one_peer();
    let p = s.on_tick(t0);
    s.on_reply(&name("hub"), p[0].seq, t0 + Duration::from_millis(10));
    let last_ok = t0 + Duration::from_millis(10);
    // The peer stops answering.
    let mut now = t0 + 5 * S;
    while now <= last_ok + 10 * S {
        s.on_tick(now);
        let v = s.view_of(&name("hub"), now).expect("peer");
        assert_eq!(v.probe_ok, Some(true), "still up at {:?}", now - t0);
        now += S;
    }
    s.on_tick(now);
    let v = s.view_of(&name("hub"), now).expect("peer");
    assert_eq!(v.probe_ok, Some(false));
    // Reported down within two probe intervals of the last answer.
    assert!(now - last_ok <= 11 * S);
    // It answers again: up at once.
    let p = s.on_tick(t0 + 20 * S);
    s.on_reply(&name("hub"), p[0].seq, t0 + 20 * S);
    assert_eq!(
        s.view_of(&name("hub"), t0 + 20 * S)
            .and_then(|v| v.probe_ok),
        Some(true)
    );
}

#[test]
fn grace_for_a_new_peer_then_down() {
    let (mut s, t0) = one_peer();
    s.on_tick(t0);
    assert_eq!(
        s.view_of(&name("hub"), t0 + 10 * S)
            .and_then(|v| v.probe_ok),
        Some(true)
    );
    s.on_tick(t0 + 10 * S);
    assert_eq!(
        s.view_of(&name("hub"), t0 + 11 * S)
            .and_then(|v| v.probe_ok),
        Some(false)
    );
}

#[test]
fn link_rule_needs_handshake_and_probe() {
    let fresh = Some(Duration::from_secs(30));
    let stale = Some(Duration::from_secs(180));
    assert_eq!(link_state(fresh, Some(true)), LinkState::Up);
    assert_eq!(
        link_state(fresh, None),
        LinkState::Up,
        "an unprobed peer rests on its handshake"
    );
    assert_eq!(link_state(fresh, Some(false)), LinkState::Down);
    assert_eq!(
        link_state(stale, Some(true)),
        LinkState::Down,
        "180 s is WireGuard's reject window"
    );
    assert_eq!(
        link_state(None, Some(false)),
        LinkState::Unknown,
        "never a handshake: nothing known"
    );
    assert_eq!(
        link_state(Some(Duration::from_secs(179)), Some(true)),
        LinkState::Up
    );
}

#[test]
fn set_peers_keeps_unchanged_and_new_wait_for_a_handshake() {
    let (mut s, t0) = one_peer();
    let p = s.on_tick(t0);
    s.on_reply(&name("hub"), p[0].seq, t0 + S / 10);
    let t1 = t0 + S;
    s.set_peers(
        vec![
            target("hub", 1),
            target("a", 2),
            target("b", 3),
            target("c", 4),
            target("d", 5),
        ],
        t1,
    );
    // hub kept its counters and schedule.
    let v = s.view_of(&name("hub"), t1).expect("hub");
    assert_eq!(v.sent_total, 1);
    assert!(s.on_tick(t1).iter().all(|p| p.peer != name("hub")));
    // New peers have no session: no probe (it would only start a handshake
    // with a peer that may not be there) until their first handshake.
    let mut first_sent = BTreeMap::new();
    let t2 = t1 + 3 * S;
    s.on_handshake(&name("b"), t2, t2);
    for ms in (0..=5000).step_by(100) {
        let now = t1 + Duration::from_millis(ms);
        for p in s.on_tick(now) {
            first_sent.entry(p.peer).or_insert(ms);
        }
    }
    assert_eq!(first_sent.get(&name("a")), None);
    assert_eq!(
        first_sent.get(&name("b")),
        Some(&3000),
        "probed at its handshake"
    );
    assert_eq!(first_sent.get(&name("hub")), Some(&4000), "its own cadence");
    // A changed address starts afresh; a removed peer is gone.
    s.set_peers(vec![target("hub", 9)], t1);
    assert_eq!(s.views(t1).len(), 1);
    assert_eq!(s.view_of(&name("hub"), t1).map(|v| v.sent_total), Some(0));
    assert_eq!(s.peer_for(Ipv4Addr::new(100, 64, 0, 9)), Some(&name("hub")));
    assert_eq!(s.peer_for(Ipv4Addr::new(100, 64, 0, 1)), None);
}

#[test]
fn a_peer_without_a_session_costs_nothing_until_it_shakes_hands() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(ProbeConfig::default());
    s.set_peers(vec![target("gp-a", 2)], t0);
    assert_eq!(s.next_deadline(), None, "no timer for a peer never seen");
    for i in 0..60 {
        assert!(s.on_tick(t0 + S * i).is_empty());
    }
    let t1 = t0 + 61 * S;
    s.on_handshake(&name("gp-a"), t1, t1);
    assert_eq!(s.next_deadline(), Some(t1), "probed at once");
    assert_eq!(s.on_tick(t1).len(), 1);
}

#[test]
fn a_lapsed_session_stops_the_probes_until_the_next_handshake() {
    let (mut s, t0) = one_peer();
    let mut sent = 0;
    let mut now = t0;
    while now < t0 + 300 * S {
        sent += s.on_tick(now).len();
        now += S;
    }
    // Probes every 5 s while the session lived (180 s), none after.
    assert_eq!(sent, 36);
    assert_eq!(s.next_deadline(), None);
    s.on_handshake(&name("hub"), now, now);
    assert_eq!(s.on_tick(now).len(), 1);
}

#[test]
fn a_probe_that_waited_for_a_handshake_gives_no_rtt() {
    let (mut s, t0) = one_peer();
    let p = s.on_tick(t0);
    // The peer had restarted: the probe waited for a new handshake.
    let hs = t0 + S + S / 5;
    s.on_handshake(&name("hub"), hs, hs);
    assert_eq!(
        s.on_reply(&name("hub"), p[0].seq, hs + Duration::from_millis(1)),
        ReplyOutcome::Answered { rtt: None }
    );
    let v = s.view_of(&name("hub"), hs + S).expect("peer");
    assert_eq!((v.srtt, v.last_rtt), (None, None));
    assert_eq!((v.loss_ratio, v.probe_ok), (Some(0.0), Some(true)));
    // The next probe, through the fresh session, gives the RTT.
    let p = s.on_tick(t0 + 5 * S);
    let rtt = Duration::from_micros(300);
    s.on_reply(&name("hub"), p[0].seq, t0 + 5 * S + rtt);
    let v = s.view_of(&name("hub"), t0 + 6 * S).expect("peer");
    assert_eq!(v.srtt, Some(rtt));
}

#[test]
fn unprobed_peer() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(ProbeConfig::default());
    let mut t = target("far-hub", 1);
    t.address = None;
    s.set_peers(vec![t], t0);
    assert!(s.on_tick(t0).is_empty());
    assert_eq!(s.next_deadline(), None);
    let v = s.view_of(&name("far-hub"), t0).expect("peer");
    assert_eq!((v.probe_ok, v.loss_ratio, v.sent_total), (None, None, 0));
}

#[test]
fn no_burst_after_a_stall() {
    let (mut s, t0) = one_peer();
    s.on_tick(t0);
    // The loop stalled for a minute: one probe, not twelve.
    assert_eq!(s.on_tick(t0 + 60 * S).len(), 1);
    assert!(s.on_tick(t0 + 61 * S).is_empty());
    assert_eq!(s.on_tick(t0 + 65 * S).len(), 1);
}

#[test]
fn sequence_wraps() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(ProbeConfig::with_interval(S));
    s.set_peers(vec![target("hub", 1)], t0);
    let mut last = None;
    for i in 0..=65536u32 {
        let now = t0 + S * i;
        if i % 100 == 0 {
            rekey(&mut s, now);
        }
        for p in s.on_tick(now) {
            s.on_reply(&p.peer, p.seq, now);
            last = Some(p.seq);
        }
    }
    assert_eq!(last, Some(0));
    let v = s.view_of(&name("hub"), t0 + S * 65536).expect("peer");
    assert_eq!((v.sent_total, v.lost_total), (65537, 0));
}

#[test]
fn probe_address_is_the_ipv4_host_prefix() {
    let nets: Vec<ipnet::IpNet> = ["100.64.0.0/10", "fd7a::2/128", "100.64.0.2/32"]
        .iter()
        .map(|s| s.parse().expect("net"))
        .collect();
    assert_eq!(probe_address(&nets), Some(Ipv4Addr::new(100, 64, 0, 2)));
    assert_eq!(probe_address(&nets[..2]), None);
}

#[test]
fn timers_of_a_removed_or_changed_peer_are_ignored() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(ProbeConfig::default());
    s.set_peers(vec![target("a", 2), target("b", 3)], t0);
    rekey(&mut s, t0);
    let sent = s.on_tick(t0 + Duration::from_secs(5));
    assert_eq!(sent.len(), 2, "{sent:?}");
    // a moves to another address (a new incarnation), b goes away.
    s.set_peers(vec![target("a", 9)], t0 + Duration::from_secs(6));
    // The old incarnation's probe expires: not counted against the new one;
    // b's timers fire into nothing.
    let later = s.on_tick(t0 + Duration::from_secs(20));
    assert!(later.iter().all(|p| p.peer == name("a")), "{later:?}");
    let v = s
        .view_of(&name("a"), t0 + Duration::from_secs(20))
        .expect("a");
    assert_eq!(v.address, Some(Ipv4Addr::new(100, 64, 0, 9)));
    // One probe of the new incarnation (its first, due at once, sent at the
    // late tick), not yet expired; nothing lost.
    assert_eq!((v.sent_total, v.lost_total, later.len()), (1, 0, 1));
    assert!(s.view_of(&name("b"), t0).is_none());
}

#[test]
fn a_hub_tick_touches_only_what_is_due() {
    // 10,000 peers spread over one interval: at any instant only the
    // probes due by then are sent, and the next deadline is the earliest
    // pending timer.
    let t0 = Instant::now();
    let mut s = Scheduler::new(ProbeConfig::default());
    let peers: Vec<ProbeTarget> = (0..10_000u32)
        .map(|i| ProbeTarget {
            fast: false,
            name: name(&format!("gp-{i}")),
            region: name("north"),
            role: Role::Spoke,
            address: Some(Ipv4Addr::from(0x6440_0000 + i + 2)),
        })
        .collect();
    s.set_peers(peers, t0);
    // Handshakes arrive over the first interval.
    for i in 0..10_000u32 {
        let at = t0 + Duration::from_secs(5) * i / 10_000;
        s.on_handshake(&name(&format!("gp-{i}")), at, t0);
    }
    let mut sent = 0;
    let mut now = t0;
    while now < t0 + Duration::from_secs(5) {
        let due = s.on_tick(now);
        sent += due.len();
        let next = s.next_deadline().expect("timers pending");
        assert!(next > now, "a due timer was left behind");
        now = next;
    }
    assert_eq!(sent, 10_000, "each peer probed once in the first interval");
}
