//! What a region's hub agent costs at idle: one real hub agent (release
//! build, real TUN, in a network namespace) with N enrolled spokes, printed
//! as RSS, idle CPU, threads and time from start to config applied.
//!
//! Sizes: 1, 1,000, 5,000 and 10,000 spokes that are absent (the worst
//! case: every peer down), then once with every spoke up: a spoke emulator
//! in the wan namespace holds one boringtun state machine per spoke, shakes
//! hands with the hub (paced under the hub's handshake limit), keeps its
//! links warm (25 s keepalive) and answers the hub's probes.
//!
//!   cargo build --release --workspace
//!   cargo bench -p wardnet-e2e --bench hub_idle -- [--peers 1,1000,5000,10000]
//!       [--up 5000] [--idle-secs 60] [--soak-secs 0] [--spoke-probe-hz 0]
//!
//! `--spoke-probe-hz 4` has every emulated spoke also probe the hub (an
//! ICMP echo through its tunnel, four a second: what a spoke in a region
//! with two hubs sends its active hub), so the hub answers N × 4 echoes a
//! second.
//!
//! Needs root (namespaces, TUN). `--soak-secs 1800 --peers 5000 --up 0`
//! is the 30-minute memory run.

// A bench binary prints its figures.
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boringtun::noise::{Tunn, TunnResult};
use wardnet_common::PrivateKey;
use wardnet_e2e::fleet::{Fleet, SiteOpts};

struct Args {
    peers: Vec<usize>,
    up: usize,
    idle: Duration,
    soak: Duration,
    spoke_probe_hz: f64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        peers: vec![1, 1000, 5000, 10_000],
        up: 5000,
        idle: Duration::from_secs(60),
        soak: Duration::ZERO,
        spoke_probe_hz: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--peers" => {
                a.peers = v()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--up" => a.up = v()?.parse()?,
            "--idle-secs" => a.idle = Duration::from_secs(v()?.parse()?),
            "--soak-secs" => a.soak = Duration::from_secs(v()?.parse()?),
            "--spoke-probe-hz" => a.spoke_probe_hz = v()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = args()?;
    if unsafe { libc::geteuid() } != 0 {
        println!("hub_idle: skipped (needs root for namespaces and TUN)");
        return Ok(());
    }
    wardnet_agent::init_crypto();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("hub_idle: load average before: {}", load.trim());
    let mut fleet = Fleet::start_large_regions()?;
    println!(
        "{:>6}  {:>5}  {:>9}  {:>10}  {:>7}  {:>12}  {:>9}",
        "peers", "state", "RSS MiB", "CPU % (1c)", "threads", "to config s", "RSS Δ MiB"
    );
    for &n in &args.peers {
        let region = format!("r{n}");
        fleet.region(&region, false)?;
        let keys = spokes(&fleet, &region, n)?;
        drop(keys);
        let row = measure_hub(&mut fleet, &region, args.idle, args.soak, None, 0.0)?;
        row.print(n, "down");
    }
    if args.up > 0 {
        let n = args.up;
        let region = format!("u{n}");
        fleet.region(&region, false)?;
        let keys = spokes(&fleet, &region, n)?;
        let row = measure_hub(
            &mut fleet,
            &region,
            args.idle,
            args.soak,
            Some(keys),
            args.spoke_probe_hz,
        )?;
        row.print(n, "up");
    }
    Ok(())
}

struct Row {
    rss_mib: f64,
    cpu_pct: f64,
    threads: u64,
    to_config: Duration,
    growth_mib: Option<f64>,
    up: Option<usize>,
}

impl Row {
    fn print(&self, n: usize, state: &str) {
        println!(
            "{:>6}  {:>5}  {:>9.1}  {:>10.2}  {:>7}  {:>12.2}  {:>9}{}",
            n,
            state,
            self.rss_mib,
            self.cpu_pct,
            self.threads,
            self.to_config.as_secs_f64(),
            self.growth_mib.map_or("-".into(), |g| format!("{g:+.2}")),
            self.up
                .map_or(String::new(), |u| format!("  ({u} peers up at the hub)")),
        );
    }
}

/// An emulated spoke: its key and overlay address.
type Spoke = (PrivateKey, Ipv4Addr);

/// Create `n` spokes in `region` with their own keys, straight through the
/// admin API (from a thread inside the wan namespace).
fn spokes(fleet: &Fleet, region: &str, n: usize) -> Result<Vec<Spoke>> {
    let keys: Vec<PrivateKey> = (0..n).map(|_| PrivateKey::generate()).collect();
    let bodies: Vec<serde_json::Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            serde_json::json!({
                "name": format!("{region}-gp-{i}"),
                "region": region,
                "role": "spoke",
                "public_key": k.public_key().to_string(),
            })
        })
        .collect();
    let url = format!("{}/v1/sites", fleet.url);
    let token = fleet.token.clone();
    let t0 = Instant::now();
    let addrs = in_netns(fleet.wan.name(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = reqwest::Client::new();
            let mut pending =
                futures::stream::iter(bodies.into_iter().enumerate().map(|(i, b)| {
                    let client = client.clone();
                    let url = url.clone();
                    let token = token.clone();
                    async move {
                        let r = client
                            .post(&url)
                            .bearer_auth(&token)
                            .json(&b)
                            .send()
                            .await?;
                        if !r.status().is_success() {
                            bail!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                        }
                        let v: serde_json::Value = r.json().await?;
                        let addr: Ipv4Addr = v["site"]["addresses"]
                            .as_array()
                            .and_then(|a| {
                                a.iter()
                                    .filter_map(|a| a.as_str())
                                    .find(|a| !a.contains(':'))
                            })
                            .and_then(|a| a.split('/').next())
                            .context("no IPv4 overlay address")?
                            .parse()?;
                        Ok::<_, anyhow::Error>((i, addr))
                    }
                }))
                .buffer_unordered(8);
            use futures::StreamExt;
            let mut addrs = vec![Ipv4Addr::UNSPECIFIED; n];
            while let Some(r) = pending.next().await {
                let (i, a) = r?;
                addrs[i] = a;
            }
            Ok(addrs)
        })
    })?;
    let keys: Vec<Spoke> = keys.into_iter().zip(addrs).collect();
    eprintln!(
        "hub_idle: {n} spokes in {region} created in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(keys)
}

/// Run `f` on a thread inside the named network namespace.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: a valid namespace fd; setns changes this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// Start the region's hub, time its start from the controller, then let it
/// idle and measure it.
fn measure_hub(
    fleet: &mut Fleet,
    region: &str,
    idle: Duration,
    soak: Duration,
    up: Option<Vec<Spoke>>,
    probe_hz: f64,
) -> Result<Row> {
    let hub = format!("{region}-hub");
    fleet.add_site(&hub, region, true, SiteOpts::default())?;
    // Again, from nothing cached: start → the controller's config applied.
    fleet.stop_agent(&hub)?;
    let state = fleet.dir().join(format!("state-{hub}"));
    std::fs::remove_file(state.join("config.json")).context("no cached config to remove")?;
    let t0 = Instant::now();
    fleet.start_agent(&hub)?;
    let to_config = t0.elapsed();
    let pid = fleet
        .site(&hub)
        .agent
        .as_ref()
        .context("agent not running")?
        .pid();

    let stop = Arc::new(AtomicBool::new(false));
    let emulator = match up {
        None => None,
        Some(keys) => {
            let hub_addr = SocketAddr::from((fleet.site(&hub).underlay, 51820));
            let hub_key = fleet.public_key(&hub)?;
            let hub_ip = fleet.overlay(&hub);
            let stop = stop.clone();
            let ns = fleet.wan.name().to_owned();
            Some(std::thread::spawn(move || {
                in_netns(&ns, move || {
                    emulate_spokes(keys, hub_addr, &hub_key, (hub_ip, probe_hz), &stop)
                })
            }))
        }
    };
    let peers_up = || -> Result<usize> {
        let s = fleet.agent_status(&hub)?;
        Ok(s["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["state"] == "up").count()))
    };
    let mut up_count = None;
    if emulator.is_some() {
        // Every spoke shakes hands (paced), then everything settles.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let n = peers_up()?;
            up_count = Some(n);
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_secs(5));
            if peers_up()? == n && n > 0 {
                break;
            }
        }
    }
    // Settle: the start-up work (allocation, first probes) is not idle.
    std::thread::sleep(Duration::from_secs(10));
    let (rss0, threads) = proc_status(pid)?;
    let cpu0 = cpu_ticks(pid)?;
    std::thread::sleep(idle);
    let cpu1 = cpu_ticks(pid)?;
    let (rss1, _) = proc_status(pid)?;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_pct = (cpu1 - cpu0) as f64 / ticks / idle.as_secs_f64() * 100.0;
    let mut growth = None;
    if !soak.is_zero() {
        let mut last = rss1;
        let t = Instant::now();
        while t.elapsed() < soak {
            std::thread::sleep(Duration::from_secs(60).min(soak));
            last = proc_status(pid)?.0;
            eprintln!(
                "hub_idle: soak {:>5.0} s: RSS {:.2} MiB",
                t.elapsed().as_secs_f64(),
                last as f64 / 1024.0
            );
        }
        growth = Some((last as f64 - rss1 as f64) / 1024.0);
    }
    if emulator.is_some() {
        up_count = Some(peers_up()?);
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = emulator {
        let _ = t.join();
    }
    fleet.stop_agent(&hub)?;
    Ok(Row {
        rss_mib: rss0.max(rss1) as f64 / 1024.0,
        cpu_pct,
        threads,
        to_config,
        growth_mib: growth,
        up: up_count,
    })
}

/// VmRSS (KiB) and thread count of a process.
fn proc_status(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |k: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(k))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Ok((
        field("VmRSS:").context("no VmRSS")?,
        field("Threads:").context("no Threads")?,
    ))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = s.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

/// Many spokes on one UDP socket: one `Tunn` each (receiver index = spoke
/// index), handshakes paced under the hub's limit, probes answered; and,
/// with `probes.1` above 0, each spoke probing the hub at `probes.0` that
/// many times a second once every handshake had its time.
fn emulate_spokes(
    keys: Vec<Spoke>,
    hub: SocketAddr,
    hub_key: &str,
    probes: (Ipv4Addr, f64),
    stop: &AtomicBool,
) -> Result<()> {
    let hub_public = hub_key
        .trim()
        .parse::<wardnet_common::PublicKey>()
        .context("hub public key")?
        .to_dalek();
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(if probes.1 > 0.0 {
        2
    } else {
        20
    })))?;
    let mut tunns: Vec<Tunn> = keys
        .iter()
        .enumerate()
        .map(|(i, (k, _))| Tunn::new(k.to_dalek(), hub_public, None, Some(25), i as u32, None))
        .collect();
    let n = tunns.len().max(1);
    // Probing starts once every handshake had its time.
    let probe_from = Duration::from_secs_f64(n as f64 / 150.0 + 10.0);
    let (mut probes_sent, mut replies) = (0u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    let mut out = vec![0u8; 65_536];
    let mut next_start = 0usize;
    let started = Instant::now();
    let mut last_timers = Instant::now();
    // Handshakes per second we start: under the 1,000/s beyond which the
    // hub demands cookies.
    const PACE: f64 = 150.0;
    while !stop.load(Ordering::SeqCst) {
        let due = ((started.elapsed().as_secs_f64() * PACE) as usize).min(tunns.len());
        while next_start < due {
            if let TunnResult::WriteToNetwork(p) =
                tunns[next_start].format_handshake_initiation(&mut out, false)
            {
                sock.send_to(p, hub)?;
            }
            next_start += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let packet = &buf[..n];
                let idx = match Tunn::parse_incoming_packet(packet) {
                    Ok(boringtun::noise::Packet::HandshakeResponse(p)) => p.receiver_idx,
                    Ok(boringtun::noise::Packet::PacketCookieReply(p)) => p.receiver_idx,
                    Ok(boringtun::noise::Packet::PacketData(p)) => p.receiver_idx,
                    _ => continue,
                };
                let Some(t) = tunns.get_mut((idx >> 8) as usize) else {
                    continue;
                };
                let mut r = t.decapsulate(Some(from.ip()), packet, &mut out);
                loop {
                    match r {
                        TunnResult::WriteToNetwork(p) => {
                            sock.send_to(p, hub)?;
                            r = t.decapsulate(None, &[], &mut out);
                        }
                        TunnResult::WriteToTunnelV4(p, _) => {
                            if p.len() > 20 && p[9] == 1 && p[usize::from(p[0] & 0x0f) * 4] == 0 {
                                replies += 1;
                            }
                            if let Some(reply) = echo_reply(p) {
                                let mut enc = vec![0u8; reply.len() + 64];
                                if let TunnResult::WriteToNetwork(e) =
                                    t.encapsulate(&reply, &mut enc)
                                {
                                    sock.send_to(e, hub)?;
                                }
                            }
                            break;
                        }
                        _ => break,
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if probes.1 > 0.0 && started.elapsed() > probe_from {
            let t = (started.elapsed() - probe_from).as_secs_f64();
            let due = (t * probes.1 * n as f64) as u64;
            while probes_sent < due {
                let i = (probes_sent % n as u64) as usize;
                let req = echo_request(keys[i].1, probes.0, probes_sent as u16);
                if let TunnResult::WriteToNetwork(e) = tunns[i].encapsulate(&req, &mut out) {
                    sock.send_to(e, hub)?;
                }
                probes_sent += 1;
            }
        }
        if last_timers.elapsed() >= Duration::from_millis(250) {
            last_timers = Instant::now();
            for t in tunns.iter_mut().take(next_start) {
                if let TunnResult::WriteToNetwork(p) = t.update_timers(&mut out) {
                    sock.send_to(p, hub)?;
                }
            }
        }
    }
    if probes.1 > 0.0 {
        eprintln!("hub_idle: spoke probes sent {probes_sent}, answered {replies}");
    }
    Ok(())
}

/// An IPv4 ICMP echo request from `src` to `dst` (64 bytes).
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 64];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&64u16.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = wardnet_agent::health::icmp::checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&0x7764u16.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    let sum = wardnet_agent::health::icmp::checksum(&p[20..]);
    p[22..24].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The echo reply to an IPv4 ICMP echo request (addresses swapped, type 0,
/// checksum adjusted); `None` for anything else.
fn echo_reply(p: &[u8]) -> Option<Vec<u8>> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    if p.len() < ihl + 8 || p[9] != 1 || p[ihl] != 8 {
        return None;
    }
    let mut r = p.to_vec();
    let (src, dst) = (
        Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        Ipv4Addr::new(p[16], p[17], p[18], p[19]),
    );
    r[12..16].copy_from_slice(&dst.octets());
    r[16..20].copy_from_slice(&src.octets());
    r[ihl] = 0;
    r[ihl + 2] = 0;
    r[ihl + 3] = 0;
    let sum = wardnet_agent::health::icmp::checksum(&r[ihl..]);
    r[ihl + 2..ihl + 4].copy_from_slice(&sum.to_be_bytes());
    Some(r)
}
