//! End-to-end link health: a real Prometheus server (Debian package
//! `prometheus`) in the fleet's wan namespace scrapes the controller and
//! the agents of a hub and two spokes, found through the controller's
//! file_sd output; and probe loss measured against an nftables rule that
//! drops 20 % of a spoke's underlay UDP.
//!
//! Needs root (namespaces, TUN), `prometheus`, `promtool`, `curl` and `nft`.
//! Everything runs inside the test's namespaces; Prometheus listens on the
//! wan namespace's loopback.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use wardnet_e2e::fleet::{wait_for, Fleet, SiteOpts};
use wardnet_e2e::prometheus::Prometheus;
use wardnet_e2e::require_root;

const PROBE_MS: u64 = 200;

/// hub-n, gp-a, gp-b in region north; agents' metrics on their underlay
/// address, probing every `probe_ms`.
fn fleet(probe_ms: u64, spokes: &[&str]) -> Result<Fleet> {
    let mut f = Fleet::start()?;
    f.metrics_on_underlay = true;
    f.agent_config_extra = format!("probe_interval_ms = {probe_ms}");
    f.region("north", false)?;
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    for s in spokes {
        f.add_site(s, "north", false, SiteOpts::default())?;
    }
    Ok(f)
}

/// Start Prometheus in the wan namespace on its loopback, scraping the
/// controller and the agents listed in `targets` (file_sd), every second,
/// with the shipped alerting rules loaded.
fn start_prometheus(f: &Fleet, targets: &std::path::Path) -> Result<Prometheus> {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/prometheus/wardnet-alerts.yml"
    );
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: wardnet-controller
    static_configs:
      - targets: ["198.51.100.254:8080"]
  - job_name: wardnet-agent
    file_sd_configs:
      - files: ["{}"]
        refresh_interval: 1s
"#,
        targets.display()
    );
    Prometheus::start(&f.wan, f.dir(), &config)
}

/// `promtool check metrics` on what `url` serves, run in the wan namespace.
fn promtool_check(f: &Fleet, url: &str) -> Result<()> {
    let file = f.dir().join("scraped.txt");
    let file = file.to_str().context("path")?;
    f.wan.exec(&["curl", "-sf", "-o", file, url])?;
    let text = std::fs::read_to_string(file)?;
    if !text.contains("# TYPE wardnet_") {
        bail!("{url} served no wardnet metrics:\n{text}");
    }
    // promtool exits non-zero and names the problem on any lint failure.
    let out = f
        .wan
        .exec(&["sh", "-c", &format!("promtool check metrics < {file} 2>&1")])?;
    if !out.trim().is_empty() {
        bail!("promtool check metrics on {url}:\n{out}");
    }
    Ok(())
}

fn underlay(f: &Fleet, site: &str) -> String {
    format!("{}:9586", f.site(site).underlay)
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn prometheus_scrapes_the_fleet_and_sees_a_stopped_spoke_down() -> Result<()> {
    let name = "prometheus_scrapes_the_fleet_and_sees_a_stopped_spoke_down";
    if !require_root(name) || !wardnet_e2e::require(name, wardnet_e2e::prometheus::installed()) {
        return Ok(());
    }
    let mut f = fleet(PROBE_MS, &["gp-a", "gp-b"])?;

    // Every agent reported its metrics address: the controller lists all three.
    let targets = f.dir().join("agents.json");
    wait_for(Duration::from_secs(30), "three agent targets", || {
        let v = f.cli_json(&["prometheus", "targets"])?;
        Ok((v.as_array().map_or(0, Vec::len) == 3).then_some(()))
    })?;
    let path = targets.to_str().context("path")?.to_owned();
    f.cli(&["prometheus", "targets", "--out", &path])?;
    let listed: Value = serde_json::from_str(&std::fs::read_to_string(&targets)?)?;
    assert!(
        listed
            .as_array()
            .context("array")?
            .iter()
            .any(|g| g["targets"][0] == underlay(&f, "gp-a").as_str()
                && g["labels"]["site"] == "gp-a"),
        "{listed}"
    );

    // Both endpoints pass promtool.
    promtool_check(&f, "http://198.51.100.254:8080/metrics")?;
    for s in ["hub-n", "gp-a", "gp-b"] {
        promtool_check(&f, &format!("http://{}/metrics", underlay(&f, s)))?;
    }

    let prom = start_prometheus(&f, &targets)?;

    // Every target up.
    wait_for(Duration::from_secs(60), "four targets up", || {
        let up = prom.query("up")?;
        Ok((up.len() == 4 && up.iter().all(|(_, v)| *v == 1.0)).then_some(()))
    })?;

    // The expected peers up, seen from both sides, with RTT observed.
    wait_for(Duration::from_secs(60), "peers up", || {
        let hub = prom.query(r#"wardnet_peer_up{site="hub-n"} == 1"#)?;
        let mut peers: Vec<String> = hub.iter().map(|(l, _)| l["peer"].clone()).collect();
        peers.sort();
        let a = prom.value(r#"wardnet_peer_up{site="gp-a",peer="hub-n",role="hub"}"#)?;
        let b = prom.value(r#"wardnet_peer_up{site="gp-b",peer="hub-n"}"#)?;
        Ok((peers == ["gp-a", "gp-b"] && a == Some(1.0) && b == Some(1.0)).then_some(()))
    })?;
    wait_for(Duration::from_secs(30), "RTT samples", || {
        let n = prom.value(r#"wardnet_peer_probe_rtt_seconds_count{site="gp-a",peer="hub-n"}"#)?;
        Ok(n.filter(|n| *n > 0.0).map(drop))
    })?;
    let sent = prom.value(r#"wardnet_peer_probes_sent_total{site="hub-n",peer="gp-a"}"#)?;
    assert!(sent.is_some_and(|s| s > 0.0), "{sent:?}");
    let handshake =
        prom.value(r#"wardnet_peer_last_handshake_timestamp_seconds{site="gp-a",peer="hub-n"}"#)?;
    assert!(handshake.is_some_and(|t| t > 1.7e9), "{handshake:?}");
    assert_eq!(
        prom.value(r#"wardnet_agent_controller_reachable{site="gp-a"}"#)?,
        Some(1.0)
    );
    assert!(prom
        .value(r#"wardnet_agent_handshakes_total{site="gp-a",result="completed"} > 0"#)?
        .is_some());

    // `status` shows the same health.
    let st = f.agent_status("hub-n")?;
    let peer = |st: &Value, n: &str| {
        st["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == n))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(peer(&st, "gp-a")["up"], true, "{st}");
    assert!(peer(&st, "gp-a")["rtt_seconds"].as_f64().is_some(), "{st}");
    assert!(peer(&st, "gp-a")["loss_ratio"].as_f64().is_some(), "{st}");

    // The controller sees the fleet: online, peers up.
    wait_for(
        Duration::from_secs(30),
        "the hub's summary at the controller",
        || {
            let list = f.cli(&["sites", "list"])?;
            let hub = list.lines().find(|l| l.starts_with("hub-n")).unwrap_or("");
            Ok((hub.contains("online") && hub.contains("2/2")).then_some(()))
        },
    )?;

    // What an operator sees (kept in the test log).
    eprintln!("{}", f.cli(&["sites", "list"])?);
    let show = f.cli(&["sites", "show", "hub-n"])?;
    eprintln!("{show}");
    assert!(
        show.lines()
            .any(|l| l.starts_with("peers up") && l.trim_end().ends_with("2/2")),
        "{show}"
    );
    let hub = f.site("hub-n");
    let table = hub.gw.exec(&[
        f.bins.agent.to_str().context("path")?,
        "--config",
        hub.config.to_str().context("path")?,
        "status",
    ])?;
    eprintln!("{table}");
    assert!(table.contains("RTT") && table.contains("LOSS"), "{table}");

    // Stop gp-b: the hub reports it down (two probe intervals after its
    // last answer, by the rule the unit tests pin down).
    f.stop_agent("gp-b")?;
    // gp-b is gone from here on: its last answer was before this instant.
    // The hub's own view must turn within two probe intervals; allowed on
    // top: one scheduler tick, the poll below, and a loaded CI machine.
    let gone = std::time::Instant::now();
    let detected = wait_for(
        Duration::from_secs(30),
        "the hub's agent to see gp-b down",
        || {
            let st = f.agent_status("hub-n")?;
            Ok((peer(&st, "gp-b")["up"] == false).then(|| gone.elapsed()))
        },
    )?;
    let bound = Duration::from_millis(2 * PROBE_MS) + Duration::from_millis(800);
    eprintln!("hub saw gp-b down {detected:?} after it stopped (probe interval {PROBE_MS} ms)");
    assert!(
        detected <= bound,
        "down after {detected:?}; two probe intervals are {} ms (+800 ms slack)",
        2 * PROBE_MS
    );
    wait_for(
        Duration::from_secs(30),
        "gp-b down at the hub in Prometheus",
        || {
            let down = prom.value(r#"wardnet_peer_up{site="hub-n",peer="gp-b"} == 0"#)?;
            Ok(down.map(drop))
        },
    )?;
    assert_eq!(
        prom.value(r#"wardnet_peer_up{site="hub-n",peer="gp-a"}"#)?,
        Some(1.0),
        "gp-a stays up"
    );
    // The agent's own view agrees.
    let st = f.agent_status("hub-n")?;
    assert_eq!(peer(&st, "gp-b")["up"], false, "{st}");
    // gp-b's target is down in Prometheus too.
    wait_for(Duration::from_secs(30), "gp-b's target down", || {
        Ok(prom.value(r#"up{site="gp-b"} == 0"#)?.map(drop))
    })?;
    Ok(())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_new_link_is_unknown_never_falsely_down_and_its_first_rtt_is_the_links() -> Result<()> {
    let name = "a_new_link_is_unknown_never_falsely_down_and_its_first_rtt_is_the_links";
    if !require_root(name) {
        return Ok(());
    }
    // The default probe interval (5 s), as the demo runs.
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    f.add_site("gp-a", "north", false, SiteOpts::default())?;
    f.add_site("gp-b", "north", false, SiteOpts::default())?;

    // The first listing, straight after the agents started: links are up
    // or unknown, none "down".
    let list = f.cli(&["sites", "list"])?;
    eprintln!("{list}");
    assert!(!list.contains(" down"), "a false down:\n{list}");

    // The hub probes gp-a as soon as they have shaken hands: its first RTT
    // is the link's, not the time a probe waited for a handshake.
    let hub_view = |st: &Value| {
        st["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "gp-a"))
            .and_then(|p| p["rtt_seconds"].as_f64())
    };
    let rtt = wait_for(
        Duration::from_secs(30),
        "the hub's first RTT to gp-a",
        || Ok(hub_view(&f.agent_status("hub-n")?)),
    )?;
    let out = f.site("hub-n").gw.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "5",
        "-i",
        "0.2",
        &f.overlay("gp-a").to_string(),
    ])?;
    // rtt min/avg/max/mdev = 0.051/0.068/0.090/0.014 ms
    let avg_ms: f64 = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no RTT in ping's output: {out}"))?;
    eprintln!(
        "first probe RTT {:.3} ms, ping {avg_ms:.3} ms",
        rtt * 1000.0
    );
    assert!(
        (rtt * 1000.0 - avg_ms).abs() < 1.0,
        "first RTT {:.3} ms against ping's {avg_ms:.3} ms",
        rtt * 1000.0
    );
    // And no link shows down at the controller, then or now.
    let list = f.cli(&["sites", "list"])?;
    assert!(!list.contains(" down"), "a false down:\n{list}");
    Ok(())
}

/// A counter from an agent's /metrics text.
fn counter(text: &str, name: &str, peer: &str) -> Option<f64> {
    let prefix = format!("{name}{{peer=\"{peer}\"");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn loss_is_measured_truthfully() -> Result<()> {
    if !require_root("loss_is_measured_truthfully") {
        return Ok(());
    }
    let f = fleet(100, &["gp-a"])?;
    let metrics = |site: &str| -> Result<String> {
        let url = format!("http://{}/metrics", underlay(&f, site));
        f.site(site).gw.exec(&["curl", "-sf", &url])
    };
    // Wait for a clean link first.
    wait_for(Duration::from_secs(30), "gp-a up", || {
        let st = f.agent_status("gp-a")?;
        Ok((st["peers"][0]["up"] == true).then_some(()))
    })?;

    // 20 % of gp-a's outgoing underlay UDP dropped, in its namespace only.
    let gw = &f.site("gp-a").gw;
    gw.exec(&["nft", "add", "table", "inet", "wnloss"])?;
    gw.exec(&[
        "nft",
        "add chain inet wnloss out { type filter hook output priority 0 ; }",
    ])?;
    gw.exec(&[
        "nft",
        "add rule inet wnloss out meta l4proto udp numgen random mod 100 < 20 drop",
    ])?;

    let sample = |site: &str, peer: &str| -> Result<(f64, f64)> {
        let t = metrics(site)?;
        Ok((
            counter(&t, "wardnet_peer_probes_sent_total", peer).context("sent")?,
            counter(&t, "wardnet_peer_probes_lost_total", peer).context("lost")?,
        ))
    };
    let a0 = sample("gp-a", "hub-n")?;
    let h0 = sample("hub-n", "gp-a")?;
    // A few hundred probes each way.
    let (a1, h1) = wait_for(Duration::from_secs(120), "400 probes", || {
        let a1 = sample("gp-a", "hub-n")?;
        let h1 = sample("hub-n", "gp-a")?;
        Ok((a1.0 - a0.0 >= 400.0 && h1.0 - h0.0 >= 400.0).then_some((a1, h1)))
    })?;
    // A probe sent in the last interval may not be resolved yet: at most
    // one per side, well inside the tolerance.
    let ratio = |s0: (f64, f64), s1: (f64, f64)| (s1.1 - s0.1) / (s1.0 - s0.0);
    let from_spoke = ratio(a0, a1);
    let from_hub = ratio(h0, h1);
    eprintln!("measured loss: gp-a -> hub-n {from_spoke:.3}, hub-n -> gp-a {from_hub:.3}");
    assert!(
        (0.10..=0.30).contains(&from_spoke),
        "gp-a -> hub-n loss {from_spoke}"
    );
    assert!(
        (0.10..=0.30).contains(&from_hub),
        "hub-n -> gp-a loss {from_hub}"
    );
    Ok(())
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/prometheus/wardnet-alerts.yml"
    );
    let out = match std::process::Command::new("promtool")
        .args(["check", "rules", rules])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            wardnet_e2e::require(
                "shipped_alert_rules_pass_promtool",
                Err(format!(
                    "promtool not installed ({e}; apt-get install prometheus)"
                )),
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The flapping alert fires above three failovers in an hour, not at
/// three (`promtool test rules` on the shipped rules).
#[test]
fn the_flapping_alert_fires_above_three_failovers_in_an_hour() {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/prometheus/wardnet-alerts.yml"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let test = dir.path().join("flapping.yml");
    std::fs::write(
        &test,
        format!(
            r#"rule_files: ["{rules}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'wardnet_failovers_last_hour{{site="gp-3",region="north"}}'
        values: '0 1 2 3 3 3 3 3 3 3'
      - series: 'wardnet_failovers_last_hour{{site="gp-4",region="north"}}'
        values: '0 1 2 3 4 4 4 4 4 4'
    alert_rule_test:
      - eval_time: 9m
        alertname: WardnetHubFailoverFlapping
        exp_alerts:
          - exp_labels: {{site: gp-4, region: north, severity: warning}}
            exp_annotations:
              summary: "gp-4: 4 hub failovers in region north in the last hour"
              description: "Site gp-4 failed over away from a hub of region north more than 3 times in an hour; the hold-down keeps traffic off a flapping hub longer each time. Check the hub's uplink and `wardnet_peer_probes_lost_total` of the path."
"#
        ),
    )
    .expect("write");
    let out = match std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            wardnet_e2e::require(
                "the_flapping_alert_fires_above_three_failovers_in_an_hour",
                Err(format!(
                    "promtool not installed ({e}; apt-get install prometheus)"
                )),
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
