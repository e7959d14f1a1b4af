//! Real traffic inside namespaces, from threads that have entered them: a
//! UDP echo server, a payload round trip, and a steady numbered stream whose
//! losses are counted.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Netns;

/// Run `f` on a new thread inside `ns` (setns(CLONE_NEWNET) on that thread
/// only; the rest of the process stays where it is).
pub fn spawn_in<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let path = format!("/var/run/netns/{}", ns.name());
    Ok(std::thread::spawn(move || {
        enter(&path)?;
        Ok(f())
    }))
}

/// Run `f` inside `ns` and wait for it.
pub fn run_in<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in(ns, f)?
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

fn enter(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}) failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A UDP echo server in a namespace; stops on drop.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Result<()>>>>,
    pub addr: SocketAddr,
}

impl Echo {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = spawn_in(ns, move || -> Result<()> {
            let sock = UdpSocket::bind(addr)?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = tx.send(());
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("echo server did not start")?;
        Ok(Self {
            stop,
            thread: Some(thread),
            addr,
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Send `payload` from inside `ns` to `to` and return what came back.
pub fn udp_round_trip(
    ns: &Netns,
    to: SocketAddr,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    run_in(ns, move || -> Result<Vec<u8>> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        // Retry: the first packets may wait for a handshake.
        while Instant::now() < deadline {
            sock.send_to(&payload, to)?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return Ok(buf[..n].to_vec());
            }
        }
        bail!("no answer from {to} within {timeout:?}")
    })?
}

/// A steady stream of numbered UDP packets from one namespace to another.
pub struct Stream {
    stop_send: Arc<AtomicBool>,
    stop_recv: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    gap: Arc<AtomicU64>,
    gaps: Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    interval: Duration,
    sender: Option<JoinHandle<Result<Result<()>>>>,
    receiver: Option<JoinHandle<Result<Result<()>>>>,
}

/// What a stream saw.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    /// The longest run of consecutive sequence numbers that never arrived.
    pub longest_gap: u64,
    pub interval: Duration,
    /// Every run of packets that never arrived: (first sequence, length).
    pub gaps: Vec<(u64, u64)>,
}

impl StreamReport {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
    /// The longest outage: the longest gap times the packet interval.
    pub fn longest_outage(&self) -> Duration {
        self.interval * self.longest_gap as u32
    }
}

impl Stream {
    /// Send one packet every `interval` from `from_ns` to `to`, received by
    /// a socket bound to `to` in `to_ns`.
    pub fn start(
        from_ns: &Netns,
        to_ns: &Netns,
        to: SocketAddr,
        interval: Duration,
    ) -> Result<Self> {
        let stop_send = Arc::new(AtomicBool::new(false));
        let stop_recv = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let gap = Arc::new(AtomicU64::new(0));
        let gaps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, r, g) = (stop_recv.clone(), received.clone(), gap.clone());
        let all_gaps = gaps.clone();
        let receiver = spawn_in(to_ns, move || -> Result<()> {
            let sock = UdpSocket::bind(to)?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = tx.send(());
            let mut buf = [0u8; 64];
            let mut seen = std::collections::BTreeSet::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if n >= 8 {
                        let seq = u64::from_be_bytes(buf[..8].try_into().expect("checked length"));
                        if seen.insert(seq) {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            let mut longest = 0;
            let mut prev: Option<u64> = None;
            let mut found = Vec::new();
            for &q in &seen {
                let missing = prev.map_or(q, |p| q - p - 1);
                if missing > 0 {
                    found.push((q - missing, missing));
                }
                longest = longest.max(missing);
                prev = Some(q);
            }
            g.store(longest, Ordering::Relaxed);
            if let Ok(mut v) = all_gaps.lock() {
                *v = found;
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("stream receiver did not start")?;
        let (s, n) = (stop_send.clone(), sent.clone());
        let sender = spawn_in(from_ns, move || -> Result<()> {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            let start = Instant::now();
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                let mut pkt = [0u8; 64];
                pkt[..8].copy_from_slice(&seq.to_be_bytes());
                // A send error (no route for a moment) shows up as a loss.
                let _ = sock.send_to(&pkt, to);
                seq += 1;
                n.store(seq, Ordering::Relaxed);
                let next = start + interval * seq as u32;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            Ok(())
        })?;
        Ok(Self {
            stop_send,
            stop_recv,
            sent,
            received,
            gap,
            gaps,
            interval,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Wait until packets arrive again (some within 200 ms), at most
    /// `timeout`.
    pub fn wait_flowing(&self, timeout: Duration) -> Result<()> {
        crate::fleet::wait_for(timeout, "the stream to flow again", || {
            let before = self.received();
            std::thread::sleep(Duration::from_millis(200));
            Ok((self.received() > before).then_some(()))
        })
    }

    /// Stop sending, give the last packets `drain` to arrive, and report.
    pub fn finish(mut self, drain: Duration) -> StreamReport {
        self.stop_send.store(true, Ordering::Relaxed);
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        std::thread::sleep(drain);
        self.stop_recv.store(true, Ordering::Relaxed);
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
        StreamReport {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            longest_gap: self.gap.load(Ordering::Relaxed),
            interval: self.interval,
            gaps: self.gaps.lock().map(|v| v.clone()).unwrap_or_default(),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop_send.store(true, Ordering::Relaxed);
        self.stop_recv.store(true, Ordering::Relaxed);
    }
}
