//! `wardnet-demo`: a working wardnet overlay on this machine, in network
//! namespaces, until Ctrl-C. Run through `scripts/demo.sh` (as root).
//!
//! Topology (see `wardnet_e2e::demo`): region `north` (hub-and-spoke) with
//! hub-north, gp-a and the NOC's site; region `south` (mesh) with hub-south,
//! gp-b and gp-c. Every GP site has a LAN host behind its gateway. gp-a's LAN
//! reaches gp-b's through hub-north and hub-south (hub mesh); gp-b reaches
//! gp-c directly (mesh region). Prometheus, in the NOC's site, scrapes every
//! agent through the overlay.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wardnet_e2e::demo;
use wardnet_e2e::fleet::Fleet;
use wardnet_e2e::traffic::{udp_round_trip, Echo};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn step(s: &str) {
    println!("\n==> {s}");
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and TUN devices: run it as root (sudo scripts/demo.sh)");
    }
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let result = run();
    if let Err(e) = &result {
        eprintln!("demo failed: {e:#}");
    }
    println!("\n==> removing every namespace, interface and process the demo made");
    result
}

fn run() -> Result<()> {
    let f = demo::build(&mut |what, f: &Fleet| {
        match what {
        "controller" => {
            step("started the controller (embedded SQLite store) in namespace wan, 198.51.100.254:8080");
            println!(
                "    store: {}",
                f.dir().join("controller/wardnet.db").display()
            );
            step("creating regions: north (hub-and-spoke) and south (mesh)");
        }
        "regions" => print!("{}", f.cli(&["regions", "list"]).unwrap_or_default()),
        "monitoring rule" => step(
            "policy: hubs admit only probes; the NOC's monitoring reaches every agent through one rule \
             (`policy add-rule --from site:noc --to all --proto tcp --port 9586`)",
        ),
        name => {
            let s = f.site(name);
            println!(
                "    site {name}: `wardnet-controller sites add` (one-time token), `wardnet-agent enroll`, `wardnet-agent run`\n    \
                 gateway {} underlay {} overlay {}{}",
                s.gw.name(),
                s.underlay,
                f.overlay(name),
                s.lan
                    .as_ref()
                    .map(|l| format!(" LAN {} (host {})", l.prefix, l.host))
                    .unwrap_or_default()
            );
        }
    }
    })?;

    step("traffic: gp-a's LAN host -> gp-b's LAN host (north -> hub-north -> hub-south -> gp-b)");
    let b = f.lan("gp-b").host;
    let echo_b = Echo::start(&f.lan("gp-b").ns, SocketAddr::from((b, 7000)))?;
    let msg = b"hello from gp-a's LAN".to_vec();
    let back = udp_round_trip(
        &f.lan("gp-a").ns,
        echo_b.addr,
        msg.clone(),
        Duration::from_secs(15),
    )?;
    println!(
        "    UDP echo via {}: sent {:?}, got back {:?}",
        echo_b.addr,
        String::from_utf8_lossy(&msg),
        String::from_utf8_lossy(&back)
    );
    print!(
        "{}",
        f.lan("gp-a")
            .ns
            .exec(&["ping", "-c", "3", "-i", "0.2", &b.to_string()])?
    );

    step(
        "traffic: gp-b's LAN host -> gp-c's LAN host (mesh region: directly, not through the hub)",
    );
    let c = f.lan("gp-c").host;
    print!(
        "{}",
        f.lan("gp-b")
            .ns
            .exec(&["ping", "-c", "3", "-i", "0.2", &c.to_string()])?
    );

    step("fleet status: `wardnet-controller sites list`");
    std::thread::sleep(Duration::from_secs(1));
    print!("{}", f.cli(&["sites", "list"])?);
    step("`wardnet-agent status` on gp-b");
    let gp_b = f.site("gp-b");
    print!(
        "{}",
        gp_b.gw
            .command(&f.bins.agent)
            .arg("--config")
            .arg(&gp_b.config)
            .arg("status")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .context("status")?
    );
    step("`wg show` on hub-south");
    let hs = f.site("hub-south");
    print!("{}", hs.gw.exec(&["wg", "show", &hs.iface])?);

    step("monitoring: the controller lists every agent for Prometheus (`wardnet-controller prometheus targets`)");
    print!("{}", f.cli(&["prometheus", "targets"])?);
    let noc = f.site(demo::NOC).gw.name().to_owned();
    let prom = match wardnet_e2e::prometheus::installed() {
        Ok(()) => {
            step(&format!(
                "starting Prometheus in the NOC site ({noc}): it scrapes the controller and, through the overlay, every agent"
            ));
            let p = demo::start_prometheus(&f)?;
            for t in p.targets()? {
                println!("    {:<18} {:<22} {}", t.job, t.instance, t.health);
            }
            let up = p.query("wardnet_peer_up")?;
            println!(
                "    wardnet_peer_up: {} series, {} of them up",
                up.len(),
                up.iter().filter(|(_, v)| *v == 1.0).count()
            );
            Some(p)
        }
        Err(why) => {
            println!("    ({why}; then run the demo again)");
            None
        }
    };

    println!("\nThe overlay is up. Try, in another terminal:");
    println!(
        "  ip netns exec {} ping {}",
        f.lan("gp-a").ns.name(),
        f.lan("gp-c").host
    );
    println!("  ip netns exec {} wg show {}", hs.gw.name(), hs.iface);
    println!(
        "  ip netns exec {} env WARDNET_URL={} WARDNET_TOKEN={} {} sites list",
        f.wan.name(),
        f.url,
        f.token,
        f.bins.controller.display()
    );
    if prom.is_some() {
        println!(
            "  ip netns exec {noc} curl -s 'http://{}/api/v1/query?query=wardnet_peer_up'",
            wardnet_e2e::prometheus::LISTEN
        );
    }
    println!("Press Ctrl-C to remove everything.");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(prom);
    drop(echo_b);
    Ok(())
}
