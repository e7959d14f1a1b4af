//! systemd's service notification protocol (`sd_notify(3)`), without a crate.
//!
//! A notification is one datagram of `KEY=VALUE` lines sent to the Unix
//! socket named by `$NOTIFY_SOCKET` (a path, or an abstract name when it
//! starts with `@`). Without the variable (not under systemd, or not
//! `Type=notify`) every call is a no-op, so the daemon code calls these
//! unconditionally. Shared by the agent and the controller binaries.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send `state` (newline-separated `KEY=VALUE` assignments) to the socket in
/// `$NOTIFY_SOCKET`. `Ok(false)` when there is no socket to tell.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path.to_string_lossy(), state).map(|()| true),
        None => Ok(false),
    }
}

/// Send `state` to the notification socket `path` (`@name`: abstract).
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// Best effort: a failed notification is logged, never fatal (systemd
/// notices a missing READY or watchdog ping by itself).
fn send(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, "failed to notify systemd");
    }
}

/// The service really serves now (`READY=1`), with a status line.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// Free-form status line for `systemctl status`.
pub fn status(status: &str) {
    send(&format!("STATUS={status}"));
}

/// The main loop is alive (`WATCHDOG=1`).
pub fn watchdog() {
    send("WATCHDOG=1");
}

/// The service is reloading its configuration (`RELOADING=1`); `ready`
/// ends the reload.
pub fn reloading() {
    send("RELOADING=1\nSTATUS=reloading the configuration");
}

/// The service is shutting down (`STOPPING=1`).
pub fn stopping() {
    send("STOPPING=1");
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when the
/// watchdog is enabled for this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// A ticker for the watchdog: fires every [`watchdog_interval`], never when
/// the watchdog is off. Poll [`Watchdog::tick`] in the loop that must stay
/// alive, and call [`watchdog`] when it fires.
pub struct Watchdog(Option<tokio::time::Interval>);

impl Watchdog {
    pub fn from_env() -> Self {
        Watchdog(watchdog_interval().map(|d| {
            let mut i = tokio::time::interval(d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }))
    }

    pub async fn tick(&mut self) {
        match &mut self.0 {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Run `fut` while pinging the watchdog (for a wait that may be long, such
/// as the first config when the controller is away).
pub async fn with_watchdog<F: std::future::Future>(fut: F) -> F::Output {
    let mut dog = Watchdog::from_env();
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            () = dog.tick() => watchdog(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.to_str().expect("utf-8 path"), "READY=1\nSTATUS=up").expect("send");
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wardnet-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let server = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        notify_to(&format!("@{name}"), "WATCHDOG=1").expect("send");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.sock");
        assert!(notify_to(path.to_str().expect("utf-8 path"), "READY=1").is_err());
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_us() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("junk"), None, 7), None);
    }
}
