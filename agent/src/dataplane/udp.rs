//! Batched UDP I/O for the shell: `recvmmsg`/`sendmmsg`, one system call per
//! batch instead of one per datagram. Under load the syscalls, not the crypto,
//! dominate a single-threaded WireGuard loop, so this is where the time goes.
//!
//! Each datagram received says which local address it was sent to
//! (`IP_PKTINFO`/`IPV6_PKTINFO`), and each one sent may name the local
//! address to send from: a host with several addresses answers a peer from
//! the address the peer uses, as kernel WireGuard does.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
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

/// Room for one packet-info control message (either family).
const CONTROL_LEN: usize = 64;

/// A control-message buffer, aligned as `cmsghdr` needs.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

/// Ask the kernel to tell each received datagram's local address.
pub(super) fn enable_pktinfo(socket: &socket2::Socket, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, option) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: a valid fd and a c_int option value of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            std::ptr::from_ref(&on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive buffers, one per slot, each large enough for any datagram.
pub(super) struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    lens: [usize; RECV_BATCH],
    from: [Option<SocketAddr>; RECV_BATCH],
    /// The local address each datagram was sent to.
    local: [Option<IpAddr>; RECV_BATCH],
}

impl RecvBatch {
    pub(super) fn new() -> Self {
        RecvBatch {
            bufs: (0..RECV_BATCH)
                .map(|_| vec![0u8; BUF_SIZE].into_boxed_slice())
                .collect(),
            lens: [0; RECV_BATCH],
            from: [None; RECV_BATCH],
            local: [None; RECV_BATCH],
        }
    }

    /// One non-blocking `recvmmsg`; returns how many slots were filled
    /// (`WouldBlock` when none, which also clears tokio's readiness).
    pub(super) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: all-zero is a valid sockaddr_storage/iovec/mmsghdr.
        let mut addrs: [libc::sockaddr_storage; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut control = [Control([0; CONTROL_LEN]); RECV_BATCH];
        for i in 0..RECV_BATCH {
            iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = self.bufs[i].len();
            hdrs[i].msg_hdr.msg_name = std::ptr::from_mut(&mut addrs[i]).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = std::ptr::from_mut(&mut iovs[i]);
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_control = control[i].0.as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = CONTROL_LEN;
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
            self.local[i] = local_address(&hdrs[i].msg_hdr);
        }
        Ok(n)
    }

    /// Slot `i` of the last `recv`: sender (IPv4-mapped addresses made
    /// plain), the local address it was sent to (when the kernel said) and
    /// the datagram; `None` for a truncated or unaddressed one.
    pub(super) fn get(&self, i: usize) -> Option<(SocketAddr, Option<IpAddr>, &[u8])> {
        let from = self.from.get(i).copied().flatten()?;
        let len = *self.lens.get(i)?;
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let local = self.local.get(i).copied().flatten();
        Some((from, local, self.bufs.get(i)?.get(..len)?))
    }
}

/// The local address in a received message's packet-info control message.
fn local_address(msg: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: `msg` is a header the kernel filled in, its control buffer
    // live and `msg_controllen` bytes long; the CMSG macros stay within it,
    // and the data is read unaligned at the size its type says.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)).to_canonical());
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        info.ipi_addr.s_addr,
                    ))));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Write a packet-info control message naming `from` as the source into
/// `buf`; returns its length. `v6`: the socket is IPv6 (dual-stack), where
/// an IPv4 source is given as an IPv4-mapped address.
fn source_control(buf: &mut Control, from: IpAddr, v6: bool) -> usize {
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = buf.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN;
    // SAFETY: the buffer is CONTROL_LEN bytes, aligned for cmsghdr, and
    // CMSG_SPACE of either packet-info struct fits in it; the header and
    // data are written within it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() {
            return 0;
        }
        if v6 {
            let addr = match from {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: addr.octets(),
                },
                ipi6_ifindex: 0,
            };
            (*c).cmsg_level = libc::IPPROTO_IPV6;
            (*c).cmsg_type = libc::IPV6_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
        } else {
            let IpAddr::V4(a) = from else {
                return 0;
            };
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(a).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
        }
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
    /// Destination, local source (if any), start and length in `data`.
    packets: Vec<(SockAddr, Option<IpAddr>, usize, usize)>,
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

    /// Queues a datagram to `to` from local address `from` (any when
    /// `None`); false (dropped) when too much is already queued.
    pub(super) fn push(&mut self, to: SocketAddr, from: Option<IpAddr>, packet: &[u8]) -> bool {
        if self.packets.len() - self.sent >= MAX_QUEUED {
            return false;
        }
        let start = self.data.len();
        self.data.extend_from_slice(packet);
        self.packets
            .push((SockAddr::from(to), from, start, packet.len()));
        true
    }

    /// Sends what is queued without blocking. `Err(WouldBlock)` leaves the
    /// rest queued; other send errors drop the offending datagram (an
    /// unreachable peer must not stall the others).
    /// `v6`: the socket is IPv6 (dual-stack). A datagram whose local
    /// source address is gone (EINVAL, EADDRNOTAVAIL) goes again from any.
    pub(super) fn flush(&mut self, socket: &UdpSocket, v6: bool) -> io::Result<()> {
        let fd = socket.as_raw_fd();
        while !self.is_empty() {
            let chunk = &self.packets[self.sent..];
            let count = chunk.len().min(SEND_BATCH);
            // SAFETY: all-zero is a valid iovec/mmsghdr.
            let mut iovs: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
            let mut control = [Control([0; CONTROL_LEN]); SEND_BATCH];
            for (i, (to, from, start, len)) in chunk.iter().take(count).enumerate() {
                iovs[i].iov_base = self.data[*start..].as_ptr().cast_mut().cast();
                iovs[i].iov_len = *len;
                hdrs[i].msg_hdr.msg_name = to.as_ptr().cast_mut().cast();
                hdrs[i].msg_hdr.msg_namelen = to.len();
                hdrs[i].msg_hdr.msg_iov = std::ptr::from_mut(&mut iovs[i]);
                hdrs[i].msg_hdr.msg_iovlen = 1;
                if let Some(from) = from {
                    let n = source_control(&mut control[i], *from, v6);
                    if n > 0 {
                        hdrs[i].msg_hdr.msg_control = control[i].0.as_mut_ptr().cast();
                        hdrs[i].msg_hdr.msg_controllen = n;
                    }
                }
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
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EADDRNOTAVAIL))
                        && self.packets[self.sent].1.is_some() =>
                {
                    // The local address went away: send from any.
                    self.packets[self.sent].1 = None;
                }
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
