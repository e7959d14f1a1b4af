//! End to end: the policy between organisations, enforced by real agents.
//!
//! Region north (hub-n, in the default organisation) with a trust of two
//! sites (lth-a with a LAN, lth-b), a GP practice (gp-1) and an ambulance
//! trust (amb-1), all spokes: traffic between spokes goes through the hub.
//! The trust shares a service (UDP 5000-5001 on lth-a's LAN) with the
//! practice. Checked: traffic within the trust passes; the practice
//! reaches the service and its replies come back (the practice admits
//! nothing from the trust: they pass as replies); the practice is denied
//! another port, and the ambulance trust is denied lth-b through the hub,
//! both dropped at the destination agent and counted there; a rule added
//! and removed takes effect within 2 s, while a stream the policy allows
//! throughout loses nothing.
//!
//! Needs root (namespaces, TUN) and `curl`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wardnet_e2e::fleet::{wait_for, Fleet, SiteOpts};
use wardnet_e2e::require_root;
use wardnet_e2e::traffic::{udp_round_trip, Echo, Stream};

/// Whether a UDP round trip from `from`'s gateway to `to` works within
/// `timeout`.
fn reaches(f: &Fleet, from: &str, to: SocketAddr, timeout: Duration) -> bool {
    udp_round_trip(&f.site(from).gw, to, b"policy".to_vec(), timeout).is_ok()
}

/// The value of one sample of `site`'s /metrics (0 when absent).
fn metric(f: &Fleet, site: &str, sample: &str) -> Result<f64> {
    let text = f
        .site(site)
        .gw
        .exec(&["curl", "-sf", "http://127.0.0.1:9586/metrics"])?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// How long until `reaches` answers `want`, tried every 50 ms for at most
/// `limit`.
fn until_reach(
    f: &Fleet,
    from: &str,
    to: SocketAddr,
    want: bool,
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if reaches(f, from, to, Duration::from_millis(150)) == want {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{from} -> {to}: still {} after {limit:?}",
        if want { "denied" } else { "allowed" }
    )
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn organisations_are_kept_apart_by_the_agents_and_rule_changes_apply_within_two_seconds(
) -> Result<()> {
    let name =
        "organisations_are_kept_apart_by_the_agents_and_rule_changes_apply_within_two_seconds";
    if !require_root(name) {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    for org in ["leeds-trust", "gp-chapeltown", "yas"] {
        f.cli(&["orgs", "add", org])?;
    }
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    let spoke = |org, lan| SiteOpts {
        lan,
        endpoint: false,
        org: Some(org),
    };
    f.add_site("lth-a", "north", false, spoke("leeds-trust", true))?;
    f.add_site("lth-b", "north", false, spoke("leeds-trust", false))?;
    f.add_site("gp-1", "north", false, spoke("gp-chapeltown", false))?;
    f.add_site("amb-1", "north", false, spoke("yas", false))?;

    let lan = f.lan("lth-a");
    let service = SocketAddr::from((lan.host, 5000));
    let other_port = SocketAddr::from((lan.host, 6000));
    let lan_prefix = lan.prefix.to_string();
    let _pacs = Echo::start(&lan.ns, service)?;
    let _other = Echo::start(&lan.ns, other_port)?;
    let lth_b: Ipv4Addr = f.overlay("lth-b");
    let ambulance_port = SocketAddr::from((lth_b, 7000));
    let _amb = Echo::start(&f.site("lth-b").gw, ambulance_port)?;

    f.cli(&[
        "policy",
        "add-service",
        "pacs",
        "--site",
        "lth-a",
        "--prefix",
        &lan_prefix,
        "--proto",
        "udp",
        "--port",
        "5000-5001",
        "--shared-with",
        "gp-chapeltown",
    ])?;
    // Every filtered site has its filter before anything is judged.
    for s in ["lth-a", "lth-b", "gp-1", "amb-1"] {
        wait_for(Duration::from_secs(10), &format!("{s}'s filter"), || {
            Ok((metric(&f, s, "wardnet_policy_enforced")? == 1.0).then_some(()))
        })?;
    }
    let served_revision = f.cli_json(&["sites", "show", "lth-a"])?["revision"]
        .as_u64()
        .context("revision")?;
    wait_for(Duration::from_secs(10), "lth-a applies the service", || {
        Ok(
            (metric(&f, "lth-a", "wardnet_agent_config_revision")? >= served_revision as f64)
                .then_some(()),
        )
    })?;

    // Within the trust: allowed, through the hub.
    assert!(
        reaches(&f, "lth-b", service, Duration::from_secs(5)),
        "lth-b reaches its own trust's LAN"
    );
    // The practice reaches the shared service; the answers come back
    // although the practice admits nothing from the trust (replies).
    assert!(
        reaches(&f, "gp-1", service, Duration::from_secs(5)),
        "the practice reaches the shared service"
    );
    assert!(metric(&f, "gp-1", "wardnet_policy_reply_packets_total")? >= 1.0);
    assert!(
        metric(
            &f,
            "lth-a",
            "wardnet_policy_admitted_flows_total{rule=\"service:pacs\"}"
        )? >= 1.0
    );

    // Not shared: dropped at lth-a and counted against the peer it came
    // through (the hub).
    let denied_at_a = "wardnet_policy_denied_packets_total{peer=\"hub-n\",region=\"north\",role=\"hub\",rule=\"default\"}";
    let before = metric(&f, "lth-a", denied_at_a)?;
    assert!(
        !reaches(&f, "gp-1", other_port, Duration::from_secs(2)),
        "another port of the trust's LAN is not shared"
    );
    assert!(metric(&f, "lth-a", denied_at_a)? > before);

    // The ambulance trust sends to lth-b through its hub: the hub forwards
    // it, lth-b drops it.
    let denied_at_b = denied_at_a;
    let before = metric(&f, "lth-b", denied_at_b)?;
    assert!(
        !reaches(&f, "amb-1", ambulance_port, Duration::from_secs(2)),
        "nothing admits the ambulance trust into lth-b"
    );
    assert!(
        metric(&f, "lth-b", denied_at_b)? > before,
        "dropped at the destination"
    );

    // A stream the policy allows throughout (the shared service), while a
    // rule into the whole trust is added and removed: both of the trust's
    // filters change twice under it.
    let stream_to = SocketAddr::from((lan.host, 5001));
    let stream = Stream::start(
        &f.site("gp-1").gw,
        &f.lan("lth-a").ns,
        stream_to,
        Duration::from_millis(5),
    )?;
    stream.wait_flowing(Duration::from_secs(5))?;

    let rule = f.cli_json(&[
        "policy",
        "add-rule",
        "--from",
        "org:yas",
        "--to",
        "org:leeds-trust",
        "--proto",
        "udp",
        "--port",
        "7000",
    ])?;
    let id = rule["rule"]["id"].as_u64().context("rule id")?;
    let opened = until_reach(&f, "amb-1", ambulance_port, true, Duration::from_secs(5))?;
    eprintln!("rule {id} added: amb-1 reaches lth-b after {opened:?}");
    assert!(
        metric(
            &f,
            "lth-b",
            &format!("wardnet_policy_admitted_flows_total{{rule=\"rule:{id}\"}}")
        )? >= 1.0
    );

    f.cli(&["policy", "delete-rule", &id.to_string()])?;
    let closed = until_reach(&f, "amb-1", ambulance_port, false, Duration::from_secs(5))?;
    eprintln!("rule {id} deleted: amb-1 denied again after {closed:?}");
    for _ in 0..3 {
        assert!(!reaches(
            &f,
            "amb-1",
            ambulance_port,
            Duration::from_millis(300)
        ));
    }

    let report = stream.finish(Duration::from_millis(500));
    eprintln!(
        "stream through both changes: sent {}, received {}, lost {}",
        report.sent,
        report.received,
        report.lost()
    );
    assert!(report.sent > 100, "the stream ran: {report:?}");
    assert_eq!(
        report.lost(),
        0,
        "the allowed stream lost packets: {report:?}"
    );

    assert!(
        opened < Duration::from_secs(2),
        "the rule took {opened:?} to take effect"
    );
    assert!(
        closed < Duration::from_secs(2),
        "the deletion took {closed:?} to take effect"
    );
    Ok(())
}

/// A tunnel delivers only what the site owns. An appliance (its own key
/// in its own WireGuard, as a compromised site would run it) widens its
/// hub peer's AllowedIPs to a LAN on the hub's gateway that the hub never
/// listed (100.99.0.0/24) and pings the gateway there: the hub's agent
/// drops it and counts it as transit. What the hub forwards to the peer
/// that owns the destination (gp-a's LAN) and the hub's own overlay
/// address still answer.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_tunnel_delivers_only_what_the_site_owns_whatever_the_senders_allowed_ips() -> Result<()> {
    let name = "a_tunnel_delivers_only_what_the_site_owns_whatever_the_senders_allowed_ips";
    if !require_root(name) {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    f.add_site(
        "gp-a",
        "north",
        false,
        SiteOpts {
            lan: true,
            endpoint: false,
            org: None,
        },
    )?;
    let path = f.add_appliance("mallory", "north")?;
    let result = (|| -> Result<()> {
        let hub = f.site("hub-n");
        // An address of the hub's gateway outside everything it listed
        // (on its loopback: these kernels have no dummy links).
        hub.gw.ip(&["addr", "add", "100.99.0.1/32", "dev", "lo"])?;
        let hub_key = f.public_key("hub-n")?;
        let mallory = f.site("mallory");
        let lan_host = f.lan("gp-a").host;
        wait_for(
            Duration::from_secs(30),
            "mallory to reach gp-a's LAN",
            || Ok(Fleet::ping(&mallory.gw, lan_host, 1).then_some(())),
        )?;
        let allowed = mallory
            .gw
            .exec(&["wg", "show", &mallory.iface, "allowed-ips"])?;
        let mut wide: Vec<String> = allowed
            .lines()
            .find(|l| l.starts_with(&hub_key))
            .context("mallory's hub peer")?
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect();
        wide.push("100.99.0.0/24".into());
        mallory.gw.exec(&[
            "wg",
            "set",
            &mallory.iface,
            "peer",
            &hub_key,
            "allowed-ips",
            &wide.join(","),
        ])?;
        mallory
            .gw
            .ip(&["route", "add", "100.99.0.0/24", "dev", &mallory.iface])?;
        let transit = "wardnet_policy_transit_denied_packets_total";
        let before = metric(&f, "hub-n", transit)?;
        assert!(
            !Fleet::ping(&mallory.gw, "100.99.0.1".parse()?, 3),
            "the hub's unlisted LAN answered through the overlay"
        );
        let after = metric(&f, "hub-n", transit)?;
        assert!(after >= before + 3.0, "counted: {before} -> {after}");
        // Still there: what the hub forwards to its owner, and the hub.
        assert!(Fleet::ping(&mallory.gw, lan_host, 2), "gp-a's LAN");
        assert!(
            Fleet::ping(&mallory.gw, f.overlay("hub-n"), 2),
            "the hub's overlay address"
        );
        Ok(())
    })();
    f.appliance_down("mallory", &path);
    result
}

/// Whether `from`'s gateway fetches `url` within 2 s.
fn fetches(f: &Fleet, from: &str, url: &str) -> bool {
    f.site(from)
        .gw
        .exec(&["curl", "-sf", "--max-time", "2", "-o", "/dev/null", url])
        .is_ok()
}

/// Hubs are infrastructure, and the NOC's monitoring is one rule: a GP
/// site (its own organisation) pings the hub (a probe) but reaches
/// neither the hub's metrics nor anything else on it; the NOC's site
/// reaches every agent's metrics once the NOC adds one rule `--to all`,
/// and the GP site still does not; the hub counts what it dropped.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn hubs_admit_probes_and_the_nocs_one_rule_to_all_sites() -> Result<()> {
    let name = "hubs_admit_probes_and_the_nocs_one_rule_to_all_sites";
    if !require_root(name) {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    for org in ["gp-chapeltown", "noc"] {
        f.cli(&["orgs", "add", org])?;
    }
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    let spoke = |org| SiteOpts {
        lan: false,
        endpoint: false,
        org: Some(org),
    };
    f.add_site("gp-1", "north", false, spoke("gp-chapeltown"))?;
    f.add_site("noc-1", "north", false, spoke("noc"))?;
    for s in ["hub-n", "gp-1", "noc-1"] {
        wait_for(Duration::from_secs(10), &format!("{s}'s filter"), || {
            Ok((metric(&f, s, "wardnet_policy_enforced")? == 1.0).then_some(()))
        })?;
    }
    let hub_metrics = format!("http://{}:9586/metrics", f.overlay("hub-n"));
    let gp_metrics = format!("http://{}:9586/metrics", f.overlay("gp-1"));

    assert!(
        Fleet::ping(&f.site("gp-1").gw, f.overlay("hub-n"), 2),
        "a probe"
    );
    let denied = "wardnet_policy_denied_packets_total{peer=\"gp-1\",region=\"north\",role=\"spoke\",rule=\"default\"}";
    let before = metric(&f, "hub-n", denied)?;
    assert!(
        !fetches(&f, "gp-1", &hub_metrics),
        "a GP site reads the hub's metrics"
    );
    assert!(
        metric(&f, "hub-n", denied)? > before,
        "dropped at the hub, counted"
    );
    assert!(!fetches(&f, "noc-1", &hub_metrics), "no rule yet");

    f.monitoring_rule("org:noc")?;
    wait_for(
        Duration::from_secs(10),
        "the NOC to read the hub's metrics",
        || Ok(fetches(&f, "noc-1", &hub_metrics).then_some(())),
    )?;
    wait_for(
        Duration::from_secs(10),
        "the NOC to read gp-1's metrics",
        || Ok(fetches(&f, "noc-1", &gp_metrics).then_some(())),
    )?;
    assert!(
        !fetches(&f, "gp-1", &hub_metrics),
        "the rule is the NOC's only"
    );
    Ok(())
}

/// `default` is filtered like any other organisation, and in a mesh
/// region only sites the policy connects get a tunnel to each other: two
/// `default` spokes reach each other directly; a practice whose overlay
/// block the NOC delegated gets its address there, has no tunnel to them
/// and reaches neither (dropped at the destination, counted) until a rule
/// from its organisation admits it, which also brings the tunnel.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn the_default_organisation_is_filtered_and_mesh_tunnels_follow_the_policy() -> Result<()> {
    let name = "the_default_organisation_is_filtered_and_mesh_tunnels_follow_the_policy";
    if !require_root(name) {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("south", true)?;
    f.cli(&["orgs", "add", "gp-chapeltown"])?;
    // Inside south's block (the first region: 100.64.0.0/20).
    f.cli(&[
        "orgs",
        "delegate",
        "gp-chapeltown",
        "100.64.8.0/24",
        "100.100.50.0/24",
    ])?;
    let in_block = |a: Ipv4Addr| a.octets()[..3] == [100, 64, 8];
    f.add_site("hub-s", "south", true, SiteOpts::default())?;
    let spoke = |org, lan| SiteOpts {
        lan,
        endpoint: true,
        org,
    };
    f.add_site("d-1", "south", false, spoke(None, true))?;
    f.add_site("d-2", "south", false, spoke(None, false))?;
    f.add_site("g-1", "south", false, spoke(Some("gp-chapeltown"), false))?;
    assert!(
        in_block(f.overlay("g-1")),
        "g-1's address {} is in its organisation's block",
        f.overlay("g-1")
    );
    assert!(!in_block(f.overlay("d-1")), "a default site is not");
    // The practice's own admins claim LAN space only inside what the NOC
    // delegated to it.
    let practice = f.scoped_token("gp-chapeltown")?;
    let squat = f.cli_as(
        &practice,
        &["sites", "update", "g-1", "--lan", "100.100.128.0/17"],
    );
    assert!(
        squat
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("outside the LAN space delegated")),
        "a claim outside the delegation: {squat:?}"
    );
    f.cli_as(
        &practice,
        &["sites", "update", "g-1", "--lan", "100.100.50.0/24"],
    )?;
    // Every site has applied what the controller serves it.
    for s in ["d-1", "d-2", "g-1"] {
        let served = f.cli_json(&["sites", "show", s])?["revision"]
            .as_u64()
            .context("revision")?;
        wait_for(Duration::from_secs(10), &format!("{s}'s config"), || {
            let applied = metric(&f, s, "wardnet_agent_config_revision")?;
            let enforced = metric(&f, s, "wardnet_policy_enforced")?;
            Ok((applied >= served as f64 && enforced == 1.0).then_some(()))
        })?;
    }
    let lan = f.lan("d-1");
    let service = SocketAddr::from((lan.host, 5000));
    let _echo = Echo::start(&lan.ns, service)?;
    let keys: Vec<String> = ["d-1", "d-2", "g-1"]
        .iter()
        .map(|s| f.public_key(s))
        .collect::<Result<_>>()?;
    let tunnels = |site: &str| -> Result<Vec<String>> {
        Ok(f.wg_dump(site)?.into_iter().map(|p| p.public_key).collect())
    };

    // One organisation: reached, over a direct tunnel.
    assert!(
        reaches(&f, "d-2", service, Duration::from_secs(5)),
        "d-2 reaches d-1's LAN: one organisation"
    );
    assert!(
        tunnels("d-2")?.contains(&keys[0]),
        "d-1 and d-2 have a mesh tunnel"
    );
    // Another organisation: no tunnel either way, and denied at d-1.
    assert!(!tunnels("g-1")?.contains(&keys[0]), "no tunnel g-1 -> d-1");
    assert!(!tunnels("d-1")?.contains(&keys[2]), "no tunnel d-1 -> g-1");
    let denied = "wardnet_policy_denied_packets_total{peer=\"hub-s\",region=\"south\",role=\"hub\",rule=\"default\"}";
    let before = metric(&f, "d-1", denied)?;
    assert!(
        !reaches(&f, "g-1", service, Duration::from_secs(2)),
        "another organisation reaches a default site"
    );
    assert!(
        metric(&f, "d-1", denied)? > before,
        "dropped at d-1, counted"
    );
    let gw = SocketAddr::from((f.overlay("d-1"), 5001));
    let _gw_echo = Echo::start(&f.site("d-1").gw, gw)?;
    assert!(
        !reaches(&f, "g-1", gw, Duration::from_secs(2)),
        "another organisation reaches a default gateway"
    );

    // A rule from the practice's organisation (its block, one prefix):
    // admitted, and the mesh tunnel comes with it.
    f.cli(&[
        "policy",
        "add-rule",
        "--from",
        "org:gp-chapeltown",
        "--to",
        "site:d-1",
        "--proto",
        "udp",
        "--port",
        "5000",
    ])?;
    until_reach(&f, "g-1", service, true, Duration::from_secs(10))?;
    wait_for(Duration::from_secs(10), "a mesh tunnel g-1 -> d-1", || {
        Ok(tunnels("g-1")?.contains(&keys[0]).then_some(()))
    })?;
    assert!(
        !reaches(&f, "g-1", gw, Duration::from_secs(2)),
        "the rule admits udp/5000, not the gateway's 5001"
    );
    Ok(())
}

/// Renumbering with real agents: lth-a, from before its trust's overlay
/// block, moves into it. While the move is under way its gateway answers
/// on both addresses; `--finish` is refused until every agent carrying it
/// has the new one, then the old address is gone, the new one answers and
/// the agent's metrics endpoint moves to it. A stream between the trust's
/// sites' LANs loses nothing throughout.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_site_renumbered_into_its_organisations_block_loses_nothing() -> Result<()> {
    let name = "a_site_renumbered_into_its_organisations_block_loses_nothing";
    if !require_root(name) {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    f.cli(&["orgs", "add", "leeds-trust"])?;
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    let trust = |lan| SiteOpts {
        lan,
        endpoint: false,
        org: Some("leeds-trust"),
    };
    f.add_site("lth-a", "north", false, trust(true))?;
    f.add_site("lth-b", "north", false, trust(true))?;
    let old = f.overlay("lth-a");
    let lan = f.lan("lth-a");
    let target = SocketAddr::from((lan.host, 5000));
    let stream = Stream::start(
        &f.site("lth-b").gw,
        &lan.ns,
        target,
        Duration::from_millis(5),
    )?;
    stream.wait_flowing(Duration::from_secs(10))?;
    let v4_on = |site: &str| -> Result<String> {
        let s = f.site(site);
        s.gw.ip(&["-4", "-o", "addr", "show", "dev", &s.iface])
    };

    // The block comes after the sites: lth-a moves into it.
    f.cli(&["orgs", "delegate", "leeds-trust", "100.64.8.0/24"])?;
    let moved = f.cli_json(&["sites", "renumber", "lth-a"])?;
    let new: Ipv4Addr = moved["addresses"]
        .as_array()
        .context("addresses")?
        .iter()
        .filter_map(|a| a.as_str()?.strip_suffix("/32")?.parse().ok())
        .find(|a: &Ipv4Addr| a.octets()[..3] == [100, 64, 8])
        .context("an address in the block")?;
    wait_for(Duration::from_secs(10), "both addresses on lth-a", || {
        let on = v4_on("lth-a")?;
        Ok((on.contains(&format!("{old}/32")) && on.contains(&format!("{new}/32"))).then_some(()))
    })?;
    let b = &f.site("lth-b").gw;
    wait_for(
        Duration::from_secs(10),
        "lth-a's new address to answer",
        || Ok(Fleet::ping(b, new, 1).then_some(())),
    )?;
    assert!(Fleet::ping(b, old, 2), "the old address still answers");

    wait_for(
        Duration::from_secs(15),
        "renumber --finish to be accepted",
        || Ok(f.cli(&["sites", "renumber", "lth-a", "--finish"]).ok()),
    )?;
    wait_for(
        Duration::from_secs(10),
        "the old address to leave lth-a",
        || Ok((!v4_on("lth-a")?.contains(&format!("{old}/32"))).then_some(())),
    )?;
    assert!(Fleet::ping(b, new, 2), "the new address answers");
    assert!(!Fleet::ping(b, old, 2), "the old address is no site's");
    let metrics = format!("http://{new}:9586/metrics");
    wait_for(
        Duration::from_secs(10),
        "lth-a's metrics on its new address",
        || {
            Ok(f.site("lth-a")
                .gw
                .exec(&[
                    "curl",
                    "-sf",
                    "--max-time",
                    "1",
                    "-o",
                    "/dev/null",
                    &metrics,
                ])
                .ok())
        },
    )?;

    let report = stream.finish(Duration::from_millis(500));
    eprintln!(
        "LAN stream through the renumber: sent {}, received {}, lost {}",
        report.sent,
        report.received,
        report.lost()
    );
    assert!(report.sent > 100, "the stream ran: {report:?}");
    assert_eq!(report.lost(), 0, "the LANs lost packets: {report:?}");
    Ok(())
}

/// Identity, not names: a rule from gp-9 into lth-a's LAN goes with gp-9;
/// another organisation's new site called gp-9, with a real agent, gets
/// nothing of it.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_recreated_site_name_inherits_no_rule() -> Result<()> {
    let name = "a_recreated_site_name_inherits_no_rule";
    if !require_root(name) {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    for org in ["leeds-trust", "gp-chapeltown", "national"] {
        f.cli(&["orgs", "add", org])?;
    }
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    let site = |org, lan| SiteOpts {
        lan,
        endpoint: false,
        org: Some(org),
    };
    f.add_site("lth-a", "north", false, site("leeds-trust", true))?;
    f.add_site("gp-9", "north", false, site("gp-chapeltown", false))?;
    let service = SocketAddr::from((f.lan("lth-a").host, 7000));
    let _echo = Echo::start(&f.lan("lth-a").ns, service)?;
    f.cli(&[
        "policy",
        "add-rule",
        "--from",
        "site:gp-9",
        "--to",
        "site:lth-a",
        "--proto",
        "udp",
        "--port",
        "7000",
    ])?;
    until_reach(&f, "gp-9", service, true, Duration::from_secs(10))?;

    f.delete_site("gp-9")?;
    let rules = f.cli_json(&["policy", "list"])?;
    assert_eq!(
        rules["rules"].as_array().map(Vec::len),
        Some(0),
        "the rule went with gp-9: {rules}"
    );
    f.add_site("gp-9", "north", false, site("national", false))?;
    // Its tunnel works: a probe to lth-a's overlay address passes.
    assert!(
        Fleet::ping(&f.site("gp-9").gw, f.overlay("lth-a"), 3),
        "the new gp-9 reaches lth-a at all"
    );
    // lth-a's filter is as it was made without the rule: nothing gets
    // through, for as long as we try.
    assert!(
        !reaches(&f, "gp-9", service, Duration::from_secs(3)),
        "the new gp-9 reached lth-a's LAN through the old gp-9's rule"
    );
    assert!(until_reach(&f, "gp-9", service, true, Duration::from_secs(2)).is_err());
    Ok(())
}
