//! Batched UDP I/O for the shell: `recvmmsg`/`sendmmsg`, one system call per
//! batch instead of one per datagram. Under load the syscalls, not the crypto,
//! dominate a single-threaded WireGuard loop, so this is where the time goes.
//!
//! Segmentation offload on top: consecutive datagrams of one size to one
//! peer leave as one `UDP_SEGMENT` (GSO) message, split by the kernel as
//! late as possible (on a veth pair not at all: the receiver takes the whole
//! train), and a socket with `UDP_GRO` receives trains of datagrams from one
//! sender as one buffer with the segment size alongside. One skb then carries
//! ~44 datagrams through the kernel's UDP/IP path, which was 70 % of a
//! sending agent's CPU with one skb per datagram. Both fall back to plain
//! datagrams where the kernel or the path refuses.
//!
//! Each datagram received says which local address it was sent to
//! (`IP_PKTINFO`/`IPV6_PKTINFO`), and each one sent may name the local
//! address to send from: a host with several addresses answers a peer from
//! the address the peer uses, as kernel WireGuard does.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// Room for a packet-info control message (either family) plus a segment
/// size (on send), or a GRO segment size and a receive time (on receive).
const CONTROL_LEN: usize = 128;

/// `SO_TIMESTAMPNS` (asm-generic/socket.h: x86-64, arm64 and most others),
/// also the type of its control message.
const SO_TIMESTAMPNS: libc::c_int = 35;

/// `UDP_SEGMENT` and `UDP_GRO` (linux/udp.h), at level `SOL_UDP`.
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most datagrams the kernel takes in one GSO message (UDP_MAX_SEGMENTS).
const MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO message: a UDP datagram's length field
/// less the headers, with room to spare.
const MAX_GSO_BYTES: usize = 64_000;

/// A control-message buffer, aligned as `cmsghdr` needs.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

/// Ask the kernel to tell each received datagram's local address.
pub(super) fn enable_pktinfo(socket: &socket2::Socket, v6: bool) -> io::Result<()> {
    if v6 {
        set_int_option(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        set_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

fn set_int_option(
    socket: &socket2::Socket,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd and a c_int option value of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            std::ptr::from_ref(&value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ask the kernel to hand over trains of datagrams from one sender as one
/// buffer (`UDP_GRO`); received buffers are then split by segment size.
pub(super) fn enable_gro(socket: &socket2::Socket) -> io::Result<()> {
    set_int_option(socket, libc::SOL_UDP, UDP_GRO, 1)
}

/// Ask the kernel to stamp each datagram with the time it arrived, so the
/// time it waited in the socket's queue is known (the shell bounds it).
pub(super) fn enable_timestamps(socket: &socket2::Socket) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, SO_TIMESTAMPNS, 1)
}

/// Whether this kernel takes `UDP_SEGMENT` (Linux 4.18 and later): setting
/// the socket's default segment size to 0 (none) fails where it does not.
pub(super) fn gso_supported(socket: &socket2::Socket) -> bool {
    set_int_option(socket, libc::SOL_UDP, UDP_SEGMENT, 0).is_ok()
}

/// Receive buffers, one per slot, each large enough for any datagram or a
/// GRO train of them (64 KiB).
pub(super) struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    lens: [usize; RECV_BATCH],
    /// The segment size of a GRO train in the slot (0: one datagram).
    strides: [usize; RECV_BATCH],
    /// How long the datagram waited in the socket's queue (when stamped).
    waited: [Option<Duration>; RECV_BATCH],
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
            strides: [0; RECV_BATCH],
            waited: [None; RECV_BATCH],
            from: [None; RECV_BATCH],
            local: [None; RECV_BATCH],
        }
    }

    /// One non-blocking `recvmmsg` into at most `slots` slots (a slot can
    /// hold a GRO train of dozens of datagrams); returns how many were filled
    /// (`WouldBlock` when none, which also clears tokio's readiness).
    pub(super) fn recv(&mut self, socket: &UdpSocket, slots: usize) -> io::Result<usize> {
        let slots = slots.clamp(1, RECV_BATCH);
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
                    slots as libc::c_uint,
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
        let now = SystemTime::now();
        for i in 0..n {
            let truncated = hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated {
                0
            } else {
                hdrs[i].msg_len as usize
            };
            self.from[i] = sockaddr_to_std(&addrs[i]);
            let info = control_info(&hdrs[i].msg_hdr);
            self.local[i] = info.local;
            self.strides[i] = info.stride;
            self.waited[i] = info.arrived.and_then(|t| now.duration_since(t).ok());
        }
        Ok(n)
    }

    /// How long slot `i` of the last `recv` waited in the socket's queue
    /// (`None` when the kernel did not stamp it).
    pub(super) fn waited(&self, i: usize) -> Option<Duration> {
        self.waited.get(i).copied().flatten()
    }

    /// Slot `i` of the last `recv`: sender (IPv4-mapped addresses made
    /// plain), the local address it was sent to (when the kernel said) and
    /// its datagrams (several for a GRO train, all from that sender);
    /// `None` for a truncated or unaddressed slot.
    pub(super) fn get(
        &self,
        i: usize,
    ) -> Option<(SocketAddr, Option<IpAddr>, std::slice::Chunks<'_, u8>)> {
        let from = self.from.get(i).copied().flatten()?;
        let len = *self.lens.get(i)?;
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let local = self.local.get(i).copied().flatten();
        let data = self.bufs.get(i)?.get(..len)?;
        let stride = match *self.strides.get(i)? {
            0 => len.max(1),
            s => s,
        };
        Some((from, local, data.chunks(stride)))
    }
}

/// What a received message's control messages say.
#[derive(Default)]
struct ControlInfo {
    /// The local address it was sent to (packet info).
    local: Option<IpAddr>,
    /// The segment size of a GRO train (0: none).
    stride: usize,
    /// When the kernel received it.
    arrived: Option<SystemTime>,
}

fn control_info(msg: &libc::msghdr) -> ControlInfo {
    let mut info = ControlInfo::default();
    // SAFETY: `msg` is a header the kernel filled in, its control buffer
    // live and `msg_controllen` bytes long; the CMSG macros stay within it,
    // and the data is read unaligned at the size its type says.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let p = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    info.local =
                        Some(IpAddr::V6(Ipv6Addr::from(p.ipi6_addr.s6_addr)).to_canonical());
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let p = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    info.local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr))));
                }
                (libc::SOL_UDP, UDP_GRO) => {
                    let size = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    info.stride = usize::try_from(size).unwrap_or(0);
                }
                (libc::SOL_SOCKET, SO_TIMESTAMPNS) => {
                    let t = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                    info.arrived = u64::try_from(t.tv_sec).ok().and_then(|secs| {
                        let nanos = u32::try_from(t.tv_nsec).ok()?;
                        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
                    });
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    info
}

/// Writes a message's control messages into `buf`: packet info naming
/// `from` as the source (when given) and the GSO segment size (when given);
/// returns their total length. `v6`: the socket is IPv6 (dual-stack), where
/// an IPv4 source is given as an IPv4-mapped address.
fn send_control(buf: &mut Control, from: Option<IpAddr>, segment: Option<u16>, v6: bool) -> usize {
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = buf.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN;
    let mut len = 0;
    // SAFETY: the buffer is CONTROL_LEN bytes, aligned for cmsghdr, and
    // CMSG_SPACE of a packet-info struct plus that of a u16 fit in it;
    // CMSG_FIRSTHDR/NXTHDR stay within it (null past its end), and each
    // header and its data are written within the space counted for it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        if let Some(from) = from {
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
                len += libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize;
            } else if let IpAddr::V4(a) = from {
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
                len += libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            }
            if len > 0 {
                // NXTHDR reads the length of the header just written.
                msg.msg_controllen = CONTROL_LEN;
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if let Some(segment) = segment {
            if c.is_null() {
                return len;
            }
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), segment);
            len += libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        }
    }
    len
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

/// The bound socket and its family, what a [`SendBatch`] is written to
/// (from the loop or from the writer thread).
pub(super) struct Socket {
    pub(super) udp: UdpSocket,
    /// IPv6 (dual-stack): IPv4 destinations are written as mapped addresses
    /// and packet info as `IPV6_PKTINFO`.
    pub(super) v6: bool,
}

/// How long the writer thread waits for room in the socket's send buffer
/// before it checks whether the data plane is closing.
const WAIT_FOR_ROOM_MS: libc::c_int = 50;

/// One queued datagram: destination, local source (if any), start and
/// length in the arena.
struct Queued {
    to: SocketAddr,
    addr: SockAddr,
    from: Option<IpAddr>,
    start: usize,
    len: usize,
}

/// Outgoing datagrams, copied into one arena, sent with `sendmmsg`, runs of
/// equal-sized datagrams to one peer as one GSO message each. Also the queue
/// of what the kernel refused: while it is not empty the shell stops reading
/// the TUN device (backpressure).
pub(super) struct SendBatch {
    /// The arena. Its length only grows (to the high-water mark, zeroed
    /// once); `used` says how much of it is queued, so a datagram can be
    /// written in place without clearing or copying.
    data: Vec<u8>,
    used: usize,
    packets: Vec<Queued>,
    /// Packets before this index are sent.
    sent: usize,
    /// Whether to send runs as GSO messages (off where the kernel refused),
    /// shared by the batches that take turns on one socket.
    gso: Arc<AtomicBool>,
}

impl SendBatch {
    /// `gso`: whether the kernel takes `UDP_SEGMENT` (see `gso_supported`);
    /// batches sharing the flag learn together when it stops.
    pub(super) fn new(gso: Arc<AtomicBool>) -> Self {
        SendBatch {
            data: Vec::new(),
            used: 0,
            packets: Vec::new(),
            sent: 0,
            gso,
        }
    }

    pub(super) fn set_gso(&mut self, gso: bool) {
        self.gso.store(gso, Ordering::Relaxed);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sent == self.packets.len()
    }

    pub(super) fn is_full(&self) -> bool {
        self.packets.len() - self.sent >= SEND_BATCH
    }

    /// Queues a datagram to `to` from local address `from` (any when
    /// `None`); false (dropped) when too much is already queued.
    pub(super) fn push(&mut self, to: SocketAddr, from: Option<IpAddr>, packet: &[u8]) -> bool {
        self.room(packet.len()).copy_from_slice(packet);
        self.commit(to, from, packet.len())
    }

    /// Room for a datagram of up to `len` bytes after what is queued, to be
    /// written in place and queued with `commit` (or left, and overwritten
    /// by the next one).
    pub(super) fn room(&mut self, len: usize) -> &mut [u8] {
        let end = self.used + len;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        &mut self.data[self.used..end]
    }

    /// Queues the first `len` bytes of the last `room` as a datagram to
    /// `to` from local address `from` (any when `None`); false (dropped)
    /// when too much is already queued.
    pub(super) fn commit(&mut self, to: SocketAddr, from: Option<IpAddr>, len: usize) -> bool {
        if self.packets.len() - self.sent >= MAX_QUEUED || self.used + len > self.data.len() {
            return false;
        }
        self.packets.push(Queued {
            to,
            addr: SockAddr::from(to),
            from,
            start: self.used,
            len,
        });
        self.used += len;
        true
    }

    /// How many queued packets from `first` go in one message: a run to
    /// the same destination from the same source, of one size (the last may
    /// be shorter), adjacent in the arena, within the kernel's limits.
    fn run(&self, first: usize) -> usize {
        let Some(head) = self.packets.get(first) else {
            return 0;
        };
        if !self.gso.load(Ordering::Relaxed) {
            return 1;
        }
        let mut count = 1;
        let mut bytes = head.len;
        for p in &self.packets[first + 1..] {
            if count == MAX_SEGMENTS
                || p.to != head.to
                || p.from != head.from
                || p.len > head.len
                || p.start != head.start + bytes
                || bytes + p.len > MAX_GSO_BYTES
            {
                break;
            }
            count += 1;
            bytes += p.len;
            if p.len < head.len {
                break;
            }
        }
        count
    }

    /// Sends what is queued without blocking. `Err(WouldBlock)` leaves the
    /// rest queued; other send errors drop the offending message (an
    /// unreachable peer must not stall the others).
    /// `v6`: the socket is IPv6 (dual-stack). A datagram whose local
    /// source address is gone (EINVAL, EADDRNOTAVAIL) goes again from any;
    /// a GSO message the kernel or device refuses (EIO) goes again as
    /// plain datagrams, and GSO stays off for this socket.
    pub(super) fn flush(&mut self, fd: RawFd, v6: bool) -> io::Result<()> {
        while !self.is_empty() {
            // SAFETY: all-zero is a valid iovec/mmsghdr.
            let mut iovs: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
            let mut control = [Control([0; CONTROL_LEN]); SEND_BATCH];
            let mut segments = [0usize; SEND_BATCH];
            let mut count = 0;
            let mut next = self.sent;
            while count < SEND_BATCH && next < self.packets.len() {
                let run = self.run(next);
                let head = &self.packets[next];
                let bytes: usize = self.packets[next..next + run].iter().map(|p| p.len).sum();
                iovs[count].iov_base = self.data[head.start..].as_ptr().cast_mut().cast();
                iovs[count].iov_len = bytes;
                let hdr = &mut hdrs[count].msg_hdr;
                hdr.msg_name = head.addr.as_ptr().cast_mut().cast();
                hdr.msg_namelen = head.addr.len();
                hdr.msg_iov = std::ptr::from_mut(&mut iovs[count]);
                hdr.msg_iovlen = 1;
                let segment = (run > 1).then(|| u16::try_from(head.len).unwrap_or(u16::MAX));
                let n = send_control(&mut control[count], head.from, segment, v6);
                if n > 0 {
                    hdr.msg_control = control[count].0.as_mut_ptr().cast();
                    hdr.msg_controllen = n;
                }
                segments[count] = run;
                count += 1;
                next += run;
            }
            // SAFETY: the headers point into `self.data`/`self.packets`
            // and this frame, unchanged for the duration of the call; the
            // kernel only reads them.
            let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as libc::c_uint, 0) };
            let r = if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            };
            match r {
                Ok(n) => self.sent += segments[..n.clamp(1, count)].iter().sum::<usize>(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if segments[0] > 1 && e.raw_os_error() == Some(libc::EIO) => {
                    tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                    self.set_gso(false);
                }
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EADDRNOTAVAIL))
                        && self.packets[self.sent].from.is_some() =>
                {
                    // The local address went away: send from any.
                    let gone = self.packets[self.sent].from;
                    for p in &mut self.packets[self.sent..] {
                        if p.from == gone {
                            p.from = None;
                        }
                    }
                }
                Err(e) if segments[0] > 1 && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                    self.set_gso(false);
                }
                Err(e) => {
                    tracing::debug!(to = %self.packets[self.sent].to, error = %e, "UDP send failed");
                    self.sent += segments[0];
                }
            }
        }
        self.clear();
        Ok(())
    }

    /// Forgets everything queued.
    fn clear(&mut self) {
        self.used = 0;
        self.packets.clear();
        self.sent = 0;
    }
}

impl super::output::Batch for SendBatch {
    type Target = Socket;

    fn len(&self) -> usize {
        self.packets.len() - self.sent
    }

    fn try_write(&mut self, socket: &Socket) -> bool {
        self.flush(socket.udp.as_raw_fd(), socket.v6).is_ok()
    }

    /// Sends everything, waiting for room in the socket's buffer; gives
    /// up (drops the rest) once the data plane is `closing`.
    fn write_all(&mut self, socket: &Socket, closing: &AtomicBool) {
        let fd = socket.udp.as_raw_fd();
        loop {
            match self.flush(fd, socket.v6) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if closing.load(Ordering::Relaxed) {
                        self.clear();
                        return;
                    }
                    let mut poll = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the fd stays open (`socket`
                    // is borrowed for the whole call).
                    unsafe { libc::poll(&mut poll, 1, WAIT_FOR_ROOM_MS) };
                }
                Err(e) => {
                    tracing::debug!(error = %e, "UDP send failed; batch dropped");
                    self.clear();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_batch(gso: bool) -> SendBatch {
        SendBatch::new(Arc::new(AtomicBool::new(gso)))
    }

    fn queue(batch: &mut SendBatch, to: SocketAddr, sizes: &[usize]) {
        for (i, &n) in sizes.iter().enumerate() {
            assert!(batch.push(to, None, &vec![i as u8; n]));
        }
    }

    #[test]
    fn runs_group_equal_sizes_to_one_peer_and_end_on_a_short_one() {
        let a: SocketAddr = "198.51.100.1:51820".parse().expect("test setup");
        let b: SocketAddr = "198.51.100.2:51820".parse().expect("test setup");
        let mut batch = new_batch(true);
        queue(&mut batch, a, &[1452, 1452, 1452, 600, 1452]);
        queue(&mut batch, b, &[1452]);
        assert_eq!(batch.run(0), 4, "three full and one short");
        assert_eq!(batch.run(4), 1, "the next peer's datagram starts a run");
        assert_eq!(batch.run(5), 1);

        let mut larger = new_batch(true);
        queue(&mut larger, a, &[100, 1452]);
        assert_eq!(larger.run(0), 1, "a larger datagram never joins a run");

        let mut plain = new_batch(false);
        queue(&mut plain, a, &[1452, 1452]);
        assert_eq!(plain.run(0), 1, "no runs without GSO");

        let mut long = new_batch(true);
        queue(&mut long, a, &[1000; 100]);
        assert_eq!(long.run(0), 64, "at most the kernel's segment count");
        let mut big = new_batch(true);
        queue(&mut big, a, &[1452; 60]);
        assert_eq!(big.run(0), MAX_GSO_BYTES / 1452, "within 64 KB");
    }

    /// A GSO train over loopback arrives as the same datagrams, in order,
    /// whether the receiver takes it whole (GRO) or one by one.
    #[tokio::test]
    async fn a_train_sent_with_gso_arrives_as_its_datagrams() {
        let receiver = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .expect("test setup");
        enable_gro(&receiver).expect("test setup");
        enable_pktinfo(&receiver, false).expect("test setup");
        enable_timestamps(&receiver).expect("test setup");
        receiver.set_nonblocking(true).expect("test setup");
        receiver
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("test setup");
        let receiver = UdpSocket::from_std(receiver.into()).expect("test setup");
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("test setup");
        let gso = gso_supported(&socket2::SockRef::from(&sender));
        assert!(gso, "Linux has had UDP_SEGMENT since 4.18");

        let to = receiver.local_addr().expect("test setup");
        let mut batch = new_batch(gso);
        let sizes = [1200, 1200, 1200, 1200, 700, 1200, 90];
        let sent: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        for d in &sent {
            batch.push(to, Some(IpAddr::from([127, 0, 0, 1])), d);
        }
        while let Err(e) = batch.flush(sender.as_raw_fd(), false) {
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
            sender.writable().await.expect("test setup");
        }
        assert!(batch.is_empty());

        let mut got = Vec::new();
        let mut trains = 0;
        let mut recv = RecvBatch::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < sent.len() {
            tokio::time::timeout_at(deadline, receiver.readable())
                .await
                .expect("all datagrams within 5 s")
                .expect("test setup");
            let Ok(n) = recv.recv(&receiver, RECV_BATCH) else {
                continue;
            };
            for i in 0..n {
                let waited = recv.waited(i).expect("the kernel stamped it");
                assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
                let (from, local, datagrams) = recv.get(i).expect("test setup");
                assert_eq!(from, sender.local_addr().expect("test setup"));
                assert_eq!(local, Some(IpAddr::from([127, 0, 0, 1])));
                let before = got.len();
                got.extend(datagrams.map(<[u8]>::to_vec));
                trains += usize::from(got.len() - before > 1);
            }
        }
        assert_eq!(got, sent);
        assert!(trains > 0, "GRO handed over at least one train whole");
    }
}
