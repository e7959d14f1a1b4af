//! End-to-end: a region with two hubs survives one of them. Real agents in
//! namespaces, steady 10 ms UDP streams between site LANs in both
//! directions, one to another region and one inside the region; the hub
//! that carries the sender dies (`kill -9` of its agent, or all its UDP
//! dropped by nftables inside its namespace, with the controller stopped
//! first), then comes back.
//!
//! Needs root. Without it each test says it was skipped; with CI=true a
//! skip is a failure.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wardnet_e2e::fleet::{wait_for, Fleet, SiteOpts};
use wardnet_e2e::require_root;
use wardnet_e2e::traffic::{Stream, StreamReport};

const LAN: SiteOpts = SiteOpts {
    lan: true,
    endpoint: false,
    org: None,
};

/// How long a failover may interrupt a stream.
const MAX_OUTAGE: Duration = Duration::from_secs(3);
/// How long a hub's return may interrupt a stream.
const MAX_FAILBACK_GAP: Duration = Duration::from_millis(100);
/// How long the hub's return is watched for flapping.
const WATCH: Duration = Duration::from_secs(120);

/// north: hubs hub-n1 and hub-n2, spokes gp-a..gp-d with LANs; south:
/// hub-s and gp-s with a LAN.
struct Pair {
    f: Fleet,
    /// The spoke whose hub dies.
    sender: String,
    /// Its hub, and the other one.
    hub: String,
    standby: String,
    /// A spoke of north on the other hub.
    neighbour: String,
}

fn active_hub(f: &Fleet, site: &str, region: &str) -> Result<String> {
    let st = f.agent_status(site)?;
    let groups = st["failover"].as_array().cloned().unwrap_or_default();
    groups
        .iter()
        .find(|g| g["region"] == region)
        .and_then(|g| g["active"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("{site} has no failover group for {region}: {st}"))
}

fn failovers(f: &Fleet, site: &str) -> Result<u64> {
    let st = f.agent_status(site)?;
    Ok(st["failover"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g["failovers_total"].as_u64()).sum())
        .unwrap_or(0))
}

fn pair() -> Result<Pair> {
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    f.region("south", false)?;
    f.add_site("hub-n1", "north", true, SiteOpts::default())?;
    f.add_site("hub-n2", "north", true, SiteOpts::default())?;
    f.add_site("hub-s", "south", true, SiteOpts::default())?;
    let spokes = ["gp-a", "gp-b", "gp-c", "gp-d"];
    for s in spokes {
        f.add_site(s, "north", false, LAN)?;
    }
    f.add_site("gp-s", "south", false, LAN)?;
    // Every agent has the final config (the hubs learnt of each other).
    wait_for(
        Duration::from_secs(20),
        "north's spokes to see both hubs",
        || {
            for s in spokes {
                if active_hub(&f, s, "north").is_err() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    let on: Vec<(String, String)> = spokes
        .iter()
        .map(|s| Ok((s.to_string(), active_hub(&f, s, "north")?)))
        .collect::<Result<_>>()?;
    let (sender, hub) = on[0].clone();
    let standby = if hub == "hub-n1" { "hub-n2" } else { "hub-n1" }.to_owned();
    let Some((neighbour, _)) = on.iter().find(|(_, h)| *h == standby).cloned() else {
        bail!("the spokes are not spread over both hubs: {on:?}");
    };
    Ok(Pair {
        f,
        sender,
        hub,
        standby,
        neighbour,
    })
}

/// The four streams: sender <-> gp-s (other region), sender <-> neighbour.
fn streams(p: &Pair, port: u16) -> Result<Vec<(String, Stream)>> {
    let f = &p.f;
    let lan = |s: &str| f.lan(s);
    let every = Duration::from_millis(10);
    let mut out = Vec::new();
    for (from, to, n) in [
        (p.sender.as_str(), "gp-s", 0),
        ("gp-s", p.sender.as_str(), 1),
        (p.sender.as_str(), p.neighbour.as_str(), 2),
        (p.neighbour.as_str(), p.sender.as_str(), 3),
    ] {
        let to_addr = SocketAddr::from((lan(to).host, port + n));
        let s = Stream::start(&lan(from).ns, &lan(to).ns, to_addr, every)?;
        out.push((format!("{from} -> {to}"), s));
    }
    for (name, s) in &out {
        s.wait_flowing(Duration::from_secs(20))
            .with_context(|| format!("stream {name}"))?;
    }
    Ok(out)
}

/// Streams on warm paths: a first set runs until every path carries
/// (handshakes done) and is thrown away.
fn warm_streams(p: &Pair, port: u16) -> Result<Vec<(String, Stream)>> {
    for (_, s) in streams(p, port)? {
        s.finish(Duration::from_millis(200));
    }
    streams(p, port)
}

fn finish(streams: Vec<(String, Stream)>) -> Vec<(String, StreamReport)> {
    streams
        .into_iter()
        .map(|(n, s)| (n, s.finish(Duration::from_millis(500))))
        .collect()
}

/// The failure: every stream resumes within `MAX_OUTAGE` and loses
/// nothing else (one gap at most, no loss after it).
fn check_failover(reports: &[(String, StreamReport)], what: &str) {
    for (name, r) in reports {
        eprintln!(
            "{what}: {name}: sent {} lost {} longest outage {:?} gaps {:?}",
            r.sent,
            r.lost(),
            r.longest_outage(),
            r.gaps
        );
    }
    for (name, r) in reports {
        assert!(r.sent > 500, "{name}: {r:?}");
        assert!(
            r.longest_outage() <= MAX_OUTAGE,
            "{what}: {name} was out for {:?}: {r:?}",
            r.longest_outage()
        );
        assert!(
            r.gaps.len() <= 1,
            "{what}: {name} lost packets after converging: {r:?}"
        );
        let in_gaps: u64 = r.gaps.iter().map(|g| g.1).sum();
        assert_eq!(
            r.lost(),
            in_gaps,
            "{what}: {name} lost its last packets: {r:?}"
        );
    }
}

/// The hub's return: no stream is interrupted for more than
/// `MAX_FAILBACK_GAP`.
fn check_failback(reports: &[(String, StreamReport)], what: &str) {
    for (name, r) in reports {
        eprintln!(
            "{what}: {name}: sent {} lost {} longest gap {:?} gaps {:?}",
            r.sent,
            r.lost(),
            r.longest_outage(),
            r.gaps
        );
    }
    for (name, r) in reports {
        assert!(r.sent > 5000, "{name}: {r:?}");
        assert!(
            r.longest_outage() <= MAX_FAILBACK_GAP,
            "{what}: {name} was interrupted for {:?}: {r:?}",
            r.longest_outage()
        );
    }
}

/// After the hub's return: watch for `WATCH`; the sender goes back to its
/// hub once, after its hold-down, and never away again.
fn watch_failback(p: &Pair) -> Result<Duration> {
    let start = Instant::now();
    let mut back_at = None;
    while start.elapsed() < WATCH {
        let now = active_hub(&p.f, &p.sender, "north")?;
        match (&back_at, now == p.hub) {
            (None, true) => back_at = Some(start.elapsed()),
            (Some(_), false) => bail!("{} left {} again: flapping", p.sender, p.hub),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let back = back_at.with_context(|| format!("{} never went back to {}", p.sender, p.hub))?;
    assert_eq!(failovers(&p.f, &p.sender)?, 1, "one failover, no flapping");
    Ok(back)
}

fn dump_logs(p: &Pair) {
    for s in [&p.sender, &p.hub, &p.standby, &p.neighbour, "hub-s", "gp-s"] {
        if let Some(a) = p.f.site(s).agent.as_ref() {
            eprintln!("--- agent {s} log (tail):");
            let log = a.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// How the hub dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// `kill -9` of its agent (its TUN device goes with it); back: the
    /// agent restarted.
    Kill,
    /// nftables drops all UDP in its namespace, both ways; back: the rule
    /// deleted.
    DropUdp,
}

/// The whole scenario: streams, the failure, convergence, the NOC's view
/// (controller up), the hub's return and two minutes of watching.
fn survive(failure: Failure, controller_up: bool) -> Result<()> {
    let mut p = pair()?;
    let what = format!(
        "{failure:?}, controller {}",
        if controller_up { "up" } else { "stopped" }
    );
    let result = (|| -> Result<()> {
        if !controller_up {
            p.f.stop_controller()?;
        }
        let s = warm_streams(&p, 7100)?;
        std::thread::sleep(Duration::from_secs(1));
        let hub = p.hub.clone();
        match failure {
            Failure::Kill => p.f.kill_agent(&hub)?,
            Failure::DropUdp => {
                let gw = &p.f.site(&hub).gw;
                gw.exec(&["nft", "add", "table", "inet", "wnfail"])?;
                for (chain, hook) in [("in", "input"), ("out", "output")] {
                    gw.exec(&[
                        "nft",
                        &format!(
                            "add chain inet wnfail {chain} {{ type filter hook {hook} priority 0 ; }}"
                        ),
                    ])?;
                    gw.exec(&[
                        "nft",
                        &format!("add rule inet wnfail {chain} meta l4proto udp drop"),
                    ])?;
                }
            }
        }
        let failed = Instant::now();
        for (name, st) in &s {
            st.wait_flowing(Duration::from_secs(10))
                .with_context(|| format!("{name} after the failure"))?;
        }
        eprintln!(
            "{what}: all streams flow again {:?} after the failure",
            failed.elapsed()
        );
        std::thread::sleep(Duration::from_secs(5));
        check_failover(&finish(s), &what);
        assert_eq!(active_hub(&p.f, &p.sender, "north")?, p.standby);
        let metrics =
            p.f.site(&p.sender)
                .gw
                .exec(&["curl", "-sf", "http://127.0.0.1:9586/metrics"])?;
        let active = format!(
            "wardnet_failover_active_hub{{region=\"north\",hub=\"{}\"}} 1",
            p.standby
        );
        assert!(metrics.contains(&active), "{metrics}");
        assert!(
            metrics.contains("wardnet_failovers_total{region=\"north\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("wardnet_failovers_last_hour{region=\"north\"} 1"),
            "{metrics}"
        );

        if controller_up {
            // The NOC sees the spoke on the standby hub, and every spoke of
            // the region carried by it.
            wait_for(
                Duration::from_secs(20),
                "the controller to see the moves",
                || {
                    let v = p.f.cli_json(&["sites", "show", &p.sender])?;
                    let r = p.f.cli_json(&["regions", "show", "north"])?;
                    let carried = |h: &str| {
                        r["hubs"]
                            .as_array()
                            .and_then(|hs| hs.iter().find(|x| x["name"] == h))
                            .and_then(|x| x["spokes_carried"].as_u64())
                    };
                    Ok((v["health"]["active_hub"] == p.standby.as_str()
                        && carried(&p.standby) == Some(4)
                        && carried(&hub) == Some(0))
                    .then_some(()))
                },
            )?;
        }

        // The hub comes back: traffic returns to it gradually, hitless.
        let s = warm_streams(&p, 7200)?;
        match failure {
            Failure::Kill => p.f.start_agent(&hub)?,
            Failure::DropUdp => {
                p.f.site(&hub)
                    .gw
                    .exec(&["nft", "delete", "table", "inet", "wnfail"])?;
            }
        }
        let back = watch_failback(&p)?;
        eprintln!(
            "{what}: {} back on {hub} {back:?} after its return",
            p.sender
        );
        check_failback(&finish(s), &format!("{what}, hub back"));
        Ok(())
    })();
    if result.is_err() {
        dump_logs(&p);
    }
    result
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_hub_pair_survives_kill_9_of_the_hub_carrying_the_sender() -> Result<()> {
    if !require_root("a_hub_pair_survives_kill_9_of_the_hub_carrying_the_sender") {
        return Ok(());
    }
    survive(Failure::Kill, true)
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_hub_pair_survives_its_hub_dropping_all_udp() -> Result<()> {
    if !require_root("a_hub_pair_survives_its_hub_dropping_all_udp") {
        return Ok(());
    }
    survive(Failure::DropUdp, true)
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn with_the_controller_stopped_a_hub_pair_survives_kill_9() -> Result<()> {
    if !require_root("with_the_controller_stopped_a_hub_pair_survives_kill_9") {
        return Ok(());
    }
    survive(Failure::Kill, false)
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn with_the_controller_stopped_a_hub_pair_survives_a_hub_dropping_all_udp() -> Result<()> {
    if !require_root("with_the_controller_stopped_a_hub_pair_survives_a_hub_dropping_all_udp") {
        return Ok(());
    }
    survive(Failure::DropUdp, false)
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn an_agentless_appliance_in_a_hub_pair_gets_one_hub_and_reaches_spokes_of_both() -> Result<()> {
    if !require_root("an_agentless_appliance_in_a_hub_pair_gets_one_hub_and_reaches_spokes_of_both")
    {
        return Ok(());
    }
    let mut p = pair()?;
    let path = p.f.add_appliance("appliance", "north")?;
    let result = (|| -> Result<()> {
        let conf = std::fs::read_to_string(&path)?;
        assert_eq!(conf.matches("[Peer]").count(), 1, "one hub:\n{conf}");
        // Its hub is whichever the controller assigned; a spoke on that hub
        // and one on the other are both reached (the other through the
        // appliance's hub), and both reach it.
        let hub_key = |h: &str| p.f.public_key(h);
        let mine = if conf.contains(&hub_key(&p.hub)?) {
            p.hub.clone()
        } else {
            p.standby.clone()
        };
        let (same, other) = if mine == p.hub {
            (p.sender.clone(), p.neighbour.clone())
        } else {
            (p.neighbour.clone(), p.sender.clone())
        };
        let appliance = p.f.overlay("appliance");
        for spoke in [&same, &other] {
            let host = p.f.lan(spoke).host;
            wait_for(
                Duration::from_secs(30),
                &format!("the appliance (on {mine}) to reach {spoke}'s LAN"),
                || Ok(Fleet::ping(&p.f.site("appliance").gw, host, 1).then_some(())),
            )?;
            assert!(
                Fleet::ping(&p.f.lan(spoke).ns, appliance, 2),
                "{spoke}'s LAN reaches the appliance"
            );
        }
        Ok(())
    })();
    if result.is_err() {
        eprintln!("appliance config:\n{:?}", std::fs::read_to_string(&path));
        dump_logs(&p);
    }
    p.f.appliance_down("appliance", &path);
    result
}
