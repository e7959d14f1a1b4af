//! The WireGuard cross-platform userspace control protocol
//! (<https://www.wireguard.com/xplatform/>), read-only, so `wg show` works
//! against the agent.
//!
//! `wg` looks for `/var/run/wireguard/<interface>.sock` *before* asking the
//! kernel (wireguard-tools `ipc.c`: `userspace_has_wireguard_interface`, which
//! stats the path, checks it is a socket, connects and closes at once — so
//! connections that end without a request are normal here). The directory is
//! host-wide, shared by all network namespaces: interface names must be unique
//! per host.
//!
//! `get=1` is answered to the spec: keys in hex, the last handshake as a Unix
//! timestamp (0 when never), byte counters. `set=1` is refused with
//! `errno=-1` (EPERM, negated like every error on this protocol; see
//! `EPERM` below): the controller is the source of truth, and a local change
//! would be silently undone by the next reconcile. Each connection runs in its own task
//! with a per-line read timeout and a line-length cap, so a slow or hostile
//! client can neither block other clients nor grow memory without bound.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use wardnet_common::PrivateKey;

use crate::device_snapshot::DeviceSnapshot;

/// Where `wg` looks for userspace interfaces on Linux.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long a client may take to send each line of a request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to take our answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line accepted (a `set` line is at most ~100 bytes).
const MAX_LINE: usize = 4096;

// Errors go on the wire negated (`errno=-1`), as wireguard-go writes them
// (`IpcErrorInvalid = -int64(unix.EINVAL)`) and as `wg` reads them: it sets
// `errno = -value`, so a positive value prints as "Unknown error -1".
const EPERM: i32 = -libc::EPERM;
const ENODEV: i32 = -libc::ENODEV;
const EINVAL: i32 = -libc::EINVAL;

/// `/var/run/wireguard/<interface>.sock`.
pub fn socket_path(interface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{interface}.sock"))
}

/// Where the control socket gets its data: the data plane implements this.
/// `None` means there is nothing to report yet (the device is not up); the
/// client then gets `errno=-19` (ENODEV: `wg` says "No such device").
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshot(&self) -> impl Future<Output = Option<DeviceSnapshot>> + Send;
}

/// A fixed snapshot (tests, and a device that reports nothing live).
impl SnapshotSource for DeviceSnapshot {
    fn snapshot(&self) -> impl Future<Output = Option<DeviceSnapshot>> + Send {
        std::future::ready(Some(self.clone()))
    }
}

/// Why the control socket could not be served; names the path.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("failed to create the WireGuard control socket directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another process is serving {path}; is another agent (or wireguard-go) running for this interface? Interface names must be unique per host")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("failed to remove the stale control socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to listen on the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The full answer to `get=1`, `errno=0` and the closing blank line included.
/// Keys are hex; peer keys are in the order wireguard-go writes them.
pub fn format_get(private_key: &PrivateKey, snap: &DeviceSnapshot) -> String {
    let mut out = String::new();
    // `write!` to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "private_key={}", private_key.to_hex());
    let _ = writeln!(out, "listen_port={}", snap.listen_port);
    for peer in &snap.peers {
        let _ = writeln!(out, "public_key={}", peer.public_key.to_hex());
        out.push_str("protocol_version=1\n");
        if let Some(ep) = peer.endpoint {
            // SocketAddr's Display brackets IPv6 (with any %scope), as the spec wants.
            let _ = writeln!(out, "endpoint={ep}");
        }
        let (sec, nsec) = unix_time(peer.last_handshake);
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive.unwrap_or(0)
        );
        for ip in &peer.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

fn unix_time(t: Option<SystemTime>) -> (u64, u32) {
    match t.map(|t| t.duration_since(UNIX_EPOCH)) {
        Some(Ok(d)) => (d.as_secs(), d.subsec_nanos()),
        // Never, or before 1970 (a broken clock): the protocol's "never".
        _ => (0, 0),
    }
}

/// The control socket, bound: [`serve`] answers on it. The socket file is
/// removed when this is dropped (unless another took its place).
pub struct ControlSocket {
    listener: UnixListener,
    guard: SocketGuard,
}

impl ControlSocket {
    /// Bind the control socket at `path` (see [`bind`] for the rules).
    pub async fn bind(path: &Path) -> Result<Self, UapiError> {
        let (listener, guard) = bind(path).await?;
        Ok(ControlSocket { listener, guard })
    }
}

/// Serves the bound control socket until `shutdown` completes, then
/// removes the socket. Also removed if this future is dropped. is created 0755 if missing (as wireguard-go does); the socket
/// is made 0600 right after bind (wireguard-go binds under umask 077, giving
/// 0700; umask is process-wide, so we chmod instead — with the usual 022 umask
/// nobody else can connect during that window, as connecting needs write
pub async fn serve<S: SnapshotSource>(
    socket: ControlSocket,
    private_key: PrivateKey,
    source: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), UapiError> {
    let ControlSocket {
        listener,
        guard: _guard,
    } = socket;
    let path = _guard.path.clone();
    let state = Arc::new(Conn {
        key: private_key,
        source,
        path: path.clone(),
    });
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = Arc::clone(&state);
                    conns.spawn(async move { state.handle(stream).await });
                }
                Err(e) => {
                    // EMFILE and friends: transient; don't spin on them.
                    tracing::warn!(path = %path.display(), error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    conns.abort_all();
    Ok(())
}

/// Removes the socket on drop, unless someone else has replaced it since.
struct SocketGuard {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The directory is created 0755 if missing (as wireguard-go does); the socket
/// is made 0600 right after bind (wireguard-go binds under umask 077, giving
/// 0700; umask is process-wide, so we chmod instead — with the usual 022 umask
/// nobody else can connect during that window, as connecting needs write
/// permission). A stale socket (nobody answering) is removed; a live one is
/// an error, as is a non-socket file at `path`.
async fn bind(path: &Path) -> Result<(UnixListener, SocketGuard), UapiError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| UapiError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(UapiError::NotASocket {
                path: path.to_owned(),
            });
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(UapiError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(|source| UapiError::RemoveStale {
            path: path.to_owned(),
            source,
        })?;
    }
    let bind_err = |source| UapiError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let guard = SocketGuard {
        path: path.to_owned(),
        ino: meta.ino(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok((listener, guard))
}

struct Conn<S> {
    key: PrivateKey,
    source: S,
    path: PathBuf,
}

/// One line of a request, without its `\n`.
enum Line {
    Text(String),
    Eof,
}

#[derive(Debug)]
enum ReadError {
    Timeout,
    TooLong,
    NotUtf8,
    BadOperation,
    Io(io::Error),
}

impl<S: SnapshotSource> Conn<S> {
    async fn handle(&self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let (answer, keep_going) = match self.request(&mut read).await {
                Ok(Some(answer)) => (answer, true),
                Ok(None) => return,
                Err(ReadError::Io(e)) => {
                    tracing::debug!(path = %self.path.display(), error = %e, "control socket: client went away");
                    return;
                }
                Err(ReadError::Timeout) => {
                    tracing::debug!(path = %self.path.display(), "control socket: client too slow, dropped");
                    return;
                }
                Err(e) => {
                    tracing::debug!(path = %self.path.display(), error = ?e, "control socket: bad request");
                    (errno(EINVAL), false)
                }
            };
            let written = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(answer.as_bytes()));
            if !matches!(written.await, Ok(Ok(()))) || !keep_going {
                return;
            }
        }
    }

    /// Reads one request and returns the answer, or `None` at a clean EOF.
    async fn request<R: AsyncBufRead + Unpin>(
        &self,
        read: &mut R,
    ) -> Result<Option<String>, ReadError> {
        let op = match read_line(read).await? {
            Line::Eof => return Ok(None),
            Line::Text(op) => op,
        };
        match op.as_str() {
            "get=1" => {
                // The operation line is followed by an empty line.
                match read_line(read).await? {
                    Line::Text(t) if t.is_empty() => {}
                    Line::Text(_) => return Err(ReadError::BadOperation),
                    Line::Eof => return Ok(None),
                }
                Ok(Some(match self.source.snapshot().await {
                    Some(snap) => format_get(&self.key, &snap),
                    None => errno(ENODEV),
                }))
            }
            "set=1" => {
                // Drain the request to its blank line so the client reads our answer.
                loop {
                    match read_line(read).await? {
                        Line::Text(t) if t.is_empty() => break,
                        Line::Text(_) => {}
                        Line::Eof => return Ok(None),
                    }
                }
                tracing::warn!(
                    path = %self.path.display(),
                    "refused a `set` on the WireGuard control socket: the wardnet controller \
                     is the source of truth for this interface; change the site there"
                );
                Ok(Some(errno(EPERM)))
            }
            // Unknown operation: we cannot know where its request ends.
            _ => Err(ReadError::BadOperation),
        }
    }
}

fn errno(code: i32) -> String {
    format!("errno={code}\n\n")
}

/// Reads up to `\n` with a timeout and a length cap.
async fn read_line<R: AsyncBufRead + Unpin>(read: &mut R) -> Result<Line, ReadError> {
    let mut buf = Vec::new();
    let fut = async {
        loop {
            let chunk = read.fill_buf().await.map_err(ReadError::Io)?;
            if chunk.is_empty() {
                if buf.is_empty() {
                    return Ok(Line::Eof);
                }
                // A partial line and then EOF: the client went away mid-request.
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            buf.extend_from_slice(&chunk[..take]);
            read.consume(take);
            if buf.len() > MAX_LINE {
                return Err(ReadError::TooLong);
            }
            if done {
                buf.pop();
                let s =
                    String::from_utf8(std::mem::take(&mut buf)).map_err(|_| ReadError::NotUtf8)?;
                return Ok(Line::Text(s));
            }
        }
    };
    tokio::time::timeout(READ_TIMEOUT, fut)
        .await
        .map_err(|_| ReadError::Timeout)?
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tokio::io::AsyncReadExt;
    use wardnet_common::PublicKey;

    use super::*;
    use crate::device_snapshot::PeerSnapshot;

    fn key(byte: u8) -> PublicKey {
        PublicKey::from_bytes([byte; 32])
    }

    fn fixture() -> (PrivateKey, DeviceSnapshot) {
        let sk: PrivateKey = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
            .parse()
            .expect("RFC 7748 test key");
        // `..Default::default()` keeps this compiling when fields are added.
        let snap = DeviceSnapshot {
            listen_port: 51820,
            peers: vec![
                PeerSnapshot {
                    name: "hub-a".parse().expect("name"),
                    public_key: key(0x11),
                    endpoint: Some("[2001:db8::1]:51820".parse().expect("endpoint")),
                    allowed_ips: ["100.64.0.0/10", "fd7a::/16"]
                        .iter()
                        .map(|s| s.parse().expect("prefix"))
                        .collect(),
                    persistent_keepalive: Some(25),
                    last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
                    rx_bytes: 2048,
                    tx_bytes: 4096,
                    policy_denied: 0,
                },
                PeerSnapshot {
                    name: "spoke-b".parse().expect("name"),
                    public_key: key(0x22),
                    endpoint: None,
                    allowed_ips: BTreeSet::new(),
                    persistent_keepalive: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    policy_denied: 0,
                },
            ],
            ..Default::default()
        };
        (sk, snap)
    }

    #[test]
    fn get_answer_follows_the_spec() {
        let (sk, snap) = fixture();
        let expected = "\
private_key=77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a
listen_port=51820
public_key=1111111111111111111111111111111111111111111111111111111111111111
protocol_version=1
endpoint=[2001:db8::1]:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=123456789
tx_bytes=4096
rx_bytes=2048
persistent_keepalive_interval=25
allowed_ip=100.64.0.0/10
allowed_ip=fd7a::/16
public_key=2222222222222222222222222222222222222222222222222222222222222222
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
errno=0

";
        assert_eq!(format_get(&sk, &snap), expected);
    }

    #[test]
    fn empty_device_and_ipv4_endpoint() {
        let (sk, mut snap) = fixture();
        snap.peers.truncate(1);
        snap.peers[0].endpoint = Some("198.51.100.7:4500".parse().expect("endpoint"));
        let text = format_get(&sk, &snap);
        assert!(text.contains("\nendpoint=198.51.100.7:4500\n"), "{text}");
        let empty = format_get(&sk, &DeviceSnapshot::default());
        assert!(empty.ends_with("\nlisten_port=0\nerrno=0\n\n"), "{empty}");
    }

    /// Sends `request` on a fresh connection and returns everything the
    /// server says before closing or going quiet.
    async fn exchange(request: &[u8], close_write: bool) -> String {
        let (sk, snap) = fixture();
        let conn = Arc::new(Conn {
            key: sk,
            source: snap,
            path: PathBuf::from("test.sock"),
        });
        let (mut client, server) = UnixStream::pair().expect("socketpair");
        let task = tokio::spawn(async move { conn.handle(server).await });
        client.write_all(request).await.expect("write");
        if close_write {
            client.shutdown().await.expect("shutdown");
        }
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_string(&mut out)).await;
        drop(client);
        task.await.expect("handler never panics");
        out
    }

    #[tokio::test]
    async fn requests_are_answered_and_garbage_gets_an_errno() {
        let get = exchange(b"get=1\n\n", true).await;
        assert!(get.starts_with("private_key=") && get.ends_with("errno=0\n\n"));
        // Two requests on one connection, as wireguard-go allows.
        let two = exchange(b"get=1\n\nget=1\n\n", true).await;
        assert_eq!(two.matches("errno=0\n\n").count(), 2);
        let set = exchange(b"set=1\nprivate_key=00\nlisten_port=1\n\n", true).await;
        assert_eq!(set, "errno=-1\n\n");
        assert_eq!(exchange(b"hello\n", true).await, "errno=-22\n\n");
        assert_eq!(exchange(b"get=1\nx=y\n\n", true).await, "errno=-22\n\n");
        assert_eq!(exchange(b"\xff\xfe\n", true).await, "errno=-22\n\n");
        assert_eq!(
            exchange(&[b'a'; MAX_LINE + 10], true).await,
            "errno=-22\n\n"
        );
        // Connect-and-close (what `wg` does to probe) and a truncated request.
        assert_eq!(exchange(b"", true).await, "");
        assert_eq!(exchange(b"get=1", true).await, "");
    }

    struct NotUp;
    impl SnapshotSource for NotUp {
        async fn snapshot(&self) -> Option<DeviceSnapshot> {
            None
        }
    }

    #[tokio::test]
    async fn no_device_yet_is_enodev() {
        let conn = Conn {
            key: PrivateKey::generate(),
            source: NotUp,
            path: PathBuf::from("test.sock"),
        };
        let mut read = &b"get=1\n\n"[..];
        let answer = conn.request(&mut read).await.expect("well-formed");
        assert_eq!(answer.as_deref(), Some("errno=-19\n\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_read_timeout() {
        let (sk, snap) = fixture();
        let conn = Conn {
            key: sk,
            source: snap,
            path: PathBuf::from("test.sock"),
        };
        let (_client, server) = UnixStream::pair().expect("socketpair");
        // With time paused, the timeout fires as soon as the handler idles.
        tokio::time::timeout(READ_TIMEOUT * 2, conn.handle(server))
            .await
            .expect("handler gives up on a silent client");
    }
}
