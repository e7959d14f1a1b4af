//! What the README's quick start promises, checked on the demo's own fleet:
//! the controller lists every running agent for Prometheus by default (their
//! overlay addresses), and a Prometheus in the NOC's site scrapes all of them
//! and the controller through the overlay, with `wardnet_peer_*` series from
//! every agent. A `metrics_advertise` set by SIGHUP reaches the target list
//! at once, not at the next long-poll.
//!
//! Needs root (namespaces, TUN), `prometheus` and `curl`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wardnet_e2e::demo;
use wardnet_e2e::fleet::wait_for;
use wardnet_e2e::{require, require_root};

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn the_demo_fleet_is_monitored_through_the_overlay_by_default() -> Result<()> {
    let name = "the_demo_fleet_is_monitored_through_the_overlay_by_default";
    if !require_root(name) || !require(name, wardnet_e2e::prometheus::installed()) {
        return Ok(());
    }
    let mut f = demo::build(&mut |_, _| {})?;
    let names: BTreeSet<String> = demo::SITES.iter().map(|s| s.0.to_owned()).collect();

    // Every running agent is listed, at its overlay address.
    wait_for(Duration::from_secs(30), "every agent listed", || {
        let v = f.cli_json(&["prometheus", "targets"])?;
        let listed: BTreeSet<String> = v
            .as_array()
            .context("array")?
            .iter()
            .filter_map(|g| g["labels"]["site"].as_str().map(str::to_owned))
            .collect();
        Ok((listed == names).then_some(()))
    })?;
    let v = f.cli_json(&["prometheus", "targets"])?;
    for g in v.as_array().context("array")? {
        let site = g["labels"]["site"].as_str().context("site")?;
        assert_eq!(
            g["targets"][0],
            format!("{}:9586", f.overlay(site)).as_str(),
            "{site} is scraped at its overlay address"
        );
    }

    // Prometheus in the NOC's site: every target up (start_prometheus waits
    // for it), and peer metrics from every agent.
    let prom = demo::start_prometheus(&f)?;
    wait_for(
        Duration::from_secs(60),
        "wardnet_peer_up from every agent",
        || {
            let sites: BTreeSet<String> = prom
                .query("wardnet_peer_up == 1")?
                .into_iter()
                .filter_map(|(l, _)| l.get("site").cloned())
                .collect();
            Ok((sites == names).then_some(()))
        },
    )?;
    assert!(!prom.query("wardnet_peer_receive_bytes_total")?.is_empty());
    drop(prom);

    // metrics_advertise by SIGHUP: in the target list within seconds.
    let site = f.site("gp-a");
    let mut config = std::fs::read_to_string(&site.config)?;
    config = format!("metrics_advertise = \"203.0.113.77:9586\"\n{config}");
    std::fs::write(&site.config, config)?;
    let pid = site.agent.as_ref().context("gp-a runs")?.pid();
    let t0 = Instant::now();
    // SAFETY: kill only sends a signal to the agent this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    wait_for(
        Duration::from_secs(10),
        "the advertised address listed",
        || {
            let v = f.cli_json(&["prometheus", "targets"])?;
            Ok(v.as_array()
                .context("array")?
                .iter()
                .any(|g| g["targets"][0] == "203.0.113.77:9586")
                .then_some(()))
        },
    )
    .with_context(|| {
        let log = f
            .site("gp-a")
            .agent
            .as_ref()
            .map(|a| a.log())
            .unwrap_or_default();
        let ss = f.site("gp-a").gw.exec(&["ss", "-tn"]).unwrap_or_default();
        format!("gp-a's log:\n{log}\ngp-a's connections:\n{ss}")
    })?;
    let took = t0.elapsed();
    eprintln!("metrics_advertise reached the target list {took:?} after SIGHUP");
    assert!(took < Duration::from_secs(3), "{took:?}: not at once");
    f.stop_agent("gp-a")?;
    Ok(())
}
