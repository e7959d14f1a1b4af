//! The data plane's half of the policy: what one site admits from its
//! tunnels, compiled by the controller from the policy and the model, and
//! checked by the site's agent on every packet that comes out of a tunnel
//! before it reaches the TUN device.
//!
//! A [`SiteFilter`] is an ordered list of what admits traffic into the
//! site, each entry a set of source prefixes, the destinations inside the
//! site it is about and the traffic it lets through; the first entry that
//! matches a packet decides and names the reason ([`Reason`]), as
//! [`crate::policy::decide`] would for the same flow. Nothing matches:
//! denied. A packet to an address that is not the site's own (a hub
//! forwarding between spokes) is not this site's to judge: the site it is
//! for filters it.
//!
//! What a site admits depends on the source's organisation, region and
//! site, which the data plane knows only by the packet's source address:
//! the controller turns each of them into prefixes (a site's overlay
//! addresses and LANs). Cryptokey routing makes the source address
//! trustworthy: every peer may send only from its own allowed IPs, and a
//! hub accepts from a spoke only the spoke's own prefixes.
//!
//! Flows and replies (the stateful part) are the agent's: this module
//! decides single packets.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::policy::{covers, Party, PortRange, Proto, Reason, Rule, Service, SharedWith, Source};

/// What one entry lets through: a protocol and, for TCP and UDP, ports
/// (none listed: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    #[serde(default)]
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
}

/// One thing that admits traffic into a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    /// What it stands for: the same organisation, a service, a rule.
    pub reason: Reason,
    /// Source prefixes.
    pub from: Vec<IpNet>,
    /// Destinations inside the site (none listed: all of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<IpNet>,
    /// What it lets through: a packet must be covered by every one (a rule
    /// to a service admits what both the rule and the service allow).
    pub traffic: Vec<Traffic>,
}

/// What one site admits from its tunnels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFilter {
    /// The site's own prefixes (overlay addresses and LANs): only packets
    /// to them are filtered here.
    pub local: Vec<IpNet>,
    /// First match decides.
    pub rules: Vec<FilterRule>,
}

/// The verdict on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not to this site (forwarded by a hub): the destination filters it.
    Transit,
    /// Admitted by `rules[i]`.
    Allow(usize),
    /// Nothing admits it.
    Deny,
}

/// The parts of a packet a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The IP protocol number (ICMPv6 is 58).
    pub protocol: u8,
    /// Source and destination ports for TCP and UDP; for ICMP echo, the
    /// identifier on the side of the one who asked (request: source, reply:
    /// destination), so a reply is the request turned round. Zero when the
    /// packet has none (another protocol, a fragment after the first).
    pub sport: u16,
    pub dport: u16,
    /// The destination port the policy sees: TCP and UDP only, never for a
    /// fragment after the first.
    pub port: Option<u16>,
    /// An ICMP error (unreachable, too big, time exceeded, parameter
    /// problem): it answers a packet, and carries that packet's header.
    pub icmp_error: bool,
    /// For a fragment: its datagram's identification, and whether it is
    /// the first fragment (the one with the ports).
    pub fragment: Option<Fragment>,
}

/// Where a fragment stands in its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fragment {
    pub id: u32,
    pub first: bool,
}

impl Header {
    /// The protocol as the policy names it (other protocols: `any`, which
    /// only a rule for any protocol covers).
    pub fn proto(&self) -> Proto {
        match self.protocol {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 | 58 => Proto::Icmp,
            _ => Proto::Any,
        }
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// Parse an IPv4 or IPv6 packet's header; `None` when it is too short or
/// not IP.
pub fn parse(packet: &[u8]) -> Option<Header> {
    match packet.first()? >> 4 {
        4 => {
            if packet.len() < 20 {
                return None;
            }
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl {
                return None;
            }
            let src = Ipv4Addr::from([packet[12], packet[13], packet[14], packet[15]]);
            let dst = Ipv4Addr::from([packet[16], packet[17], packet[18], packet[19]]);
            let flags = u16::from_be_bytes([packet[6], packet[7]]);
            let (offset, more) = (flags & 0x1fff, flags & 0x2000 != 0);
            let l4 = (offset == 0).then(|| &packet[ihl..]);
            let mut h = transport(src.into(), dst.into(), packet[9], l4);
            h.fragment = (offset != 0 || more).then(|| Fragment {
                id: u32::from(u16::from_be_bytes([packet[4], packet[5]])),
                first: offset == 0,
            });
            Some(h)
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&packet[8..24]);
            let src = Ipv6Addr::from(a);
            a.copy_from_slice(&packet[24..40]);
            let dst = Ipv6Addr::from(a);
            let mut next = packet[6];
            let mut at = 40;
            let mut fragment = None;
            // Hop-by-hop, routing, destination options and fragment
            // headers stand between the fixed header and the transport's.
            loop {
                match next {
                    0 | 43 | 60 => {
                        let h = packet.get(at..at + 2)?;
                        next = h[0];
                        at += (usize::from(h[1]) + 1) * 8;
                    }
                    44 => {
                        let h = packet.get(at..at + 8)?;
                        next = h[0];
                        fragment = Some(Fragment {
                            id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                            first: u16::from_be_bytes([h[2], h[3]]) >> 3 == 0,
                        });
                        at += 8;
                    }
                    _ => break,
                }
            }
            let first = fragment.is_none_or(|f| f.first);
            let l4 = first.then(|| packet.get(at..)).flatten();
            let mut h = transport(src.into(), dst.into(), next, l4);
            h.fragment = fragment;
            Some(h)
        }
        _ => None,
    }
}

fn transport(src: IpAddr, dst: IpAddr, protocol: u8, l4: Option<&[u8]>) -> Header {
    let mut h = Header {
        src,
        dst,
        protocol,
        sport: 0,
        dport: 0,
        port: None,
        icmp_error: false,
        fragment: None,
    };
    let Some(l4) = l4 else {
        return h;
    };
    match protocol {
        TCP | UDP if l4.len() >= 4 => {
            h.sport = u16::from_be_bytes([l4[0], l4[1]]);
            h.dport = u16::from_be_bytes([l4[2], l4[3]]);
            h.port = Some(h.dport);
        }
        ICMP | ICMPV6 if l4.len() >= 8 => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            match (protocol, l4[0]) {
                // Echo request.
                (ICMP, 8) | (ICMPV6, 128) => h.sport = id,
                // Echo reply.
                (ICMP, 0) | (ICMPV6, 129) => h.dport = id,
                (ICMP, 3 | 11 | 12) | (ICMPV6, 1..=4) => h.icmp_error = true,
                _ => {}
            }
        }
        _ => {}
    }
    h
}

/// For an ICMP error, the header of the packet it is about (carried after
/// the ICMP header): the packet this side sent, which the error answers.
pub fn icmp_error_subject(packet: &[u8]) -> Option<Header> {
    let ihl = match packet.first()? >> 4 {
        4 => usize::from(packet[0] & 0x0f) * 4,
        6 => 40,
        _ => return None,
    };
    parse(packet.get(ihl + 8..)?)
}

impl SiteFilter {
    /// Whether `addr` is one of the site's own (what it judges).
    pub fn is_local(&self, addr: IpAddr) -> bool {
        self.local.iter().any(|p| p.contains(&addr))
    }

    /// The verdict on a packet from `src` to `dst` of `proto`, to `port`.
    pub fn check(&self, src: IpAddr, dst: IpAddr, proto: Proto, port: Option<u16>) -> Verdict {
        if !self.is_local(dst) {
            return Verdict::Transit;
        }
        let found = self.rules.iter().position(|r| {
            r.from.iter().any(|p| p.contains(&src))
                && (r.to.is_empty() || r.to.iter().any(|p| p.contains(&dst)))
                && r.traffic
                    .iter()
                    .all(|t| covers(t.proto, &t.ports, proto, port))
        });
        found.map_or(Verdict::Deny, Verdict::Allow)
    }

    /// Whether the filter admits everything to the site (an unfiltered
    /// site: its first entry is from everyone, to all of it, for all
    /// traffic). Such a site's data plane still drops what is not its own.
    pub fn admits_everything(&self) -> bool {
        self.rules.first().is_some_and(|r| {
            let all = |v4: bool| {
                r.from
                    .iter()
                    .any(|p| p.prefix_len() == 0 && matches!(p, IpNet::V4(_)) == v4)
            };
            r.to.is_empty()
                && r.traffic.iter().all(|t| t.proto == Proto::Any)
                && all(true)
                && all(false)
        })
    }

    /// The verdict on a parsed packet.
    pub fn check_header(&self, h: &Header) -> Verdict {
        self.check(h.src, h.dst, h.proto(), h.port)
    }

    /// What a verdict stands for.
    pub fn reason(&self, v: Verdict) -> Option<Reason> {
        match v {
            Verdict::Transit => None,
            Verdict::Allow(i) => self.rules.get(i).map(|r| r.reason.clone()),
            Verdict::Deny => Some(Reason::Default),
        }
    }
}

/// Every address.
fn everyone() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

/// The filter of the site `to` (with LAN prefixes `lans`), from the
/// policy; `sources` gives the prefixes of an organisation, a region or a
/// site (`Source::All` is never asked). Every site, in `default` as in
/// any other organisation, takes nothing out of its tunnels that is not
/// to its own addresses.
///
/// The entries come in the order [`crate::policy::decide`] looks: the
/// organisation's own sites, ICMP to the overlay addresses, the services
/// behind the site by name, the rules into it by id.
pub fn compile<R: AsRef<Rule>, S: AsRef<Service>>(
    to: &Party,
    lans: &BTreeSet<IpNet>,
    rules: &[R],
    services: &[S],
    mut sources: impl FnMut(&Source) -> Vec<IpNet>,
) -> SiteFilter {
    let overlay: Vec<IpNet> = to.overlay.iter().map(|a| IpNet::from(*a)).collect();
    let mut local = overlay.clone();
    local.extend(lans.iter().copied());
    let any = Traffic {
        proto: Proto::Any,
        ports: Vec::new(),
    };
    let traffic = |proto: Proto, ports: &[PortRange]| Traffic {
        proto,
        ports: ports.to_vec(),
    };
    let mut out = Vec::new();
    if to.admits_own_org() {
        out.push(FilterRule {
            reason: Reason::SameOrg,
            from: IpNet::aggregate(&sources(&Source::Org(to.org.clone()))),
            to: Vec::new(),
            traffic: vec![any],
        });
    }
    out.push(FilterRule {
        reason: Reason::Probe,
        from: everyone(),
        to: overlay,
        traffic: vec![traffic(Proto::Icmp, &[])],
    });
    let mut here: Vec<&Service> = services
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| s.site == to.site)
        .collect();
    here.sort_by(|a, b| a.name.cmp(&b.name));
    for s in &here {
        let from = match &s.shared_with {
            SharedWith::All => everyone(),
            SharedWith::Orgs(orgs) => {
                let all: Vec<IpNet> = orgs
                    .iter()
                    .flat_map(|o| sources(&Source::Org(o.clone())))
                    .collect();
                IpNet::aggregate(&all)
            }
        };
        out.push(FilterRule {
            reason: Reason::Service(s.name.clone()),
            from,
            to: s.prefixes.iter().copied().collect(),
            traffic: vec![traffic(s.proto, &s.ports)],
        });
    }
    let mut into: Vec<&Rule> = rules.iter().map(AsRef::as_ref).collect();
    into.sort_by_key(|r| r.id);
    for r in into {
        let mine = traffic(r.proto, &r.ports);
        let (dst, what) = match &r.to {
            crate::policy::Target::All => (Vec::new(), vec![mine]),
            crate::policy::Target::Org(o) if o == &to.org => (Vec::new(), vec![mine]),
            crate::policy::Target::Site(s) if s == &to.site => (Vec::new(), vec![mine]),
            crate::policy::Target::Service(r) => match here.iter().find(|s| r.is(&to.org, &s.name))
            {
                Some(s) => (
                    s.prefixes.iter().copied().collect(),
                    vec![mine, traffic(s.proto, &s.ports)],
                ),
                None => continue,
            },
            _ => continue,
        };
        let from = match &r.from {
            Source::All => everyone(),
            other => IpNet::aggregate(&sources(other)),
        };
        out.push(FilterRule {
            reason: Reason::Rule(r.id),
            from,
            to: dst,
            traffic: what,
        });
    }
    SiteFilter { local, rules: out }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::{decide, Flow, ServiceRef, Target};
    use crate::Name;

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    /// A test network's site: its place in the policy and its prefixes.
    #[derive(Debug, Clone)]
    struct TestSite {
        party: Party,
        lans: BTreeSet<IpNet>,
    }

    impl TestSite {
        fn prefixes(&self) -> Vec<IpNet> {
            let mut v: Vec<IpNet> = self.party.overlay.iter().map(|a| IpNet::from(*a)).collect();
            v.extend(self.lans.iter().copied());
            v
        }
    }

    const ORGS: [&str; 4] = ["default", "leeds-trust", "gp-chapeltown", "yas"];
    const REGIONS: [&str; 2] = ["north", "south"];

    fn site(i: usize, org: usize, region: usize, lan: bool) -> TestSite {
        let overlay = [
            IpAddr::from(Ipv4Addr::new(100, 64, 0, i as u8 + 1)),
            IpAddr::from(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, i as u16 + 1)),
        ];
        let lans = if lan {
            [format!("100.100.{i}.0/24").parse().expect("prefix")].into()
        } else {
            BTreeSet::new()
        };
        TestSite {
            party: Party {
                site: n(&format!("site-{i}")),
                org: n(ORGS[org]),
                region: n(REGIONS[region]),
                overlay: overlay.into_iter().collect(),
                hub: false,
            },
            lans,
        }
    }

    fn sources_of<'a>(sites: &'a [TestSite]) -> impl FnMut(&Source) -> Vec<IpNet> + 'a {
        move |s: &Source| {
            sites
                .iter()
                .filter(|t| s.matches(&t.party))
                .flat_map(TestSite::prefixes)
                .collect()
        }
    }

    fn proto() -> impl Strategy<Value = Proto> {
        prop_oneof![
            Just(Proto::Any),
            Just(Proto::Tcp),
            Just(Proto::Udp),
            Just(Proto::Icmp)
        ]
    }

    fn ports(proto: Proto) -> BoxedStrategy<Vec<PortRange>> {
        if proto.has_ports() {
            prop::collection::vec(
                (0u16..4).prop_map(|i| {
                    let lo = [22u16, 53, 443, 8000][i as usize];
                    PortRange {
                        lo,
                        hi: lo + i * 40,
                    }
                }),
                0..3,
            )
            .boxed()
        } else {
            Just(Vec::new()).boxed()
        }
    }

    const SITES: usize = 7;

    fn sites() -> impl Strategy<Value = Vec<TestSite>> {
        // Some sites are hubs (infrastructure: filtered in any
        // organisation, `default` included).
        let one = (
            0..ORGS.len(),
            0..REGIONS.len(),
            any::<bool>(),
            prop::bool::weighted(0.25),
        );
        prop::collection::vec(one, SITES).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (o, r, lan, hub))| {
                    let mut s = site(i, o, r, lan);
                    s.party.hub = hub;
                    s
                })
                .collect()
        })
    }

    fn source() -> impl Strategy<Value = Source> {
        prop_oneof![
            Just(Source::All),
            (0..ORGS.len()).prop_map(|i| Source::Org(n(ORGS[i]))),
            (0..REGIONS.len()).prop_map(|i| Source::Region(n(REGIONS[i]))),
            (0..SITES).prop_map(|i| Source::Site(n(&format!("site-{i}")))),
        ]
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            Just(Target::All),
            (0..ORGS.len()).prop_map(|i| Target::Org(n(ORGS[i]))),
            (0..SITES).prop_map(|i| Target::Site(n(&format!("site-{i}")))),
            // Services are named within an organisation: the same name in
            // two, qualified or not.
            (0..3usize, prop::option::of(0..ORGS.len())).prop_map(|(i, o)| {
                Target::Service(ServiceRef {
                    org: o.map(|o| n(ORGS[o])),
                    name: n(&format!("svc-{i}")),
                })
            }),
        ]
    }

    fn rules() -> impl Strategy<Value = Vec<Rule>> {
        prop::collection::vec(
            (source(), target(), proto()).prop_flat_map(|(from, to, proto)| {
                ports(proto).prop_map(move |ports| Rule {
                    id: 0,
                    from: from.clone(),
                    to: to.clone(),
                    proto,
                    ports,
                    description: String::new(),
                })
            }),
            0..8,
        )
        .prop_map(|mut v| {
            for (i, r) in v.iter_mut().enumerate() {
                r.id = (i as u64 * 7) % 11 + 1;
            }
            v.sort_by_key(|r| r.id);
            v.dedup_by_key(|r| r.id);
            v
        })
    }

    /// A service as drawn: (site, where: 0 the whole site, 1 its overlay
    /// address, 2 its LAN; protocol; ports; shared with: all, or these
    /// organisations).
    type RawService = (usize, u8, Proto, Vec<PortRange>, Option<Vec<usize>>);

    /// Up to three services, each behind a random site.
    fn services() -> impl Strategy<Value = Vec<RawService>> {
        prop::collection::vec(
            (0..SITES, 0u8..3, proto()).prop_flat_map(|(site, at, proto)| {
                (
                    Just(site),
                    Just(at),
                    Just(proto),
                    ports(proto),
                    prop::option::of(prop::collection::vec(0..ORGS.len(), 0..3)),
                )
            }),
            0..3,
        )
    }

    /// Names repeat (`svc-0`, `svc-1`, `svc-0`): two organisations may
    /// each have a service of one name, one organisation only one.
    fn build_services(sites: &[TestSite], raw: Vec<RawService>) -> Vec<Service> {
        let mut taken = BTreeSet::new();
        raw.into_iter()
            .enumerate()
            .filter(|(i, (s, ..))| taken.insert((sites[*s].party.org.clone(), i % 2)))
            .map(|(i, (s, at, proto, ports, with))| {
                let t = &sites[s];
                let prefixes = match at {
                    0 => BTreeSet::new(),
                    1 => t.party.overlay.iter().map(|a| IpNet::from(*a)).collect(),
                    _ => t.lans.clone(),
                };
                Service {
                    name: n(&format!("svc-{}", i % 2)),
                    site: t.party.site.clone(),
                    prefixes,
                    proto,
                    ports,
                    shared_with: match with {
                        None => SharedWith::All,
                        Some(v) => SharedWith::Orgs(v.into_iter().map(|o| n(ORGS[o])).collect()),
                    },
                    description: String::new(),
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For random policies and random flows between random sites, the
        /// filter of the destination admits exactly what `policy check`
        /// (`decide`) allows, and names the same reason.
        #[test]
        fn the_filter_agrees_with_decide(
            sites in sites(),
            rules in rules(),
            raw_services in services(),
            flows in prop::collection::vec(
                (0..SITES, 0..SITES, 0u8..3, proto(), prop::option::of(prop_oneof![Just(22u16), Just(53), Just(443), Just(8040), Just(9000)])),
                1..24,
            ),
        ) {
            let services = build_services(&sites, raw_services);
            let filters: Vec<SiteFilter> = sites
                .iter()
                .map(|t| compile(&t.party, &t.lans, &rules, &services, sources_of(&sites)))
                .collect();
            for (from, to, which, proto, port) in flows {
                let (src_site, dst_site) = (&sites[from], &sites[to]);
                if from == to {
                    continue;
                }
                let port = if proto.has_ports() { port.or(Some(1)) } else { None };
                let src = *src_site.party.overlay.iter().next().expect("an address");
                let v6 = which == 1;
                let dst = match (which, dst_site.lans.first()) {
                    (2, Some(lan)) => lan.hosts().nth(5).expect("a LAN address"),
                    _ => *dst_site.party.overlay.iter().find(|a| a.is_ipv6() == v6).expect("an address"),
                };
                let src = if v6 {
                    *src_site.party.overlay.iter().find(|a| a.is_ipv6()).expect("an address")
                } else {
                    src
                };
                let spec = decide(&rules, &services, &Flow {
                    from: src_site.party.clone(),
                    to: dst_site.party.clone(),
                    dst: Some(dst),
                    proto,
                    port,
                });
                let f = &filters[to];
                let v = f.check(src, dst, proto, port);
                prop_assert_ne!(v, Verdict::Transit);
                prop_assert_eq!(matches!(v, Verdict::Allow(_)), spec.allow, "{:?}", v);
                // `default` included, no site admits everything.
                prop_assert!(!f.admits_everything());
                prop_assert_eq!(f.reason(v), Some(spec.reason));
                // Nothing of another site's is this one's: its data plane
                // forwards it on (a hub) or drops it.
                for (i, other) in sites.iter().enumerate() {
                    if i != to {
                        let theirs = *other.party.overlay.iter().next().expect("an address");
                        prop_assert_eq!(f.check(src, theirs, proto, port), Verdict::Transit);
                    }
                }
            }
        }
    }

    fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = TCP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn headers_parse_for_tcp_icmp_echo_fragments_and_ipv6() {
        let h = parse(&ipv4_tcp([100, 64, 0, 1], [100, 64, 0, 2], 40000, 443)).expect("v4");
        assert_eq!(h.proto(), Proto::Tcp);
        assert_eq!((h.sport, h.dport, h.port), (40000, 443, Some(443)));

        // A fragment after the first has no ports; both carry the
        // datagram's identification.
        let mut frag = ipv4_tcp([100, 64, 0, 1], [100, 64, 0, 2], 40000, 443);
        frag[4..6].copy_from_slice(&77u16.to_be_bytes());
        frag[6] = 0x20;
        let h = parse(&frag).expect("first fragment");
        assert_eq!(h.port, Some(443));
        assert_eq!(
            h.fragment,
            Some(Fragment {
                id: 77,
                first: true
            })
        );
        frag[6] = 0;
        frag[7] = 10;
        let h = parse(&frag).expect("fragment");
        assert_eq!((h.sport, h.dport, h.port), (0, 0, None));
        assert_eq!(
            h.fragment,
            Some(Fragment {
                id: 77,
                first: false
            })
        );
        assert_eq!(
            parse(&ipv4_tcp([1; 4], [2; 4], 1, 2))
                .expect("whole")
                .fragment,
            None
        );

        // Echo request and reply: the identifier on the asker's side.
        let mut echo = vec![0u8; 28];
        echo[0] = 0x45;
        echo[9] = ICMP;
        echo[20] = 8;
        echo[24..26].copy_from_slice(&77u16.to_be_bytes());
        let h = parse(&echo).expect("echo");
        assert_eq!(
            (h.sport, h.dport, h.port, h.proto()),
            (77, 0, None, Proto::Icmp)
        );
        echo[20] = 0;
        let h = parse(&echo).expect("reply");
        assert_eq!((h.sport, h.dport), (0, 77));
        echo[20] = 3;
        assert!(parse(&echo).expect("unreachable").icmp_error);

        // IPv6 UDP behind a destination-options header.
        let mut v6 = vec![0u8; 56];
        v6[0] = 0x60;
        v6[6] = 60;
        v6[8] = 0xfd;
        v6[9] = 0x7a;
        v6[24] = 0xfd;
        v6[25] = 0x7a;
        v6[40] = UDP;
        v6[48..50].copy_from_slice(&5000u16.to_be_bytes());
        v6[50..52].copy_from_slice(&53u16.to_be_bytes());
        let h = parse(&v6).expect("v6");
        assert_eq!((h.protocol, h.sport, h.port), (UDP, 5000, Some(53)));

        // Garbage is not a header.
        assert!(parse(&[]).is_none());
        assert!(parse(&[0x45, 0, 0]).is_none());
        assert!(parse(&[0x20; 60]).is_none());
        assert!(parse(&[0x4f; 30]).is_none());
    }

    #[test]
    fn an_icmp_error_carries_the_packet_it_answers() {
        let sent = ipv4_tcp([100, 64, 0, 2], [100, 64, 0, 9], 443, 40000);
        let mut err = vec![0u8; 28];
        err[0] = 0x45;
        err[9] = ICMP;
        err[12..16].copy_from_slice(&[100, 64, 0, 9]);
        err[16..20].copy_from_slice(&[100, 64, 0, 2]);
        err[20] = 3;
        err.extend_from_slice(&sent);
        let subject = icmp_error_subject(&err).expect("subject");
        assert_eq!(subject.src, IpAddr::from([100, 64, 0, 2]));
        assert_eq!(subject.dport, 40000);
    }

    #[test]
    fn a_site_in_the_default_organisation_is_filtered_like_any_other() {
        // Sites 0 and 1 in `default`, site 2 in another organisation.
        let sites: Vec<TestSite> = (0..3).map(|i| site(i, i / 2, 0, true)).collect();
        let (rules, services): (&[Rule], &[Service]) = (&[], &[]);
        let at = |t: &TestSite| compile(&t.party, &t.lans, rules, services, sources_of(&sites));
        let f = at(&sites[0]);
        assert!(!f.admits_everything());
        let mine = IpAddr::from([100, 64, 0, 1]);
        let v = f.check(IpAddr::from([100, 64, 0, 2]), mine, Proto::Tcp, Some(22));
        assert_eq!(f.reason(v), Some(Reason::SameOrg));
        let lan = IpAddr::from([100, 100, 0, 7]);
        let v = f.check(IpAddr::from([100, 100, 1, 9]), lan, Proto::Udp, Some(161));
        assert_eq!(f.reason(v), Some(Reason::SameOrg));
        let foreign = IpAddr::from([100, 64, 0, 3]);
        assert_eq!(f.check(foreign, mine, Proto::Tcp, Some(22)), Verdict::Deny);
        assert_eq!(f.check(foreign, lan, Proto::Tcp, Some(3389)), Verdict::Deny);
        assert_eq!(
            f.check(IpAddr::from([100, 64, 0, 2]), foreign, Proto::Tcp, Some(22)),
            Verdict::Transit
        );
        // Probes from anyone pass.
        assert_eq!(
            f.reason(f.check(foreign, mine, Proto::Icmp, None)),
            Some(Reason::Probe)
        );
    }
}
