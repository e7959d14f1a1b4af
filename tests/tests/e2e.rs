//! End-to-end: a real controller and real agents (TUN devices, boringtun
//! data plane) in network namespaces, with real traffic.
//!
//! Needs root. Without it each test says it was skipped; with CI=true a skip
//! is a failure. Every test builds its own fleet and tears it down on drop,
//! also when it fails.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use wardnet_e2e::fleet::{wait_for, Fleet, SiteOpts};
use wardnet_e2e::traffic::{udp_round_trip, Echo, Stream};
use wardnet_e2e::{netns_list, require_root};

const LAN: SiteOpts = SiteOpts {
    lan: true,
    endpoint: false,
    org: None,
};
const LAN_EP: SiteOpts = SiteOpts {
    lan: true,
    endpoint: true,
    org: None,
};

/// north: hub-n, gp-a, gp-b (hub-and-spoke); all with LANs.
fn north() -> Result<Fleet> {
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    f.add_site("gp-a", "north", false, LAN)?;
    f.add_site("gp-b", "north", false, LAN)?;
    Ok(f)
}

/// [`north`], with the gp-b LAN -> gp-a LAN path through the hub warmed
/// by one UDP round trip (handshakes done), and gp-a's LAN host.
fn north_warm() -> Result<(Fleet, std::net::Ipv4Addr)> {
    let f = north()?;
    let a_host = f.lan("gp-a").host;
    let echo = Echo::start(&f.lan("gp-a").ns, SocketAddr::from((a_host, 7000)))?;
    udp_round_trip(
        &f.lan("gp-b").ns,
        echo.addr,
        vec![1; 10],
        Duration::from_secs(10),
    )?;
    Ok((f, a_host))
}

fn peer_rx(f: &Fleet, site: &str, peer: &str) -> Result<u64> {
    let key = f.public_key(peer)?;
    Ok(f.wg_dump(site)?
        .into_iter()
        .find(|p| p.public_key == key)
        .map_or(0, |p| p.rx))
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn spoke_lan_reaches_another_spokes_lan_through_the_hub() -> Result<()> {
    if !require_root("spoke_lan_reaches_another_spokes_lan_through_the_hub") {
        return Ok(());
    }
    let f = north()?;
    let b_host = f.lan("gp-b").host;
    let echo = Echo::start(&f.lan("gp-b").ns, SocketAddr::from((b_host, 7000)))?;
    let hub_rx_before = peer_rx(&f, "hub-n", "gp-a")?;
    let payload: Vec<u8> = (0..1200u32).map(|i| (i * 7 % 251) as u8).collect();
    let back = udp_round_trip(
        &f.lan("gp-a").ns,
        echo.addr,
        payload.clone(),
        Duration::from_secs(10),
    )?;
    assert_eq!(back, payload, "the echoed payload is intact");
    // 50 more exchanges, all through the hub: its counters for gp-a move.
    for i in 0..50u8 {
        let p = vec![i; 1000];
        assert_eq!(
            udp_round_trip(
                &f.lan("gp-a").ns,
                echo.addr,
                p.clone(),
                Duration::from_secs(5)
            )?,
            p
        );
    }
    let hub_rx_after = peer_rx(&f, "hub-n", "gp-a")?;
    assert!(
        hub_rx_after >= hub_rx_before + 50 * 1000,
        "the traffic crossed the hub: rx from gp-a {hub_rx_before} -> {hub_rx_after}"
    );
    // And the overlay addresses answer pings, both ways.
    assert!(Fleet::ping(&f.site("gp-a").gw, f.overlay("gp-b"), 3));
    assert!(Fleet::ping(&f.site("gp-b").gw, f.overlay("gp-a"), 3));
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn mesh_region_spokes_talk_directly() -> Result<()> {
    if !require_root("mesh_region_spokes_talk_directly") {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("south", true)?;
    f.add_site("hub-s", "south", true, SiteOpts::default())?;
    f.add_site("gp-c", "south", false, LAN_EP)?;
    f.add_site("gp-d", "south", false, LAN_EP)?;
    // gp-c's config lists gp-d as a direct peer.
    let peers: Vec<String> = f.agent_status("gp-c")?["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        peers,
        ["gp-d", "hub-s"],
        "a mesh spoke peers with its region's spokes and hub"
    );
    let d_host = f.lan("gp-d").host;
    let echo = Echo::start(&f.lan("gp-d").ns, SocketAddr::from((d_host, 7000)))?;
    // Warm up the direct session, then measure.
    udp_round_trip(
        &f.lan("gp-c").ns,
        echo.addr,
        vec![1; 100],
        Duration::from_secs(10),
    )?;
    let hub_before = peer_rx(&f, "hub-s", "gp-c")?;
    let direct_before = peer_rx(&f, "gp-d", "gp-c")?;
    for i in 0..100u8 {
        let p = vec![i; 1000];
        assert_eq!(
            udp_round_trip(
                &f.lan("gp-c").ns,
                echo.addr,
                p.clone(),
                Duration::from_secs(5)
            )?,
            p
        );
    }
    let hub_moved = peer_rx(&f, "hub-s", "gp-c")? - hub_before;
    let direct_moved = peer_rx(&f, "gp-d", "gp-c")? - direct_before;
    assert!(
        direct_moved >= 100 * 1000,
        "gp-d received the traffic directly from gp-c: {direct_moved} bytes"
    );
    assert!(
        hub_moved < 10_000,
        "the hub saw at most keepalives from gp-c, not the 100 kB: {hub_moved} bytes"
    );
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_revoked_spoke_is_dropped_by_the_hub_within_5_seconds() -> Result<()> {
    if !require_root("a_revoked_spoke_is_dropped_by_the_hub_within_5_seconds") {
        return Ok(());
    }
    let f = north()?;
    let hub_ip = f.overlay("hub-n");
    assert!(
        Fleet::ping(&f.site("gp-a").gw, hub_ip, 3),
        "gp-a reaches the hub before revocation"
    );
    let key = f.public_key("gp-a")?;
    let t0 = Instant::now();
    f.cli(&["sites", "revoke", "gp-a"])?;
    wait_for(Duration::from_secs(5), "the hub to drop gp-a", || {
        Ok((!f.wg_dump("hub-n")?.iter().any(|p| p.public_key == key)).then_some(()))
    })?;
    let took = t0.elapsed();
    assert!(
        !Fleet::ping(&f.site("gp-a").gw, hub_ip, 3),
        "gp-a's traffic stops"
    );
    assert!(
        Fleet::ping(&f.site("gp-b").gw, hub_ip, 3),
        "gp-b is unaffected"
    );
    eprintln!("hub dropped the revoked spoke after {took:?}");
    // The revoked agent knows it: status says so, its peers are gone (no
    // futile handshakes), and the controller never shows it online.
    let st = wait_for(
        Duration::from_secs(30),
        "gp-a to know it is revoked",
        || {
            let st = f.agent_status("gp-a")?;
            Ok((st["revoked"] == true).then_some(st))
        },
    )?;
    assert!(st["peers"].as_array().is_some_and(Vec::is_empty), "{st}");
    assert!(f.wg_dump("gp-a")?.is_empty(), "no peers left on gp-a");
    let list = f.cli(&["sites", "list"])?;
    let line = list.lines().find(|l| l.starts_with("gp-a")).unwrap_or("");
    assert!(!line.contains("online"), "{list}");
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn moving_a_spokes_endpoint_loses_nothing_on_other_streams() -> Result<()> {
    if !require_root("moving_a_spokes_endpoint_loses_nothing_on_other_streams") {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    f.add_site("gp-a", "north", false, LAN_EP)?;
    f.add_site("gp-b", "north", false, LAN)?;
    // Warm both paths.
    assert!(Fleet::ping(&f.site("gp-a").gw, f.overlay("hub-n"), 2));
    let b_host = f.lan("gp-b").host;
    udp_round_trip(
        &f.site("hub-n").gw,
        SocketAddr::from((f.overlay("hub-n"), 9)),
        vec![0],
        Duration::from_millis(1),
    )
    .ok();
    let stream = Stream::start(
        &f.site("hub-n").gw,
        &f.lan("gp-b").ns,
        SocketAddr::from((b_host, 7100)),
        Duration::from_millis(10),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    // gp-a moves to a new underlay address; the controller is told.
    let a = f.site("gp-a");
    let new = "203.0.113.77";
    a.gw.ip(&["addr", "add", &format!("{new}/24"), "dev", &a.eth])?;
    a.gw.ip(&["addr", "del", &format!("{}/24", a.underlay), "dev", &a.eth])?;
    a.gw.ip(&["route", "replace", "198.51.100.0/24", "dev", &a.eth])?;
    let hub = f.site("hub-n");
    hub.gw
        .ip(&["route", "replace", "203.0.113.0/24", "dev", &hub.eth])?;
    f.cli(&[
        "sites",
        "update",
        "gp-a",
        "--endpoint",
        &format!("{new}:51820"),
    ])?;
    // The moved spoke's traffic resumes.
    wait_for(
        Duration::from_secs(10),
        "gp-a to answer at its new endpoint",
        || Ok(Fleet::ping(&f.site("hub-n").gw, f.overlay("gp-a"), 1).then_some(())),
    )?;
    let key = f.public_key("gp-a")?;
    let row = f
        .wg_dump("hub-n")?
        .into_iter()
        .find(|p| p.public_key == key)
        .expect("gp-a at the hub");
    assert_eq!(
        row.endpoint,
        format!("{new}:51820"),
        "the hub uses the new endpoint"
    );
    std::thread::sleep(Duration::from_secs(1));
    let report = stream.finish(Duration::from_millis(500));
    assert!(report.sent > 200, "{report:?}");
    assert_eq!(
        report.lost(),
        0,
        "the hub -> gp-b stream lost packets during the move: {report:?}"
    );
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn without_the_controller_traffic_flows_and_agents_restart_from_cache() -> Result<()> {
    if !require_root("without_the_controller_traffic_flows_and_agents_restart_from_cache") {
        return Ok(());
    }
    // Warm the path, then stop the controller.
    let (mut f, a_host) = north_warm()?;
    f.stop_controller()?;
    let stream = Stream::start(
        &f.lan("gp-b").ns,
        &f.lan("gp-a").ns,
        SocketAddr::from((a_host, 7200)),
        Duration::from_millis(20),
    )?;
    std::thread::sleep(Duration::from_secs(60));
    let report = stream.finish(Duration::from_millis(500));
    assert!(report.sent >= 2500, "{report:?}");
    assert_eq!(
        report.lost(),
        0,
        "traffic between sites lost packets with the controller down: {report:?}"
    );
    assert_eq!(f.agent_status("gp-a")?["controller_reachable"], false);

    // Restart gp-a's agent while the controller is still down. SIGTERM
    // takes the interface (and with it its addresses and routes) away.
    f.stop_agent("gp-a")?;
    let a = f.site("gp-a");
    assert!(
        a.gw.ip(&["link", "show", &a.iface]).is_err(),
        "the interface is gone after SIGTERM"
    );
    assert!(
        !a.gw.ip(&["route"])?.contains("100.100.0.0/16"),
        "its routes are gone"
    );
    f.start_agent("gp-a")?;
    let st = f.agent_status("gp-a")?;
    assert_eq!(st["config_source"], "cache", "{st}");
    let echo = Echo::start(&f.lan("gp-a").ns, SocketAddr::from((a_host, 7000)))?;
    let back = udp_round_trip(
        &f.lan("gp-b").ns,
        echo.addr,
        b"from the cache".to_vec(),
        Duration::from_secs(15),
    )?;
    assert_eq!(back, b"from the cache");

    // The controller returns after more than a minute away: the agents that
    // kept retrying all the while are back within 10 s (their retry delay
    // is capped at 8 s, jittered), and the controller sees them.
    f.start_controller()?;
    let back = Instant::now();
    let took = wait_for(
        Duration::from_secs(10),
        "every agent to reach the controller again",
        || {
            for site in ["hub-n", "gp-a", "gp-b"] {
                if f.agent_status(site)?["controller_reachable"] != true {
                    return Ok(None);
                }
            }
            Ok(Some(back.elapsed()))
        },
    )?;
    eprintln!("agents back {took:?} after the controller returned");
    let health: serde_json::Value = serde_json::from_str(&f.wan.exec(&[
        "curl",
        "-sf",
        "-H",
        &format!("Authorization: Bearer {}", f.token),
        &format!("{}/v1/health", f.url),
    ])?)?;
    for site in ["hub-n", "gp-a", "gp-b"] {
        let s = health["sites"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == site))
            .cloned()
            .unwrap_or_default();
        assert_eq!(s["online"], true, "{site} seen by the controller: {s}");
    }
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn wg_show_lists_the_peers_with_true_values() -> Result<()> {
    if !require_root("wg_show_lists_the_peers_with_true_values") {
        return Ok(());
    }
    let f = north()?;
    assert!(Fleet::ping(&f.site("gp-a").gw, f.overlay("hub-n"), 2));
    assert!(Fleet::ping(&f.site("gp-b").gw, f.overlay("hub-n"), 2));
    let hub = f.site("hub-n");
    let human = hub.gw.exec(&["wg", "show", &hub.iface])?;
    let (ka, kb) = (f.public_key("gp-a")?, f.public_key("gp-b")?);
    for k in [&ka, &kb] {
        assert!(human.contains(&format!("peer: {k}")), "{human}");
    }
    assert!(
        human.contains("latest handshake:") && human.contains("transfer:"),
        "{human}"
    );
    assert!(
        human.contains(&format!("{}/32", f.lan("gp-a").prefix.addr()))
            || human.contains(&f.lan("gp-a").prefix.to_string()),
        "{human}"
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let before = f.wg_dump("hub-n")?;
    assert_eq!(before.len(), 2);
    for p in &before {
        assert!(
            p.latest_handshake > 0
                && now + 2 >= p.latest_handshake
                && now - p.latest_handshake < 180,
            "handshake is a recent Unix time: {p:?}"
        );
        assert!(p.endpoint.starts_with("198.51.100."), "{p:?}");
    }
    assert!(Fleet::ping(&f.site("gp-a").gw, f.overlay("hub-n"), 5));
    let after = f.wg_dump("hub-n")?;
    let grew = |k: &str| {
        let b = before.iter().find(|p| p.public_key == k).expect("peer");
        let a = after.iter().find(|p| p.public_key == k).expect("peer");
        a.rx > b.rx && a.tx > b.tx
    };
    assert!(
        grew(&ka),
        "byte counters grow with traffic: {before:?} -> {after:?}"
    );
    // The controller is the source of truth: `wg set` is refused.
    let set = hub
        .gw
        .exec(&["wg", "set", &hub.iface, "listen-port", "1234"]);
    assert!(set.is_err(), "wg set must be refused");
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn an_agentless_wireguard_go_site_reaches_a_spoke_lan() -> Result<()> {
    if !require_root("an_agentless_wireguard_go_site_reaches_a_spoke_lan") {
        return Ok(());
    }
    let mut f = north()?;
    // The appliance makes its own key; the admin registers the public half.
    let path = f.add_appliance("appliance", "north")?;
    let lan_host = f.lan("gp-a").host;
    // wireguard-go retries a handshake the hub dropped (before its config
    // named the appliance) every 5 s; a loaded CI machine once needed more
    // than 15 s in all, so allow 30.
    let reached = wait_for(
        Duration::from_secs(30),
        "the appliance to reach gp-a's LAN",
        || Ok(Fleet::ping(&f.site("appliance").gw, lan_host, 1).then_some(())),
    );
    if reached.is_err() {
        // What each side saw, for the post-mortem.
        let appliance = f.site("appliance").gw.exec(&["wg", "show", "all", "dump"]);
        eprintln!("appliance `wg show all dump`: {appliance:?}");
        eprintln!("hub peers: {:?}", f.wg_dump("hub-n"));
        eprintln!("gp-a peers: {:?}", f.wg_dump("gp-a"));
        eprintln!(
            "appliance routes: {:?}",
            f.site("appliance").gw.ip(&["route"])
        );
        for site in ["hub-n", "gp-a"] {
            let log = f
                .site(site)
                .agent
                .as_ref()
                .map(|a| a.log())
                .unwrap_or_default();
            eprintln!("--- agent {site} log:\n{log}");
        }
    }
    // wireguard-go runs in the namespace; its drop kills it. Take the
    // interface down first so its control socket is removed.
    f.appliance_down("appliance", &path);
    reached?;
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_failing_test_leaves_nothing_behind() -> Result<()> {
    if !require_root("a_failing_test_leaves_nothing_behind") {
        return Ok(());
    }
    let mut names = Vec::new();
    let mut logs = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut f = Fleet::start().expect("fleet");
        f.region("north", false).expect("region");
        f.add_site("hub-n", "north", true, SiteOpts::default())
            .expect("hub");
        names.push(f.wan.name().to_owned());
        names.push(f.site("hub-n").gw.name().to_owned());
        names.push(f.site("hub-n").iface.clone());
        logs.extend(f.controller_log());
        logs.extend(
            f.site("hub-n")
                .agent
                .as_ref()
                .map(|a| a.log_path().to_owned()),
        );
        panic!("a test failing half way");
    }));
    assert!(result.is_err());
    // Their logs are kept for the post-mortem of a real failure; this one
    // was deliberate.
    assert_eq!(logs.len(), 2);
    for log in &logs {
        assert!(log.exists(), "{} kept", log.display());
        std::fs::remove_file(log)?;
    }
    let left = netns_list()?;
    for n in &names[..2] {
        assert!(!left.contains(n), "namespace {n} was left behind: {left:?}");
    }
    let sock = format!("/var/run/wireguard/{}.sock", names[2]);
    assert!(
        !std::path::Path::new(&sock).exists(),
        "{sock} was left behind"
    );
    let procs = wardnet_e2e::run(std::process::Command::new("ps").args(["-eo", "args"]))?;
    let procs = String::from_utf8_lossy(&procs.stdout);
    assert!(
        !procs.lines().any(|l| l.contains(&names[2])),
        "an agent of the failed test still runs"
    );
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn enrolment_errors_say_what_to_do() -> Result<()> {
    if !require_root("enrolment_errors_say_what_to_do") {
        return Ok(());
    }
    let f = Fleet::start()?;
    f.region("north", false)?;
    let created = f.cli_json(&[
        "sites", "add", "gp-x", "--region", "north", "--role", "spoke",
    ])?;
    let token = created["token"].as_str().expect("token").to_owned();
    let state = f.dir().join("state-x");
    let config = f.dir().join("x.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", state.display()))?;
    let enroll = |url: &str, token: &str, extra: &[&str]| -> (bool, String) {
        let out = f
            .wan
            .command(&f.bins.agent)
            .arg("--config")
            .arg(&config)
            .args(["enroll", "--controller", url, "--token", token])
            .args(extra)
            .output()
            .expect("run enroll");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = enroll(&f.url, "wne_nonsense", &["--allow-plain-http"]);
    assert!(!ok && err.contains("not recognised"), "{err}");
    let (ok, err) = enroll("http://198.51.100.254:1", &token, &["--allow-plain-http"]);
    assert!(!ok && err.contains("cannot reach the controller"), "{err}");
    let (ok, err) = enroll(&f.url, &token, &[]);
    assert!(
        !ok && err.contains("allow_plain_http"),
        "plain HTTP must be explicit: {err}"
    );
    let (ok, err) = enroll(&f.url, &token, &["--allow-plain-http"]);
    assert!(ok, "{err}");
    let (ok, err) = enroll(&f.url, &token, &["--allow-plain-http"]);
    assert!(
        !ok && err.contains("already enrolled") && err.contains("--force"),
        "{err}"
    );
    let (ok, err) = enroll(&f.url, &token, &["--allow-plain-http", "--force"]);
    assert!(!ok && err.contains("already used"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    for file in ["private.key", "enrolment.json"] {
        let mode = std::fs::metadata(state.join(file))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    Ok(())
}

/// `systemctl restart` (SIGTERM, then a fresh process) during a
/// steady stream between two sites' LANs. The site loses its tunnels only
/// for the restart itself: the cached config comes up at once, the key and
/// identity persist, and the restarted agent's keepalive re-handshakes with
/// the hub at once. The figure goes in docs/benchmarks.md.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn restarting_an_agent_interrupts_its_sites_traffic_only_briefly() -> Result<()> {
    if !require_root("restarting_an_agent_interrupts_its_sites_traffic_only_briefly") {
        return Ok(());
    }
    let (mut f, a_host) = north_warm()?;
    let interval = Duration::from_millis(10);
    let mut gaps = Vec::new();
    for round in 0..3 {
        let stream = Stream::start(
            &f.lan("gp-b").ns,
            &f.lan("gp-a").ns,
            SocketAddr::from((a_host, 7300 + round)),
            interval,
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let t0 = Instant::now();
        f.stop_agent("gp-a")?;
        f.start_agent("gp-a")?;
        let restart = t0.elapsed();
        let st = f.agent_status("gp-a")?;
        assert_eq!(st["config_source"], "cache", "{st}");
        // Let the stream run on until it flows again, then a little more.
        stream.wait_flowing(Duration::from_secs(15))?;
        std::thread::sleep(Duration::from_secs(1));
        let report = stream.finish(Duration::from_millis(500));
        let gap = report.longest_outage();
        eprintln!(
            "restart {round}: stop+start {} ms, longest outage {} ms ({} of {} packets lost at {} ms)",
            restart.as_millis(),
            gap.as_millis(),
            report.lost(),
            report.sent,
            interval.as_millis()
        );
        // "A few seconds" at most; the measured figure is far below.
        assert!(
            gap < Duration::from_secs(5),
            "a restart interrupted the site for {gap:?}: {report:?}"
        );
        gaps.push(gap);
    }
    gaps.sort();
    eprintln!(
        "agent restart outage over {} restarts: median {} ms, max {} ms",
        gaps.len(),
        gaps[gaps.len() / 2].as_millis(),
        gaps[gaps.len() - 1].as_millis()
    );
    Ok(())
}

/// An agent given several controllers, the first of which does not answer,
/// syncs through the next one, says so in its status, and gets the changes
/// made afterwards.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn an_agent_given_several_controllers_uses_the_one_that_answers() -> Result<()> {
    if !require_root("an_agent_given_several_controllers_uses_the_one_that_answers") {
        return Ok(());
    }
    let mut f = north()?;
    f.stop_agent("gp-a")?;
    // Nothing listens on port 1 of the controller's address.
    let dead = format!("http://{}:1", f.controller_ip());
    let config = f.site("gp-a").config.clone();
    let mut text = std::fs::read_to_string(&config)?;
    // The file ends in its [controller] table.
    text.push_str(&format!("urls = [\"{dead}\", \"{}\"]\n", f.url));
    std::fs::write(&config, text)?;
    f.start_agent("gp-a")?;
    let url = f.url.clone();
    let before = wait_for(
        Duration::from_secs(15),
        "gp-a to sync through the second controller",
        || {
            let s = f.agent_status("gp-a")?;
            Ok(
                (s["controller_url"] == url.as_str() && s["controller_reachable"] == true)
                    .then(|| s["applied_revision"].as_u64().unwrap_or(0)),
            )
        },
    )?;
    // A change made now reaches it: the hub moves to another port.
    let hub = f.site("hub-n").underlay;
    f.cli(&[
        "sites",
        "update",
        "hub-n",
        "--endpoint",
        &format!("{hub}:51821"),
    ])?;
    wait_for(Duration::from_secs(10), "gp-a to apply the change", || {
        let s = f.agent_status("gp-a")?;
        Ok((s["applied_revision"].as_u64().unwrap_or(0) > before).then_some(()))
    })?;
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_hub_moving_to_its_second_address_loses_nothing() -> Result<()> {
    if !require_root("a_hub_moving_to_its_second_address_loses_nothing") {
        return Ok(());
    }
    let f = north()?;
    let (a_host, b_host) = (f.lan("gp-a").host, f.lan("gp-b").host);
    // Warm both paths through the hub, then stream both ways at 200/s.
    for (from, to) in [("gp-a", b_host), ("gp-b", a_host)] {
        wait_for(Duration::from_secs(10), "the path through the hub", || {
            Ok(Fleet::ping(&f.lan(from).ns, to, 1).then_some(()))
        })?;
    }
    let every = Duration::from_millis(5);
    let ab = Stream::start(
        &f.lan("gp-a").ns,
        &f.lan("gp-b").ns,
        SocketAddr::from((b_host, 7300)),
        every,
    )?;
    let ba = Stream::start(
        &f.lan("gp-b").ns,
        &f.lan("gp-a").ns,
        SocketAddr::from((a_host, 7301)),
        every,
    )?;
    ab.wait_flowing(Duration::from_secs(10))?;
    ba.wait_flowing(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(1));

    // The hub's interface gets a second address; the NOC moves the hub to it.
    let hub = f.site("hub-n");
    let (old, new) = (hub.underlay.to_string(), "203.0.113.50");
    hub.gw
        .ip(&["addr", "add", &format!("{new}/24"), "dev", &hub.eth])?;
    let moved_at = Instant::now();
    f.cli(&[
        "sites",
        "update",
        "hub-n",
        "--endpoint",
        &format!("{new}:51820"),
    ])?;
    let hub_key = f.public_key("hub-n")?;
    let endpoint_of = |site: &str| -> Result<String> {
        Ok(f.wg_dump(site)?
            .into_iter()
            .find(|p| p.public_key == hub_key)
            .map(|p| p.endpoint)
            .unwrap_or_default())
    };
    let want = format!("{new}:51820");
    wait_for(
        Duration::from_secs(5),
        "the spokes to use the new endpoint",
        || Ok((endpoint_of("gp-a")? == want && endpoint_of("gp-b")? == want).then_some(())),
    )?;
    let took = moved_at.elapsed();
    // It sticks: the hub answers from the address the spokes now use.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        endpoint_of("gp-a")?,
        want,
        "gp-a went back to the old address"
    );
    assert_eq!(
        endpoint_of("gp-b")?,
        want,
        "gp-b went back to the old address"
    );

    // The old address goes.
    hub.gw
        .ip(&["route", "replace", "198.51.100.0/24", "dev", &hub.eth])?;
    hub.gw
        .ip(&["addr", "del", &format!("{old}/24"), "dev", &hub.eth])?;
    std::thread::sleep(Duration::from_secs(2));
    let (ab, ba) = (
        ab.finish(Duration::from_millis(500)),
        ba.finish(Duration::from_millis(500)),
    );
    eprintln!("new endpoint at both spokes {took:?} after the change; gp-a -> gp-b {ab:?}; gp-b -> gp-a {ba:?}");
    assert!(
        took <= Duration::from_secs(1),
        "the spokes took {took:?} to move"
    );
    for (name, r) in [("gp-a -> gp-b", &ab), ("gp-b -> gp-a", &ba)] {
        assert!(r.sent > 1000, "{name}: {r:?}");
        assert_eq!(
            r.lost(),
            0,
            "{name} lost packets over the hub's move: {r:?}"
        );
    }
    Ok(())
}

/// A hub whose host sends ICMP redirects (the kernel's default): the agent
/// says so and changes nothing unasked; with `enable_ip_forwarding = true`
/// it turns them off itself.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_hub_turns_icmp_redirects_off_only_when_asked_and_says_so_otherwise() -> Result<()> {
    if !require_root("a_hub_turns_icmp_redirects_off_only_when_asked_and_says_so_otherwise") {
        return Ok(());
    }
    let mut f = north()?;
    let redirects = |f: &Fleet| -> Result<String> {
        Ok(f.site("hub-n")
            .gw
            .exec(&["cat", "/proc/sys/net/ipv4/conf/all/send_redirects"])?
            .trim()
            .to_owned())
    };
    let log = |f: &Fleet| {
        f.site("hub-n")
            .agent
            .as_ref()
            .map(|a| a.log())
            .unwrap_or_default()
    };
    f.site("hub-n")
        .gw
        .exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.send_redirects=1"])?;
    f.stop_agent("hub-n")?;
    f.start_agent("hub-n")?;
    assert_eq!(redirects(&f)?, "1", "no host setting is changed unasked");
    assert!(
        log(&f).contains("sends ICMP redirects"),
        "the hub's admin is told:\n{}",
        log(&f)
    );

    let config = f.site("hub-n").config.clone();
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("enable_ip_forwarding = true\n{text}"))?;
    f.stop_agent("hub-n")?;
    f.start_agent("hub-n")?;
    assert_eq!(redirects(&f)?, "0", "turned off when asked:\n{}", log(&f));
    assert!(log(&f).contains("turned off ICMP redirects"), "{}", log(&f));
    Ok(())
}

/// A spoke with a LAN forwards between its LAN and its tunnels: with IP
/// forwarding off on its gateway the agent says what to set (its LAN's
/// traffic was dropped without a word), and with `enable_ip_forwarding =
/// true` turns it on, and the LANs reach each other again.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_spoke_with_a_lan_checks_ip_forwarding_and_turns_it_on_when_asked() -> Result<()> {
    if !require_root("a_spoke_with_a_lan_checks_ip_forwarding_and_turns_it_on_when_asked") {
        return Ok(());
    }
    let mut f = north()?;
    let forwarding = |f: &Fleet| -> Result<String> {
        Ok(f.site("gp-a")
            .gw
            .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])?
            .trim()
            .to_owned())
    };
    let log = |f: &Fleet| {
        f.site("gp-a")
            .agent
            .as_ref()
            .map(|a| a.log())
            .unwrap_or_default()
    };
    f.site("gp-a")
        .gw
        .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
    f.stop_agent("gp-a")?;
    f.start_agent("gp-a")?;
    assert_eq!(forwarding(&f)?, "0", "no host setting is changed unasked");
    assert!(
        log(&f).contains("this site routes its LAN") && log(&f).contains("net.ipv4.ip_forward=1"),
        "the site's admin is told:\n{}",
        log(&f)
    );

    let config = f.site("gp-a").config.clone();
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("enable_ip_forwarding = true\n{text}"))?;
    f.stop_agent("gp-a")?;
    f.start_agent("gp-a")?;
    assert_eq!(forwarding(&f)?, "1", "turned on when asked:\n{}", log(&f));
    let echo = Echo::start(
        &f.lan("gp-b").ns,
        SocketAddr::from((f.lan("gp-b").host, 7000)),
    )?;
    udp_round_trip(
        &f.lan("gp-a").ns,
        echo.addr,
        vec![7; 16],
        Duration::from_secs(10),
    )?;
    Ok(())
}
