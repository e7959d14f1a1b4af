//! IPv4 ICMP echo: building the probe (a whole IPv4 packet from the site's
//! overlay address to the peer's) and recognising the peer's reply. Pure
//! byte work, tested on literal packets.

use std::net::Ipv4Addr;

const IPV4_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const PROTO_ICMP: u8 = 1;
/// Payload carried by each probe: a marker, so a packet capture shows what it is.
pub const PAYLOAD: &[u8; 16] = b"wardnet-probe-v1";

/// The Internet checksum (RFC 1071) over `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying an ICMP echo request with `PAYLOAD`.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16) -> Vec<u8> {
    let total = IPV4_HEADER + ICMP_HEADER + PAYLOAD.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45; // version 4, IHL 5
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    // Identification: the sequence is as good as anything and makes
    // captures easy to follow; DF set (a probe must not be fragmented).
    p[4..6].copy_from_slice(&seq.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64; // TTL
    p[9] = PROTO_ICMP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..IPV4_HEADER]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp = &mut p[IPV4_HEADER..];
    icmp[0] = ICMP_ECHO_REQUEST;
    icmp[4..6].copy_from_slice(&ident.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[ICMP_HEADER..].copy_from_slice(PAYLOAD);
    let sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// An ICMP echo reply found in an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ident: u16,
    pub seq: u16,
}

/// Recognise an IPv4 ICMP echo reply (any identifier; the caller compares
/// it with its own). `None` for anything else: other protocols, other ICMP
/// types, fragments, truncated packets or bad ICMP checksums.
pub fn parse_echo_reply(packet: &[u8]) -> Option<EchoReply> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < IPV4_HEADER || packet.len() < ihl + ICMP_HEADER {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl + ICMP_HEADER || total > packet.len() {
        return None;
    }
    // More fragments set, or a non-zero offset: not a whole echo reply.
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if frag & 0x3fff != 0 || packet[9] != PROTO_ICMP {
        return None;
    }
    let icmp = &packet[ihl..total];
    if icmp[0] != ICMP_ECHO_REPLY || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    let addr = |o: usize| Ipv4Addr::new(packet[o], packet[o + 1], packet[o + 2], packet[o + 3]);
    Some(EchoReply {
        src: addr(12),
        dst: addr(16),
        ident: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Literal bytes of the request from 100.64.0.2 to 100.64.0.1, id
    /// 0x7761, seq 1.
    const REQUEST: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x00, 0x01, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 100, 64, 0, 2, 100,
        64, 0, 1, // IPv4 (checksum patched below)
        0x08, 0x00, 0x00, 0x00, 0x77, 0x61, 0x00, 0x01, // ICMP echo request
        b'w', b'a', b'r', b'd', b'n', b'e', b't', b'-', b'p', b'r', b'o', b'b', b'e', b'-', b'v',
        b'1',
    ];

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the one's complement sum of these is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length: the last byte is padded with zero.
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn request_bytes() {
        let p = echo_request(
            Ipv4Addr::new(100, 64, 0, 2),
            Ipv4Addr::new(100, 64, 0, 1),
            0x7761,
            1,
        );
        assert_eq!(p.len(), 44);
        // Everything but the two checksums is the literal.
        let mut masked = p.clone();
        masked[10..12].copy_from_slice(&[0, 0]);
        masked[22..24].copy_from_slice(&[0, 0]);
        assert_eq!(masked, REQUEST);
        // The checksums verify: a header/message with its checksum sums to 0.
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(checksum(&p[20..]), 0);
    }

    /// The reply a Linux host sends to `REQUEST`: addresses swapped, type 0.
    fn reply_of(req: &[u8]) -> Vec<u8> {
        let mut r = req.to_vec();
        let (src, dst) = (r[12..16].to_vec(), r[16..20].to_vec());
        r[12..16].copy_from_slice(&dst);
        r[16..20].copy_from_slice(&src);
        r[10..12].copy_from_slice(&[0, 0]);
        let s = checksum(&r[..20]);
        r[10..12].copy_from_slice(&s.to_be_bytes());
        r[20] = ICMP_ECHO_REPLY;
        r[22..24].copy_from_slice(&[0, 0]);
        let s = checksum(&r[20..]);
        r[22..24].copy_from_slice(&s.to_be_bytes());
        r
    }

    #[test]
    fn recognises_the_reply() {
        let req = echo_request(
            Ipv4Addr::new(100, 64, 0, 2),
            Ipv4Addr::new(100, 64, 0, 1),
            0x7761,
            513,
        );
        let rep = reply_of(&req);
        assert_eq!(
            parse_echo_reply(&rep),
            Some(EchoReply {
                src: Ipv4Addr::new(100, 64, 0, 1),
                dst: Ipv4Addr::new(100, 64, 0, 2),
                ident: 0x7761,
                seq: 513,
            })
        );
        // The request itself is not a reply.
        assert_eq!(parse_echo_reply(&req), None);
    }

    #[test]
    fn literal_reply_from_a_linux_peer() {
        // 100.64.0.1 -> 100.64.0.2, echo reply id 0x1234 seq 7, 4 bytes
        // payload "ping"; ICMP checksum worked by hand.
        let mut rep: Vec<u8> = vec![
            0x45, 0x00, 0x00, 0x20, 0xab, 0xcd, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 100, 64, 0, 1,
            100, 64, 0, 2, 0x00, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x07, b'p', b'i', b'n', b'g',
        ];
        // ICMP checksum: !(0x1234 + 0x0007 + 0x7069 + 0x6e67) = !0xf10b = 0x0ef4.
        rep[22..24].copy_from_slice(&[0x0e, 0xf4]);
        assert_eq!(checksum(&rep[20..]), 0);
        let r = parse_echo_reply(&rep).expect("a reply");
        assert_eq!((r.ident, r.seq), (0x1234, 7));
        assert_eq!(r.src, Ipv4Addr::new(100, 64, 0, 1));
    }

    #[test]
    fn refuses_what_is_not_a_whole_good_reply() {
        let req = echo_request(
            Ipv4Addr::new(100, 64, 0, 2),
            Ipv4Addr::new(100, 64, 0, 1),
            1,
            2,
        );
        let rep = reply_of(&req);
        // Truncated anywhere.
        for n in 0..rep.len() {
            assert_eq!(parse_echo_reply(&rep[..n]), None, "truncated to {n}");
        }
        // Corrupted ICMP.
        let mut bad = rep.clone();
        bad[30] ^= 1;
        assert_eq!(parse_echo_reply(&bad), None);
        // A fragment.
        let mut frag = rep.clone();
        frag[6] = 0x20;
        assert_eq!(parse_echo_reply(&frag), None);
        // UDP.
        let mut udp = rep.clone();
        udp[9] = 17;
        assert_eq!(parse_echo_reply(&udp), None);
        // IPv6.
        let mut v6 = rep;
        v6[0] = 0x60;
        assert_eq!(parse_echo_reply(&v6), None);
    }
}
