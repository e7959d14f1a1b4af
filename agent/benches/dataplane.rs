//! Data-plane benchmark: TCP throughput (iperf3: one stream, four, and one
//! each way at once), ping RTT idle and beside the single stream, and the
//! daemons' CPU time per GB, between network namespaces, over
//!
//! - `raw veth`: a veth pair itself (the ceiling);
//! - `wardnet`: two real agents (the release `wardnet-agent` binary)
//!   enrolled through a real controller (`wardnet-controller`, embedded
//!   store), a region's hub and one spoke on an underlay bridge, the spoke
//!   streaming to the hub;
//! - `wardnet-3-spokes`: the same with three spokes streaming to the hub at
//!   once (each column their sum);
//! - `wardnet-plane`: two of this crate's `DataPlane`s (the code the agent
//!   runs, in this process) on a veth pair, like the external rows: the
//!   baseline for the four below;
//! - `wardnet-hub`: the same with 4,000 idle peers on the receiving side,
//!   as a region's hub holds;
//! - `wardnet+garbage`: the same while 10,000 garbage datagrams a second
//!   (100,000 in the default 10 s) hit the receiver's port;
//! - `wardnet+flood`: the same while 20,000 forged handshake initiations
//!   (valid mac1) hit it as fast as one socket sends, with a probe through
//!   the tunnel every millisecond to time the longest stall;
//! - `wardnet+1000-rules`: the same with the policy filter on both sides,
//!   1,000 rules each, the measured flows admitted by the last rule (and
//!   their replies passing as replies);
//! - `boringtun-cli-1` and `boringtun-cli`: boringtun-cli 0.7.1 with
//!   `--threads 1` and with its default threads (skipped when not
//!   installed);
//! - `wireguard-go` (skipped when not installed);
//!
//! every row once per round, rounds one after the other (`BENCH_ROUNDS`,
//! default 3), then each row's medians and the ratios the targets are
//! about. Root only. Run with
//! `cargo build --release --workspace && cargo bench -p wardnet-agent --bench dataplane`
//! (as root: the `wardnet` rows run the release binaries);
//! `BENCH_SECS` sets each iperf3 run's duration (default 10), and extra
//! arguments pick rows by name.
//!
//! Everything it creates (namespaces `wnb-<pid>-<n>-{a,b}`, child processes,
//! control sockets in /var/run/wireguard) is registered in [`CLEANUP`] and
//! removed on return, on panic and on Ctrl-C/SIGTERM; the fleet of the
//! `wardnet` rows (namespaces `wn-*`) removes itself when the row ends.

// A benchmark's report is its stdout.
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[path = "../tests/support/forge.rs"]
mod forge;

use forge::{forged_initiations, garbage_datagram};
use wardnet_agent::dataplane::{DataPlane, DataPlaneConfig, DataPlaneHandle};
use wardnet_agent::reconcile::PeerOp;
use wardnet_common::{PeerConfig, PrivateKey, PublicKey, Role};
use wardnet_e2e::fleet::{Fleet, SiteOpts};

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

/// One row's figures in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    /// One TCP stream.
    mbit: f64,
    retransmits: u64,
    /// Four TCP streams at once.
    mbit4: f64,
    retransmits4: u64,
    /// One TCP stream each way at once (both directions' sum).
    mbit_bidir: f64,
    rtt_ms: f64,
    /// Average ping RTT while the single stream runs (queueing delay).
    loaded_rtt_ms: f64,
    /// CPU seconds both daemons spent per GB carried (all three runs).
    cpu_s_per_gb: Option<f64>,
}

/// Cumulative CPU seconds of the daemons a row runs.
type CpuClock = Box<dyn Fn() -> f64>;

/// CPU seconds (user + system) from a /proc/.../stat line.
fn stat_cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // After the command in parentheses: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

fn process_cpu(pids: Vec<i32>) -> CpuClock {
    Box::new(move || {
        pids.iter()
            .map(|p| stat_cpu_seconds(&format!("/proc/{p}/stat")))
            .sum()
    })
}

fn thread_cpu(tids: Vec<i32>) -> CpuClock {
    Box::new(move || {
        tids.iter()
            .map(|t| stat_cpu_seconds(&format!("/proc/self/task/{t}/stat")))
            .sum()
    })
}

/// The data planes' writer threads in this process (`wardnet-udp-out`,
/// `wardnet-tun-out`): their CPU is the planes' too.
fn writer_threads() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            comm.starts_with("wardnet-")
                .then(|| t.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The average of a `ping -q` summary line.
fn ping_avg(out: &str) -> Result<f64, String> {
    out.lines()
        .find_map(|l| l.split_once(" = "))
        .and_then(|(_, v)| v.split('/').nth(1))
        .and_then(|avg| avg.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot parse ping output: {out}"))
}

/// iperf3 runs from each of `clients` to B's `addr` at once, each with
/// `streams` streams (`bidir`: as many each way): Mbit/s (all clients, both
/// ways together), retransmits and bytes carried.
fn iperf(
    clients: &[&str],
    ns_b: &str,
    addr: &str,
    secs: u32,
    streams: u32,
    bidir: bool,
) -> Result<(f64, u64, f64), String> {
    let runs: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, ns_a)| {
            let (ns_a, ns_b, addr) = (ns_a.to_string(), ns_b.to_owned(), addr.to_owned());
            let port = 5201 + i as u16;
            std::thread::spawn(move || iperf_one(&ns_a, &ns_b, &addr, port, secs, streams, bidir))
        })
        .collect();
    let mut sum = (0.0, 0, 0.0);
    for run in runs {
        let (mbit, retransmits, bytes) = run
            .join()
            .map_err(|_| "an iperf3 thread panicked".to_owned())??;
        sum = (sum.0 + mbit, sum.1 + retransmits, sum.2 + bytes);
    }
    Ok(sum)
}

/// One iperf3 client run from A to B's `addr`:`port`.
fn iperf_one(
    ns_a: &str,
    ns_b: &str,
    addr: &str,
    port: u16,
    secs: u32,
    streams: u32,
    bidir: bool,
) -> Result<(f64, u64, f64), String> {
    let port = port.to_string();
    let server = spawn_in(ns_b, &[], &["iperf3", "-s", "-1", "-B", addr, "-p", &port])?;
    let (secs, streams) = (secs.to_string(), streams.to_string());
    let mut args = vec![
        "iperf3", "-c", addr, "-p", &port, "-t", &secs, "-P", &streams, "-J",
    ];
    if bidir {
        args.push("--bidir");
    }
    let mut last = String::new();
    let mut report = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        match exec_in(ns_a, &args) {
            Ok(json) => {
                report = Some(json);
                break;
            }
            Err(e) => last = e,
        }
    }
    kill_child(server);
    let json = report.ok_or(last)?;
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    let mut bps = 0.0;
    let mut bytes = 0.0;
    let mut retransmits = 0;
    let ways: &[&str] = if bidir {
        &["", "_bidir_reverse"]
    } else {
        &[""]
    };
    for way in ways {
        let received = &v["end"][format!("sum_received{way}")];
        bps += received["bits_per_second"]
            .as_f64()
            .ok_or_else(|| format!("iperf3 JSON: no end.sum_received{way}"))?;
        bytes += received["bytes"].as_f64().unwrap_or(0.0);
        retransmits += v["end"][format!("sum_sent{way}")]["retransmits"]
            .as_u64()
            .unwrap_or(0);
    }
    Ok((bps / 1e6, retransmits, bytes))
}

/// Something to run beside the single stream (it starts with it); its
/// line is printed after the row's.
type During = Box<dyn FnOnce() -> Result<String, String> + Send>;

/// ping RTT (avg, ms), then one stream with pings beside it (and `during`,
/// if any), then four streams, then one each way, all from A to B's
/// `addr`; `cpu` (if any) is read around the streams.
fn measure(
    ns_a: &str,
    ns_b: &str,
    addr: &str,
    secs: u32,
    cpu: Option<&CpuClock>,
    during: Option<During>,
) -> Result<(Figures, Option<String>), String> {
    measure_from(&[ns_a], ns_b, addr, secs, cpu, during)
}

/// `measure` with several clients at once (each its own streams; the
/// pings go from the first).
fn measure_from(
    clients: &[&str],
    ns_b: &str,
    addr: &str,
    secs: u32,
    cpu: Option<&CpuClock>,
    during: Option<During>,
) -> Result<(Figures, Option<String>), String> {
    // Also completes the handshake before timing anything.
    let mut up = false;
    let ns_a = clients.first().ok_or("no client")?;
    for _ in 0..20 {
        if clients
            .iter()
            .all(|c| exec_in(c, &["ping", "-c", "1", "-W", "1", "-q", addr]).is_ok())
        {
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

    let cpu_before = cpu.map(|c| c());
    // RTT under load: pings every 10 ms from the stream's second second
    // to a second before its end, beside it.
    let pings = (secs.saturating_sub(2) * 100).max(10).to_string();
    let (ns, to) = (ns_a.to_string(), addr.to_owned());
    let loaded = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1250));
        exec_in(&ns, &["ping", "-c", &pings, "-i", "0.01", "-q", &to])
    });
    let beside = during.map(std::thread::spawn);
    let single = iperf(clients, ns_b, addr, secs, 1, false);
    let loaded_rtt_ms = loaded
        .join()
        .map_err(|_| "the loaded ping thread panicked".to_owned())?
        .and_then(|out| ping_avg(&out));
    let note = match beside {
        Some(t) => Some(
            t.join()
                .map_err(|_| "a thread beside the stream panicked".to_owned())??,
        ),
        None => None,
    };
    let (mbit, retransmits, bytes1) = single?;
    let loaded_rtt_ms = loaded_rtt_ms?;
    let (mbit4, retransmits4, bytes4) = iperf(clients, ns_b, addr, secs, 4, false)?;
    let (mbit_bidir, _, bytes_bidir) = iperf(clients, ns_b, addr, secs, 1, true)?;
    let cpu_s_per_gb = match (cpu, cpu_before) {
        (Some(c), Some(before)) => Some((c() - before) / ((bytes1 + bytes4 + bytes_bidir) / 1e9)),
        _ => None,
    };
    Ok((
        Figures {
            mbit,
            retransmits,
            mbit4,
            retransmits4,
            mbit_bidir,
            rtt_ms,
            loaded_rtt_ms,
            cpu_s_per_gb,
        },
        note,
    ))
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

/// The plane, its handle and the thread it runs on (all of its work: a
/// current-thread runtime).
fn start_plane(ns: &str, config: DataPlaneConfig) -> Result<(Plane, DataPlaneHandle, i32), String> {
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
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let _ = handle_tx.send(Ok((plane.handle(), tid)));
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
    let (handle, tid) = handle_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())??;
    Ok((plane, handle, tid))
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

fn bench_raw(secs: u32) -> Result<(Figures, Option<String>), String> {
    let (a, b) = two_hosts()?;
    measure(&a, &b, UNDERLAY_B, secs, None, None)
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
            let _ = sock.send_to(garbage_datagram(sent, &mut rng, &mut buf), &to);
            sent += 1;
        }
        Ok(sent)
    })
}

/// Which wardnet row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Two data planes, one peer each.
    Plain,
    /// B also holds `HUB_PEERS` idle peers, as a region's hub does.
    Hub,
    /// Garbage at B's port for the whole run.
    Garbage,
    /// A flood of forged handshake initiations at B during the stream.
    Flood,
    /// Both sites filter with [`POLICY_RULES`] rules; A's traffic into B
    /// is admitted by the last of them.
    Policy,
}

/// Rules in each site's filter in the `wardnet+1000-rules` row.
const POLICY_RULES: u32 = 1_000;

/// The filter of the site at `me` (a /32 of the overlay) in an
/// organisation of its own, compiled as the controller compiles it, from
/// `POLICY_RULES` rules into that organisation as a large trust would
/// have: from other organisations (each a site address and a LAN), TCP and
/// UDP to assorted ports; the last admits the site at `admit` (the other
/// end) to TCP 5201 (iperf3). The flows measured are judged by that last
/// rule.
fn policy_filter(me: &str, admit: &str) -> Result<wardnet_common::filter::SiteFilter, String> {
    use wardnet_common::policy::{Party, PortRange, Proto, Rule, Source, Target};
    let name = |s: &str| s.parse::<wardnet_common::Name>().map_err(|e| e.0);
    let addr = |s: &str| s.parse::<std::net::IpAddr>().map_err(|e| e.to_string());
    let to = Party {
        site: name("site-me")?,
        org: name("trust-me")?,
        region: name("north")?,
        overlay: [addr(me)?].into(),
        hub: false,
    };
    let mut rules = Vec::new();
    for i in 1..POLICY_RULES {
        rules.push(Rule {
            id: u64::from(i),
            from: Source::Org(name(&format!("org-{i}"))?),
            to: Target::Org(to.org.clone()),
            proto: if i % 2 == 0 { Proto::Tcp } else { Proto::Udp },
            ports: vec![PortRange {
                lo: 1000 + i as u16,
                hi: 1000 + i as u16,
            }],
            description: String::new(),
        });
    }
    rules.push(Rule {
        id: u64::from(POLICY_RULES),
        from: Source::Site(name("site-other")?),
        to: Target::Site(to.site.clone()),
        proto: Proto::Tcp,
        ports: vec![PortRange { lo: 5201, hi: 5201 }],
        description: String::new(),
    });
    let sources = |s: &Source| -> Vec<ipnet::IpNet> {
        let net = |t: String| t.parse().expect("a prefix");
        match s {
            Source::Site(n) if n.as_str() == "site-other" => vec![net(format!("{admit}/32"))],
            Source::Org(n) if n.as_str() == "trust-me" => vec![net("100.65.0.0/24".into())],
            Source::Org(n) => {
                let i: u32 = n.as_str()[4..].parse().expect("org-N");
                let (hi, lo) = (i / 250, i % 250);
                vec![
                    net(format!("100.66.{hi}.{lo}/32")),
                    net(format!("10.{}.{lo}.0/24", 20 + hi)),
                ]
            }
            _ => Vec::new(),
        }
    };
    let filter = wardnet_common::filter::compile(
        &to,
        &Default::default(),
        &rules,
        &[] as &[wardnet_common::policy::Service],
        sources,
    );
    if filter.admits_everything() {
        return Err("the site is not filtered".to_owned());
    }
    Ok(filter)
}

/// Idle peers the `wardnet-hub` row's B holds besides A.
const HUB_PEERS: u32 = 4_000;
/// Forged initiations the `wardnet+flood` row sends.
const FLOOD: u32 = 20_000;

/// Runs `f` on a new thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> std::thread::JoinHandle<Result<T, String>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        // SAFETY: fd is an open namespace file; setns only affects this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        f()
    })
}

/// `HUB_PEERS` idle spokes: their own keys, endpoints and /32 plus LAN /28.
fn idle_spokes() -> Result<Vec<PeerOp>, String> {
    (0..HUB_PEERS)
        .map(|i| {
            let overlay = format!("100.65.{}.{}/32", i / 256, i % 256);
            let lan = format!("100.96.{}.{}/28", (i * 16) / 256, (i * 16) % 256);
            let endpoint = format!("203.0.113.{}:{}", 1 + i % 250, 20_000 + i);
            Ok(PeerOp::AddPeer(PeerConfig {
                name: format!("spoke-{i}").parse().map_err(|_| "name")?,
                region: "bench".parse().map_err(|_| "region")?,
                role: Role::Spoke,
                public_key: PrivateKey::generate().public_key(),
                endpoint: Some(endpoint.parse().map_err(|_| "endpoint")?),
                allowed_ips: [
                    overlay.parse().map_err(|_| "prefix")?,
                    lan.parse().map_err(|_| "prefix")?,
                ]
                .into(),
                persistent_keepalive: None,
            }))
        })
        .collect()
}

/// Beside the stream: a probe through the tunnel every millisecond, and
/// after a second of it `FLOOD` forged initiations at B as fast as one
/// socket sends them. Reports the probe's longest gap before and during
/// the flood, and the cookie replies the flood's socket heard.
fn flood_beside(ns_a: String, ns_b: String, public_b: PublicKey) -> During {
    Box::new(move || {
        let forged = forged_initiations(public_b, FLOOD);
        std::thread::sleep(Duration::from_millis(1500));
        let receiver = in_ns(&ns_b, || {
            let sock = std::net::UdpSocket::bind(format!("{OVERLAY_B}:9001"))
                .map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))
                .map_err(|e| e.to_string())?;
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 16];
            while let Ok(n) = sock.recv(&mut buf) {
                if n == 1 {
                    break;
                }
                arrivals.push(std::time::Instant::now());
            }
            Ok(arrivals)
        });
        std::thread::sleep(Duration::from_millis(100));
        let probe = in_ns(&ns_a, || {
            let sock =
                std::net::UdpSocket::bind(format!("{OVERLAY_A}:0")).map_err(|e| e.to_string())?;
            let start = std::time::Instant::now();
            let mut sent = 0u32;
            while start.elapsed() < Duration::from_secs(3) {
                let _ = sock.send_to(&sent.to_be_bytes(), format!("{OVERLAY_B}:9001"));
                sent += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            for _ in 0..5 {
                let _ = sock.send_to(&[0], format!("{OVERLAY_B}:9001"));
            }
            Ok(sent)
        });
        std::thread::sleep(Duration::from_secs(1));
        let flood = in_ns(&ns_a, move || {
            let sock = std::net::UdpSocket::bind(format!("{UNDERLAY_A}:40001"))
                .map_err(|e| e.to_string())?;
            let start = std::time::Instant::now();
            for m in &forged {
                let _ = sock.send_to(m, format!("{UNDERLAY_B}:{PORT}"));
            }
            let end = std::time::Instant::now();
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .map_err(|e| e.to_string())?;
            let mut cookies = 0u32;
            let mut buf = [0u8; 256];
            while let Ok(n) = sock.recv(&mut buf) {
                cookies += u32::from(n == 64 && buf[0] == 3);
            }
            Ok((start, end, cookies))
        });
        let (start, end, cookies) = flood.join().map_err(|_| "flood thread panicked")??;
        let sent = probe.join().map_err(|_| "probe thread panicked")??;
        let arrivals = receiver.join().map_err(|_| "receiver thread panicked")??;
        let longest = |from: std::time::Instant, to: std::time::Instant| {
            arrivals
                .windows(2)
                .filter(|w| w[1] > from && w[0] < to)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3
        };
        let first = arrivals.first().copied().unwrap_or(start);
        let took = (end - start).as_secs_f64();
        Ok(format!(
            "flood: {FLOOD} forged initiations in {:.0} ms ({:.0}/s), {cookies} cookie replies heard; \
             1 ms probe through the tunnel: longest gap {:.1} ms during the flood, {:.1} ms in the second before; \
             {} of {sent} probes arrived",
            took * 1e3,
            f64::from(FLOOD) / took.max(1e-9),
            longest(start, end + Duration::from_millis(50)),
            longest(first, start),
            arrivals.len()
        ))
    })
}

fn bench_wardnet(secs: u32, variant: Variant) -> Result<(Figures, Option<String>), String> {
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
    let (_plane_a, a, tid_a) = start_plane(&ns_a, config(&tun_a, key_a))?;
    let (_plane_b, b, tid_b) = start_plane(&ns_b, config(&tun_b, key_b))?;
    overlay(&ns_a, &tun_a, OVERLAY_A, OVERLAY_B)?;
    overlay(&ns_b, &tun_b, OVERLAY_B, OVERLAY_A)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ep = Some(format!("{UNDERLAY_B}:{PORT}"));
    rt.block_on(a.apply(vec![PeerOp::AddPeer(peer(pub_b, ep, "100.64.0.2/32")?)]))
        .map_err(|e| e.to_string())?;
    let mut ops = vec![PeerOp::AddPeer(peer(pub_a, None, "100.64.0.1/32")?)];
    if variant == Variant::Hub {
        ops.extend(idle_spokes()?);
    }
    rt.block_on(b.apply(ops)).map_err(|e| e.to_string())?;
    let mut tids = vec![tid_a, tid_b];
    tids.extend(writer_threads());
    let cpu = thread_cpu(tids);
    let snapshot = |h: &DataPlaneHandle| rt.block_on(h.snapshot()).map_err(|e| e.to_string());
    match variant {
        Variant::Plain | Variant::Hub => {
            let (figures, _) = measure(&ns_a, &ns_b, OVERLAY_B, secs, Some(&cpu), None)?;
            let peers = snapshot(&b)?.peers.len();
            let queue =
                snapshot(&a)?.counters.drops.queue_delay + snapshot(&b)?.counters.drops.queue_delay;
            let note =
                format!("B held {peers} peers; {queue} datagrams dropped for queueing delay");
            Ok((figures, Some(note)))
        }
        Variant::Policy => {
            rt.block_on(a.set_filter(Some(policy_filter(OVERLAY_A, OVERLAY_B)?)))
                .map_err(|e| e.to_string())?;
            rt.block_on(b.set_filter(Some(policy_filter(OVERLAY_B, OVERLAY_A)?)))
                .map_err(|e| e.to_string())?;
            let (figures, _) = measure(&ns_a, &ns_b, OVERLAY_B, secs, Some(&cpu), None)?;
            let (pa, pb) = (snapshot(&a)?.policy, snapshot(&b)?.policy);
            let note = format!(
                "{POLICY_RULES} rules each side; B admitted {:?}, denied {}; A passed {} replies, denied {}",
                pb.admitted, pb.denied, pa.replies, pa.denied
            );
            Ok((figures, Some(note)))
        }
        Variant::Garbage => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flood = garbage(ns_a.clone(), format!("{UNDERLAY_B}:{PORT}"), stop.clone());
            let figures = measure(&ns_a, &ns_b, OVERLAY_B, secs, Some(&cpu), None);
            stop.store(true, Ordering::Relaxed);
            let sent = flood
                .join()
                .map_err(|_| "the garbage thread panicked".to_owned())??;
            let d = snapshot(&b)?.counters.drops;
            let note = format!(
                "{sent} garbage datagrams sent, {} counted as dropped by the receiver",
                d.malformed + d.decrypt + d.unknown_peer + d.handshake_limited
            );
            Ok((figures?.0, Some(note)))
        }
        Variant::Flood => {
            // Beside the stream, and then alone: a probe's gaps beside a
            // stream on two cores are the stream's queueing as much as
            // the flood's.
            let before = snapshot(&b)?.counters;
            let during = flood_beside(ns_a.clone(), ns_b.clone(), pub_b);
            let (figures, note) = measure(&ns_a, &ns_b, OVERLAY_B, secs, Some(&cpu), Some(during))?;
            let alone = flood_beside(ns_a.clone(), ns_b.clone(), pub_b)()?;
            let note = format!(
                "beside the stream: {}\n{:<16} alone: {alone}",
                note.unwrap_or_default(),
                ""
            );
            let after = snapshot(&b)?.counters;
            let note = format!(
                "{note}\n{:<16} both floods: B sent {} cookie replies, did {} DHs for strangers, dropped {} unread",
                "",
                after.cookie_replies - before.cookie_replies,
                after.drops.unknown_peer - before.drops.unknown_peer,
                after.drops.handshake_limited - before.drops.handshake_limited
            );
            Ok((figures, Some(note)))
        }
    }
}

/// Real agents enrolled through a real controller (the release binaries,
/// `wardnet_e2e::fleet`): a region's hub and `spokes` spokes on the
/// fleet's underlay bridge; every spoke streams to the hub at once. CPU is
/// all the agents' (the controller's is not counted: it idles).
fn bench_agents(secs: u32, spokes: usize) -> Result<(Figures, Option<String>), String> {
    let err = |e: anyhow::Error| format!("{e:#}");
    let mut fleet = Fleet::start().map_err(err)?;
    fleet.region("bench", false).map_err(err)?;
    fleet
        .add_site("hub", "bench", true, SiteOpts::default())
        .map_err(err)?;
    let names: Vec<String> = (1..=spokes).map(|i| format!("spoke{i}")).collect();
    for name in &names {
        fleet
            .add_site(name, "bench", false, SiteOpts::default())
            .map_err(err)?;
    }
    // The hub learns each spoke from the controller's next revision.
    let hub_peers = || -> Result<Option<()>, anyhow::Error> {
        Ok((fleet.wg_dump("hub")?.len() == spokes).then_some(()))
    };
    wardnet_e2e::fleet::wait_for(
        Duration::from_secs(20),
        "the hub to hold every spoke",
        hub_peers,
    )
    .map_err(err)?;
    let pids: Vec<i32> = std::iter::once("hub")
        .chain(names.iter().map(String::as_str))
        .filter_map(|n| fleet.site(n).agent.as_ref())
        .filter_map(|c| i32::try_from(c.pid()).ok())
        .collect();
    let clients: Vec<&str> = names.iter().map(|n| fleet.site(n).gw.name()).collect();
    let hub = fleet.overlay("hub").to_string();
    let (figures, _) = measure_from(
        &clients,
        fleet.site("hub").gw.name(),
        &hub,
        secs,
        Some(&process_cpu(pids)),
        None,
    )?;
    let note = (spokes > 1).then(|| {
        format!("{spokes} spokes to their hub at once: each column is their sum (the ping from the first)")
    });
    Ok((figures, note))
}

/// Two external userspace implementations driven over their UAPI sockets.
fn bench_external(
    secs: u32,
    program: &[&str],
    env: &[(&str, &str)],
) -> Result<(Figures, Option<String>), String> {
    let (ns_a, ns_b) = two_hosts()?;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() % 10_000;
    let (dev_a, dev_b) = (format!("wnb{pid}{n}a"), format!("wnb{pid}{n}b"));
    let (key_a, key_b) = (PrivateKey::generate(), PrivateKey::generate());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut daemons = Vec::new();
    for (ns, dev) in [(&ns_a, &dev_a), (&ns_b, &dev_b)] {
        let sock = format!("/var/run/wireguard/{dev}.sock");
        registry().sockets.push(sock.clone());
        let mut cmd = program.to_vec();
        cmd.push(dev);
        daemons.push(spawn_in(ns, env, &cmd)?);
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
    let cpu = process_cpu(daemons);
    measure(&ns_a, &ns_b, OVERLAY_B, secs, Some(&cpu), None)
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The median of some figures (the lower middle one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the data-plane benchmark needs root (network namespaces, TUN)");
        return;
    }
    on_signals();
    let _guard = Guard;
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let secs = env("BENCH_SECS", 10);
    let rounds = env("BENCH_ROUNDS", 3);
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name == f);
    if !installed("iperf3") || !installed("ping") {
        println!("SKIPPED: needs iperf3 and ping (apt install iperf3 iputils-ping)");
        return;
    }

    type Row = (
        &'static str,
        Box<dyn Fn() -> Result<(Figures, Option<String>), String>>,
    );
    let mut rows: Vec<Row> = vec![
        ("raw veth", Box::new(move || bench_raw(secs))),
        ("wardnet", Box::new(move || bench_agents(secs, 1))),
        ("wardnet-3-spokes", Box::new(move || bench_agents(secs, 3))),
        (
            "wardnet-plane",
            Box::new(move || bench_wardnet(secs, Variant::Plain)),
        ),
        (
            "wardnet-hub",
            Box::new(move || bench_wardnet(secs, Variant::Hub)),
        ),
        (
            "wardnet+garbage",
            Box::new(move || bench_wardnet(secs, Variant::Garbage)),
        ),
        (
            "wardnet+flood",
            Box::new(move || bench_wardnet(secs, Variant::Flood)),
        ),
        (
            "wardnet+1000-rules",
            Box::new(move || bench_wardnet(secs, Variant::Policy)),
        ),
    ];
    if installed("boringtun-cli") {
        rows.push((
            "boringtun-cli-1",
            Box::new(move || {
                bench_external(
                    secs,
                    &["boringtun-cli", "--threads", "1", "--foreground"],
                    &[("WG_SUDO", "true")],
                )
            }),
        ));
        rows.push((
            "boringtun-cli",
            Box::new(move || {
                bench_external(
                    secs,
                    &["boringtun-cli", "--foreground"],
                    &[("WG_SUDO", "true")],
                )
            }),
        ));
    } else {
        println!("boringtun-cli: SKIPPED, not installed (cargo install boringtun-cli --version 0.7.1 --locked)");
    }
    if installed("wireguard-go") {
        rows.push((
            "wireguard-go",
            Box::new(move || bench_external(secs, &["wireguard-go", "-f"], &[])),
        ));
    } else {
        println!("wireguard-go: SKIPPED, not installed (apt install wireguard-go)");
    }
    rows.retain(|(n, _)| wanted(n));

    println!(
        "data-plane benchmark: {rounds} rounds, rows interleaved; iperf3 -t {secs} TCP with 1 stream \
         (ping every 10 ms beside it: loaded rtt), then 4 streams, then one stream each way at once; \
         idle rtt: ping avg of 50; \
         cpu: both daemons' CPU seconds per GB carried; MTU {MTU}"
    );
    let mut results: Vec<(&str, Figures)> = Vec::new();
    for round in 1..=rounds {
        println!("-- round {round}");
        for (name, f) in &rows {
            let r = f();
            cleanup_all();
            match r {
                Ok((fig, note)) => {
                    let cpu = fig
                        .cpu_s_per_gb
                        .map_or("-".to_owned(), |c| format!("{c:.2}"));
                    println!(
                        "{name:<16} 1 stream {:>6.0} Mbit/s (retr {:>6})  4 streams {:>6.0} Mbit/s (retr {:>6})  \
                         both ways {:>6.0} Mbit/s  rtt {:.3} ms  loaded rtt {:.3} ms  cpu {cpu} s/GB",
                        fig.mbit, fig.retransmits, fig.mbit4, fig.retransmits4, fig.mbit_bidir, fig.rtt_ms,
                        fig.loaded_rtt_ms
                    );
                    if let Some(note) = note {
                        println!("{:<16} {note}", "");
                    }
                    results.push((name, fig));
                }
                Err(e) => println!("{name:<16} FAILED: {e}"),
            }
        }
    }

    println!("-- medians over {rounds} rounds");
    println!("| row | 1 stream Mbit/s | retransmits | 4 streams Mbit/s | both ways Mbit/s | RTT idle / loaded ms | CPU s/GB |");
    println!("|---|---|---|---|---|---|---|");
    let med = |name: &str, f: fn(&Figures) -> f64| {
        median(
            results
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, x)| f(x))
                .collect(),
        )
    };
    for (name, _) in &rows {
        if !results.iter().any(|(n, _)| n == name) {
            continue;
        }
        let cpu = med(name, |f| f.cpu_s_per_gb.unwrap_or(f64::NAN));
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} / {:.3} | {} |",
            med(name, |f| f.mbit),
            med(name, |f| f.retransmits as f64),
            med(name, |f| f.mbit4),
            med(name, |f| f.mbit_bidir),
            med(name, |f| f.rtt_ms),
            med(name, |f| f.loaded_rtt_ms),
            if cpu.is_nan() {
                "-".to_owned()
            } else {
                format!("{cpu:.2}")
            }
        );
    }
    let has = |n: &str| results.iter().any(|(r, _)| *r == n);
    let ratio = |a: &str, b: &str, what: &str| {
        if has(a) && has(b) {
            println!(
                "{a} / {b}: 1 stream {:.2}x, 4 streams {:.2}x, both ways {:.2}x, loaded rtt {:.2}x, cpu {:.2}x  ({what})",
                med(a, |f| f.mbit) / med(b, |f| f.mbit),
                med(a, |f| f.mbit4) / med(b, |f| f.mbit4),
                med(a, |f| f.mbit_bidir) / med(b, |f| f.mbit_bidir),
                med(a, |f| f.loaded_rtt_ms) / med(b, |f| f.loaded_rtt_ms),
                med(a, |f| f.cpu_s_per_gb.unwrap_or(f64::NAN))
                    / med(b, |f| f.cpu_s_per_gb.unwrap_or(f64::NAN)),
            );
        }
    };
    ratio(
        "wardnet",
        "boringtun-cli-1",
        "target: 1 stream >= 3x, loaded rtt <= 1x",
    );
    ratio("wardnet", "boringtun-cli", "");
    ratio("wardnet", "wireguard-go", "");
    ratio("wardnet-3-spokes", "wardnet", "three peers at once");
    ratio(
        "wardnet-plane",
        "wardnet",
        "the data plane alone, on a veth pair",
    );
    ratio("wardnet-hub", "wardnet-plane", "target: within 5 %");
    ratio("wardnet+garbage", "wardnet-plane", "target: within 10 %");
    ratio("wardnet+flood", "wardnet-plane", "");
    ratio(
        "wardnet+1000-rules",
        "wardnet-plane",
        "target: throughput within 10 %",
    );
}
