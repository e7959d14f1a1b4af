//! Who may reach whom between organisations: the policy's parts (rules and
//! services) and the one function that decides a flow, naming what decided.
//!
//! The model: traffic within an organisation is allowed; between
//! organisations it is denied unless a **service** published by the
//! destination's organisation is shared with the source's, or a **rule**
//! admits it. Rules are directional, from everyone, an organisation, a
//! region or a site, to an organisation, a site or a service, for a
//! protocol and ports. Replies to an allowed flow are allowed (the data
//! plane tracks flows); ICMP to a site's own overlay address is always
//! allowed (health probes, reachability checks). The `default`
//! organisation (every site from before organisations, and sites created
//! without one) is filtered like any other: its sites reach each other,
//! and nothing else reaches them unless a service or rule says so.
//!
//! [`decide`] is the specification; the data plane enforces the same
//! answers with [`crate::filter`], which a property test holds to it.

/// The organisation sites belong to unless they say otherwise: every site
/// created before organisations existed was moved into it.
pub const DEFAULT_ORG: &str = "default";

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Name;

/// A transport protocol a rule or a service is about.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Every protocol (and every port).
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    /// Whether this protocol has ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }

    /// Whether a rule or service for `self` covers a packet of `proto`.
    pub fn covers(self, proto: Proto) -> bool {
        self == Proto::Any || self == proto
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(Proto::Any),
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            _ => Err(format!("unknown protocol {s:?}: use tcp, udp, icmp or any")),
        }
    }
}

/// Ports `lo` to `hi` (both included); written `443` or `8000-8080`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "invalid port {p:?} in {s:?}: ports are 1 to 65535, a range is 8000-8080"
                )),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        // A range that runs backwards reads, and is refused by
        // `check_ports` with the rest of the rule's meaning.
        Ok(PortRange { lo, hi })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Every site of the network.
    All,
    Org(Name),
    Region(Name),
    Site(Name),
}

/// Where a rule admits traffic to: something one organisation owns, or
/// every site of the network (`all`: the NOC's, e.g. its monitoring).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    All,
    Org(Name),
    Site(Name),
    Service(ServiceRef),
}

/// A service as a rule or a request names it. Services are named within
/// their organisation (`ORG/NAME`), so two organisations may each have
/// one called `pacs` and neither learns of the other's. Without the
/// organisation (`NAME`) it means the one service of that name the asker
/// may name; the controller stores rules with it qualified.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub org: Option<Name>,
    pub name: Name,
}

impl ServiceRef {
    pub fn new(org: &Name, name: &Name) -> Self {
        ServiceRef {
            org: Some(org.clone()),
            name: name.clone(),
        }
    }

    /// Whether this names organisation `org`'s service `name` (an
    /// unqualified one, from an older controller when names were unique
    /// network-wide, names it by name alone).
    pub fn is(&self, org: &Name, name: &Name) -> bool {
        &self.name == name && self.org.as_ref().is_none_or(|o| o == org)
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.org {
            Some(o) => write!(f, "{o}/{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

impl FromStr for ServiceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let name = |n: &str| {
            n.parse::<Name>()
                .map_err(|e| format!("service {s:?}: {}; a service is NAME or ORG/NAME", e.0))
        };
        match s.split_once('/') {
            Some((o, n)) => Ok(ServiceRef {
                org: Some(name(o)?),
                name: name(n)?,
            }),
            None => Ok(ServiceRef {
                org: None,
                name: name(s)?,
            }),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::All => f.write_str("all"),
            Source::Org(n) => write!(f, "org:{n}"),
            Source::Region(n) => write!(f, "region:{n}"),
            Source::Site(n) => write!(f, "site:{n}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Org(n) => write!(f, "org:{n}"),
            Target::Site(n) => write!(f, "site:{n}"),
            Target::Service(n) => write!(f, "service:{n}"),
        }
    }
}

fn kind_and_name(s: &str, kinds: &str) -> Result<(String, Name), String> {
    let (kind, name) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not KIND:NAME (KIND one of {kinds})"))?;
    let name = name
        .parse::<Name>()
        .map_err(|e| format!("{s:?}: {}", e.0))?;
    Ok((kind.to_owned(), name))
}

impl Source {
    /// Whether traffic from `party`'s site comes from here.
    pub fn matches(&self, party: &Party) -> bool {
        match self {
            Source::All => true,
            Source::Org(o) => o == &party.org,
            Source::Region(r) => r == &party.region,
            Source::Site(s) => s == &party.site,
        }
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Source::All);
        }
        let kinds = "org, region, site; or all";
        match kind_and_name(s, kinds)? {
            (k, n) if k == "org" => Ok(Source::Org(n)),
            (k, n) if k == "region" => Ok(Source::Region(n)),
            (k, n) if k == "site" => Ok(Source::Site(n)),
            (k, _) => Err(format!("{s:?}: a rule's source is {kinds}, not {k}")),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Target::All);
        }
        let kinds = "org, site, service; or all";
        if let Some(r) = s.strip_prefix("service:") {
            return r.parse().map(Target::Service);
        }
        match kind_and_name(s, kinds)? {
            (k, n) if k == "org" => Ok(Target::Org(n)),
            (k, n) if k == "site" => Ok(Target::Site(n)),
            (k, _) => Err(format!("{s:?}: a rule's destination is {kinds}, not {k}")),
        }
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_serde!(Source);
string_serde!(Target);
string_serde!(ServiceRef);

/// What a rule or a service lets through: `proto` and, for TCP and UDP,
/// `ports` (none listed: all of them). True when a packet of `packet`
/// to `port` is covered.
pub fn covers(proto: Proto, ports: &[PortRange], packet: Proto, port: Option<u16>) -> bool {
    proto.covers(packet)
        && (ports.is_empty()
            || !packet.has_ports()
            || port.is_some_and(|p| ports.iter().any(|r| r.contains(p))))
}

/// Ports only make sense with TCP or UDP, and run upwards.
pub fn check_ports(proto: Proto, ports: &[PortRange]) -> Result<(), String> {
    if let Some(r) = ports.iter().find(|r| r.lo > r.hi) {
        return Err(format!(
            "port range {}-{} runs backwards; write {}-{}",
            r.lo, r.hi, r.hi, r.lo
        ));
    }
    if !ports.is_empty() && !proto.has_ports() {
        return Err(format!(
            "ports are for tcp or udp, not {proto}; drop the ports or name the protocol"
        ));
    }
    Ok(())
}

/// `tcp/443,8000-8080`, `icmp`, `any`.
pub fn traffic_text(proto: Proto, ports: &[PortRange]) -> String {
    if ports.is_empty() {
        proto.to_string()
    } else {
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        format!("{proto}/{}", ports.join(","))
    }
}

/// A rule admitting traffic between organisations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: u64,
    pub from: Source,
    pub to: Target,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub description: String,
}

impl AsRef<Rule> for Rule {
    fn as_ref(&self) -> &Rule {
        self
    }
}

impl AsRef<Service> for Service {
    fn as_ref(&self) -> &Service {
        self
    }
}

impl AsRef<Rule> for RuleView {
    fn as_ref(&self) -> &Rule {
        &self.rule
    }
}

impl AsRef<Service> for ServiceView {
    fn as_ref(&self) -> &Service {
        &self.service
    }
}

impl Rule {
    pub fn covers(&self, proto: Proto, port: Option<u16>) -> bool {
        covers(self.proto, &self.ports, proto, port)
    }
}

/// Who a service is shared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedWith {
    /// Every organisation.
    All,
    Orgs(BTreeSet<Name>),
}

impl SharedWith {
    pub fn includes(&self, org: &Name) -> bool {
        match self {
            SharedWith::All => true,
            SharedWith::Orgs(orgs) => orgs.contains(org),
        }
    }
}

impl Serialize for SharedWith {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SharedWith::All => s.serialize_str("all"),
            SharedWith::Orgs(orgs) => orgs.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SharedWith {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(BTreeSet<Name>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(SharedWith::All),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "shared_with is \"all\" or a list of organisations, not {w:?}"
            ))),
            Raw::List(orgs) => Ok(SharedWith::Orgs(orgs)),
        }
    }
}

/// A service: a site, or prefixes and ports behind it, that its
/// organisation publishes to all organisations or to listed ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Name,
    /// The site it is behind.
    pub site: Name,
    /// Where it listens: the site's own addresses or LAN prefixes, or part
    /// of them; none listed: the whole site.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub prefixes: BTreeSet<IpNet>,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    pub shared_with: SharedWith,
    #[serde(default)]
    pub description: String,
}

impl Service {
    /// Whether the service covers a packet to `dst` (any address of the
    /// site when the flow does not name one), of `proto`, to `port`.
    pub fn covers(&self, dst: Option<IpAddr>, proto: Proto, port: Option<u16>) -> bool {
        let at = self.prefixes.is_empty()
            || dst.is_some_and(|a| self.prefixes.iter().any(|p| p.contains(&a)));
        at && covers(self.proto, &self.ports, proto, port)
    }
}

/// One end of a flow: a site and what the policy knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    pub site: Name,
    pub org: Name,
    pub region: Name,
    /// Its overlay addresses (ICMP to them is always allowed).
    pub overlay: BTreeSet<IpAddr>,
    /// A hub: infrastructure, filtered whatever its organisation (it
    /// admits probes and what rules and services name it, and, outside
    /// `default`, its own organisation).
    pub hub: bool,
}

impl Party {
    /// Whether the site admits its own organisation's traffic (a hub in
    /// `default` has none: `default` is no organisation to it).
    pub fn admits_own_org(&self) -> bool {
        !(self.hub && self.org.as_str() == DEFAULT_ORG)
    }

    /// Whether traffic from `from` is within the site's own organisation.
    pub fn same_org(&self, from: &Party) -> bool {
        from.org == self.org && self.admits_own_org()
    }
}

/// A flow to decide: from one site to another (to address `dst` of it,
/// when known), a protocol and a destination port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub from: Party,
    pub to: Party,
    pub dst: Option<IpAddr>,
    pub proto: Proto,
    pub port: Option<u16>,
}

/// What decided a flow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "name")]
pub enum Reason {
    /// Both ends belong to one organisation.
    SameOrg,
    /// The destination admits everything. No longer decided by anything
    /// (`default` is filtered like any other organisation); kept so that a
    /// filter from an older controller still reads.
    Unfiltered,
    /// ICMP to the destination's own overlay address (health probes).
    Probe,
    /// A service shared with the source's organisation.
    Service(Name),
    /// A rule, by id.
    Rule(u64),
    /// Nothing allows it: traffic between organisations is denied.
    Default,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::SameOrg => f.write_str("same organisation"),
            Reason::Unfiltered => f.write_str("the destination admits everything"),
            Reason::Probe => f.write_str("ICMP to a site's overlay address is always allowed"),
            Reason::Service(n) => write!(f, "service {n}"),
            Reason::Rule(id) => write!(f, "rule {id}"),
            Reason::Default => f.write_str("default: deny between organisations"),
        }
    }
}

impl Reason {
    /// The reason as a metric label: `same_org`, `unfiltered`, `probe`,
    /// `service:NAME`, `rule:ID`, `default`.
    pub fn label(&self) -> String {
        match self {
            Reason::SameOrg => "same_org".into(),
            Reason::Unfiltered => "unfiltered".into(),
            Reason::Probe => "probe".into(),
            Reason::Service(n) => format!("service:{n}"),
            Reason::Rule(id) => format!("rule:{id}"),
            Reason::Default => "default".into(),
        }
    }
}

/// The answer for a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reason: Reason,
}

/// Decides a flow. What allows it, in this order: one organisation at
/// both ends; ICMP
/// to the destination's overlay address; a service at the destination
/// shared with the source's organisation; the rule with the lowest id that
/// matches. Otherwise denied (`Reason::Default`).
pub fn decide(rules: &[Rule], services: &[Service], flow: &Flow) -> Decision {
    let allow = |reason| Decision {
        allow: true,
        reason,
    };
    if flow.to.same_org(&flow.from) {
        return allow(Reason::SameOrg);
    }
    if flow.proto == Proto::Icmp && flow.dst.is_some_and(|d| flow.to.overlay.contains(&d)) {
        return allow(Reason::Probe);
    }
    let at_destination =
        |s: &&Service| s.site == flow.to.site && s.covers(flow.dst, flow.proto, flow.port);
    if let Some(s) = services
        .iter()
        .filter(at_destination)
        .filter(|s| s.shared_with.includes(&flow.from.org))
        .min_by(|a, b| a.name.cmp(&b.name))
    {
        return allow(Reason::Service(s.name.clone()));
    }
    let to = |r: &Rule| {
        r.covers(flow.proto, flow.port)
            && match &r.to {
                Target::All => true,
                Target::Org(o) => o == &flow.to.org,
                Target::Site(s) => s == &flow.to.site,
                // Through a service: where it listens, and what both allow.
                // (the destination's services are its organisation's)
                Target::Service(r) => services
                    .iter()
                    .filter(at_destination)
                    .any(|s| r.is(&flow.to.org, &s.name)),
            }
    };
    match rules
        .iter()
        .filter(|r| r.from.matches(&flow.from) && to(r))
        .min_by_key(|r| r.id)
    {
        Some(r) => allow(Reason::Rule(r.id)),
        None => Decision {
            allow: false,
            reason: Reason::Default,
        },
    }
}

// ---------------------------------------------------------------------------
// The admin API's view of the policy.
// ---------------------------------------------------------------------------

/// `POST /v1/policy/rules`: a rule; the controller gives it its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    pub from: Source,
    pub to: Target,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub description: String,
}

/// A rule as the API shows it: the organisation it admits traffic into
/// (whose admins manage it) and when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleView {
    pub rule: Rule,
    pub org: Name,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: crate::time::UnixTime,
}

/// A service as the API shows it: the organisation that publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceView {
    pub service: Service,
    pub org: Name,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: crate::time::UnixTime,
}

/// `GET /v1/policy`: the rules and services the token may see.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    pub rules: Vec<RuleView>,
    pub services: Vec<ServiceView>,
}

/// `GET /v1/policy/check`: may site `from` reach site `to` (at `address`,
/// one of its addresses or LAN addresses) with `proto` to `port`?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    pub from: Name,
    pub to: Name,
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
}

fn enforced_by_default() -> bool {
    true
}

/// The answer to a check: allowed or not, what decided, and that rule or
/// service in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckAnswer {
    pub allow: bool,
    pub decided_by: Reason,
    /// What decided, for people ("rule 7", "same organisation", …).
    pub because: String,
    /// Whether the destination's data plane enforces the answer: false for
    /// an agentless site (no agent to filter).
    #[serde(default = "enforced_by_default")]
    pub enforced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().expect("name")
    }

    fn party(site: &str, org: &str, region: &str) -> Party {
        Party {
            site: n(site),
            org: n(org),
            region: n(region),
            overlay: BTreeSet::new(),
            hub: false,
        }
    }

    fn flow(from: &Party, to: &Party, proto: Proto, port: Option<u16>) -> Flow {
        Flow {
            from: from.clone(),
            to: to.clone(),
            dst: None,
            proto,
            port,
        }
    }

    fn rule(id: u64, from: &str, to: &str, proto: Proto, ports: &[&str]) -> Rule {
        Rule {
            id,
            from: from.parse().expect("source"),
            to: to.parse().expect("target"),
            proto,
            ports: ports.iter().map(|p| p.parse().expect("ports")).collect(),
            description: String::new(),
        }
    }

    #[test]
    fn within_an_organisation_everything_between_them_nothing_by_default() {
        let a1 = party("lth-1", "leeds-trust", "north");
        let a2 = party("lth-2", "leeds-trust", "south");
        let gp = party("gp-1", "gp-chapeltown", "north");
        let d = decide(&[], &[], &flow(&a1, &a2, Proto::Udp, Some(53)));
        assert_eq!(
            d,
            Decision {
                allow: true,
                reason: Reason::SameOrg
            }
        );
        let d = decide(&[], &[], &flow(&gp, &a1, Proto::Tcp, Some(443)));
        assert_eq!(
            d,
            Decision {
                allow: false,
                reason: Reason::Default
            }
        );
    }

    #[test]
    fn rules_match_by_source_destination_protocol_and_port_lowest_id_first() {
        let trust = party("lth-1", "leeds-trust", "north");
        let gp = party("gp-1", "gp-chapeltown", "north");
        let rules = [
            rule(
                7,
                "region:north",
                "site:lth-1",
                Proto::Tcp,
                &["443", "8000-8080"],
            ),
            rule(3, "org:gp-chapeltown", "org:leeds-trust", Proto::Icmp, &[]),
            rule(9, "all", "org:leeds-trust", Proto::Any, &[]),
        ];
        let check = |proto, port| decide(&rules, &[], &flow(&gp, &trust, proto, port)).reason;
        assert_eq!(check(Proto::Tcp, Some(443)), Reason::Rule(7));
        assert_eq!(check(Proto::Tcp, Some(8080)), Reason::Rule(7));
        assert_eq!(check(Proto::Icmp, None), Reason::Rule(3));
        assert_eq!(check(Proto::Udp, Some(53)), Reason::Rule(9));
        // The other way: nothing admits traffic into the practice.
        let back = decide(&rules, &[], &flow(&trust, &gp, Proto::Tcp, Some(443)));
        assert!(!back.allow);
    }

    #[test]
    fn a_service_is_reachable_as_published_and_only_by_whom_it_is_shared_with() {
        let spine = party("spine-1", "national", "core");
        let trust = party("lth-1", "leeds-trust", "north");
        let gp = party("gp-1", "gp-chapeltown", "north");
        let service = Service {
            name: n("spine"),
            site: n("spine-1"),
            prefixes: ["10.200.0.0/24".parse().expect("prefix")].into(),
            proto: Proto::Tcp,
            ports: vec!["443".parse().expect("port")],
            shared_with: SharedWith::Orgs([n("leeds-trust")].into()),
            description: String::new(),
        };
        let services = [service];
        let mut f = flow(&trust, &spine, Proto::Tcp, Some(443));
        f.dst = Some("10.200.0.5".parse().expect("address"));
        assert_eq!(
            decide(&[], &services, &f).reason,
            Reason::Service(n("spine"))
        );
        // Another port, another address, another organisation: denied.
        let mut other = f.clone();
        other.port = Some(22);
        assert!(!decide(&[], &services, &other).allow);
        let mut outside = f.clone();
        outside.dst = Some("10.200.1.5".parse().expect("address"));
        assert!(!decide(&[], &services, &outside).allow);
        let mut stranger = f.clone();
        stranger.from = gp.clone();
        assert!(!decide(&[], &services, &stranger).allow);
        // A rule to the service opens it to the practice, still only as published.
        let rules = [rule(
            1,
            "org:gp-chapeltown",
            "service:spine",
            Proto::Any,
            &[],
        )];
        assert_eq!(decide(&rules, &services, &stranger).reason, Reason::Rule(1));
        let mut wrong_port = stranger.clone();
        wrong_port.port = Some(22);
        assert!(!decide(&rules, &services, &wrong_port).allow);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const ORGS: [&str; 3] = ["trust", "practice", "national"];
        const REGIONS: [&str; 2] = ["north", "south"];
        const SITES: [&str; 4] = ["s0", "s1", "s2", "s3"];

        fn proto() -> impl Strategy<Value = Proto> {
            prop::sample::select(vec![Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp])
        }

        fn ports() -> impl Strategy<Value = Vec<PortRange>> {
            prop::collection::vec((1u16..100, 0u16..20), 0..3).prop_map(|v| {
                v.into_iter()
                    .map(|(lo, w)| PortRange { lo, hi: lo + w })
                    .collect()
            })
        }

        fn source() -> impl Strategy<Value = Source> {
            prop_oneof![
                Just(Source::All),
                prop::sample::select(ORGS.to_vec()).prop_map(|o| Source::Org(n(o))),
                prop::sample::select(REGIONS.to_vec()).prop_map(|r| Source::Region(n(r))),
                prop::sample::select(SITES.to_vec()).prop_map(|s| Source::Site(n(s))),
            ]
        }

        fn target() -> impl Strategy<Value = Target> {
            prop_oneof![
                Just(Target::All),
                prop::sample::select(ORGS.to_vec()).prop_map(|o| Target::Org(n(o))),
                prop::sample::select(SITES.to_vec()).prop_map(|s| Target::Site(n(s))),
                prop::option::of(prop::sample::select(ORGS.to_vec())).prop_map(|o| {
                    Target::Service(ServiceRef {
                        org: o.map(n),
                        name: n("svc"),
                    })
                }),
            ]
        }

        fn rules() -> impl Strategy<Value = Vec<Rule>> {
            prop::collection::vec((source(), target(), proto(), ports()), 0..6).prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (from, to, proto, ports))| Rule {
                        id: i as u64 + 1,
                        from,
                        to,
                        proto: if ports.is_empty() { proto } else { Proto::Tcp },
                        ports,
                        description: String::new(),
                    })
                    .collect()
            })
        }

        fn party() -> impl Strategy<Value = Party> {
            (0..SITES.len(), 0..ORGS.len(), 0..REGIONS.len())
                .prop_map(|(s, o, r)| super::party(SITES[s], ORGS[o], REGIONS[r]))
        }

        fn flow() -> impl Strategy<Value = Flow> {
            (party(), party(), proto(), prop::option::of(1u16..130)).prop_map(
                |(from, to, proto, port)| Flow {
                    from,
                    to,
                    dst: None,
                    proto: if proto == Proto::Any {
                        Proto::Tcp
                    } else {
                        proto
                    },
                    port,
                },
            )
        }

        fn service() -> impl Strategy<Value = Vec<Service>> {
            prop::option::of((0..SITES.len(), proto(), ports(), any::<bool>())).prop_map(|s| {
                s.map(|(site, proto, ports, all)| Service {
                    name: n("svc"),
                    site: n(SITES[site]),
                    prefixes: BTreeSet::new(),
                    proto: if ports.is_empty() { proto } else { Proto::Udp },
                    ports,
                    shared_with: if all {
                        SharedWith::All
                    } else {
                        SharedWith::Orgs([n("practice")].into())
                    },
                    description: String::new(),
                })
                .into_iter()
                .collect()
            })
        }

        proptest! {
            /// What decided really allows the flow, adding a rule never
            /// takes an allow away, the rules' order does not matter, and
            /// without the deciding rule the flow is decided otherwise.
            #[test]
            fn decisions_are_explained_monotonic_and_order_free(
                rules in rules(),
                extra in (source(), target(), proto(), ports()),
                services in service(),
                flow in flow(),
            ) {
                let d = decide(&rules, &services, &flow);
                match &d.reason {
                    Reason::SameOrg => prop_assert_eq!(&flow.from.org, &flow.to.org),
                    Reason::Unfiltered => prop_assert!(false, "nothing decides unfiltered"),
                    Reason::Probe => {
                        prop_assert_eq!(flow.proto, Proto::Icmp);
                        prop_assert!(flow.dst.is_some_and(|d| flow.to.overlay.contains(&d)));
                    }
                    Reason::Service(_) => {
                        prop_assert!(services.iter().any(|s| s.site == flow.to.site
                            && s.covers(flow.dst, flow.proto, flow.port)
                            && s.shared_with.includes(&flow.from.org)));
                    }
                    Reason::Rule(id) => {
                        let r = rules.iter().find(|r| r.id == *id).expect("the rule exists");
                        prop_assert!(r.from.matches(&flow.from));
                        prop_assert!(r.covers(flow.proto, flow.port));
                        let without: Vec<Rule> =
                            rules.iter().filter(|x| x.id != *id).cloned().collect();
                        let again = decide(&without, &services, &flow);
                        prop_assert!(again.reason != d.reason);
                    }
                    Reason::Default => prop_assert!(!d.allow),
                }
                prop_assert_eq!(d.allow, d.reason != Reason::Default);
                let mut more = rules.clone();
                let (from, to, proto, ports) = extra;
                more.push(Rule {
                    id: 1000,
                    from,
                    to,
                    proto: if ports.is_empty() { proto } else { Proto::Tcp },
                    ports,
                    description: String::new(),
                });
                if d.allow {
                    prop_assert!(decide(&more, &services, &flow).allow);
                }
                let mut reversed = rules.clone();
                reversed.reverse();
                prop_assert_eq!(decide(&reversed, &services, &flow), d);
            }
        }
    }

    #[test]
    fn selectors_ports_and_sharing_read_and_write_as_text() {
        for s in ["all", "org:leeds-trust", "region:north", "site:gp-1"] {
            assert_eq!(s.parse::<Source>().expect("source").to_string(), s);
        }
        for s in ["all", "org:leeds-trust", "site:gp-1", "service:spine"] {
            assert_eq!(s.parse::<Target>().expect("target").to_string(), s);
        }
        assert!("region:north".parse::<Target>().is_err());
        assert!("service:x".parse::<Source>().is_err());
        assert!("org:Bad Name".parse::<Source>().is_err());
        let backwards: PortRange = "8080-80".parse().expect("reads");
        assert!(check_ports(Proto::Tcp, &[backwards]).is_err());
        assert!("0".parse::<PortRange>().is_err());
        assert_eq!(
            "8000-8080".parse::<PortRange>().expect("range").to_string(),
            "8000-8080"
        );
        let shared: SharedWith = serde_json::from_str("\"all\"").expect("all");
        assert_eq!(shared, SharedWith::All);
        let shared: SharedWith = serde_json::from_str("[\"a\",\"b\"]").expect("list");
        assert!(shared.includes(&n("b")) && !shared.includes(&n("c")));
        assert!(serde_json::from_str::<SharedWith>("\"everyone\"").is_err());
        assert!(check_ports(Proto::Icmp, &["1".parse().expect("port")]).is_err());
        assert_eq!(
            traffic_text(
                Proto::Tcp,
                &[
                    "443".parse().expect("port"),
                    "8000-8080".parse().expect("range")
                ]
            ),
            "tcp/443,8000-8080"
        );
    }
}
