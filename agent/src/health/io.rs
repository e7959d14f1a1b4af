//! The probe shell: one raw ICMP socket bound to the WireGuard interface.
//!
//! A probe is a whole IPv4 packet (`icmp::echo_request`, from the site's
//! overlay address) written with `IP_HDRINCL` and `SO_BINDTODEVICE`: the
//! kernel hands it to the TUN, so it goes through the agent's own data plane
//! (encrypted to the peer like any other packet) and not around it. The
//! reply comes back through the data plane into the TUN, and the raw socket
//! gets a copy of every ICMP packet arriving on that interface; we keep the
//! echo replies carrying this agent's identifier.
//!
//! Needs CAP_NET_RAW (the agent already runs with CAP_NET_ADMIN for the TUN).

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::icmp::{self, EchoReply};

pub struct ProbeSocket {
    fd: AsyncFd<Socket>,
    ident: u16,
}

impl ProbeSocket {
    /// Open the socket on `interface`; `ident` is the ICMP identifier of
    /// this agent's probes.
    pub fn open(interface: &str, ident: u16) -> io::Result<Self> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_header_included_v4(true)?;
        s.bind_device(Some(interface.as_bytes()))?;
        s.set_nonblocking(true)?;
        // SAFETY: the socket owns its descriptor and moves into the AsyncFd,
        // which keeps it open until the AsyncFd (and its registration) drops.
        let fd = unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)?;
        Ok(ProbeSocket { fd, ident })
    }

    /// Send one echo request from `src` to `dst`.
    pub async fn send(&self, src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> io::Result<()> {
        let packet = icmp::echo_request(src, dst, self.ident, seq);
        let to = SockAddr::from(SocketAddrV4::new(dst, 0));
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send_to(&packet, &to)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next echo reply carrying our identifier.
    pub async fn recv(&self) -> io::Result<EchoReply> {
        let mut buf = [0u8; 1500];
        loop {
            let mut guard = self.fd.readable().await?;
            let n = match guard.try_io(|s| {
                let mut sock: &Socket = s.get_ref();
                sock.read(&mut buf)
            }) {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            if let Some(reply) = icmp::parse_echo_reply(&buf[..n]) {
                if reply.ident == self.ident {
                    return Ok(reply);
                }
            }
        }
    }
}
