//! Hub failover: which hub of each failover group carries the group's
//! prefixes now. A pure rule over the probe scheduler's view of each hub,
//! with time as an argument (tested in `failover_tests.rs`).
//!
//! The controller names the groups (the hubs of a region, in this site's
//! order of preference) and puts the group's prefixes on the first hub's
//! entry. The agent moves them:
//! - **away** from the active hub once it has missed `misses` probes in a
//!   row (its probes go at the fast hub pace), to the first hub in order
//!   of preference that answers. No controller is asked: this works while
//!   it is down;
//! - **back** to the preferred hub once it has answered without a loss for
//!   the hold-down, plus a share of it that differs per site (so a hub
//!   that returns gets its spokes back gradually, not all in one instant).
//!   A hub that fails again within the hour doubles its hold-down, up to a
//!   ceiling, so a flapping hub does not drag traffic to and fro.
//!
//! A move changes AllowedIPs of two peers in place: sessions, counters and
//! every other peer stay. Since any hub of a group may deliver what another
//! holds (the data plane's inbound rule), the two ends of a path need not
//! agree on the hub, and a move loses nothing that is in flight.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wardnet_common::wire::{FailoverGroup, SiteConfig};
use wardnet_common::Name;

/// How far back failures count for a hub's hold-down and the failover count
/// the health summary shows.
const MEMORY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailoverConfig {
    /// Probes in a row a hub must miss to be failed.
    pub misses: u32,
    /// How long a hub must answer without a loss before traffic goes back.
    pub hold_down: Duration,
    /// The ceiling of a flapping hub's doubled hold-down.
    pub max_hold_down: Duration,
    /// A hub not heard from at all since it joined the group is failed
    /// after this (it may simply not be up yet).
    pub startup_grace: Duration,
    /// Traffic goes back to the preferred hub only if it answered within
    /// this (it is probed at the fast pace while traffic is away from it),
    /// never on the strength of an answer from before it went silent.
    pub fresh: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            misses: 4,
            hold_down: Duration::from_secs(30),
            max_hold_down: Duration::from_secs(600),
            // A hub that has not answered 3 s after joining (an agent
            // restarted while its hub is dead: no session, so no probes to
            // count lost) is failed, if another answers; a live hub
            // answers within a round trip of its handshake, and moving
            // early costs nothing (any hub of a region delivers, and
            // traffic goes back after the hold-down).
            startup_grace: Duration::from_secs(3),
            fresh: Duration::from_secs(1),
        }
    }
}

/// What the rule reads of one hub (from the probe scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubView {
    /// Whether the hub is probed at all (it has an IPv4 overlay address);
    /// an unprobed hub is never judged failed.
    pub probed: bool,
    /// Probes lost in a row, up to now.
    pub lost_streak: u32,
    /// Since when every probe was answered (`None`: the last one was lost,
    /// or none was ever answered).
    pub ok_since: Option<Instant>,
    /// When a probe was last answered (`None`: never, since it joined).
    pub last_answer: Option<Instant>,
}

/// Why traffic moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The active hub stopped answering.
    Failed,
    /// The preferred hub is back and has answered for its hold-down.
    Failback,
}

/// One move of a group's prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    pub region: Name,
    pub from: Name,
    pub to: Name,
    pub reason: Reason,
}

#[derive(Debug)]
struct Group {
    /// In order of preference; the first carries the prefixes in the
    /// controller's config.
    hubs: Vec<Name>,
    active: Name,
    /// When each hub joined the group (for the startup grace).
    joined: BTreeMap<Name, Instant>,
    /// When each hub failed, within the last hour.
    failures: BTreeMap<Name, VecDeque<Instant>>,
    /// Moves away from a failed hub, within the last hour.
    recent: VecDeque<Instant>,
    failovers_total: u64,
}

/// What `status` and `/metrics` show of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupStatus {
    pub region: Name,
    pub hubs: Vec<Name>,
    pub active: Name,
    pub failovers_total: u64,
    pub failovers_last_hour: u64,
}

#[derive(Debug)]
pub(crate) struct Failover {
    config: FailoverConfig,
    groups: BTreeMap<Name, Group>,
    /// This site's share of the hold-down, in thousandths (0..500): fixed
    /// per site, so a hub's spokes come back spread over half a hold-down.
    spread: u32,
}

impl Failover {
    pub(crate) fn new(config: FailoverConfig, site: &Name) -> Self {
        // FNV-1a: stable across builds and platforms.
        let mut h: u32 = 0x811c_9dc5;
        for b in site.as_str().bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        Failover {
            config,
            groups: BTreeMap::new(),
            spread: h % 500,
        }
    }

    pub(crate) fn set_config(&mut self, config: FailoverConfig) {
        self.config = config;
    }

    /// Take the groups of a new config. A group keeps its active hub while
    /// that hub is still in it; a new group starts on its preferred hub.
    pub(crate) fn set_groups(&mut self, groups: &[FailoverGroup], now: Instant) {
        let mut old = std::mem::take(&mut self.groups);
        for g in groups {
            let Some(first) = g.hubs.first() else {
                continue;
            };
            let mut group = match old.remove(&g.region) {
                Some(mut o) => {
                    if !g.hubs.contains(&o.active) {
                        o.active = first.clone();
                    }
                    o.joined.retain(|h, _| g.hubs.contains(h));
                    o.failures.retain(|h, _| g.hubs.contains(h));
                    o.hubs.clone_from(&g.hubs);
                    o
                }
                None => Group {
                    hubs: g.hubs.clone(),
                    active: first.clone(),
                    joined: BTreeMap::new(),
                    failures: BTreeMap::new(),
                    recent: VecDeque::new(),
                    failovers_total: 0,
                },
            };
            for h in &g.hubs {
                group.joined.entry(h.clone()).or_insert(now);
            }
            self.groups.insert(g.region.clone(), group);
        }
    }

    /// The hubs probed at the fast pace: each group's active one, and
    /// while traffic is away from it, its preferred one (traffic goes back
    /// only on a fresh answer).
    pub(crate) fn active_hubs(&self) -> BTreeSet<Name> {
        self.groups
            .values()
            .flat_map(|g| std::iter::once(&g.active).chain(g.hubs.first()))
            .cloned()
            .collect()
    }

    /// The active hub of `region`'s group.
    pub(crate) fn active(&self, region: &Name) -> Option<&Name> {
        self.groups.get(region).map(|g| &g.active)
    }

    /// Apply the rule at `now`; `view` tells what the probes saw of a hub.
    /// Returns the moves made (the caller applies the new AllowedIPs).
    pub(crate) fn evaluate(&mut self, now: Instant, view: impl Fn(&Name) -> HubView) -> Vec<Move> {
        let cfg = self.config;
        let spread = self.spread;
        let mut moves = Vec::new();
        for (region, g) in &mut self.groups {
            for q in g.failures.values_mut() {
                forget_before(q, now);
            }
            forget_before(&mut g.recent, now);
            let joined = |h: &Name| g.joined.get(h).copied().unwrap_or(now);
            // Missed `misses` probes in a row, or never answered at all
            // through the startup grace. One lost probe is not a failure.
            let failed = |h: &Name| {
                let v = view(h);
                v.probed
                    && (v.lost_streak >= cfg.misses
                        || (v.last_answer.is_none()
                            && now.saturating_duration_since(joined(h)) >= cfg.startup_grace))
            };
            let answering = |h: &Name| {
                let v = view(h);
                !v.probed || (v.ok_since.is_some() && v.lost_streak < cfg.misses)
            };
            let active = g.active.clone();
            if failed(&active) {
                let Some(to) = g
                    .hubs
                    .iter()
                    .find(|h| **h != active && answering(h))
                    .cloned()
                else {
                    continue; // nowhere better to go: stay
                };
                g.failures.entry(active.clone()).or_default().push_back(now);
                g.recent.push_back(now);
                g.failovers_total += 1;
                g.active = to.clone();
                moves.push(Move {
                    region: region.clone(),
                    from: active,
                    to,
                    reason: Reason::Failed,
                });
                continue;
            }
            let Some(preferred) = g.hubs.first().cloned() else {
                continue;
            };
            if preferred == active {
                continue;
            }
            let v = view(&preferred);
            let failures = g.failures.get(&preferred).map_or(0, |q| q.len());
            let hold = hold_down(cfg, failures, spread);
            let settled = !v.probed
                || (v.lost_streak == 0
                    && v.ok_since
                        .is_some_and(|s| now.saturating_duration_since(s) >= hold)
                    && v.last_answer
                        .is_some_and(|a| now.saturating_duration_since(a) <= cfg.fresh));
            if settled {
                g.active = preferred.clone();
                moves.push(Move {
                    region: region.clone(),
                    from: active,
                    to: preferred,
                    reason: Reason::Failback,
                });
            }
        }
        moves
    }

    /// `desired` as it runs here: each group's prefixes on its active hub.
    /// The group's prefixes are what the preferred hub's entry carries but
    /// its own host addresses (the controller puts them there).
    pub(crate) fn effective(&self, desired: &SiteConfig) -> SiteConfig {
        let mut out = desired.clone();
        for fg in &desired.failover {
            let Some(preferred) = fg.hubs.first() else {
                continue;
            };
            let Some(active) = self
                .groups
                .get(&fg.region)
                .map(|g| &g.active)
                .filter(|a| *a != preferred && fg.hubs.contains(a))
            else {
                continue;
            };
            let Some(from) = out.peers.iter().position(|p| &p.name == preferred) else {
                continue;
            };
            let Some(to) = out.peers.iter().position(|p| &p.name == active) else {
                continue;
            };
            let moving: BTreeSet<IpNet> = out.peers[from]
                .allowed_ips
                .iter()
                .filter(|p| !is_host(p))
                .copied()
                .collect();
            out.peers[from].allowed_ips.retain(|p| !moving.contains(p));
            out.peers[to].allowed_ips.extend(moving);
        }
        out
    }

    pub(crate) fn status(&self, now: Instant) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|(region, g)| GroupStatus {
                region: region.clone(),
                hubs: g.hubs.clone(),
                active: g.active.clone(),
                failovers_total: g.failovers_total,
                failovers_last_hour: g
                    .recent
                    .iter()
                    .filter(|t| now.saturating_duration_since(**t) < MEMORY)
                    .count() as u64,
            })
            .collect()
    }

    /// Failovers since start, over all groups.
    pub(crate) fn failovers_total(&self) -> u64 {
        self.groups.values().map(|g| g.failovers_total).sum()
    }
}

/// The hold-down of a hub that failed `failures` times in the last hour:
/// doubled for each failure after the first, capped; plus this site's
/// share of half of it.
fn hold_down(cfg: FailoverConfig, failures: usize, spread: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16) as u32;
    let base = cfg
        .hold_down
        .saturating_mul(1 << doublings)
        .min(cfg.max_hold_down.max(cfg.hold_down));
    base + base * spread / 1000
}

fn forget_before(q: &mut VecDeque<Instant>, now: Instant) {
    while q
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= MEMORY)
    {
        q.pop_front();
    }
}

fn is_host(p: &IpNet) -> bool {
    p.prefix_len() == p.max_prefix_len()
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
