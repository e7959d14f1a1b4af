//! The policy filter on what comes out of the tunnels, with state: a
//! packet the site's [`SiteFilter`] admits starts an admitted flow, and a
//! packet the site sends starts a flow whose replies pass whatever the
//! filter says (replies to flows this site started).
//!
//! Two tables, keyed by the flow as the packet coming *in* shows it:
//! - `replies`: flows started here (made by packets read from the TUN); a
//!   packet in that matches one is a reply and passes.
//! - `admitted`: flows started by the other side, with the verdict the
//!   filter gave and the filter's generation. A reply sent here to such a
//!   flow does not make a `replies` entry: when a new filter no longer
//!   admits the flow, its next packet in is judged again and dropped,
//!   however the site answered before. A flow the new filter still admits
//!   is judged again once and goes on undisturbed.
//!
//! A datagram split into fragments carries its ports in the first one
//! only: the fragments after it pass when their first one did (keyed by the
//! datagram's identification, remembered for a few seconds).
//!
//! A tunnel delivers only what the site owns: a packet to an address that
//! is not the site's own (its overlay addresses and LANs) passes only when
//! the data plane forwards it on (a hub, to another peer that owns the
//! destination: the caller says, with an `onward` function). Anything else (the gateway's
//! underlay, a LAN the site never listed, a spoke asked to relay) is
//! dropped and counted as transit, whatever the sender's AllowedIPs say.
//!
//! Entries idle for longer than their protocol's timeout go; each table is
//! bounded ([`MAX_FLOWS`]): when full, a new flow is judged packet by
//! packet (admitted), or its replies are judged by the filter (started
//! here), and the overflow is counted.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wardnet_common::filter::{icmp_error_subject, parse, Header, SiteFilter, Verdict};

/// Flows kept per table.
pub(crate) const MAX_FLOWS: usize = 262_144;
/// How long an idle TCP flow is remembered.
const TCP_IDLE: Duration = Duration::from_secs(3600);
/// How long an idle flow of another protocol is remembered.
const OTHER_IDLE: Duration = Duration::from_secs(180);
/// How long a passed first fragment lets the rest of its datagram follow.
const FRAGMENT_IDLE: Duration = Duration::from_secs(5);
/// How often idle flows are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A flow as a packet coming in from the tunnel shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

impl FlowKey {
    fn incoming(h: &Header) -> Self {
        FlowKey {
            protocol: h.protocol,
            src: h.src,
            dst: h.dst,
            sport: h.sport,
            dport: h.dport,
        }
    }

    /// The key of the replies to a packet going out.
    fn reply_to(h: &Header) -> Self {
        FlowKey {
            protocol: h.protocol,
            src: h.dst,
            dst: h.src,
            sport: h.dport,
            dport: h.sport,
        }
    }

    fn idle(&self) -> Duration {
        if self.protocol == 6 {
            TCP_IDLE
        } else {
            OTHER_IDLE
        }
    }
}

/// A packet out of a tunnel as the filter needs it (see
/// [`PolicyFilter::look`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    /// `None`: not an IP packet the filter can read.
    header: Option<Header>,
    /// For an ICMP error, the packet it is about.
    subject: Option<Header>,
}

struct Admitted {
    generation: u64,
    allowed: bool,
    seen: Instant,
}

/// What the filter counted since the data plane started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Whether a filter is set.
    pub enforcing: bool,
    /// Flows admitted, by what admitted them (`Reason::label`).
    pub admitted: BTreeMap<String, u64>,
    /// Packets denied (nothing admits them: the default).
    pub denied: u64,
    /// Packets to an address that is neither the site's own nor forwarded
    /// on by it (also counted in `denied`).
    pub transit: u64,
    /// Replies passed as replies to flows started here.
    pub replies: u64,
    /// Flows not remembered because a table was full.
    pub overflow: u64,
    /// Flows remembered now (both tables).
    pub tracked: u64,
}

#[derive(Default)]
pub(crate) struct PolicyFilter {
    filter: Option<Arc<SiteFilter>>,
    /// The filter admits everything to the site (`default`): nothing to
    /// judge or remember but whether a packet is the site's.
    open: bool,
    /// Moves with every new filter: admitted verdicts of older ones are
    /// judged again.
    generation: u64,
    replies: HashMap<FlowKey, Instant>,
    admitted: HashMap<FlowKey, Admitted>,
    /// Datagrams whose first fragment passed: (protocol, source,
    /// destination, identification).
    fragments: HashMap<(u8, IpAddr, IpAddr, u32), Instant>,
    last_sweep: Option<Instant>,
    counters: PolicyCounters,
}

impl PolicyFilter {
    /// Replace the filter (`None`: everything passes). Flows already
    /// admitted are judged again by the new one on their next packet.
    pub(crate) fn set(&mut self, filter: Option<SiteFilter>) {
        self.generation += 1;
        if filter.is_none() {
            self.replies.clear();
            self.admitted.clear();
            self.fragments.clear();
        }
        self.counters.enforcing = filter.is_some();
        self.open = filter.as_ref().is_some_and(SiteFilter::admits_everything);
        self.filter = filter.map(Arc::new);
    }

    /// A packet read from the TUN, going out into a tunnel: when it starts
    /// a flow here, remember it so its replies pass.
    pub(crate) fn outbound(&mut self, packet: &[u8], now: Instant) {
        let Some(f) = &self.filter else {
            return;
        };
        let Some(h) = parse(packet) else {
            return;
        };
        let later_fragment = h.fragment.is_some_and(|f| !f.first);
        if self.open || h.icmp_error || later_fragment || !f.is_local(h.src) {
            return;
        }
        let key = FlowKey::reply_to(&h);
        if self.admitted.contains_key(&key) {
            // An answer to a flow the other side started: not a flow of ours.
            return;
        }
        if let Some(seen) = self.replies.get_mut(&key) {
            *seen = now;
        } else if self.replies.len() < MAX_FLOWS {
            self.replies.insert(key, now);
        } else {
            self.counters.overflow += 1;
        }
    }

    /// A packet decrypted from a tunnel: whether it may go on to the TUN.
    pub(crate) fn inbound(
        &mut self,
        packet: &[u8],
        now: Instant,
        onward: impl Fn(IpAddr) -> bool,
    ) -> bool {
        let seen = self.look(packet);
        self.judge(seen, now, onward)
    }

    /// What [`Self::judge`] needs of a packet, read while the packet is at
    /// hand (`None`: no filter, everything passes). The data plane looks
    /// first and judges once the packet's source is known to be its peer's,
    /// so a spoofed packet never starts a flow.
    pub(crate) fn look(&self, packet: &[u8]) -> Option<Seen> {
        self.filter.as_ref()?;
        let header = parse(packet);
        let subject = header
            .filter(|h| h.icmp_error)
            .and_then(|_| icmp_error_subject(packet));
        Some(Seen { header, subject })
    }

    /// Whether a packet out of a tunnel, as [`Self::look`] saw it, may go on
    /// to the TUN.
    pub(crate) fn judge(
        &mut self,
        seen: Option<Seen>,
        now: Instant,
        onward: impl Fn(IpAddr) -> bool,
    ) -> bool {
        let Some(seen) = seen else {
            return true;
        };
        let Some(h) = seen.header else {
            self.counters.denied += 1;
            return false;
        };
        let local = self.filter.as_ref().is_some_and(|f| f.is_local(h.dst));
        if !local {
            return self.onward(h.dst, onward);
        }
        let Some(fragment) = h.fragment else {
            return self.judge_header(&h, seen.subject, now);
        };
        let key = (h.protocol, h.src, h.dst, fragment.id);
        if !fragment.first {
            let passed = self
                .fragments
                .get(&key)
                .is_some_and(|t| now.saturating_duration_since(*t) < FRAGMENT_IDLE);
            if !passed {
                self.counters.denied += 1;
            }
            return passed;
        }
        let pass = self.judge_header(&h, seen.subject, now);
        if pass {
            if self.fragments.len() < MAX_FLOWS {
                self.fragments.insert(key, now);
            } else {
                self.counters.overflow += 1;
            }
        }
        pass
    }

    /// A packet not to the site's own addresses: it passes only when the
    /// data plane forwards it on (its destination's site judges it there).
    fn onward(&mut self, dst: IpAddr, onward: impl Fn(IpAddr) -> bool) -> bool {
        if onward(dst) {
            return true;
        }
        self.counters.transit += 1;
        self.counters.denied += 1;
        false
    }

    /// The verdict on a whole packet, or a datagram's first fragment, to
    /// one of the site's own addresses.
    fn judge_header(&mut self, h: &Header, subject: Option<Header>, now: Instant) -> bool {
        let Some(f) = &self.filter else {
            return true;
        };
        if self.open {
            // Unfiltered (the `default` organisation): nothing to remember.
            return true;
        }
        let key = FlowKey::incoming(h);
        if let Some(seen) = self.replies.get_mut(&key) {
            *seen = now;
            self.counters.replies += 1;
            return true;
        }
        if let Some(s) = subject {
            // An error about a packet this site sent (too big, unreachable)
            // belongs to that packet's flow, when that flow passes; one
            // about a flow the filter denied is as denied as the flow.
            let back = FlowKey::reply_to(&s);
            let admitted = self
                .admitted
                .get(&back)
                .is_some_and(|a| a.allowed && a.generation == self.generation);
            if f.is_local(s.src) && (self.replies.contains_key(&back) || admitted) {
                return true;
            }
        }
        if let Some(a) = self.admitted.get_mut(&key) {
            if a.generation == self.generation {
                a.seen = now;
                if !a.allowed {
                    self.counters.denied += 1;
                }
                return a.allowed;
            }
        }
        let verdict = f.check_header(h);
        let allowed = !matches!(verdict, Verdict::Deny);
        if allowed {
            if let Some(r) = f.reason(verdict) {
                *self.counters.admitted.entry(r.label()).or_default() += 1;
            }
        } else {
            self.counters.denied += 1;
        }
        let entry = Admitted {
            generation: self.generation,
            allowed,
            seen: now,
        };
        if self.admitted.len() < MAX_FLOWS || self.admitted.contains_key(&key) {
            self.admitted.insert(key, entry);
        } else {
            self.counters.overflow += 1;
        }
        allowed
    }

    /// Forget flows idle for longer than their timeout (at most every
    /// [`SWEEP_EVERY`]).
    pub(crate) fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.replies
            .retain(|k, seen| now.saturating_duration_since(*seen) < k.idle());
        self.admitted
            .retain(|k, a| now.saturating_duration_since(a.seen) < k.idle());
        self.fragments
            .retain(|_, t| now.saturating_duration_since(*t) < FRAGMENT_IDLE);
    }

    pub(crate) fn counters(&self) -> PolicyCounters {
        PolicyCounters {
            tracked: (self.replies.len() + self.admitted.len() + self.fragments.len()) as u64,
            ..self.counters.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use wardnet_common::filter::{FilterRule, Traffic};
    use wardnet_common::policy::{PortRange, Proto, Reason};

    use super::*;

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    const ME: [u8; 4] = [100, 64, 0, 2];
    const TRUST: [u8; 4] = [100, 64, 0, 7];
    const GP: [u8; 4] = [100, 64, 0, 9];
    const OTHER_SITE: [u8; 4] = [100, 64, 0, 33];
    /// A data plane that forwards nothing on (a spoke).
    const NOWHERE: fn(IpAddr) -> bool = |_| false;

    /// A site that admits its own organisation (100.64.0.7) and, by rule
    /// 4, TCP 443 from the practice (100.64.0.9).
    fn filter(with_rule: bool) -> SiteFilter {
        let mut rules = vec![FilterRule {
            reason: Reason::SameOrg,
            from: vec!["100.64.0.7/32".parse().expect("prefix")],
            to: Vec::new(),
            traffic: vec![Traffic {
                proto: Proto::Any,
                ports: Vec::new(),
            }],
        }];
        if with_rule {
            rules.push(FilterRule {
                reason: Reason::Rule(4),
                from: vec!["100.64.0.9/32".parse().expect("prefix")],
                to: Vec::new(),
                traffic: vec![Traffic {
                    proto: Proto::Tcp,
                    ports: vec![PortRange { lo: 443, hi: 443 }],
                }],
            });
        }
        SiteFilter {
            local: vec!["100.64.0.2/32".parse().expect("prefix")],
            rules,
        }
    }

    #[test]
    fn without_a_filter_everything_passes_and_nothing_is_remembered() {
        let mut p = PolicyFilter::default();
        let now = Instant::now();
        p.outbound(&tcp(ME, GP, 443, 5000), now);
        assert!(p.inbound(&tcp(GP, ME, 5000, 22), now, NOWHERE));
        assert_eq!(p.counters().tracked, 0);
    }

    #[test]
    fn admitted_flows_pass_others_are_denied_and_counted_and_transit_is_not_ours() {
        let mut p = PolicyFilter::default();
        p.set(Some(filter(true)));
        let now = Instant::now();
        assert!(p.inbound(&tcp(TRUST, ME, 5000, 22), now, NOWHERE));
        assert!(p.inbound(&tcp(GP, ME, 5000, 443), now, NOWHERE));
        assert!(
            p.inbound(&tcp(GP, ME, 5000, 443), now, NOWHERE),
            "the flow goes on"
        );
        assert!(!p.inbound(&tcp(GP, ME, 5000, 22), now, NOWHERE));
        assert!(!p.inbound(&tcp(GP, ME, 5000, 22), now, NOWHERE));
        assert!(!p.inbound(&[0x45, 1, 2], now, NOWHERE), "garbage is denied");
        assert!(
            p.inbound(&tcp(GP, OTHER_SITE, 5000, 22), now, |_| true),
            "forwarded on"
        );
        assert!(
            !p.inbound(&tcp(GP, OTHER_SITE, 5000, 22), now, NOWHERE),
            "not ours and not forwarded"
        );
        let c = p.counters();
        assert_eq!(c.denied, 4);
        assert_eq!(c.transit, 1);
        assert_eq!(c.admitted.get("same_org"), Some(&1));
        assert_eq!(c.admitted.get("rule:4"), Some(&1), "counted per flow");
    }

    #[test]
    fn replies_to_flows_started_here_pass_whatever_the_filter_says() {
        let mut p = PolicyFilter::default();
        p.set(Some(filter(false)));
        let now = Instant::now();
        assert!(
            !p.inbound(&tcp(GP, ME, 443, 40000), now, NOWHERE),
            "not asked for"
        );
        p.outbound(&tcp(ME, GP, 40001, 443), now);
        assert!(p.inbound(&tcp(GP, ME, 443, 40001), now, NOWHERE), "a reply");
        assert!(
            !p.inbound(&tcp(GP, ME, 443, 40002), now, NOWHERE),
            "another port"
        );
        assert_eq!(p.counters().replies, 1);
    }

    #[test]
    fn a_removed_rule_stops_its_flow_even_after_the_site_answered_and_a_kept_one_goes_on() {
        let mut p = PolicyFilter::default();
        p.set(Some(filter(true)));
        let t0 = Instant::now();
        assert!(p.inbound(&tcp(GP, ME, 5000, 443), t0, NOWHERE));
        // The site answers the admitted flow: that is no flow of its own.
        p.outbound(&tcp(ME, GP, 443, 5000), t0);
        assert!(p.inbound(&tcp(TRUST, ME, 6000, 22), t0, NOWHERE));
        p.set(Some(filter(false)));
        assert!(
            !p.inbound(&tcp(GP, ME, 5000, 443), t0, NOWHERE),
            "the rule is gone"
        );
        p.outbound(&tcp(ME, GP, 443, 5000), t0);
        assert!(
            !p.inbound(&tcp(GP, ME, 5000, 443), t0, NOWHERE),
            "answering does not reopen it"
        );
        assert!(
            p.inbound(&tcp(TRUST, ME, 6000, 22), t0, NOWHERE),
            "still admitted"
        );
        p.set(Some(filter(true)));
        assert!(
            p.inbound(&tcp(GP, ME, 5000, 443), t0, NOWHERE),
            "admitted again"
        );
    }

    #[test]
    fn fragments_follow_their_first_one() {
        let mut p = PolicyFilter::default();
        p.set(Some(filter(true)));
        let now = Instant::now();
        let frag = |src, id: u16, first: bool| {
            let mut f = tcp(src, ME, 5000, 443);
            f[4..6].copy_from_slice(&id.to_be_bytes());
            if first {
                f[6] = 0x20;
            } else {
                f[7] = 185;
            }
            f
        };
        assert!(
            !p.inbound(&frag(GP, 9, false), now, NOWHERE),
            "no first fragment yet"
        );
        assert!(
            p.inbound(&frag(GP, 9, true), now, NOWHERE),
            "the rule admits the first"
        );
        assert!(
            p.inbound(&frag(GP, 9, false), now, NOWHERE),
            "the rest follow"
        );
        assert!(
            !p.inbound(&frag(GP, 10, false), now, NOWHERE),
            "another datagram"
        );
        assert!(
            !p.inbound(&frag(OTHER_SITE, 11, false), now, NOWHERE),
            "not admitted"
        );
        assert!(
            !p.inbound(&frag(GP, 9, false), now + FRAGMENT_IDLE, NOWHERE),
            "too late"
        );
    }

    /// An ICMP "port unreachable" from `src` to `dst` about `subject`.
    fn icmp_error(src: [u8; 4], dst: [u8; 4], subject: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = 1;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20] = 3;
        p[21] = 3;
        p.extend_from_slice(&subject[..28]);
        p
    }

    #[test]
    fn an_icmp_error_passes_with_its_flow_and_not_about_a_denied_one() {
        let mut p = PolicyFilter::default();
        p.set(Some(filter(true)));
        let now = Instant::now();
        // GP -> ME tcp/22 is denied: an error "about" the site's answer to
        // it is crafted, the site never sent one.
        assert!(!p.inbound(&tcp(GP, ME, 5000, 22), now, NOWHERE));
        let crafted = icmp_error(GP, ME, &tcp(ME, GP, 22, 5000));
        assert!(!p.inbound(&crafted, now, NOWHERE), "about a denied flow");
        // GP -> ME tcp/443 is admitted: an error about the answer passes.
        assert!(p.inbound(&tcp(GP, ME, 5000, 443), now, NOWHERE));
        let real = icmp_error(GP, ME, &tcp(ME, GP, 443, 5000));
        assert!(p.inbound(&real, now, NOWHERE), "about an admitted flow");
        // And one about a flow started here.
        p.outbound(&tcp(ME, GP, 40000, 80), now);
        let ours = icmp_error(GP, ME, &tcp(ME, GP, 40000, 80));
        assert!(p.inbound(&ours, now, NOWHERE), "about a flow of ours");
    }

    #[test]
    fn an_unfiltered_site_takes_everything_to_it_and_nothing_else() {
        let mut p = PolicyFilter::default();
        let mut open = filter(false);
        open.rules = vec![FilterRule {
            reason: Reason::Unfiltered,
            from: vec![
                "0.0.0.0/0".parse().expect("prefix"),
                "::/0".parse().expect("prefix"),
            ],
            to: Vec::new(),
            traffic: vec![Traffic {
                proto: Proto::Any,
                ports: Vec::new(),
            }],
        }];
        assert!(open.admits_everything());
        p.set(Some(open));
        let now = Instant::now();
        p.outbound(&tcp(ME, GP, 40000, 80), now);
        assert!(p.inbound(&tcp(GP, ME, 5000, 22), now, NOWHERE));
        assert!(!p.inbound(&tcp(GP, OTHER_SITE, 5000, 22), now, NOWHERE));
        let c = p.counters();
        assert_eq!((c.transit, c.denied, c.tracked), (1, 1, 0), "{c:?}");
    }

    #[test]
    fn a_later_fragment_not_to_the_site_is_transit() {
        let mut p = PolicyFilter::default();
        p.set(Some(filter(true)));
        let mut f = tcp(GP, OTHER_SITE, 5000, 443);
        f[7] = 185;
        assert!(!p.inbound(&f, Instant::now(), NOWHERE));
        assert!(p.inbound(&f, Instant::now(), |_| true), "a hub forwards it");
        assert_eq!(p.counters().transit, 1);
    }

    #[test]
    fn idle_flows_are_forgotten() {
        let mut p = PolicyFilter::default();
        p.set(Some(filter(false)));
        let t0 = Instant::now();
        let mut udp = tcp(ME, GP, 40001, 53);
        udp[9] = 17;
        p.outbound(&udp, t0);
        p.outbound(&tcp(ME, GP, 40002, 443), t0);
        assert_eq!(p.counters().tracked, 2);
        p.sweep(t0 + OTHER_IDLE + Duration::from_secs(1));
        assert_eq!(
            p.counters().tracked,
            1,
            "the UDP flow went, the TCP one stays"
        );
        p.sweep(t0 + TCP_IDLE + Duration::from_secs(20));
        assert_eq!(p.counters().tracked, 0);
    }
}
