//! The probe scheduler: a pure state machine (no I/O, time is an argument)
//! that decides when to send an ICMP echo to each peer, matches replies,
//! declares late probes lost, and keeps what the up/down rule, `status`,
//! `/metrics` and the controller summary read.
//!
//! The I/O shell (`health::io`) only moves bytes: it sends what
//! [`Scheduler::on_tick`] returns and feeds replies to [`Scheduler::on_reply`].
//!
//! Probes go only through a live session (a handshake seen within
//! WireGuard's reject window, told by [`Scheduler::on_handshake`]). A probe
//! to a peer without one would only make the data plane start a handshake
//! with a peer that is not there, every interval, for ever: thousands of
//! them on a hub whose spokes are down. Such a peer is dormant: no timer,
//! no cost. Its health rests on its handshakes (which the peer starts: a
//! spoke keeps its link to the hub warm) until the next one wakes it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use wardnet_common::{Name, Role};

/// WireGuard gives up on a session 180 s after its handshake
/// (REJECT_AFTER_TIME); a younger handshake means a live session.
pub const REJECT_AFTER: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between two probes to one peer.
    pub interval: Duration,
    /// A probe not answered within this is lost (a later reply is ignored).
    pub timeout: Duration,
    /// A peer is down when no probe succeeded within this many intervals.
    pub down_after_intervals: u32,
    /// How many resolved probes (answered or lost) the loss ratio covers.
    pub loss_window: usize,
    /// Time between two probes to a peer marked `fast` (the active hub of
    /// a failover group), and their timeout: failover is judged on it.
    pub fast_interval: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            // Two intervals: a stopped peer is reported down within two
            // probe intervals (the alerting rules assume it), at the price
            // of a down blip when two probes in a row are lost on a very
            // lossy link (the loss ratio shows the truth).
            down_after_intervals: 2,
            // 5 minutes at the default interval.
            loss_window: 60,
            fast_interval: Duration::from_millis(250),
        }
    }
}

impl ProbeConfig {
    /// The default, with another interval (timeout follows the interval).
    pub fn with_interval(interval: Duration) -> Self {
        ProbeConfig {
            interval,
            timeout: interval,
            ..ProbeConfig::default()
        }
    }
}

/// A peer to probe, from the running config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub name: Name,
    pub region: Name,
    pub role: Role,
    /// The peer's overlay address; `None`: no address to probe (the peer's
    /// health then rests on its handshake alone).
    pub address: Option<Ipv4Addr>,
    /// Probe at the fast pace (an active hub: failover rests on it).
    pub fast: bool,
}

/// What the I/O shell must send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeToSend {
    pub peer: Name,
    pub address: Ipv4Addr,
    pub seq: u16,
}

/// What happened to a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Answered in time: the round-trip time, unless the probe waited for
    /// a handshake (then it counts for up and loss, not for the RTT).
    Answered { rtt: Option<Duration> },
    /// Not a probe we wait for (late, duplicate, unknown peer or sequence).
    Ignored,
}

#[derive(Debug)]
struct PeerProbe {
    /// Which incarnation of the peer this is (a peer whose address changed
    /// starts afresh): timers of an earlier one are ignored.
    epoch: u64,
    target: ProbeTarget,
    /// When the peer joined the schedule (grace period for the up rule).
    since: Instant,
    /// The last handshake the data plane reported: the session's start.
    session: Option<Instant>,
    /// No probe is scheduled (no live session); a handshake wakes it.
    dormant: bool,
    next_due: Instant,
    next_seq: u16,
    /// Sequence -> time sent, for probes not yet answered nor lost.
    outstanding: BTreeMap<u16, Instant>,
    /// Probes lost in a row (reset by an answer).
    lost_streak: u32,
    /// Since when every probe was answered (`None` after a loss).
    ok_since: Option<Instant>,
    /// Outcomes of the last `loss_window` resolved probes (true: answered).
    window: VecDeque<bool>,
    last_success: Option<Instant>,
    last_rtt: Option<Duration>,
    /// Smoothed RTT (RFC 6298 style, alpha 1/8).
    srtt: Option<Duration>,
    sent_total: u64,
    lost_total: u64,
}

/// Per-peer probe view at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeView {
    pub name: Name,
    pub region: Name,
    pub role: Role,
    pub address: Option<Ipv4Addr>,
    pub sent_total: u64,
    pub lost_total: u64,
    pub last_rtt: Option<Duration>,
    pub srtt: Option<Duration>,
    /// Lost / resolved over the sliding window; `None` before any resolved probe.
    pub loss_ratio: Option<f64>,
    /// `None`: not probed (no address). `Some(false)`: no success within
    /// `down_after_intervals` intervals (after a grace period as long, from
    /// when the peer was added or its session started).
    pub probe_ok: Option<bool>,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The peer's next probe is due.
    Due,
    /// Probe `seq`, sent at the instant given, is lost unless answered by now.
    Expire(u16, Instant),
}

/// A timer: when, the peer (and its incarnation), what.
type Entry = Reverse<(Instant, u64, Name, Timer)>;

#[derive(Debug)]
pub struct Scheduler {
    config: ProbeConfig,
    peers: BTreeMap<Name, PeerProbe>,
    /// Probe address -> peer, to match replies (a hub has many peers).
    by_address: HashMap<Ipv4Addr, Name>,
    /// Every pending probe and expiry, earliest first: a tick visits only
    /// the timers that are due (O(log n) each), never every peer. Timers
    /// made stale (a reply came, the peer went or changed) are dropped
    /// when they come up.
    timers: BinaryHeap<Entry>,
    next_epoch: u64,
}

impl Scheduler {
    pub fn new(config: ProbeConfig) -> Self {
        Scheduler {
            config,
            peers: BTreeMap::new(),
            by_address: HashMap::new(),
            timers: BinaryHeap::new(),
            next_epoch: 0,
        }
    }

    pub fn config(&self) -> ProbeConfig {
        self.config
    }

    /// Replace the set of peers. Peers whose name and address are unchanged
    /// keep their schedule, counters and window; others start afresh (a
    /// session seen stays known). Peers with a live session are spread over
    /// one interval so a hub does not send a burst; the others stay dormant.
    pub fn set_peers(&mut self, targets: Vec<ProbeTarget>, now: Instant) {
        let n = targets.len().max(1) as u32;
        let mut old = std::mem::take(&mut self.peers);
        for (i, t) in targets.into_iter().enumerate() {
            let prev = old.remove(&t.name);
            let session = prev.as_ref().and_then(|p| p.session);
            let p = match prev.filter(|p| p.target.address == t.address) {
                Some(mut p) => {
                    let sooner = t.fast && !p.target.fast;
                    p.target = t;
                    if sooner && !p.dormant {
                        // Now the active hub: at the fast pace from now on.
                        let at = now + self.config.fast_interval;
                        if at < p.next_due {
                            p.next_due = at;
                            self.timers.push(Reverse((
                                at,
                                p.epoch,
                                p.target.name.clone(),
                                Timer::Due,
                            )));
                        }
                    }
                    p
                }
                None => {
                    let mut p = PeerProbe {
                        epoch: self.next_epoch,
                        since: now,
                        session,
                        dormant: true,
                        next_due: now,
                        next_seq: 0,
                        outstanding: BTreeMap::new(),
                        lost_streak: 0,
                        ok_since: None,
                        window: VecDeque::new(),
                        last_success: None,
                        last_rtt: None,
                        srtt: None,
                        sent_total: 0,
                        lost_total: 0,
                        target: t,
                    };
                    self.next_epoch += 1;
                    let spread = self.config.interval * (i as u32) / n;
                    wake(&mut self.timers, &mut p, now + spread, now);
                    p
                }
            };
            self.peers.insert(p.target.name.clone(), p);
        }
        self.by_address = self
            .peers
            .values()
            .filter_map(|p| Some((p.target.address?, p.target.name.clone())))
            .collect();
    }

    /// Change the probe settings: every peer starts afresh at the new pace
    /// (counters and windows reset), sessions stay known.
    pub fn set_config(&mut self, config: ProbeConfig, now: Instant) {
        let targets: Vec<ProbeTarget> = self.peers.values().map(|p| p.target.clone()).collect();
        let sessions: Vec<(Name, Instant)> = self
            .peers
            .values()
            .filter_map(|p| Some((p.target.name.clone(), p.session?)))
            .collect();
        *self = Scheduler {
            next_epoch: self.next_epoch,
            ..Scheduler::new(config)
        };
        // Sessions first, so that set_peers spreads the live ones.
        self.set_peers(targets.clone(), now);
        for (name, at) in sessions {
            self.on_handshake(&name, at, now);
        }
    }

    /// The data plane completed a handshake with `peer` at `at`: a live
    /// session. A dormant peer is probed at once (its first RTT comes from
    /// the fresh session, not from a probe that waited for it).
    pub fn on_handshake(&mut self, peer: &Name, at: Instant, now: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.session = Some(p.session.map_or(at, |s| s.max(at)));
        wake(&mut self.timers, p, now, now);
    }

    /// Declare late probes lost, and return the probes due now. Visits only
    /// the timers due by `now`.
    pub fn on_tick(&mut self, now: Instant) -> Vec<ProbeToSend> {
        let cfg = self.config;
        let mut out = Vec::new();
        while self
            .timers
            .peek()
            .is_some_and(|Reverse((when, ..))| *when <= now)
        {
            let Some(Reverse((when, epoch, name, timer))) = self.timers.pop() else {
                break;
            };
            let Some(p) = self.peers.get_mut(&name).filter(|p| p.epoch == epoch) else {
                continue;
            };
            match timer {
                Timer::Expire(seq, sent) => {
                    // Still outstanding from that very send: lost.
                    if p.outstanding.get(&seq) == Some(&sent) {
                        p.outstanding.remove(&seq);
                        lost(p, cfg.loss_window);
                    }
                }
                Timer::Due => {
                    let Some(address) = p.target.address else {
                        continue;
                    };
                    if p.dormant || p.next_due != when {
                        continue;
                    }
                    if !live(p.session, now) {
                        // The session lapsed: sleep until the next handshake.
                        p.dormant = true;
                        continue;
                    }
                    let seq = p.next_seq;
                    p.next_seq = p.next_seq.wrapping_add(1);
                    // A wrapped sequence still outstanding (only with absurd
                    // timeouts) counts as lost rather than matching a wrong reply.
                    if p.outstanding.insert(seq, now).is_some() {
                        lost(p, cfg.loss_window);
                    }
                    p.sent_total += 1;
                    let (interval, timeout) = pace(&cfg, &p.target);
                    // Keep the cadence, but never send a burst to catch up
                    // after a stall.
                    p.next_due += interval;
                    if p.next_due <= now {
                        p.next_due = now + interval;
                    }
                    self.timers.push(Reverse((
                        now + timeout,
                        epoch,
                        name.clone(),
                        Timer::Expire(seq, now),
                    )));
                    self.timers
                        .push(Reverse((p.next_due, epoch, name.clone(), Timer::Due)));
                    out.push(ProbeToSend {
                        peer: name,
                        address,
                        seq,
                    });
                }
            }
        }
        out
    }

    /// An echo reply from `peer` with `seq` arrived at `now`.
    pub fn on_reply(&mut self, peer: &Name, seq: u16, now: Instant) -> ReplyOutcome {
        let cfg = self.config;
        let Some(p) = self.peers.get_mut(peer) else {
            return ReplyOutcome::Ignored;
        };
        let Some(sent) = p.outstanding.remove(&seq) else {
            return ReplyOutcome::Ignored;
        };
        let rtt = now.saturating_duration_since(sent);
        if rtt >= pace(&cfg, &p.target).1 {
            // Not yet expired by a tick, but late all the same.
            lost(p, cfg.loss_window);
            return ReplyOutcome::Ignored;
        }
        push_outcome(&mut p.window, true, cfg.loss_window);
        p.last_success = Some(now);
        p.lost_streak = 0;
        p.ok_since.get_or_insert(now);
        if p.session.is_some_and(|s| s > sent) {
            // A handshake completed while this probe was out: it waited for
            // it, and its time says nothing about the link's RTT.
            return ReplyOutcome::Answered { rtt: None };
        }
        p.last_rtt = Some(rtt);
        p.srtt = Some(match p.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        ReplyOutcome::Answered { rtt: Some(rtt) }
    }

    pub fn target(&self, peer: &Name) -> Option<&ProbeTarget> {
        self.peers.get(peer).map(|p| &p.target)
    }

    /// Which peer an echo reply from `src` belongs to.
    pub fn peer_for(&self, src: Ipv4Addr) -> Option<&Name> {
        self.by_address.get(&src)
    }

    /// When the shell should call `on_tick` next (earliest due probe or
    /// expiry; a timer made stale may wake it early, harmlessly); `None`
    /// with nothing to probe. O(1).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((when, ..))| *when)
    }

    pub fn views(&self, now: Instant) -> Vec<ProbeView> {
        self.peers.values().map(|p| self.view(p, now)).collect()
    }

    /// What the failover rule reads of a peer: cheap (no names cloned),
    /// since it runs at every timer.
    pub fn hub_view(&self, peer: &Name) -> Option<crate::failover::HubView> {
        self.peers.get(peer).map(|p| crate::failover::HubView {
            probed: p.target.address.is_some(),
            lost_streak: p.lost_streak,
            ok_since: p.ok_since,
            last_answer: p.last_success,
        })
    }

    pub fn view_of(&self, peer: &Name, now: Instant) -> Option<ProbeView> {
        self.peers.get(peer).map(|p| self.view(p, now))
    }

    fn view(&self, p: &PeerProbe, now: Instant) -> ProbeView {
        let resolved = p.window.len();
        let lost = p.window.iter().filter(|ok| !**ok).count();
        let limit = pace(&self.config, &p.target).0 * self.config.down_after_intervals;
        // Grace after the peer joined or its session started: the probes
        // have not had their chances yet.
        let chances_from = p.session.map_or(p.since, |s| s.max(p.since));
        let probe_ok = p.target.address.map(|_| match p.last_success {
            Some(t) if t >= chances_from => now.saturating_duration_since(t) <= limit,
            _ => now.saturating_duration_since(chances_from) <= limit,
        });
        ProbeView {
            name: p.target.name.clone(),
            region: p.target.region.clone(),
            role: p.target.role,
            address: p.target.address,
            sent_total: p.sent_total,
            lost_total: p.lost_total,
            last_rtt: p.last_rtt,
            srtt: p.srtt,
            loss_ratio: (resolved > 0).then(|| lost as f64 / resolved as f64),
            probe_ok,
        }
    }
}

/// Whether a session that started at `session` can still carry packets.
fn live(session: Option<Instant>, now: Instant) -> bool {
    session.is_some_and(|s| now.saturating_duration_since(s) < REJECT_AFTER)
}

/// Schedule a dormant peer's next probe at `at`, if it is probed and its
/// session is live; a peer already scheduled keeps its cadence.
fn wake(timers: &mut BinaryHeap<Entry>, p: &mut PeerProbe, at: Instant, now: Instant) {
    if !p.dormant || p.target.address.is_none() || !live(p.session, now) {
        return;
    }
    p.dormant = false;
    p.next_due = at;
    timers.push(Reverse((at, p.epoch, p.target.name.clone(), Timer::Due)));
}

/// A peer's probe interval and timeout.
fn pace(cfg: &ProbeConfig, t: &ProbeTarget) -> (Duration, Duration) {
    if t.fast {
        (cfg.fast_interval, cfg.fast_interval)
    } else {
        (cfg.interval, cfg.timeout)
    }
}

/// A probe of `p` was lost.
fn lost(p: &mut PeerProbe, window: usize) {
    p.lost_total += 1;
    p.lost_streak = p.lost_streak.saturating_add(1);
    p.ok_since = None;
    push_outcome(&mut p.window, false, window);
}

fn push_outcome(window: &mut VecDeque<bool>, ok: bool, cap: usize) {
    window.push_back(ok);
    while window.len() > cap.max(1) {
        window.pop_front();
    }
}

/// What is known of a link.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Up,
    Down,
    /// No handshake since the agent started: nothing says up or down yet
    /// (a peer that never came, or one this agent has not heard from since
    /// its restart).
    Unknown,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Unknown => "unknown",
        }
    }
}

/// The link rule: unknown before any handshake; up with a handshake within
/// WireGuard's reject window and (for a probed peer) a probe answered
/// within the last intervals; down otherwise.
pub fn link_state(handshake_age: Option<Duration>, probe_ok: Option<bool>) -> LinkState {
    match handshake_age {
        None => LinkState::Unknown,
        Some(a) if a < REJECT_AFTER && probe_ok.unwrap_or(true) => LinkState::Up,
        Some(_) => LinkState::Down,
    }
}

/// The probe address of a peer: its own overlay address, which the
/// controller puts in every peer's AllowedIPs as an IPv4 host prefix (also
/// for another region's hub, inside its region block). A peer without one
/// (an IPv6-only overlay) is judged by its handshake alone.
pub fn probe_address<'a>(
    allowed_ips: impl IntoIterator<Item = &'a ipnet::IpNet>,
) -> Option<Ipv4Addr> {
    allowed_ips.into_iter().find_map(|n| match n {
        ipnet::IpNet::V4(v4) if v4.prefix_len() == 32 => Some(v4.addr()),
        _ => None,
    })
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
