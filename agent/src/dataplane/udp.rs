//! Batched UDP I/O for the shell: `recvmmsg`/`sendmmsg`, one system call per
//! batch instead of one per datagram. Under load the syscalls, not the crypto,
//! dominate a single-threaded WireGuard loop, so this is where the time goes.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::core::BUF_SIZE;

/// Datagrams received per `recvmmsg`.
pub(super) const RECV_BATCH: usize = 32;
/// Datagrams queued before a `sendmmsg` is forced.
pub(super) const SEND_BATCH: usize = 64;
/// Datagrams held while the socket is full; beyond this we drop (as a NIC would).
const MAX_QUEUED: usize = 1024;

/// Receive buffers, one per slot, each large enough for any datagram.
pub(super) struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    lens: [usize; RECV_BATCH],
    from: [Option<SocketAddr>; RECV_BATCH],
}

impl RecvBatch {
    pub(super) fn new() -> Self {
        RecvBatch {
            bufs: (0..RECV_BATCH)
                .map(|_| vec![0u8; BUF_SIZE].into_boxed_slice())
                .collect(),
            lens: [0; RECV_BATCH],
            from: [None; RECV_BATCH],
        }
    }

    /// One non-blocking `recvmmsg`; returns how many slots were filled
    /// (`WouldBlock` when none, which also clears tokio's readiness).
    pub(super) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: all-zero is a valid sockaddr_storage/iovec/mmsghdr.
        let mut addrs: [libc::sockaddr_storage; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..RECV_BATCH {
            iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = self.bufs[i].len();
            hdrs[i].msg_hdr.msg_name = std::ptr::from_mut(&mut addrs[i]).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = std::ptr::from_mut(&mut iovs[i]);
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let fd = socket.as_raw_fd();
        let n = socket.try_io(Interest::READABLE, || {
            // SAFETY: every header points at live buffers of the stated
            // sizes owned by `self`/this frame, for the duration of the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    RECV_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })?;
        for i in 0..n {
            let truncated = hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated {
                0
            } else {
                hdrs[i].msg_len as usize
            };
            self.from[i] = sockaddr_to_std(&addrs[i]);
        }
        Ok(n)
    }

    /// Slot `i` of the last `recv`: sender (IPv4-mapped addresses made
    /// plain) and datagram; `None` for a truncated or unaddressed one.
    pub(super) fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let from = self.from.get(i).copied().flatten()?;
        let len = *self.lens.get(i)?;
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        Some((from, self.bufs.get(i)?.get(..len)?))
    }
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Outgoing datagrams, copied into one arena, sent with `sendmmsg`. Also the
/// queue of what the kernel refused: while it is not empty the shell stops
/// reading the TUN device (backpressure).
#[derive(Default)]
pub(super) struct SendBatch {
    data: Vec<u8>,
    /// Destination, start and length in `data`.
    packets: Vec<(SockAddr, usize, usize)>,
    /// Packets before this index are sent.
    sent: usize,
}

impl SendBatch {
    pub(super) fn is_empty(&self) -> bool {
        self.sent == self.packets.len()
    }

    pub(super) fn is_full(&self) -> bool {
        self.packets.len() - self.sent >= SEND_BATCH
    }

    /// Queues a datagram; false (dropped) when too much is already queued.
    pub(super) fn push(&mut self, to: SocketAddr, packet: &[u8]) -> bool {
        if self.packets.len() - self.sent >= MAX_QUEUED {
            return false;
        }
        let start = self.data.len();
        self.data.extend_from_slice(packet);
        self.packets.push((SockAddr::from(to), start, packet.len()));
        true
    }

    /// Sends what is queued without blocking. `Err(WouldBlock)` leaves the
    /// rest queued; other send errors drop the offending datagram (an
    /// unreachable peer must not stall the others).
    pub(super) fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let fd = socket.as_raw_fd();
        while !self.is_empty() {
            let chunk = &self.packets[self.sent..];
            let count = chunk.len().min(SEND_BATCH);
            // SAFETY: all-zero is a valid iovec/mmsghdr.
            let mut iovs: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
            for (i, (to, start, len)) in chunk.iter().take(count).enumerate() {
                iovs[i].iov_base = self.data[*start..].as_ptr().cast_mut().cast();
                iovs[i].iov_len = *len;
                hdrs[i].msg_hdr.msg_name = to.as_ptr().cast_mut().cast();
                hdrs[i].msg_hdr.msg_namelen = to.len();
                hdrs[i].msg_hdr.msg_iov = std::ptr::from_mut(&mut iovs[i]);
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            let r = socket.try_io(Interest::WRITABLE, || {
                // SAFETY: the headers point into `self.data`/`self.packets`
                // and this frame, unchanged for the duration of the call;
                // the kernel only reads them.
                let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as libc::c_uint, 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(n) => self.sent += n.max(1).min(count),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    tracing::debug!(to = ?chunk[0].0.as_socket(), error = %e, "UDP send failed");
                    self.sent += 1;
                }
            }
        }
        self.data.clear();
        self.packets.clear();
        self.sent = 0;
        Ok(())
    }
}
