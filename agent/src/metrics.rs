//! The agent's `/metrics` (Prometheus text format).
//!
//! Counters and gauges that the data plane and the probe scheduler already
//! keep (bytes, handshakes, drops, probes sent and lost) are not copied into
//! prometheus metric objects: a [`Collector`] builds their families from one
//! [`Scrape`] taken at scrape time, so they can never drift from their
//! source, and counters stay counters. Only the RTT histogram lives here,
//! because a histogram needs every sample.
//!
//! Peers are labelled by site name, region and role, never by key.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};
use wardnet_common::{Name, Role};

use crate::device_snapshot::DeviceCounters;

/// One peer at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeerScrape {
    pub name: Name,
    pub region: Name,
    pub role: Role,
    /// `None`: unknown (no handshake since the agent started); the gauge
    /// is then absent, so `wardnet_peer_up == 0` alerts only on real downs.
    pub up: Option<bool>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub probes_sent: u64,
    pub probes_lost: u64,
    /// Packets from the peer the policy filter dropped.
    pub policy_denied: u64,
}

/// Everything `/metrics` shows except the RTT histogram, taken at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Scrape {
    pub applied_revision: u64,
    pub controller_reachable: bool,
    /// Unix time of the last successful exchange with the controller.
    pub last_sync: Option<i64>,
    /// The controller refused this site's credential.
    pub revoked: bool,
    pub counters: DeviceCounters,
    pub peers: Vec<PeerScrape>,
    /// Failover groups: where their traffic goes and how often it moved.
    pub failover: Vec<crate::failover::GroupStatus>,
    /// What the policy filter admitted and denied.
    pub policy: crate::dataplane::enforce::PolicyCounters,
}

const PEER_LABELS: [&str; 3] = ["peer", "region", "role"];

/// Family name, help, type and variable labels of every snapshot family.
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "wardnet_peer_up",
        "1 when the peer had a handshake within WireGuard's reject window (180 s) and answered a probe within the last two probe intervals; 0 when down; absent while unknown (no handshake since the agent started).",
        MetricType::GAUGE,
        &PEER_LABELS,
    ),
    (
        "wardnet_peer_last_handshake_timestamp_seconds",
        "Unix time of the peer's last completed handshake (absent: never).",
        MetricType::GAUGE,
        &PEER_LABELS,
    ),
    (
        "wardnet_peer_receive_bytes_total",
        "Bytes received from the peer (WireGuard packets, as `wg show` counts them).",
        MetricType::COUNTER,
        &PEER_LABELS,
    ),
    (
        "wardnet_peer_transmit_bytes_total",
        "Bytes sent to the peer (WireGuard packets, as `wg show` counts them).",
        MetricType::COUNTER,
        &PEER_LABELS,
    ),
    (
        "wardnet_peer_probes_sent_total",
        "ICMP echo probes sent to the peer's overlay address through the tunnel.",
        MetricType::COUNTER,
        &PEER_LABELS,
    ),
    (
        "wardnet_peer_probes_lost_total",
        "Probes not answered within the probe timeout.",
        MetricType::COUNTER,
        &PEER_LABELS,
    ),
    (
        "wardnet_policy_denied_packets_total",
        "Packets out of the peer's tunnel that the policy between organisations dropped before the TUN device, by the rule that decided (`default`: nothing admits them).",
        MetricType::COUNTER,
        &["peer", "region", "role", "rule"],
    ),
    (
        "wardnet_policy_admitted_flows_total",
        "Flows into this site that the policy admitted, by what admitted them (`same_org`, `probe`, `service:NAME`, `rule:ID`); replies to flows this site started are not counted here.",
        MetricType::COUNTER,
        &["rule"],
    ),
    (
        "wardnet_policy_transit_denied_packets_total",
        "Packets out of a tunnel to an address that is neither this site's own (overlay addresses, LAN prefixes) nor, on a hub, another peer's: dropped whatever the sender's AllowedIPs say (also counted in wardnet_policy_denied_packets_total against the peer).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "wardnet_policy_reply_packets_total",
        "Packets passed as replies to flows this site started.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "wardnet_policy_enforced",
        "1 when the data plane filters what comes out of the tunnels (the controller sent the site a filter: every site, from a controller of this version).",
        MetricType::GAUGE,
        &[],
    ),
    (
        "wardnet_policy_tracked_flows",
        "Flows the policy filter remembers now (started here, and admitted).",
        MetricType::GAUGE,
        &[],
    ),
    (
        "wardnet_policy_flow_table_full_total",
        "Flows not remembered because the filter's flow table was full (each packet of such a flow is judged on its own).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "wardnet_failover_active_hub",
        "1 for the hub of a region's failover group that carries this site's traffic for that region now (one series per group).",
        MetricType::GAUGE,
        &["region", "hub"],
    ),
    (
        "wardnet_failover_hubs",
        "Hubs in the region's failover group.",
        MetricType::GAUGE,
        &["region"],
    ),
    (
        "wardnet_failovers_last_hour",
        "Times this site moved a region's traffic away from a hub that stopped answering, in the last hour (exact: what the hub hold-down and the flapping alert count).",
        MetricType::GAUGE,
        &["region"],
    ),
    (
        "wardnet_failovers_total",
        "Times this site moved a region's traffic away from a hub that stopped answering its probes (failbacks not counted).",
        MetricType::COUNTER,
        &["region"],
    ),
    (
        "wardnet_agent_config_revision",
        "Revision of the config the data plane runs (0: none yet).",
        MetricType::GAUGE,
        &[],
    ),
    (
        "wardnet_agent_controller_reachable",
        "1 when the last exchange with the controller succeeded.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "wardnet_agent_revoked",
        "1 when the controller refused this site's credential (revoked): the agent runs no tunnels until it is enrolled again.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "wardnet_agent_last_sync_timestamp_seconds",
        "Unix time of the last successful exchange with the controller (absent: none since start).",
        MetricType::GAUGE,
        &[],
    ),
    (
        "wardnet_agent_packets_dropped_total",
        "Packets the data plane dropped, by reason.",
        MetricType::COUNTER,
        &["reason"],
    ),
    (
        "wardnet_agent_handshakes_total",
        "WireGuard handshake messages by result: completed (a session), failed (a message from a known peer that did not verify or was stale), cookie_sent (answered with a cookie while under load).",
        MetricType::COUNTER,
        &["result"],
    ),
    (
        "wardnet_agent_build_info",
        "Build information; always 1.",
        MetricType::GAUGE,
        &["version"],
    ),
];

/// The metrics the agent keeps across scrapes.
pub(crate) struct Metrics {
    rtt: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let rtt = HistogramVec::new(
            HistogramOpts::new(
                "wardnet_peer_probe_rtt_seconds",
                "Round-trip time of answered probes through the tunnel.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &PEER_LABELS,
        )
        .expect("static metric definition is valid");
        Metrics { rtt }
    }

    pub(crate) fn observe_rtt(&self, peer: &Name, region: &Name, role: Role, rtt: Duration) {
        self.rtt
            .with_label_values(&[peer.as_str(), region.as_str(), role.as_str()])
            .observe(rtt.as_secs_f64());
    }

    /// Drop the histograms of peers that left the config.
    pub(crate) fn retain_peers(
        &self,
        keep: &BTreeSet<(Name, Name, Role)>,
        had: &BTreeSet<(Name, Name, Role)>,
    ) {
        for (n, r, role) in had.difference(keep) {
            let _ = self
                .rtt
                .remove_label_values(&[n.as_str(), r.as_str(), role.as_str()]);
        }
    }

    /// The text format of everything.
    pub(crate) fn render(&self, scrape: Scrape) -> String {
        let registry = Registry::new();
        registry
            .register(Box::new(self.rtt.clone()))
            .expect("one histogram in a fresh registry");
        registry
            .register(Box::new(ScrapeCollector::new(scrape)))
            .expect("family names are unique (FAMILIES and the histogram)");
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .expect("encoding gathered metrics into memory cannot fail");
        String::from_utf8(buf).expect("the Prometheus text format is UTF-8")
    }
}

/// Builds the snapshot families of one scrape.
struct ScrapeCollector {
    descs: Vec<Desc>,
    scrape: Scrape,
}

impl ScrapeCollector {
    fn new(scrape: Scrape) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, labels)| {
                Desc::new(
                    (*name).into(),
                    (*help).into(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
                .expect("static metric definition is valid")
            })
            .collect();
        ScrapeCollector { descs, scrape }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).into());
            l.set_value((*v).into());
            l
        })
        .collect()
}

fn sample(kind: MetricType, label_pairs: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(labels(label_pairs));
    if kind == MetricType::COUNTER {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    m
}

fn unix(t: SystemTime) -> Option<f64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = &self.scrape;
        let d = s.counters.drops;
        let mut out = Vec::new();
        for (name, help, kind, _) in FAMILIES {
            let kind = *kind;
            let mut samples: Vec<proto::Metric> = Vec::new();
            let mut peer_samples = |value: &dyn Fn(&PeerScrape) -> Option<f64>| {
                for p in &s.peers {
                    if let Some(v) = value(p) {
                        let l = [
                            ("peer", p.name.as_str()),
                            ("region", p.region.as_str()),
                            ("role", p.role.as_str()),
                        ];
                        samples.push(sample(kind, &l, v));
                    }
                }
            };
            match *name {
                "wardnet_peer_up" => peer_samples(&|p| p.up.map(|up| f64::from(u8::from(up)))),
                "wardnet_peer_last_handshake_timestamp_seconds" => {
                    peer_samples(&|p| p.last_handshake.and_then(unix))
                }
                "wardnet_peer_receive_bytes_total" => peer_samples(&|p| Some(p.rx_bytes as f64)),
                "wardnet_peer_transmit_bytes_total" => peer_samples(&|p| Some(p.tx_bytes as f64)),
                "wardnet_peer_probes_sent_total" => peer_samples(&|p| Some(p.probes_sent as f64)),
                "wardnet_peer_probes_lost_total" => peer_samples(&|p| Some(p.probes_lost as f64)),
                "wardnet_policy_denied_packets_total"
                    if s.policy.enforcing || s.peers.iter().any(|p| p.policy_denied > 0) =>
                {
                    for p in &s.peers {
                        let l = [
                            ("peer", p.name.as_str()),
                            ("region", p.region.as_str()),
                            ("role", p.role.as_str()),
                            ("rule", "default"),
                        ];
                        samples.push(sample(kind, &l, p.policy_denied as f64));
                    }
                }
                "wardnet_policy_admitted_flows_total" => {
                    for (rule, v) in &s.policy.admitted {
                        samples.push(sample(kind, &[("rule", rule.as_str())], *v as f64));
                    }
                }
                "wardnet_policy_transit_denied_packets_total" if s.policy.enforcing => {
                    samples.push(sample(kind, &[], s.policy.transit as f64))
                }
                "wardnet_policy_reply_packets_total" => {
                    samples.push(sample(kind, &[], s.policy.replies as f64))
                }
                "wardnet_policy_enforced" => {
                    samples.push(sample(kind, &[], f64::from(u8::from(s.policy.enforcing))))
                }
                "wardnet_policy_tracked_flows" => {
                    samples.push(sample(kind, &[], s.policy.tracked as f64))
                }
                "wardnet_policy_flow_table_full_total" => {
                    samples.push(sample(kind, &[], s.policy.overflow as f64))
                }
                "wardnet_failover_active_hub" => {
                    for g in &s.failover {
                        let l = [("region", g.region.as_str()), ("hub", g.active.as_str())];
                        samples.push(sample(kind, &l, 1.0));
                    }
                }
                "wardnet_failover_hubs" => {
                    for g in &s.failover {
                        let l = [("region", g.region.as_str())];
                        samples.push(sample(kind, &l, g.hubs.len() as f64));
                    }
                }
                "wardnet_failovers_last_hour" => {
                    for g in &s.failover {
                        let l = [("region", g.region.as_str())];
                        samples.push(sample(kind, &l, g.failovers_last_hour as f64));
                    }
                }
                "wardnet_failovers_total" => {
                    for g in &s.failover {
                        let l = [("region", g.region.as_str())];
                        samples.push(sample(kind, &l, g.failovers_total as f64));
                    }
                }
                "wardnet_agent_config_revision" => {
                    samples.push(sample(kind, &[], s.applied_revision as f64))
                }
                "wardnet_agent_controller_reachable" => samples.push(sample(
                    kind,
                    &[],
                    f64::from(u8::from(s.controller_reachable)),
                )),
                "wardnet_agent_revoked" => {
                    samples.push(sample(kind, &[], f64::from(u8::from(s.revoked))))
                }
                "wardnet_agent_last_sync_timestamp_seconds" => {
                    if let Some(t) = s.last_sync {
                        samples.push(sample(kind, &[], t as f64));
                    }
                }
                "wardnet_agent_packets_dropped_total" => {
                    for (reason, v) in [
                        ("no_route", d.no_route),
                        ("no_endpoint", d.no_endpoint),
                        ("malformed", d.malformed),
                        ("decrypt", d.decrypt),
                        ("unknown_peer", d.unknown_peer),
                        ("source_not_allowed", d.source_not_allowed),
                        ("handshake_limited", d.handshake_limited),
                        ("queue_delay", d.queue_delay),
                    ] {
                        samples.push(sample(kind, &[("reason", reason)], v as f64));
                    }
                }
                "wardnet_agent_handshakes_total" => {
                    for (result, v) in [
                        ("completed", s.counters.handshakes_completed),
                        ("failed", s.counters.handshakes_failed),
                        ("cookie_sent", s.counters.cookie_replies),
                    ] {
                        samples.push(sample(kind, &[("result", result)], v as f64));
                    }
                }
                "wardnet_agent_build_info" => {
                    samples.push(sample(kind, &[("version", env!("CARGO_PKG_VERSION"))], 1.0))
                }
                _ => {}
            }
            if samples.is_empty() {
                continue;
            }
            let mut f = MetricFamily::default();
            f.set_name((*name).into());
            f.set_help((*help).into());
            f.set_field_type(kind);
            f.set_metric(samples);
            out.push(f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_snapshot::DropCounters;

    fn name(s: &str) -> Name {
        s.parse().expect("valid name")
    }

    fn scrape() -> Scrape {
        Scrape {
            applied_revision: 7,
            controller_reachable: true,
            revoked: false,
            failover: Vec::new(),
            last_sync: Some(1_700_000_000),
            policy: crate::dataplane::enforce::PolicyCounters {
                enforcing: true,
                admitted: [("rule:4".to_owned(), 2)].into(),
                denied: 3,
                transit: 1,
                replies: 9,
                overflow: 0,
                tracked: 5,
            },
            counters: DeviceCounters {
                handshakes_completed: 3,
                handshakes_failed: 1,
                cookie_replies: 4,
                drops: DropCounters {
                    no_route: 5,
                    decrypt: 2,
                    ..DropCounters::default()
                },
            },
            peers: vec![
                PeerScrape {
                    name: name("hub-north"),
                    region: name("north"),
                    role: Role::Hub,
                    up: Some(true),
                    last_handshake: Some(
                        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100),
                    ),
                    rx_bytes: 1234,
                    tx_bytes: 5678,
                    probes_sent: 10,
                    probes_lost: 1,
                    policy_denied: 3,
                },
                PeerScrape {
                    name: name("gp-a"),
                    region: name("north"),
                    role: Role::Spoke,
                    up: Some(false),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    probes_sent: 0,
                    probes_lost: 0,
                    policy_denied: 0,
                },
                PeerScrape {
                    name: name("gp-b"),
                    region: name("north"),
                    role: Role::Spoke,
                    up: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    probes_sent: 0,
                    probes_lost: 0,
                    policy_denied: 0,
                },
            ],
        }
    }

    #[test]
    fn text_format() {
        let m = Metrics::new();
        m.observe_rtt(
            &name("hub-north"),
            &name("north"),
            Role::Hub,
            Duration::from_millis(3),
        );
        let t = m.render(scrape());
        for line in [
            "# TYPE wardnet_peer_receive_bytes_total counter",
            "wardnet_peer_receive_bytes_total{peer=\"hub-north\",region=\"north\",role=\"hub\"} 1234",
            "wardnet_policy_denied_packets_total{peer=\"hub-north\",region=\"north\",role=\"hub\",rule=\"default\"} 3",
            "wardnet_policy_admitted_flows_total{rule=\"rule:4\"} 2",
            "wardnet_policy_enforced 1",
            "wardnet_policy_reply_packets_total 9",
            "wardnet_policy_tracked_flows 5",
            "wardnet_peer_transmit_bytes_total{peer=\"hub-north\",region=\"north\",role=\"hub\"} 5678",
            "wardnet_peer_up{peer=\"hub-north\",region=\"north\",role=\"hub\"} 1",
            "wardnet_peer_up{peer=\"gp-a\",region=\"north\",role=\"spoke\"} 0",
            "wardnet_peer_last_handshake_timestamp_seconds{peer=\"hub-north\",region=\"north\",role=\"hub\"} 1700000100",
            "wardnet_peer_probes_sent_total{peer=\"hub-north\",region=\"north\",role=\"hub\"} 10",
            "wardnet_peer_probes_lost_total{peer=\"hub-north\",region=\"north\",role=\"hub\"} 1",
            "# TYPE wardnet_peer_probe_rtt_seconds histogram",
            "wardnet_peer_probe_rtt_seconds_bucket{peer=\"hub-north\",region=\"north\",role=\"hub\",le=\"0.005\"} 1",
            "wardnet_peer_probe_rtt_seconds_count{peer=\"hub-north\",region=\"north\",role=\"hub\"} 1",
            "wardnet_agent_config_revision 7",
            "wardnet_agent_controller_reachable 1",
            "wardnet_agent_revoked 0",
            "wardnet_agent_last_sync_timestamp_seconds 1700000000",
            "# TYPE wardnet_agent_packets_dropped_total counter",
            "wardnet_agent_packets_dropped_total{reason=\"no_route\"} 5",
            "wardnet_agent_packets_dropped_total{reason=\"decrypt\"} 2",
            "wardnet_agent_packets_dropped_total{reason=\"unknown_peer\"} 0",
            "wardnet_agent_handshakes_total{result=\"completed\"} 3",
            "wardnet_agent_handshakes_total{result=\"failed\"} 1",
            "wardnet_agent_handshakes_total{result=\"cookie_sent\"} 4",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
        assert!(t.contains("wardnet_agent_build_info{version=\""));
        // A peer that never shook hands has no timestamp rather than 0.
        assert!(!t.contains("wardnet_peer_last_handshake_timestamp_seconds{peer=\"gp-a\""));
        // Unknown is neither 1 nor 0: no alert fires on it.
        assert!(!t.contains("wardnet_peer_up{peer=\"gp-b\""));
        assert!(t.contains("wardnet_peer_receive_bytes_total{peer=\"gp-b\""));
        // Never a key in a label.
        assert!(!t.contains("public_key"));
    }

    #[test]
    fn removed_peers_lose_their_histogram() {
        let m = Metrics::new();
        let hub = (name("hub-north"), name("north"), Role::Hub);
        m.observe_rtt(&hub.0, &hub.1, hub.2, Duration::from_millis(3));
        let had: BTreeSet<_> = [hub].into_iter().collect();
        m.retain_peers(&BTreeSet::new(), &had);
        assert!(!m
            .render(Scrape::default())
            .contains("wardnet_peer_probe_rtt_seconds_count"));
    }

    #[test]
    fn empty_agent_still_renders() {
        let t = Metrics::new().render(Scrape::default());
        assert!(t.contains("wardnet_agent_config_revision 0"));
        assert!(!t.contains("wardnet_agent_last_sync_timestamp_seconds "));
    }
}
