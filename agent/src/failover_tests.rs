use std::cell::RefCell;
use std::collections::BTreeMap;

use wardnet_common::wire::{InterfaceConfig, PeerConfig, Role};
use wardnet_common::PublicKey;

use super::*;

fn name(s: &str) -> Name {
    s.parse().expect("name")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn group(hubs: &[&str]) -> FailoverGroup {
    FailoverGroup {
        region: name("north"),
        hubs: hubs.iter().map(|h| name(h)).collect(),
    }
}

/// The probes' view of each hub, as a test sets it. A hub with no loss
/// since it last answered answers every probe (its last answer is now),
/// unless it went quiet (answered last at a time the test says, its
/// missing answer not yet counted lost).
struct Probes(
    RefCell<BTreeMap<Name, HubView>>,
    RefCell<BTreeMap<Name, Instant>>,
);

impl Probes {
    fn new(hubs: &[&str], t0: Instant) -> Self {
        Probes(
            RefCell::new(
                hubs.iter()
                    .map(|h| {
                        let v = HubView {
                            probed: true,
                            lost_streak: 0,
                            ok_since: Some(t0),
                            last_answer: Some(t0),
                        };
                        (name(h), v)
                    })
                    .collect(),
            ),
            RefCell::new(BTreeMap::new()),
        )
    }
    /// The hub stops answering after `last`; no probe counted lost yet.
    fn go_quiet(&self, hub: &str, last: Instant) {
        self.1.borrow_mut().insert(name(hub), last);
    }
    fn lose(&self, hub: &str, n: u32) {
        let mut m = self.0.borrow_mut();
        let v = m.get_mut(&name(hub)).expect("hub");
        v.lost_streak += n;
        v.ok_since = None;
    }
    fn answer(&self, hub: &str, at: Instant) {
        let mut m = self.0.borrow_mut();
        let v = m.get_mut(&name(hub)).expect("hub");
        v.lost_streak = 0;
        v.ok_since.get_or_insert(at);
        v.last_answer = Some(at);
        self.1.borrow_mut().remove(&name(hub));
    }
    fn view_at(&self, now: Instant) -> impl Fn(&Name) -> HubView + '_ {
        move |h| {
            let mut v = self.0.borrow().get(h).copied().unwrap_or_default();
            if let Some(last) = self.1.borrow().get(h) {
                v.last_answer = Some(*last);
            } else if v.lost_streak == 0 && v.ok_since.is_some() {
                v.last_answer = Some(now);
            }
            v
        }
    }
}

fn failover(site: &str) -> Failover {
    Failover::new(FailoverConfig::default(), &name(site))
}

#[test]
fn the_active_hub_fails_after_the_configured_misses_and_not_before() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b"], t0);

    probes.lose("hub-a", 3);
    assert!(f
        .evaluate(t0 + secs(1), probes.view_at(t0 + secs(1)))
        .is_empty());
    assert_eq!(f.active(&name("north")), Some(&name("hub-a")));

    probes.lose("hub-a", 1);
    let moves = f.evaluate(t0 + secs(1), probes.view_at(t0 + secs(1)));
    assert_eq!(
        moves,
        [Move {
            region: name("north"),
            from: name("hub-a"),
            to: name("hub-b"),
            reason: Reason::Failed,
        }]
    );
    assert_eq!(f.active(&name("north")), Some(&name("hub-b")));
    assert_eq!(f.failovers_total(), 1);
}

#[test]
fn with_no_other_hub_answering_traffic_stays_and_moves_once_one_answers() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b"], t0);
    probes.lose("hub-a", 10);
    probes.lose("hub-b", 10);
    assert!(f
        .evaluate(t0 + secs(3), probes.view_at(t0 + secs(3)))
        .is_empty());
    assert_eq!(f.active(&name("north")), Some(&name("hub-a")));

    probes.answer("hub-b", t0 + secs(4));
    let moves = f.evaluate(t0 + secs(4), probes.view_at(t0 + secs(4)));
    assert_eq!(moves.len(), 1);
    assert_eq!(moves[0].to, name("hub-b"));
}

#[test]
fn failback_waits_for_the_hold_down_and_a_loss_restarts_it() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    let cfg = f.config;
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b"], t0);
    probes.lose("hub-a", 4);
    assert_eq!(
        f.evaluate(t0 + secs(1), probes.view_at(t0 + secs(1))).len(),
        1
    );

    // Back at 10 s; a loss at 20 s starts the count again.
    probes.answer("hub-a", t0 + secs(10));
    assert!(f
        .evaluate(t0 + secs(19), probes.view_at(t0 + secs(19)))
        .is_empty());
    probes.lose("hub-a", 1);
    probes.answer("hub-a", t0 + secs(20));
    let hold = hold_down(cfg, 1, f.spread);
    assert!(hold >= cfg.hold_down && hold < cfg.hold_down * 3 / 2);
    let just_before = t0 + secs(20) + hold - Duration::from_millis(1);
    assert!(f
        .evaluate(just_before, probes.view_at(just_before))
        .is_empty());
    let moves = f.evaluate(t0 + secs(20) + hold, probes.view_at(t0 + secs(20) + hold));
    assert_eq!(
        moves,
        [Move {
            region: name("north"),
            from: name("hub-b"),
            to: name("hub-a"),
            reason: Reason::Failback,
        }]
    );
    assert_eq!(f.failovers_total(), 1, "a failback is not a failover");
}

#[test]
fn a_flapping_hub_gets_a_longer_hold_down_each_time_within_the_hour() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    let cfg = f.config;
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b"], t0);
    let mut now = t0;
    let mut holds = Vec::new();
    for _ in 0..4 {
        now += secs(1);
        probes.lose("hub-a", 4);
        let m = f.evaluate(now, probes.view_at(now));
        assert_eq!(m.len(), 1, "fails over");
        // Back at once: count how long until traffic returns.
        now += secs(1);
        let back = now;
        probes.answer("hub-a", back);
        loop {
            now += secs(1);
            if !f.evaluate(now, probes.view_at(now)).is_empty() {
                break;
            }
            assert!(now - back < secs(3600), "never came back");
        }
        holds.push(now - back);
    }
    for w in holds.windows(2) {
        assert!(w[1] >= w[0] * 2 - secs(1), "hold-downs double: {holds:?}");
    }
    assert!(holds[0] >= cfg.hold_down);
    assert_eq!(f.failovers_total(), 4);
    assert_eq!(f.status(now)[0].failovers_last_hour, 4);

    // An hour later the hub's record is clean again.
    let later = now + secs(3601);
    probes.lose("hub-a", 4);
    assert_eq!(f.evaluate(later, probes.view_at(later)).len(), 1);
    probes.answer("hub-a", later);
    let first_hold = hold_down(cfg, 1, f.spread);
    assert_eq!(
        f.evaluate(later + first_hold, probes.view_at(later + first_hold))
            .len(),
        1
    );
    assert_eq!(f.status(later + first_hold)[0].failovers_last_hour, 1);
}

#[test]
fn the_hold_down_is_capped_and_spread_over_sites() {
    let cfg = FailoverConfig::default();
    assert_eq!(hold_down(cfg, 30, 0), cfg.max_hold_down);
    let spreads: BTreeSet<u32> = (0..200)
        .map(|i| failover(&format!("gp-{i}")).spread)
        .collect();
    assert!(spreads.len() > 100, "sites come back spread out");
    assert!(spreads.iter().all(|s| *s < 500));
}

#[test]
fn a_hub_never_heard_from_fails_after_the_startup_grace() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    let cfg = f.config;
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b"], t0);
    probes.0.borrow_mut().insert(
        name("hub-a"),
        HubView {
            probed: true,
            lost_streak: 0,
            ok_since: None,
            last_answer: None,
        },
    );
    let before = t0 + cfg.startup_grace - Duration::from_millis(1);
    assert!(f.evaluate(before, probes.view_at(before)).is_empty());
    assert_eq!(
        f.evaluate(
            t0 + cfg.startup_grace,
            probes.view_at(t0 + cfg.startup_grace)
        )
        .len(),
        1
    );
}

#[test]
fn an_unprobed_hub_is_never_failed() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let view = |_: &Name| HubView::default();
    assert!(f.evaluate(t0 + secs(3600), view).is_empty());
}

#[test]
fn with_three_hubs_traffic_goes_to_the_next_that_answers_and_back_to_the_first() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    f.set_groups(&[group(&["hub-a", "hub-b", "hub-c"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b", "hub-c"], t0);
    probes.lose("hub-a", 4);
    probes.lose("hub-b", 4);
    let m = f.evaluate(t0 + secs(1), probes.view_at(t0 + secs(1)));
    assert_eq!(m[0].to, name("hub-c"));
    probes.answer("hub-a", t0 + secs(2));
    probes.answer("hub-b", t0 + secs(2));
    let m = f.evaluate(
        t0 + secs(2) + Duration::from_secs(3600),
        probes.view_at(t0 + secs(2) + Duration::from_secs(3600)),
    );
    assert_eq!(
        m[0].to,
        name("hub-a"),
        "back to the preferred, not the second"
    );
}

#[test]
fn new_groups_keep_the_active_hub_while_it_stays_a_member() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b"], t0);
    probes.lose("hub-a", 4);
    f.evaluate(t0 + secs(1), probes.view_at(t0 + secs(1)));
    f.set_groups(&[group(&["hub-a", "hub-b", "hub-c"])], t0 + secs(2));
    assert_eq!(f.active(&name("north")), Some(&name("hub-b")));
    f.set_groups(&[group(&["hub-a", "hub-c"])], t0 + secs(3));
    assert_eq!(f.active(&name("north")), Some(&name("hub-a")));
    f.set_groups(&[], t0 + secs(4));
    assert_eq!(f.active(&name("north")), None);
}

fn peer(n: &str, allowed: &[&str]) -> PeerConfig {
    PeerConfig {
        name: name(n),
        region: name("north"),
        role: Role::Hub,
        public_key: PublicKey::from_bytes([n.len() as u8; 32]),
        endpoint: None,
        allowed_ips: allowed.iter().map(|p| p.parse().expect("prefix")).collect(),
        persistent_keepalive: Some(25),
    }
}

#[test]
fn the_effective_config_moves_the_group_prefixes_but_not_host_addresses() {
    let desired = SiteConfig {
        revision: 3,
        site: name("gp-1"),
        region: name("north"),
        role: Role::Spoke,
        interface: InterfaceConfig {
            addresses: ["100.64.0.9/32".parse().expect("addr")].into(),
            listen_port: 51820,
            mtu: 1420,
        },
        peers: vec![
            peer(
                "hub-a",
                &["100.64.0.1/32", "100.64.0.0/10", "100.100.0.0/16"],
            ),
            peer("hub-bb", &["100.64.0.2/32"]),
        ],
        routes: [
            "100.64.0.0/10".parse().expect("r"),
            "100.100.0.0/16".parse().expect("r"),
        ]
        .into(),
        failover: vec![FailoverGroup {
            region: name("north"),
            hubs: vec![name("hub-a"), name("hub-bb")],
        }],
        filter: None,
    };
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    f.set_groups(&desired.failover, t0);
    assert_eq!(
        f.effective(&desired),
        desired,
        "on the preferred hub: as rendered"
    );

    let probes = Probes::new(&["hub-a", "hub-bb"], t0);
    probes.lose("hub-a", 4);
    f.evaluate(t0 + secs(1), probes.view_at(t0 + secs(1)));
    let eff = f.effective(&desired);
    let ips = |i: usize| -> Vec<String> {
        eff.peers[i]
            .allowed_ips
            .iter()
            .map(|p| p.to_string())
            .collect()
    };
    assert_eq!(ips(0), ["100.64.0.1/32"]);
    assert_eq!(ips(1), ["100.64.0.0/10", "100.64.0.2/32", "100.100.0.0/16"]);
    assert_eq!(eff.routes, desired.routes, "routes do not move");
    // The move changes two peers in place: the reconciler updates them.
    let applied = crate::reconcile::Applied::default().after(&crate::reconcile::plan(
        &desired,
        &crate::reconcile::Applied::default(),
    ));
    let plan = crate::reconcile::plan(&eff, &applied);
    assert_eq!(plan.peer_ops.len(), 2);
    assert!(plan
        .peer_ops
        .iter()
        .all(|op| matches!(op, crate::reconcile::PeerOp::UpdatePeer(_))));
}

/// Long after start, one lost probe is not a failure, whatever `misses`
/// says: only `misses` in a row are. (The rule read "the last probe was
/// lost" as "never answered" and failed the hub at once once the startup
/// grace had passed: 2 % loss moved spokes, `failover_misses = 100` too.)
#[test]
fn after_the_startup_grace_a_lost_probe_is_not_a_failure() {
    let t0 = Instant::now();
    let mut f = Failover::new(
        FailoverConfig {
            misses: 100,
            ..FailoverConfig::default()
        },
        &name("gp-1"),
    );
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b"], t0);
    let later = t0 + secs(600);
    probes.lose("hub-a", 1);
    assert!(f.evaluate(later, probes.view_at(later)).is_empty());
    probes.lose("hub-a", 98);
    assert!(f.evaluate(later, probes.view_at(later)).is_empty());
    probes.lose("hub-a", 1);
    assert_eq!(f.evaluate(later, probes.view_at(later)).len(), 1);
}

/// While traffic is away from the preferred hub, that hub is probed at
/// the fast pace, and traffic goes back only on an answer from now: not
/// to a hub that answered through its hold-down and then went silent
/// (its missing answer not counted lost yet, as with the slow pace of a
/// standby hub).
#[test]
fn traffic_goes_back_only_to_a_preferred_hub_that_answers_now() {
    let t0 = Instant::now();
    let mut f = failover("gp-1");
    f.set_groups(&[group(&["hub-a", "hub-b"])], t0);
    let probes = Probes::new(&["hub-a", "hub-b"], t0);
    assert_eq!(f.active_hubs(), [name("hub-a")].into());
    probes.lose("hub-a", 4);
    assert_eq!(
        f.evaluate(t0 + secs(1), probes.view_at(t0 + secs(1))).len(),
        1
    );
    assert_eq!(
        f.active_hubs(),
        [name("hub-a"), name("hub-b")].into(),
        "the preferred hub is probed fast while traffic is away"
    );
    probes.answer("hub-a", t0 + secs(2));
    // Through its hold-down (30 s and this site's share), then silent.
    let after_hold = t0 + secs(2) + f.config.hold_down * 2;
    probes.go_quiet("hub-a", after_hold - secs(5));
    assert!(
        f.evaluate(after_hold, probes.view_at(after_hold))
            .is_empty(),
        "no failback on an answer 5 s old"
    );
    probes.answer("hub-a", after_hold + secs(1));
    let back = f.evaluate(after_hold + secs(1), probes.view_at(after_hold + secs(1)));
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].reason, Reason::Failback);
}
