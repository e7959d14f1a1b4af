//! The demo fleet (`scripts/demo.sh`, `wardnet-demo`), built the same way by
//! the demo and by the test that checks what the README promises of it.
//!
//! Region `north` (hub-and-spoke): hub-north, gp-a and `noc`, the NOC's own
//! site, where Prometheus runs. Region `south` (mesh): hub-south, gp-b and
//! gp-c. Every GP site has a LAN host behind its gateway.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::fleet::{wait_for, Fleet, SiteOpts};
use crate::prometheus::{self, Prometheus};

/// Every site of the demo: (name, region, hub, opts).
pub const SITES: &[(&str, &str, bool, SiteOpts)] = &[
    (
        "hub-north",
        "north",
        true,
        SiteOpts {
            lan: false,
            endpoint: false,
            org: None,
        },
    ),
    (
        "hub-south",
        "south",
        true,
        SiteOpts {
            lan: false,
            endpoint: false,
            org: None,
        },
    ),
    (
        "gp-a",
        "north",
        false,
        SiteOpts {
            lan: true,
            endpoint: false,
            org: None,
        },
    ),
    (
        "gp-b",
        "south",
        false,
        SiteOpts {
            lan: true,
            endpoint: true,
            org: None,
        },
    ),
    (
        "gp-c",
        "south",
        false,
        SiteOpts {
            lan: true,
            endpoint: true,
            org: None,
        },
    ),
    (
        "noc",
        "north",
        false,
        SiteOpts {
            lan: false,
            endpoint: false,
            org: None,
        },
    ),
];

/// The site whose gateway runs the NOC's Prometheus.
pub const NOC: &str = "noc";

/// Start the controller, create the regions and every site with a running
/// agent; `step` is told what happens.
pub fn build(step: &mut dyn FnMut(&str, &Fleet)) -> Result<Fleet> {
    let f = Fleet::start()?;
    step("controller", &f);
    f.region("north", false)?;
    f.region("south", true)?;
    step("regions", &f);
    let mut f = f;
    for (name, region, hub, opts) in SITES {
        f.add_site(name, region, *hub, *opts)?;
        step(name, &f);
    }
    // Hubs admit only probes: the NOC's monitoring reaches every agent's
    // metrics through one rule into all sites.
    f.monitoring_rule(&format!("site:{NOC}"))?;
    step("monitoring rule", &f);
    Ok(f)
}

/// The admin token Prometheus presents to the controller's http_sd
/// endpoint, in a file only root can read.
pub fn token_file(f: &Fleet) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = f.dir().join("prometheus-admin-token");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut file, f.token.as_bytes())?;
    Ok(path)
}

/// Start Prometheus in the NOC site's gateway with the NOC scrape config,
/// and wait until every agent the controller lists and the controller itself
/// are scraped successfully.
pub fn start_prometheus(f: &Fleet) -> Result<Prometheus> {
    let token = token_file(f)?;
    let dir = f.dir().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let p = Prometheus::start(
        &f.site(NOC).gw,
        &dir,
        &prometheus::noc_config(f, &token, "2s"),
    )?;
    let want = SITES.len() + 1;
    wait_for(Duration::from_secs(90), "every target up", || {
        let t = p.targets()?;
        Ok((t.len() == want && t.iter().all(|t| t.health == "up")).then_some(()))
    })
    .with_context(|| {
        let t = p.targets().unwrap_or_default();
        format!("targets: {t:?}")
    })?;
    Ok(p)
}
