//! End-to-end test of the data plane: two network namespaces joined by a
//! veth pair (underlay 198.51.100.0/24), one `DataPlane` per namespace
//! (overlay 100.64.0.0/10), real TUN devices, real traffic. Root only.
//!
//! Every namespace, and every data plane thread, is owned by a `Lab` whose
//! `Drop` stops the data planes and deletes the namespaces, also when an
//! assertion panics.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

#[path = "support/forge.rs"]
mod forge;

use forge::{forged_initiations, garbage_datagram};
use wardnet_agent::dataplane::{DataPlane, DataPlaneConfig, DataPlaneHandle};
use wardnet_agent::device_snapshot::PeerSnapshot;
use wardnet_agent::reconcile::PeerOp;
use wardnet_common::{PeerConfig, PrivateKey, PublicKey, Role};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the test may run; panics in CI when it cannot.
fn have_root() -> bool {
    wardnet_e2e::require_root("dataplane tests")
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique() -> u32 {
    std::process::id() % 10_000 * 100 + COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).expect("open netns");
        // SAFETY: fd is an open namespace file; setns only affects this thread.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

struct RunningPlane {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Owns everything the test creates on the host.
struct Lab {
    namespaces: Vec<String>,
    planes: Vec<RunningPlane>,
    children: Vec<Child>,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            namespaces: Vec::new(),
            planes: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Two namespaces joined by a veth pair, 198.51.100.1 and .2.
    fn two_hosts(&mut self) -> (String, String) {
        let n = unique();
        let (a, b) = (format!("wnt-dp-a-{n}"), format!("wnt-dp-b-{n}"));
        for ns in [&a, &b] {
            run(&["ip", "netns", "add", ns]);
            self.namespaces.push(ns.clone());
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("wva{n}"), format!("wvb{n}"));
        run(&[
            "ip", "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
        ]);
        for (ns, dev, ip) in [(&a, &va, "198.51.100.1/24"), (&b, &vb, "198.51.100.2/24")] {
            run(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        (a, b)
    }

    /// Starts a data plane inside `ns` on its own thread and runtime.
    fn start_plane(&mut self, ns: &str, config: DataPlaneConfig) -> DataPlaneHandle {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = in_netns(ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let plane = DataPlane::start(config).await.expect("start data plane");
                handle_tx.send(plane.handle()).expect("send handle");
                let _ = stop_rx.await;
                plane.shutdown().await.expect("clean shutdown");
            });
        });
        self.planes.push(RunningPlane {
            stop: Some(stop_tx),
            thread: Some(thread),
        });
        handle_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("data plane started")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SIGTERM first so wireguard-go removes its control socket.
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: pid is our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            for _ in 0..20 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &mut self.planes {
            if let Some(stop) = p.stop.take() {
                let _ = stop.send(());
            }
            if let Some(t) = p.thread.take() {
                let _ = t.join();
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn peer(
    name: &str,
    key: PublicKey,
    endpoint: Option<&str>,
    allowed: &[&str],
    keepalive: Option<u16>,
) -> PeerConfig {
    PeerConfig {
        name: name.parse().expect("name"),
        region: "north".parse().expect("name"),
        role: Role::Spoke,
        public_key: key,
        endpoint: endpoint.map(|e| e.parse().expect("endpoint")),
        allowed_ips: allowed.iter().map(|a| a.parse().expect("prefix")).collect(),
        persistent_keepalive: keepalive,
    }
}

/// Wait (at most 10 s) until something in `ns` listens on TCP `port`.
fn wait_listening(ns: &str, port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ss",
                "-Htln",
                &format!("sport = :{port}"),
            ])
            .output()
            .expect("ss");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on port {port} in {ns} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-w", "10", "-q", to,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("spawn ping")
        .success()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn peer_snapshot(h: &DataPlaneHandle, key: PublicKey) -> PeerSnapshot {
    block_on(h.snapshot())
        .expect("snapshot")
        .peers
        .into_iter()
        .find(|p| p.public_key == key)
        .expect("peer in snapshot")
}

fn overlay(ns: &str, tun: &str, addr: &str, route: &str) {
    run(&["ip", "-n", ns, "addr", "add", addr, "dev", tun]);
    run(&["ip", "-n", ns, "route", "add", route, "dev", tun]);
}

/// Two data planes, A in `ns_a` (overlay 100.64.0.1) and B in `ns_b`
/// (100.64.0.2), each the other's peer: A sends to B at `b_endpoint`, B to
/// A at `a_endpoint` (`None`: learnt from the first authenticated packet).
/// `tag` keeps the TUN names apart from other tests'.
struct Connected {
    a: DataPlaneHandle,
    b: DataPlaneHandle,
    pub_a: PublicKey,
    pub_b: PublicKey,
}

fn connected(
    lab: &mut Lab,
    (ns_a, ns_b): (&str, &str),
    tag: &str,
    b_endpoint: Option<&str>,
    a_endpoint: Option<&str>,
) -> Connected {
    let n = unique();
    let (tun_a, tun_b) = (format!("wnt{n}{tag}a"), format!("wnt{n}{tag}b"));
    let (key_a, key_b) = (PrivateKey::generate(), PrivateKey::generate());
    let (pub_a, pub_b) = (key_a.public_key(), key_b.public_key());
    let config = |interface: &str, private_key| DataPlaneConfig {
        interface: interface.to_owned(),
        mtu: 1420,
        private_key,
        listen_port: 51820,
        hub_of: None,
    };
    let a = lab.start_plane(ns_a, config(&tun_a, key_a));
    let b = lab.start_plane(ns_b, config(&tun_b, key_b));
    overlay(ns_a, &tun_a, "100.64.0.1/32", "100.64.0.2/32");
    overlay(ns_b, &tun_b, "100.64.0.2/32", "100.64.0.1/32");
    block_on(a.apply(vec![PeerOp::AddPeer(peer(
        "site-b",
        pub_b,
        b_endpoint,
        &["100.64.0.2/32"],
        None,
    ))]))
    .expect("apply");
    block_on(b.apply(vec![PeerOp::AddPeer(peer(
        "site-a",
        pub_a,
        a_endpoint,
        &["100.64.0.1/32"],
        None,
    ))]))
    .expect("apply");
    Connected { a, b, pub_a, pub_b }
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn two_namespaces_talk_through_the_data_plane() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new();
    let (ns_a, ns_b) = lab.two_hosts();
    let Connected { a, b, pub_a, pub_b } = connected(
        &mut lab,
        (&ns_a, &ns_b),
        "",
        Some("198.51.100.2:51820"),
        None,
    );

    // 1. Ping across the overlay (the first packet triggers the handshake).
    assert!(ping(&ns_a, "100.64.0.2"), "ping A -> B over the overlay");
    assert!(
        ping(&ns_b, "100.64.0.1"),
        "ping B -> A (B learned A's endpoint)"
    );

    // 2. A UDP payload round trip through the tunnel.
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let echo = in_netns(&ns_b, move || {
        let s = UdpSocket::bind("100.64.0.2:7777").expect("bind echo");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = bound_tx.send(());
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).expect("echo receive");
        s.send_to(&buf[..n], from).expect("echo send");
    });
    bound
        .recv_timeout(Duration::from_secs(10))
        .expect("the echo server bound its socket");
    let reply = in_netns(&ns_a, || {
        let s = UdpSocket::bind("100.64.0.1:0").expect("bind client");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let payload: Vec<u8> = (0..1200u32).map(|i| (i % 251) as u8).collect();
        s.send_to(
            &payload,
            "100.64.0.2:7777".parse::<SocketAddr>().expect("addr"),
        )
        .expect("send");
        let mut buf = [0u8; 2048];
        let (n, _) = s.recv_from(&mut buf).expect("reply");
        (payload, buf[..n].to_vec())
    })
    .join()
    .expect("client thread");
    echo.join().expect("echo thread");
    assert_eq!(reply.0, reply.1, "payload came back intact");

    // 3. The snapshot shows the handshake and counters that grow.
    let s1 = peer_snapshot(&a, pub_b);
    assert!(s1.last_handshake.is_some(), "{s1:?}");
    assert!(s1.rx_bytes > 0 && s1.tx_bytes > 0, "{s1:?}");
    assert_eq!(
        s1.endpoint,
        Some("198.51.100.2:51820".parse().expect("addr"))
    );
    assert_eq!(
        peer_snapshot(&b, pub_a).endpoint,
        Some("198.51.100.1:51820".parse().expect("addr"))
    );
    assert!(ping(&ns_a, "100.64.0.2"));
    let s2 = peer_snapshot(&a, pub_b);
    assert!(
        s2.rx_bytes > s1.rx_bytes && s2.tx_bytes > s1.tx_bytes,
        "{s1:?} -> {s2:?}"
    );
    let device = block_on(a.snapshot()).expect("snapshot");
    assert_eq!(device.listen_port, 51820);
    let handshakes = device.counters.handshakes_completed;
    assert!(handshakes >= 1);

    // 4. UpdatePeer in place: new AllowedIPs and keepalive, same session.
    block_on(a.apply(vec![PeerOp::UpdatePeer(peer(
        "site-b",
        pub_b,
        Some("198.51.100.2:51820"),
        &["100.64.0.2/32", "100.64.1.0/24"],
        Some(5),
    ))]))
    .expect("update");
    let s3 = peer_snapshot(&a, pub_b);
    assert_eq!(s3.last_handshake, s2.last_handshake, "session kept");
    assert_eq!(s3.persistent_keepalive, Some(5));
    assert!(s3.tx_bytes >= s2.tx_bytes, "counters kept");
    assert!(ping(&ns_a, "100.64.0.2"), "traffic flows after the update");
    let s4 = peer_snapshot(&a, pub_b);
    assert_eq!(s4.last_handshake, s2.last_handshake, "no new handshake");
    assert_eq!(
        block_on(a.snapshot())
            .expect("snapshot")
            .counters
            .handshakes_completed,
        handshakes
    );

    // 5. Garbage to the listen port breaks nothing.
    in_netns(&ns_b, || {
        let s = UdpSocket::bind("198.51.100.2:0").expect("bind");
        for i in 0..500usize {
            let len = [0, 1, 4, 32, 92, 148, 200, 1400][i % 8];
            let mut p: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            if let Some(t) = p.first_mut() {
                *t = (i % 5) as u8;
            }
            if len >= 4 {
                p[1..4].fill(0);
            }
            let _ = s.send_to(&p, "198.51.100.1:51820");
        }
    })
    .join()
    .expect("garbage thread");
    assert!(ping(&ns_a, "100.64.0.2"), "still working after garbage");
    let c = block_on(a.snapshot()).expect("snapshot").counters;
    assert!(c.drops.malformed > 0, "{c:?}");
    assert!(
        c.drops.malformed + c.drops.unknown_peer + c.drops.decrypt >= 400,
        "{c:?}"
    );

    // 6. Throughput (reported, not asserted): iperf3 over the overlay.
    if Command::new("iperf3").arg("--version").output().is_ok() {
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns_b,
                "iperf3",
                "-s",
                "-1",
                "-B",
                "100.64.0.2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server");
        lab.children.push(server);
        wait_listening(&ns_b, 5201);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns_a,
                "iperf3",
                "-c",
                "100.64.0.2",
                "-t",
                "3",
                "-f",
                "m",
            ])
            .output()
            .expect("iperf3 client");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text
            .lines()
            .filter(|l| l.contains("sender") || l.contains("receiver"))
        {
            eprintln!("iperf3: {line}");
        }
    }
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn interoperates_with_wireguard_go() {
    if !have_root() {
        return;
    }
    if Command::new("wireguard-go")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: wireguard-go not installed");
        return;
    }
    let mut lab = Lab::new();
    let (ns_a, ns_b) = lab.two_hosts();
    let n = unique();
    let (tun_a, wg_b) = (format!("wnt{n}a"), format!("wnt{n}g"));
    let (key_a, key_b) = (PrivateKey::generate(), PrivateKey::generate());
    let (pub_a, pub_b) = (key_a.public_key(), key_b.public_key());
    let a = lab.start_plane(
        &ns_a,
        DataPlaneConfig {
            interface: tun_a.clone(),
            mtu: 1420,
            private_key: key_a,
            listen_port: 51820,
            hub_of: None,
        },
    );
    overlay(&ns_a, &tun_a, "100.64.0.1/32", "100.64.0.2/32");
    block_on(a.apply(vec![PeerOp::AddPeer(peer(
        "site-b",
        pub_b,
        Some("198.51.100.2:51820"),
        &["100.64.0.2/32"],
        None,
    ))]))
    .expect("apply");

    // wireguard-go in B, in the foreground so the lab owns (and kills) it.
    let child = Command::new("ip")
        .args(["netns", "exec", &ns_b, "wireguard-go", "-f", &wg_b])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wireguard-go");
    lab.children.push(child);
    let sock = format!("/var/run/wireguard/{wg_b}.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&sock).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "wireguard-go did not create its control socket {sock} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let key_file = tempfile::NamedTempFile::new().expect("temp key file");
    std::fs::write(key_file.path(), key_b.to_base64()).expect("write key");
    let key_path = key_file.path().to_str().expect("utf-8 path").to_owned();
    run(&[
        "ip",
        "netns",
        "exec",
        &ns_b,
        "wg",
        "set",
        &wg_b,
        "listen-port",
        "51820",
        "private-key",
        &key_path,
        "peer",
        &pub_a.to_string(),
        "allowed-ips",
        "100.64.0.1/32",
        "endpoint",
        "198.51.100.1:51820",
    ]);
    run(&["ip", "-n", &ns_b, "link", "set", &wg_b, "up"]);
    overlay(&ns_b, &wg_b, "100.64.0.2/32", "100.64.0.1/32");

    assert!(ping(&ns_a, "100.64.0.2"), "wardnet -> wireguard-go");
    assert!(ping(&ns_b, "100.64.0.1"), "wireguard-go -> wardnet");
    let s = peer_snapshot(&a, pub_b);
    assert!(s.last_handshake.is_some() && s.rx_bytes > 0, "{s:?}");
}

/// A host with two addresses answers a peer from the one the peer sends
/// to (IP_PKTINFO), so the peer does not roam to the other.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_host_with_two_addresses_answers_from_the_one_its_peer_uses() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new();
    let (ns_a, ns_b) = lab.two_hosts();
    let n = ns_a
        .rsplit('-')
        .next()
        .expect("namespace number")
        .to_owned();
    // A's second address, on the same interface; its first stays primary.
    run(&[
        "ip",
        "-n",
        &ns_a,
        "addr",
        "add",
        "198.51.100.101/24",
        "dev",
        &format!("wva{n}"),
    ]);
    let Connected { b, pub_a, .. } = connected(
        &mut lab,
        (&ns_a, &ns_b),
        "c",
        None,
        Some("198.51.100.101:51820"),
    );
    assert!(ping(&ns_b, "100.64.0.1"), "ping B -> A's second address");
    assert!(ping(&ns_a, "100.64.0.2"), "and back");
    let seen = peer_snapshot(&b, pub_a).endpoint;
    assert_eq!(
        seen,
        Some("198.51.100.101:51820".parse().expect("address")),
        "A answered from its primary address and B roamed to it"
    );
}

/// 100,000 garbage datagrams at a data plane's port, random and shaped like
/// WireGuard messages (each type's length, random contents and indexes),
/// while a session is live: nothing crashes, every one is counted as
/// dropped, and the session carries traffic during and after, without a
/// new handshake.
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn garbage_at_the_port_is_dropped_and_live_sessions_carry_on() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new();
    let (ns_a, ns_b) = lab.two_hosts();
    let Connected { b, pub_a, .. } = connected(
        &mut lab,
        (&ns_a, &ns_b),
        "e",
        Some("198.51.100.2:51820"),
        None,
    );
    assert!(ping(&ns_a, "100.64.0.2"), "the session is up");
    let before = block_on(b.snapshot()).expect("snapshot");
    let handshake = peer_snapshot(&b, pub_a).last_handshake;

    // The flood, from a socket of A's host (another port than the plane's).
    const DATAGRAMS: u32 = 100_000;
    let flood = in_netns(&ns_a, || {
        let sock = std::net::UdpSocket::bind("198.51.100.1:40000").expect("bind");
        let mut rng = rand::thread_rng();
        let mut buf = [0u8; 1500];
        for i in 0..DATAGRAMS {
            // A full socket buffer is a drop on the way, like any loss.
            let _ = sock.send_to(
                garbage_datagram(u64::from(i), &mut rng, &mut buf),
                "198.51.100.2:51820",
            );
        }
    });
    // The session carries traffic while the flood runs, and after it.
    let during = ping(&ns_a, "100.64.0.2");
    flood.join().expect("flood thread");
    assert!(during, "the session carried no traffic during the flood");
    assert!(ping(&ns_a, "100.64.0.2"), "the session after the flood");
    assert!(ping(&ns_b, "100.64.0.1"), "and the other way");
    let after = block_on(b.snapshot()).expect("the data plane still answers");
    assert_eq!(
        peer_snapshot(&b, pub_a).last_handshake,
        handshake,
        "no new handshake was needed"
    );
    let dropped = |s: &wardnet_agent::device_snapshot::DeviceSnapshot| {
        let d = s.counters.drops;
        d.malformed + d.decrypt + d.unknown_peer + d.handshake_limited
    };
    let counted = dropped(&after) - dropped(&before);
    eprintln!("garbage counted as dropped: {counted} of {DATAGRAMS} sent");
    // Some of the flood may be lost in the kernel's buffers; most arrives.
    assert!(
        counted >= u64::from(DATAGRAMS) / 2,
        "only {counted} of {DATAGRAMS} garbage datagrams were seen and dropped"
    );
}

/// 20,000 forged initiations (valid mac1) at full speed while a tunnel
/// carries a stream: the flood is answered with cookies, not DHs, and the
/// stream carries on without a new handshake. (The bench measures the
/// longest gap in a release build.)
#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn a_handshake_flood_is_answered_with_cookies_and_tunnels_keep_forwarding() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new();
    let (ns_a, ns_b) = lab.two_hosts();
    let Connected {
        b, pub_a, pub_b, ..
    } = connected(
        &mut lab,
        (&ns_a, &ns_b),
        "h",
        Some("198.51.100.2:51820"),
        None,
    );
    assert!(ping(&ns_a, "100.64.0.2"), "the session is up");
    let before = block_on(b.snapshot()).expect("snapshot").counters;
    let handshake = peer_snapshot(&b, pub_a).last_handshake;
    const FORGED: u32 = 20_000;
    let forged = forged_initiations(pub_b, FORGED);

    // A stream through the tunnel, one datagram a millisecond, from before
    // the flood until after it.
    let receiver = in_netns(&ns_b, || {
        let sock = UdpSocket::bind("100.64.0.2:9000").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = sock.recv(&mut buf) {
            if n == 4 && buf[..4] == [0xff; 4] {
                break;
            }
            seen.push(std::time::Instant::now());
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(200));
    let stream = in_netns(&ns_a, || {
        let sock = UdpSocket::bind("100.64.0.1:0").expect("bind");
        let start = std::time::Instant::now();
        let mut sent = 0u32;
        while start.elapsed() < Duration::from_secs(3) {
            let _ = sock.send_to(&sent.to_be_bytes(), "100.64.0.2:9000");
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..5 {
            let _ = sock.send_to(&[0xff; 4], "100.64.0.2:9000");
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let flood = in_netns(&ns_a, move || {
        let sock = UdpSocket::bind("198.51.100.1:40001").expect("bind");
        let start = std::time::Instant::now();
        for m in &forged {
            let _ = sock.send_to(m, "198.51.100.2:51820");
        }
        let took = start.elapsed();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut cookies = 0u32;
        let mut buf = [0u8; 256];
        while let Ok(n) = sock.recv(&mut buf) {
            cookies += u32::from(n == 64 && buf[0] == 3);
        }
        (took, cookies)
    });
    let (took, cookies_heard) = flood.join().expect("flood thread");
    let sent = stream.join().expect("stream thread");
    let arrivals = receiver.join().expect("receiver thread");
    let after = block_on(b.snapshot())
        .expect("the data plane still answers")
        .counters;

    let longest = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let cookies = after.cookie_replies - before.cookie_replies;
    let dh = after.drops.unknown_peer - before.drops.unknown_peer;
    let limited = after.drops.handshake_limited - before.drops.handshake_limited;
    eprintln!(
        "flood of {FORGED} in {took:?}: {cookies} cookie replies sent ({cookies_heard} heard), \
         {dh} reached a DH, {limited} dropped unread; stream {} of {sent} arrived, \
         longest gap {longest:?}",
        arrivals.len()
    );
    assert!(cookies > 0, "the flood was answered with cookies");
    assert!(
        cookies_heard > 0,
        "and the cookies reached the flood's source"
    );
    assert!(
        dh <= 2_000,
        "{dh} forged initiations got as far as a DH (under load none should, \
         beyond the first second's 1,000)"
    );
    let counted = dh + cookies + limited;
    assert!(
        counted <= u64::from(FORGED) && counted >= u64::from(FORGED) / 2,
        "{counted} of {FORGED} forged initiations accounted for (some may be lost \
         in the kernel's buffers, most arrive)"
    );
    assert_eq!(
        after.drops.decrypt, before.drops.decrypt,
        "a valid mac1 is not a bad message"
    );
    assert!(
        arrivals.len() as u32 >= sent * 95 / 100,
        "the stream lost {} of {sent} during the flood",
        sent - arrivals.len() as u32
    );
    assert_eq!(
        peer_snapshot(&b, pub_a).last_handshake,
        handshake,
        "the session needed no new handshake"
    );
}
