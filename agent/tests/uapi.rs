//! The `wg show` control socket, served for real: over a socket in a temp
//! directory (no root needed), and at /var/run/wireguard with the real `wg`
//! tool (root only; skipped otherwise).

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wardnet_agent::device_snapshot::{DeviceSnapshot, PeerSnapshot};
use wardnet_agent::uapi::{format_get, serve, socket_path, ControlSocket, UapiError};
use wardnet_common::{PrivateKey, PublicKey};

static N: AtomicU32 = AtomicU32::new(0);

fn prefixes(xs: &[&str]) -> BTreeSet<ipnet::IpNet> {
    xs.iter().map(|s| s.parse().expect("prefix")).collect()
}

struct Fixture {
    key: PrivateKey,
    hub: PublicKey,
    spoke: PublicKey,
    snap: DeviceSnapshot,
}

fn fixture() -> Fixture {
    let key = PrivateKey::generate();
    let hub = PrivateKey::generate().public_key();
    let spoke = PrivateKey::generate().public_key();
    // `..Default::default()` keeps this compiling when fields are added.
    let snap = DeviceSnapshot {
        listen_port: 51820,
        peers: vec![
            PeerSnapshot {
                name: "hub-a".parse().expect("name"),
                public_key: hub,
                endpoint: Some("[2001:db8::1]:51820".parse().expect("endpoint")),
                allowed_ips: prefixes(&["100.64.0.0/10", "fd7a::/16"]),
                persistent_keepalive: Some(25),
                last_handshake: Some(SystemTime::now() - Duration::from_secs(10)),
                rx_bytes: 2048,
                tx_bytes: 4 * 1024 * 1024,
                policy_denied: 0,
            },
            PeerSnapshot {
                name: "spoke-b".parse().expect("name"),
                public_key: spoke,
                endpoint: Some("198.51.100.9:51820".parse().expect("endpoint")),
                allowed_ips: prefixes(&["100.64.8.2/32", "fd7a::8:2/128"]),
                persistent_keepalive: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                policy_denied: 0,
            },
        ],
        ..Default::default()
    };
    Fixture {
        key,
        hub,
        spoke,
        snap,
    }
}

struct Server {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), UapiError>>,
}

impl Server {
    async fn start(path: &Path, f: &Fixture) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let socket = ControlSocket::bind(path).await.expect("bind");
        let task = tokio::spawn(serve(socket, f.key.clone(), f.snap.clone(), async move {
            let _ = stopped.await;
        }));
        for _ in 0..200 {
            if UnixStream::connect(path).await.is_ok() {
                return Self {
                    stop: Some(stop),
                    task,
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("control socket {} never came up", path.display());
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("no panic").expect("served");
    }
}

async fn ask(path: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(path).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    s.shutdown().await.expect("shutdown write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    out
}

#[tokio::test]
async fn serves_get_refuses_set_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Directory created on demand.
    let path = dir.path().join("run").join("wnt0.sock");
    let f = fixture();
    let server = Server::start(&path, &f).await;
    let meta = std::fs::metadata(&path).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(path.parent().expect("dir"))
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o755);

    // A client that says nothing does not hold up the others.
    let _silent = UnixStream::connect(&path).await.expect("connect");
    let got = ask(&path, "get=1\n\n").await;
    assert_eq!(got, format_get(&f.key, &f.snap));
    assert!(got.contains(&format!("public_key={}\n", f.hub.to_hex())));
    assert_eq!(ask(&path, "set=1\nlisten_port=1\n\n").await, "errno=-1\n\n");
    assert_eq!(ask(&path, "bogus\n\n").await, "errno=-22\n\n");

    // A second server on the same live socket is refused.
    let Err(err) = ControlSocket::bind(&path).await else {
        panic!("a live socket must not be taken over");
    };
    assert!(matches!(err, UapiError::InUse { .. }), "{err}");

    server.stop().await;
    assert!(!path.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn stale_socket_is_replaced_and_other_files_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wnt1.sock");
    // A socket nobody listens on, as a crashed agent leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let f = fixture();
    let server = Server::start(&path, &f).await;
    assert!(ask(&path, "get=1\n\n").await.ends_with("errno=0\n\n"));
    server.stop().await;

    let file = dir.path().join("wnt2.sock");
    std::fs::write(&file, b"not a socket").expect("write");
    let Err(err) = ControlSocket::bind(&file).await else {
        panic!("a file that is not a socket must not be replaced");
    };
    assert!(matches!(err, UapiError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&file).expect("kept"), b"not a socket");
}

fn wg(args: &[&str]) -> std::process::Output {
    std::process::Command::new("wg")
        .args(args)
        .output()
        .expect("run wg")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
async fn real_wg_show_reads_the_agent() {
    if !wardnet_e2e::require_root("real_wg_show_reads_the_agent") {
        return;
    }
    let iface = format!(
        "wnu{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    assert!(iface.len() <= 15);
    let path: PathBuf = socket_path(&iface);
    assert_eq!(
        path,
        PathBuf::from(format!("/var/run/wireguard/{iface}.sock"))
    );
    let f = fixture();
    let server = Server::start(&path, &f).await;

    let i = iface.clone();
    let show = tokio::task::spawn_blocking(move || wg(&["show", &i]))
        .await
        .expect("join");
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        show.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&show.stderr)
    );
    for needle in [
        format!("interface: {iface}"),
        format!("public key: {}", f.key.public_key()),
        "listening port: 51820".to_owned(),
        format!("peer: {}", f.hub),
        "endpoint: [2001:db8::1]:51820".to_owned(),
        "allowed ips: 100.64.0.0/10, fd7a::/16".to_owned(),
        "transfer: 2.00 KiB received, 4.00 MiB sent".to_owned(),
        "persistent keepalive: every 25 seconds".to_owned(),
        format!("peer: {}", f.spoke),
        "endpoint: 198.51.100.9:51820".to_owned(),
        "allowed ips: 100.64.8.2/32, fd7a::8:2/128".to_owned(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in:\n{text}");
    }
    // "10 seconds ago", or 11 if the clock ticked over meanwhile.
    assert!(
        text.contains("latest handshake: 10 seconds ago")
            || text.contains("latest handshake: 11 seconds ago"),
        "{text}"
    );

    let i = iface.clone();
    let dump = tokio::task::spawn_blocking(move || wg(&["show", &i, "dump"]))
        .await
        .expect("join");
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 3, "{dump}");
    assert_eq!(lines[0][0], f.key.to_base64());
    assert_eq!(lines[0][2], "51820");
    let hub_line = lines
        .iter()
        .find(|l| l[0] == f.hub.to_string())
        .expect("hub line");
    let hs = f.snap.peers[0]
        .last_handshake
        .expect("set")
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert_eq!(
        hub_line[2..],
        [
            "[2001:db8::1]:51820",
            "100.64.0.0/10,fd7a::/16",
            hs.to_string().as_str(),
            "2048",
            "4194304",
            "25"
        ]
    );
    let spoke_line = lines
        .iter()
        .find(|l| l[0] == f.spoke.to_string())
        .expect("spoke line");
    assert_eq!(spoke_line[4..], ["0", "0", "0", "off"]);

    // Changes through the socket are refused.
    let i = iface.clone();
    let spoke = f.spoke.to_string();
    let set = tokio::task::spawn_blocking(move || {
        wg(&["set", &i, "peer", &spoke, "allowed-ips", "100.64.9.0/24"])
    })
    .await
    .expect("join");
    assert!(!set.status.success());
    let stderr = String::from_utf8_lossy(&set.stderr);
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    // And nothing changed.
    assert!(ask(&path, "get=1\n\n")
        .await
        .contains("allowed_ip=100.64.8.2/32\n"));

    server.stop().await;
    assert!(!path.exists(), "socket removed on shutdown");
}
