//! Data-plane benchmark: TCP throughput (iperf3) and ping RTT between two
//! network namespaces joined by a veth pair, over
//!
//! - the raw veth pair (the ceiling),
//! - two wardnet data planes (this crate's `DataPlane`, release build),
//!   also while 10,000 garbage datagrams a second hit the receiver's port
//!   (`wardnet+garbage`),
//! - two `boringtun-cli --threads 1` (skipped when not installed),
//! - two `wireguard-go`,
//!
//! and the ratios between them. Root only. Run with
//! `cargo bench -p wardnet-agent --bench dataplane` (as root);
//! `BENCH_SECS` sets the iperf3 duration (default 10), and extra arguments
//! pick rows by name (`raw`, `wardnet`, `wardnet+garbage`, `boringtun`,
//! `wireguard-go`).
//!
//! Everything it creates (namespaces `wnb-<pid>-<n>-{a,b}`, child processes,
//! control sockets in /var/run/wireguard) is registered in [`CLEANUP`] and
//! removed on return, on panic and on Ctrl-C/SIGTERM.

// A benchmark's report is its stdout.
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use wardnet_agent::dataplane::{DataPlane, DataPlaneConfig, DataPlaneHandle};
use wardnet_agent::reconcile::PeerOp;
use wardnet_common::{PeerConfig, PrivateKey, PublicKey, Role};

const UNDERLAY_A: &str = "198.51.100.1";
const UNDERLAY_B: &str = "198.51.100.2";
const OVERLAY_A: &str = "100.64.0.1";
const OVERLAY_B: &str = "100.64.0.2";
const PORT: &str = "51820";
const MTU: u16 = 1420;

/// What must be removed from the host, whatever happens.
#[derive(Default)]
struct Cleanup {
    namespaces: Vec<String>,
    pids: Vec<i32>,
    sockets: Vec<String>,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    namespaces: Vec::new(),
    pids: Vec::new(),
    sockets: Vec::new(),
});
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn registry() -> std::sync::MutexGuard<'static, Cleanup> {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills our children (SIGTERM, then SIGKILL), deletes our namespaces and
/// control sockets. Idempotent.
fn cleanup_all() {
    let mut c = registry();
    for &pid in &c.pids {
        // SAFETY: pid is a child this process spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    for &pid in &c.pids {
        let mut status = 0;
        let mut reaped = false;
        for _ in 0..40 {
            // SAFETY: as above; WNOHANG never blocks.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != 0 {
                reaped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        if !reaped {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
        }
    }
    c.pids.clear();
    for s in c.sockets.drain(..) {
        let _ = std::fs::remove_file(s);
    }
    for ns in c.namespaces.drain(..) {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
}

/// Runs [`cleanup_all`] when dropped (normal return and panic unwinding).
struct Guard;
impl Drop for Guard {
    fn drop(&mut self) {
        cleanup_all();
    }
}

fn on_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        });
        eprintln!("interrupted: cleaning up");
        cleanup_all();
        std::process::exit(130);
    });
}

fn run(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn exec_in(ns: &str, cmd: &[&str]) -> Result<String, String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    run(&full)
}

/// Spawns `cmd` inside `ns`; `ip netns exec` execs, so the PID is the child's.
fn spawn_in(ns: &str, env: &[(&str, &str)], cmd: &[&str]) -> Result<i32, String> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
    // Reaped by cleanup_all (waitpid), not by `Child`.
    std::mem::forget(child);
    registry().pids.push(pid);
    Ok(pid)
}

fn kill_child(pid: i32) {
    let mut c = registry();
    c.pids.retain(|&p| p != pid);
    // SAFETY: pid is our unreaped child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

/// Two fresh namespaces joined by a veth pair (198.51.100.1 and .2).
fn two_hosts() -> Result<(String, String), String> {
    let n = std::process::id() % 100_000 * 10 + COUNTER.fetch_add(1, Ordering::SeqCst);
    let (a, b) = (format!("wnb-{n}-a"), format!("wnb-{n}-b"));
    for ns in [&a, &b] {
        run(&["ip", "netns", "add", ns])?;
        registry().namespaces.push(ns.clone());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    let (va, vb) = (format!("wnba{n}"), format!("wnbb{n}"));
    run(&[
        "ip", "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
    ])?;
    for (ns, dev, ip) in [(&a, &va, UNDERLAY_A), (&b, &vb, UNDERLAY_B)] {
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            dev,
        ])?;
        run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
    }
    Ok((a, b))
}

fn overlay(ns: &str, dev: &str, addr: &str, peer: &str) -> Result<(), String> {
    run(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/32"),
        "dev",
        dev,
    ])?;
    run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
    run(&[
        "ip",
        "-n",
        ns,
        "route",
        "add",
        &format!("{peer}/32"),
        "dev",
        dev,
    ])?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    mbit: f64,
    retransmits: u64,
    rtt_ms: f64,
    /// Average ping RTT while the iperf3 stream runs (queueing delay).
    loaded_rtt_ms: f64,
}

/// The average of a `ping -q` summary line.
fn ping_avg(out: &str) -> Result<f64, String> {
    out.lines()
        .find_map(|l| l.split_once(" = "))
        .and_then(|(_, v)| v.split('/').nth(1))
        .and_then(|avg| avg.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot parse ping output: {out}"))
}

/// ping RTT (avg, ms) then iperf3 throughput from A to B's `addr`.
fn measure(ns_a: &str, ns_b: &str, addr: &str, secs: u32) -> Result<Figures, String> {
    // Also completes the handshake before timing anything.
    let mut up = false;
    for _ in 0..20 {
        if exec_in(ns_a, &["ping", "-c", "1", "-W", "1", "-q", addr]).is_ok() {
            up = true;
            break;
        }
    }
    if !up {
        return Err(format!("{addr} unreachable from {ns_a}"));
    }
    let rtt_ms = ping_avg(&exec_in(
        ns_a,
        &["ping", "-c", "50", "-i", "0.01", "-q", addr],
    )?)?;

    let server = spawn_in(ns_b, &[], &["iperf3", "-s", "-1", "-B", addr])?;
    // RTT under load: pings every 10 ms from the stream's second second
    // to a second before its end, beside it.
    let pings = (secs.saturating_sub(2) * 100).max(10).to_string();
    let (ns, to) = (ns_a.to_owned(), addr.to_owned());
    let loaded = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1250));
        exec_in(&ns, &["ping", "-c", &pings, "-i", "0.01", "-q", &to])
    });
    let secs = secs.to_string();
    let mut last = String::new();
    let mut report = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        match exec_in(ns_a, &["iperf3", "-c", addr, "-t", &secs, "-J"]) {
            Ok(json) => {
                report = Some(json);
                break;
            }
            Err(e) => last = e,
        }
    }
    kill_child(server);
    let loaded_rtt_ms = loaded
        .join()
        .map_err(|_| "the loaded ping thread panicked".to_owned())?
        .and_then(|out| ping_avg(&out))?;
    let json = report.ok_or(last)?;
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("iperf3 JSON: no end.sum_received")?;
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok(Figures {
        mbit: bps / 1e6,
        retransmits,
        rtt_ms,
        loaded_rtt_ms,
    })
}

/// Runs a data plane inside `ns` on its own thread and runtime until `stop`.
struct Plane {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Plane {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_plane(ns: &str, config: DataPlaneConfig) -> Result<(Plane, DataPlaneHandle), String> {
    let path = format!("/var/run/netns/{ns}");
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let setup = || -> Result<tokio::runtime::Runtime, String> {
            let fd = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: fd is an open namespace file; setns only affects this thread.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        };
        let rt = match setup() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = handle_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let plane = match DataPlane::start(config).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = handle_tx.send(Err(format!("{:#}", anyhow::Error::new(e))));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(plane.handle()));
            let _ = stop_rx.await;
            if let Err(e) = plane.shutdown().await {
                eprintln!("data plane: {e}");
            }
        });
    });
    let plane = Plane {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let handle = handle_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())??;
    Ok((plane, handle))
}

fn peer(key: PublicKey, endpoint: Option<String>, allowed: &str) -> Result<PeerConfig, String> {
    Ok(PeerConfig {
        name: "bench-peer".parse().map_err(|_| "name")?,
        region: "bench".parse().map_err(|_| "region")?,
        role: Role::Spoke,
        public_key: key,
        endpoint: match endpoint {
            Some(e) => Some(e.parse().map_err(|_| "endpoint")?),
            None => None,
        },
        allowed_ips: [allowed.parse().map_err(|_| "prefix")?].into(),
        persistent_keepalive: None,
    })
}

fn bench_raw(secs: u32) -> Result<Figures, String> {
    let (a, b) = two_hosts()?;
    measure(&a, &b, UNDERLAY_B, secs)
}

/// Garbage datagrams sent per second at B's port by the `wardnet+garbage`
/// row, for the whole stream (100,000 over the default 10 s).
const GARBAGE_PER_SEC: u64 = 10_000;

/// Sends garbage at `to` from inside `ns` until `stop`: random datagrams and
/// ones shaped like each WireGuard message type, `GARBAGE_PER_SEC` a second.
/// Returns how many it sent.
fn garbage(
    ns: String,
    to: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        use rand::Rng;
        let path = format!("/var/run/netns/{ns}");
        let fd = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        // SAFETY: fd is an open namespace file; setns only affects this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        let mut rng = rand::thread_rng();
        let mut buf = [0u8; 1500];
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * GARBAGE_PER_SEC as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let (kind, len) = match sent % 5 {
                0 => (1u8, 148),
                1 => (2, 92),
                2 => (3, 64),
                3 => (4, rng.gen_range(32..1500)),
                _ => (rng.gen::<u8>(), rng.gen_range(1..1500)),
            };
            rng.fill(&mut buf[..len]);
            if sent % 5 != 4 {
                buf[0] = kind;
                buf[1..4].fill(0);
            }
            let _ = sock.send_to(&buf[..len], &to);
            sent += 1;
        }
        Ok(sent)
    })
}

fn bench_wardnet(secs: u32, with_garbage: bool) -> Result<Figures, String> {
    let (ns_a, ns_b) = two_hosts()?;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let (tun_a, tun_b) = (
        format!("wnb{}{n}a", std::process::id() % 10_000),
        format!("wnb{}{n}b", std::process::id() % 10_000),
    );
    let (key_a, key_b) = (PrivateKey::generate(), PrivateKey::generate());
    let (pub_a, pub_b) = (key_a.public_key(), key_b.public_key());
    let config = |interface: &str, private_key| DataPlaneConfig {
        interface: interface.to_owned(),
        mtu: MTU,
        private_key,
        listen_port: 51820,
        hub_of: None,
    };
    let (_plane_a, a) = start_plane(&ns_a, config(&tun_a, key_a))?;
    let (_plane_b, b) = start_plane(&ns_b, config(&tun_b, key_b))?;
    overlay(&ns_a, &tun_a, OVERLAY_A, OVERLAY_B)?;
    overlay(&ns_b, &tun_b, OVERLAY_B, OVERLAY_A)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ep = Some(format!("{UNDERLAY_B}:{PORT}"));
    rt.block_on(a.apply(vec![PeerOp::AddPeer(peer(pub_b, ep, "100.64.0.2/32")?)]))
        .map_err(|e| e.to_string())?;
    rt.block_on(b.apply(vec![PeerOp::AddPeer(peer(pub_a, None, "100.64.0.1/32")?)]))
        .map_err(|e| e.to_string())?;
    if !with_garbage {
        let figures = measure(&ns_a, &ns_b, OVERLAY_B, secs);
        let drops = |h: &DataPlaneHandle| {
            rt.block_on(h.snapshot())
                .map(|s| s.counters.drops.queue_delay)
                .unwrap_or(0)
        };
        println!(
            "wardnet: dropped for queueing delay: {} at A, {} at B",
            drops(&a),
            drops(&b)
        );
        return figures;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = garbage(ns_a.clone(), format!("{UNDERLAY_B}:{PORT}"), stop.clone());
    let figures = measure(&ns_a, &ns_b, OVERLAY_B, secs);
    stop.store(true, Ordering::Relaxed);
    let sent = flood
        .join()
        .map_err(|_| "the garbage thread panicked".to_owned())??;
    let drops = rt
        .block_on(b.snapshot())
        .map_err(|e| e.to_string())?
        .counters
        .drops;
    println!(
        "wardnet+garbage: {sent} garbage datagrams sent, {} counted as dropped by the receiver",
        drops.malformed + drops.decrypt + drops.unknown_peer
    );
    figures
}

/// Two external userspace implementations driven over their UAPI sockets.
fn bench_external(secs: u32, program: &[&str], env: &[(&str, &str)]) -> Result<Figures, String> {
    let (ns_a, ns_b) = two_hosts()?;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() % 10_000;
    let (dev_a, dev_b) = (format!("wnb{pid}{n}a"), format!("wnb{pid}{n}b"));
    let (key_a, key_b) = (PrivateKey::generate(), PrivateKey::generate());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (ns, dev) in [(&ns_a, &dev_a), (&ns_b, &dev_b)] {
        let sock = format!("/var/run/wireguard/{dev}.sock");
        registry().sockets.push(sock.clone());
        let mut cmd = program.to_vec();
        cmd.push(dev);
        spawn_in(ns, env, &cmd)?;
        let mut ready = false;
        for _ in 0..100 {
            if std::path::Path::new(&sock).exists() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !ready {
            return Err(format!("{program:?} did not create {sock}"));
        }
    }
    let sides = [
        (
            &ns_a,
            &dev_a,
            &key_a,
            &key_b,
            OVERLAY_A,
            OVERLAY_B,
            Some(UNDERLAY_B),
        ),
        (&ns_b, &dev_b, &key_b, &key_a, OVERLAY_B, OVERLAY_A, None),
    ];
    for (ns, dev, key, peer_key, addr, peer_addr, endpoint) in sides {
        let key_path = dir.path().join(format!("{dev}.key"));
        std::fs::write(&key_path, key.to_base64()).map_err(|e| e.to_string())?;
        let key_path = key_path.to_str().ok_or("non-UTF-8 temp path")?.to_owned();
        let peer_pub = peer_key.public_key().to_string();
        let allowed = format!("{peer_addr}/32");
        let ep = endpoint.map(|e| format!("{e}:{PORT}"));
        let mut cmd = vec![
            "wg",
            "set",
            dev,
            "listen-port",
            PORT,
            "private-key",
            &key_path,
            "peer",
            &peer_pub,
            "allowed-ips",
            &allowed,
        ];
        if let Some(ep) = &ep {
            cmd.extend_from_slice(&["endpoint", ep]);
        }
        exec_in(ns, &cmd)?;
        run(&["ip", "-n", ns, "link", "set", dev, "mtu", &MTU.to_string()])?;
        overlay(ns, dev, addr, peer_addr)?;
    }
    measure(&ns_a, &ns_b, OVERLAY_B, secs)
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the data-plane benchmark needs root (network namespaces, TUN)");
        return;
    }
    on_signals();
    let _guard = Guard;
    let secs: u32 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    if !installed("iperf3") || !installed("ping") {
        println!("SKIPPED: needs iperf3 and ping (apt install iperf3 iputils-ping)");
        return;
    }

    type Row = (&'static str, Box<dyn Fn() -> Result<Figures, String>>);
    let mut rows: Vec<Row> = vec![
        ("raw veth", Box::new(move || bench_raw(secs))),
        ("wardnet", Box::new(move || bench_wardnet(secs, false))),
        (
            "wardnet+garbage",
            Box::new(move || bench_wardnet(secs, true)),
        ),
    ];
    if installed("boringtun-cli") {
        rows.push((
            "boringtun-cli",
            Box::new(move || {
                bench_external(
                    secs,
                    &["boringtun-cli", "--threads", "1", "--foreground"],
                    &[("WG_SUDO", "true")],
                )
            }),
        ));
    } else if wanted("boringtun-cli") {
        println!("boringtun-cli: SKIPPED, not installed (cargo install boringtun-cli --locked)");
    }
    if installed("wireguard-go") {
        rows.push((
            "wireguard-go",
            Box::new(move || bench_external(secs, &["wireguard-go", "-f"], &[])),
        ));
    } else if wanted("wireguard-go") {
        println!("wireguard-go: SKIPPED, not installed (apt install wireguard-go)");
    }

    println!("data-plane benchmark: iperf3 -t {secs} (TCP, 1 stream), ping avg of 50 idle and every 10 ms under the stream; MTU {MTU}");
    let mut results: Vec<(&str, Figures)> = Vec::new();
    for (name, f) in rows.iter().filter(|(n, _)| wanted(n)) {
        let r = f();
        cleanup_all();
        match r {
            Ok(fig) => {
                println!(
                    "{name:<14} {:>9.0} Mbit/s  retransmits {:>6}  rtt {:.3} ms  loaded rtt {:.3} ms",
                    fig.mbit, fig.retransmits, fig.rtt_ms, fig.loaded_rtt_ms
                );
                results.push((name, fig));
            }
            Err(e) => println!("{name:<14} FAILED: {e}"),
        }
    }
    let get = |n: &str| results.iter().find(|(r, _)| *r == n).map(|(_, f)| *f);
    let ratio = |a: &str, b: &str| {
        if let (Some(x), Some(y)) = (get(a), get(b)) {
            println!(
                "{a} / {b}: throughput {:.2}x, rtt {:.2}x, loaded rtt {:.2}x",
                x.mbit / y.mbit,
                x.rtt_ms / y.rtt_ms,
                x.loaded_rtt_ms / y.loaded_rtt_ms
            );
        }
    };
    ratio("wardnet+garbage", "wardnet");
    ratio("wardnet", "boringtun-cli");
    ratio("wardnet", "wireguard-go");
    for (name, _) in &results {
        if *name != "raw veth" {
            ratio(name, "raw veth");
        }
    }
}
