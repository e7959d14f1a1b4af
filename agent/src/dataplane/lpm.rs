//! AllowedIPs: longest-prefix match from an address to a peer.
//!
//! One hash map per prefix length, searched from the longest length in use
//! to the shortest. A lookup costs one hash probe per distinct prefix length
//! in the table (a handful in practice: /32, /24, /16, /10, /0), whatever the
//! number of peers, so a hub with thousands of spokes stays fast.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Prefixes of one address family, `WIDTH` bits wide.
#[derive(Debug)]
struct Family<const WIDTH: u8> {
    /// Index = prefix length; key = the address's top `len` bits.
    by_len: Vec<HashMap<u128, u32>>,
    /// Prefix lengths with at least one entry, longest first.
    lens: Vec<u8>,
}

impl<const WIDTH: u8> Family<WIDTH> {
    fn new() -> Self {
        Self {
            by_len: (0..=WIDTH).map(|_| HashMap::new()).collect(),
            lens: Vec::new(),
        }
    }

    fn key(addr: u128, len: u8) -> u128 {
        addr.checked_shr(u32::from(WIDTH - len)).unwrap_or(0)
    }

    fn insert(&mut self, addr: u128, len: u8, value: u32) -> Option<u32> {
        let old = self.by_len[usize::from(len)].insert(Self::key(addr, len), value);
        if let Err(pos) = self.lens.binary_search_by(|l| len.cmp(l)) {
            self.lens.insert(pos, len);
        }
        old
    }

    fn remove_if(&mut self, addr: u128, len: u8, value: u32) -> bool {
        let map = &mut self.by_len[usize::from(len)];
        let key = Self::key(addr, len);
        if map.get(&key) != Some(&value) {
            return false;
        }
        map.remove(&key);
        if map.is_empty() {
            self.lens.retain(|l| *l != len);
        }
        true
    }

    fn lookup(&self, addr: u128) -> Option<u32> {
        self.lens.iter().find_map(|&len| {
            self.by_len[usize::from(len)]
                .get(&Self::key(addr, len))
                .copied()
        })
    }
}

/// Maps prefixes to a peer's local index; the longest matching prefix wins.
#[derive(Debug)]
pub(crate) struct AllowedIps {
    v4: Family<32>,
    v6: Family<128>,
}

impl Default for AllowedIps {
    fn default() -> Self {
        Self {
            v4: Family::new(),
            v6: Family::new(),
        }
    }
}

impl AllowedIps {
    /// Points `net` at `value`; returns the previous owner, if any (WireGuard
    /// semantics: a prefix belongs to at most one peer, the last one set).
    pub(crate) fn insert(&mut self, net: IpNet, value: u32) -> Option<u32> {
        match net.trunc() {
            IpNet::V4(n) => self
                .v4
                .insert(u128::from(u32::from(n.addr())), n.prefix_len(), value),
            IpNet::V6(n) => self.v6.insert(u128::from(n.addr()), n.prefix_len(), value),
        }
    }

    /// Removes `net` only if it still points at `value` (it may have moved to
    /// another peer since).
    pub(crate) fn remove_if(&mut self, net: IpNet, value: u32) -> bool {
        match net.trunc() {
            IpNet::V4(n) => {
                self.v4
                    .remove_if(u128::from(u32::from(n.addr())), n.prefix_len(), value)
            }
            IpNet::V6(n) => self
                .v6
                .remove_if(u128::from(n.addr()), n.prefix_len(), value),
        }
    }

    pub(crate) fn lookup(&self, addr: IpAddr) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u128::from(u32::from(a))),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn longest_prefix_wins_for_both_families() {
        let mut t = AllowedIps::default();
        t.insert(net("0.0.0.0/0"), 1);
        t.insert(net("100.64.0.0/10"), 2);
        t.insert(net("100.64.0.7/32"), 3);
        t.insert(net("fd7a::/16"), 4);
        t.insert(net("fd7a::7/128"), 5);
        assert_eq!(t.lookup(ip("100.64.0.7")), Some(3));
        assert_eq!(t.lookup(ip("100.64.0.8")), Some(2));
        assert_eq!(t.lookup(ip("8.8.8.8")), Some(1));
        assert_eq!(t.lookup(ip("fd7a::7")), Some(5));
        assert_eq!(t.lookup(ip("fd7a::8")), Some(4));
        assert_eq!(t.lookup(ip("2001:db8::1")), None);
    }

    #[test]
    fn remove_only_removes_the_current_owner() {
        let mut t = AllowedIps::default();
        t.insert(net("100.64.1.0/24"), 1);
        assert_eq!(t.insert(net("100.64.1.0/24"), 2), Some(1));
        assert!(!t.remove_if(net("100.64.1.0/24"), 1));
        assert_eq!(t.lookup(ip("100.64.1.9")), Some(2));
        assert!(t.remove_if(net("100.64.1.0/24"), 2));
        assert_eq!(t.lookup(ip("100.64.1.9")), None);
    }

    #[test]
    fn thousands_of_host_routes() {
        let mut t = AllowedIps::default();
        for i in 0..5000u32 {
            let a = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + i);
            t.insert(IpNet::from(IpAddr::V4(a)), i);
        }
        assert_eq!(t.lookup(ip("100.64.0.10")), Some(10));
        assert_eq!(t.lookup(ip("100.64.19.135")), Some(4999));
        assert_eq!(t.lookup(ip("100.64.19.136")), None);
    }
}
