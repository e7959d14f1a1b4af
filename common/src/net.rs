//! Network newtypes: underlay endpoints and prefix helpers.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An underlay UDP endpoint, `IP:PORT` (IPv6 as `[addr]:port`). Port 0 is
/// refused: nothing can reach it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint(SocketAddr);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error(
        "invalid endpoint {0:?}: expected IP:PORT, e.g. 198.51.100.7:51820 or [2001:db8::7]:51820"
    )]
    Syntax(String),
    #[error("invalid endpoint {0:?}: port 0 cannot be reached")]
    PortZero(String),
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Result<Self, EndpointError> {
        if addr.port() == 0 {
            return Err(EndpointError::PortZero(addr.to_string()));
        }
        Ok(Self(addr))
    }
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let addr: SocketAddr = s.parse().map_err(|_| EndpointError::Syntax(s.to_owned()))?;
        Self::new(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parse a prefix and insist it is canonical (no host bits set), so
/// `10.1.2.3/24` is an error that says to write `10.1.2.0/24`.
pub fn parse_prefix(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s.parse().map_err(|_| {
        format!("invalid prefix {s:?}: expected ADDRESS/LENGTH, e.g. 100.64.0.0/10")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "invalid prefix {s:?}: host bits are set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// The host prefix (/32 or /128) of an address.
pub fn host_prefix(addr: IpAddr) -> IpNet {
    match addr {
        IpAddr::V4(a) => {
            IpNet::V4(ipnet::Ipv4Net::new(a, 32).expect("32 is a valid IPv4 prefix length"))
        }
        IpAddr::V6(a) => {
            IpNet::V6(ipnet::Ipv6Net::new(a, 128).expect("128 is a valid IPv6 prefix length"))
        }
    }
}

/// Whether two prefixes share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_v4_and_v6_and_refuse_port_zero() {
        assert!("198.51.100.7:51820".parse::<Endpoint>().is_ok());
        assert!("[2001:db8::7]:51820".parse::<Endpoint>().is_ok());
        assert!(matches!(
            "198.51.100.7:0".parse::<Endpoint>(),
            Err(EndpointError::PortZero(_))
        ));
        assert!(matches!(
            "hub.example:51820".parse::<Endpoint>(),
            Err(EndpointError::Syntax(_))
        ));
    }

    #[test]
    fn prefixes_must_be_canonical() {
        assert!(parse_prefix("100.64.0.0/10").is_ok());
        let e = parse_prefix("100.64.1.1/10").expect_err("host bits");
        assert!(e.contains("did you mean 100.64.0.0/10"), "{e}");
        assert!(parse_prefix("nonsense").is_err());
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        let p = |s: &str| s.parse::<IpNet>().expect("prefix");
        assert!(overlaps(&p("10.0.0.0/8"), &p("10.1.0.0/16")));
        assert!(overlaps(&p("10.1.0.0/16"), &p("10.0.0.0/8")));
        assert!(!overlaps(&p("10.1.0.0/16"), &p("10.2.0.0/16")));
        assert!(!overlaps(&p("10.0.0.0/8"), &p("fd7a::/16")));
    }
}
