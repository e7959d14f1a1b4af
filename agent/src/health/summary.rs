//! The small health summary the agent sends the controller with each sync:
//! peers up/total and the worst link, never per-packet data.

use std::time::Duration;

use wardnet_common::wire::HealthSummary;
use wardnet_common::Name;

use super::LinkState;

/// One peer's health as the summary needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerHealth {
    pub name: Name,
    pub state: LinkState,
    pub rtt: Option<Duration>,
    pub loss_ratio: Option<f64>,
}

/// Peers up/unknown/total; the worst RTT and the worst loss over all peers;
/// the worst peer: a down peer first (by name), else the one with the
/// highest loss, then the highest RTT. An unknown peer (no handshake since
/// the agent started) is neither up nor down, and never the worst.
pub fn summarize(peers: &[PeerHealth], metrics_address: Option<String>) -> HealthSummary {
    let worst_rtt = peers.iter().filter_map(|p| p.rtt).max();
    let worst_loss = peers
        .iter()
        .filter_map(|p| p.loss_ratio)
        .fold(None, |acc: Option<f64>, l| {
            Some(acc.map_or(l, |a| a.max(l)))
        });
    let worst_peer = peers
        .iter()
        .filter(|p| p.state == LinkState::Down)
        .map(|p| &p.name)
        .min()
        .or_else(|| {
            peers
                .iter()
                .filter(|p| p.loss_ratio.is_some_and(|l| l > 0.0) || p.rtt.is_some())
                .max_by(|a, b| {
                    let la = a.loss_ratio.unwrap_or(0.0);
                    let lb = b.loss_ratio.unwrap_or(0.0);
                    la.total_cmp(&lb)
                        .then(a.rtt.cmp(&b.rtt))
                        // Deterministic on ties: the smaller name wins.
                        .then(b.name.cmp(&a.name))
                })
                .map(|p| &p.name)
        })
        .cloned();
    let count = |s: LinkState| peers.iter().filter(|p| p.state == s).count() as u32;
    HealthSummary {
        peers_up: count(LinkState::Up),
        peers_unknown: count(LinkState::Unknown),
        peers_total: peers.len() as u32,
        worst_rtt_seconds: worst_rtt.map(|d| d.as_secs_f64()),
        worst_loss_ratio: worst_loss,
        worst_peer,
        metrics_address,
        ..HealthSummary::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        s.parse().expect("valid name")
    }

    fn ph(n: &str, up: bool, rtt_ms: Option<u64>, loss: Option<f64>) -> PeerHealth {
        PeerHealth {
            name: name(n),
            state: if up { LinkState::Up } else { LinkState::Down },
            rtt: rtt_ms.map(Duration::from_millis),
            loss_ratio: loss,
        }
    }

    #[test]
    fn empty() {
        let s = summarize(&[], None);
        assert_eq!(s, HealthSummary::default());
    }

    #[test]
    fn down_peer_is_the_worst() {
        let s = summarize(
            &[
                ph("a", true, Some(80), Some(0.5)),
                ph("c", false, None, Some(1.0)),
                ph("b", false, Some(5), None),
            ],
            Some("198.51.100.1:9586".into()),
        );
        assert_eq!(s.peers_up, 1);
        assert_eq!(s.peers_total, 3);
        assert_eq!(s.worst_peer, Some(name("b")));
        assert_eq!(s.worst_rtt_seconds, Some(0.08));
        assert_eq!(s.worst_loss_ratio, Some(1.0));
        assert_eq!(s.metrics_address.as_deref(), Some("198.51.100.1:9586"));
    }

    #[test]
    fn all_up_worst_by_loss_then_rtt() {
        let s = summarize(
            &[
                ph("a", true, Some(80), Some(0.0)),
                ph("b", true, Some(10), Some(0.2)),
                ph("c", true, Some(90), Some(0.0)),
            ],
            None,
        );
        assert_eq!(s.peers_up, 3);
        assert_eq!(s.worst_peer, Some(name("b")));
        let s = summarize(
            &[
                ph("a", true, Some(80), Some(0.0)),
                ph("c", true, Some(90), Some(0.0)),
            ],
            None,
        );
        assert_eq!(s.worst_peer, Some(name("c")));
        assert_eq!(s.worst_loss_ratio, Some(0.0));
    }

    #[test]
    fn unknown_peers_are_counted_apart_and_never_the_worst() {
        let mut never = ph("a", false, None, None);
        never.state = LinkState::Unknown;
        let s = summarize(&[never, ph("b", true, Some(3), Some(0.0))], None);
        assert_eq!((s.peers_up, s.peers_unknown, s.peers_total), (1, 1, 2));
        assert_eq!(s.worst_peer, Some(name("b")));
    }

    #[test]
    fn no_probe_data_no_worst_link() {
        let s = summarize(&[ph("a", true, None, None)], None);
        assert_eq!(s.worst_peer, None);
        assert_eq!(s.worst_rtt_seconds, None);
        assert_eq!(s.worst_loss_ratio, None);
    }
}
