//! Hub failovers caused by random loss: a region with two hubs and four
//! spokes (real agents in network namespaces, default failover settings:
//! probes every 250 ms, failed after 4 misses in a row), and nftables in
//! each spoke's gateway namespace dropping a share of its UDP at random,
//! both ways (a lossy access line). Prints each spoke's failovers over the
//! run; the availability issue's goal is none at 2 % over 10 minutes.
//!
//!   cargo build --workspace
//!   cargo bench -p wardnet-e2e --bench failover_loss -- [--loss-percent 2] [--minutes 10]
//!
//! Needs root (namespaces, TUN) and nft.

// A bench binary prints its figures.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wardnet_e2e::fleet::{wait_for, Fleet, SiteOpts};

const LAN: SiteOpts = SiteOpts {
    lan: true,
    endpoint: false,
    org: None,
};

fn failovers(f: &Fleet, site: &str) -> Result<(u64, String)> {
    let st = f.agent_status(site)?;
    let groups = st["failover"].as_array().cloned().unwrap_or_default();
    let total = groups
        .iter()
        .filter_map(|g| g["failovers_total"].as_u64())
        .sum();
    let active = groups
        .iter()
        .find_map(|g| g["active"].as_str())
        .unwrap_or_default()
        .to_owned();
    Ok((total, active))
}

fn main() -> Result<()> {
    let mut loss = 2u32;
    let mut minutes = 10u64;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--loss-percent" => loss = v()?.parse()?,
            "--minutes" => minutes = v()?.parse()?,
            // cargo bench passes --bench.
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    if !wardnet_e2e::require_root("failover_loss") {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    f.add_site("hub-n1", "north", true, SiteOpts::default())?;
    f.add_site("hub-n2", "north", true, SiteOpts::default())?;
    let spokes = ["gp-a", "gp-b", "gp-c", "gp-d"];
    for s in spokes {
        f.add_site(s, "north", false, LAN)?;
    }
    wait_for(Duration::from_secs(30), "spokes on a hub", || {
        for s in spokes {
            if failovers(&f, s)?.1.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })?;
    // Past the start-up grace and any first handshakes.
    std::thread::sleep(Duration::from_secs(10));
    let before: Vec<(u64, String)> = spokes
        .iter()
        .map(|s| failovers(&f, s))
        .collect::<Result<_>>()?;
    for s in spokes {
        let gw = &f.site(s).gw;
        gw.exec(&["nft", "add", "table", "inet", "wnloss"])?;
        for (chain, hook) in [("in", "input"), ("out", "output")] {
            gw.exec(&[
                "nft",
                &format!(
                    "add chain inet wnloss {chain} {{ type filter hook {hook} priority 0 ; }}"
                ),
            ])?;
            gw.exec(&[
                "nft",
                &format!(
                    "add rule inet wnloss {chain} meta l4proto udp numgen random mod 100 < {loss} drop"
                ),
            ])?;
        }
    }
    println!(
        "{loss} % of UDP dropped at random both ways at {} spokes, {minutes} minutes",
        spokes.len()
    );
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(minutes * 60));
    let elapsed = start.elapsed();
    println!("| spoke | active hub before | failovers during the run | active hub after |");
    println!("|---|---|---|---|");
    let mut all = 0;
    for (s, (n0, a0)) in spokes.iter().zip(&before) {
        let (n1, a1) = failovers(&f, s)?;
        all += n1 - n0;
        println!("| {s} | {a0} | {} | {a1} |", n1 - n0);
    }
    println!(
        "failovers over {:.1} minutes at {loss} % loss: {all} (goal: 0)",
        elapsed.as_secs_f64() / 60.0
    );
    Ok(())
}
