//! Property tests for IPAM: allocation never hands out an address twice,
//! stays inside the block, avoids network and broadcast, and fails with the
//! exhaustion error exactly when the block is full.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use wardnet_controller::ipam::{
    allocate_region_blocks, allocate_site_addresses, allocate_site_addresses_skipping, Blocks,
    IpamError,
};
use wardnet_controller::model::{NetworkSettings, Region};

fn region(v4: Ipv4Net, v6: Option<Ipv6Net>) -> Region {
    Region {
        name: "r".parse().expect("name"),
        mesh: false,
        ipv4_block: v4,
        ipv6_block: v6,
        created_at: 0,
    }
}

/// A small block somewhere in 100.64.0.0/10.
fn small_block() -> impl Strategy<Value = Ipv4Net> {
    (26u8..=30, 0u32..(1 << 16)).prop_map(|(len, n)| {
        let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (n << 6);
        Ipv4Net::new(Ipv4Addr::from(base), len)
            .expect("length")
            .trunc()
    })
}

proptest! {
    /// Allocate until exhausted, freeing (deleting) and pre-using addresses
    /// at random: every answer is fresh, a host address of the block, and
    /// exhaustion comes exactly when every host address is taken.
    #[test]
    fn repeated_allocation_fills_the_block_then_says_so(
        block in small_block(),
        pre_used in proptest::collection::vec(any::<u8>(), 0..8),
        skipped in proptest::collection::vec(any::<u8>(), 0..4),
        frees in proptest::collection::vec(any::<u8>(), 0..6),
    ) {
        let net = u32::from(block.network());
        let bcast = u32::from(block.broadcast());
        let hosts = bcast - net - 1;
        let host = |i: u8| Ipv4Addr::from(net + 1 + u32::from(i) % hosts);
        let v6: Ipv6Net = "fd7a:6e65::/120".parse().expect("v6");
        let r = region(block, Some(v6));

        let mut used4: imbl::OrdSet<Ipv4Addr> = pre_used.iter().map(|&i| host(i)).collect();
        let skip4: BTreeSet<Ipv4Addr> = skipped.iter().map(|&i| host(i)).collect();
        let mut used6: imbl::OrdSet<Ipv6Addr> = imbl::OrdSet::new();
        let mut frees = frees.into_iter();
        let mut given = BTreeSet::new();

        loop {
            let taken = used4.iter().chain(skip4.iter().filter(|a| !used4.contains(*a))).count() as u32;
            match allocate_site_addresses_skipping(&r, &used4, &used6, &skip4, &BTreeSet::new(), &Default::default()) {
                Ok((a, b)) => {
                    prop_assert!(taken < hosts, "allocated {a} from a full block {block}");
                    prop_assert!(block.contains(&a), "{a} outside {block}");
                    prop_assert!(u32::from(a) != net && u32::from(a) != bcast, "{a} is network/broadcast of {block}");
                    prop_assert!(!used4.contains(&a) && !skip4.contains(&a), "{a} was taken");
                    // Lowest free: nothing free below it.
                    for below in (net + 1)..u32::from(a) {
                        let below = Ipv4Addr::from(below);
                        prop_assert!(used4.contains(&below) || skip4.contains(&below), "{below} was free below {a}");
                    }
                    let b = b.expect("region has an IPv6 block");
                    prop_assert!(v6.contains(&b) && b != v6.network(), "{b}");
                    prop_assert!(used6.insert(b).is_none(), "{b} given twice");
                    prop_assert!(given.insert(a), "{a} given twice");
                    used4.insert(a);
                    // Now and then a site is deleted: its address is free again.
                    if let Some(f) = frees.next() {
                        if f % 3 == 0 {
                            let gone = host(f);
                            if used4.remove(&gone).is_some() {
                                given.remove(&gone);
                            }
                        }
                    }
                }
                Err(e) => {
                    prop_assert_eq!(taken, hosts, "exhausted early: {}", e);
                    prop_assert_eq!(e, IpamError::RegionExhausted { region: r.name.clone(), block: IpNet::V4(block) });
                    break;
                }
            }
        }
    }

    /// Region blocks: fresh, aligned, inside the overlay, disjoint from every
    /// existing block (of any size); exhaustion only when no aligned gap is left.
    #[test]
    fn region_blocks_are_disjoint_until_the_overlay_is_full(
        len in 12u8..=14,
        odd in proptest::collection::vec((11u8..=15, 0u32..64), 0..4),
    ) {
        let overlay: Ipv4Net = "100.64.0.0/10".parse().expect("overlay");
        let settings = NetworkSettings {
            overlay_v4: overlay,
            overlay_v6: None,
            region_prefix_len_v4: len,
            region_prefix_len_v6: 64,
            routed_prefixes: BTreeSet::new(),
            listen_port: 51820,
            mtu: 1420,
            persistent_keepalive: 25,
        };
        // Some pre-existing blocks of other sizes, made non-overlapping.
        let mut regions: Vec<Region> = Vec::new();
        for (l, n) in odd {
            let b = Ipv4Net::new(Ipv4Addr::from(u32::from(overlay.network()) + (n << 16)), l).expect("len").trunc();
            if regions.iter().all(|r| !r.ipv4_block.contains(&b.network()) && !b.contains(&r.ipv4_block.network())) {
                regions.push(region(b, None));
            }
        }
        let capacity = 1u32 << (len - 10);
        for _ in 0..=capacity {
            match allocate_region_blocks(&settings, &regions) {
                Ok((b, v6)) => {
                    prop_assert!(v6.is_none());
                    prop_assert_eq!(b.prefix_len(), len);
                    prop_assert_eq!(b, b.trunc());
                    prop_assert!(overlay.contains(&b), "{b}");
                    for r in &regions {
                        let o = r.ipv4_block;
                        prop_assert!(!o.contains(&b.network()) && !b.contains(&o.network()), "{b} overlaps {o}");
                    }
                    regions.push(region(b, None));
                }
                Err(e) => {
                    prop_assert_eq!(e, IpamError::RegionBlocksExhausted { overlay: IpNet::V4(overlay), prefix_len: len });
                    // Truly full: no aligned block of `len` is free.
                    for cand in overlay.subnets(len).expect("len") {
                        prop_assert!(regions.iter().any(|r| r.ipv4_block.contains(&cand.network())
                            || cand.contains(&r.ipv4_block.network())), "{cand} was free");
                    }
                    return Ok(());
                }
            }
        }
        prop_assert!(false, "more than {} blocks of /{} in a /10", capacity, len);
    }

    /// Organisations' overlay blocks: a site takes the lowest free address
    /// of its organisation's blocks (in block order) while they have one,
    /// else the lowest free address outside every block; never an address
    /// in another organisation's block; exhausted only when neither has a
    /// free address.
    #[test]
    fn a_site_takes_its_organisations_block_then_the_pool_never_anothers(
        cuts in proptest::collection::vec((27u8..=30, 0u32..64, any::<bool>()), 0..5),
        used in proptest::collection::vec(0u32..64, 0..40),
    ) {
        let block: Ipv4Net = "100.64.0.0/26".parse().expect("block");
        let r = region(block, None);
        let base = u32::from(block.network());
        let mut blocks = Blocks::default();
        let mut taken: Vec<Ipv4Net> = Vec::new();
        for (len, n, own) in cuts {
            let b = Ipv4Net::new(Ipv4Addr::from(base + n), len).expect("len").trunc();
            if taken.iter().any(|t| t.contains(&b.network()) || b.contains(&t.network())) {
                continue;
            }
            taken.push(b);
            if own { blocks.own.push(IpNet::V4(b)) } else { blocks.foreign.push(IpNet::V4(b)) }
        }
        let used4: imbl::OrdSet<Ipv4Addr> = used.iter().map(|&i| Ipv4Addr::from(base + i)).collect();
        let in_any = |a: Ipv4Addr, of: &[IpNet]| of.iter().any(|b| b.contains(&IpAddr::V4(a)));
        let hosts: Vec<Ipv4Addr> = (base + 1..u32::from(block.broadcast())).map(Ipv4Addr::from).collect();
        let free = |a: &Ipv4Addr| !used4.contains(a);
        let mut own_sorted = blocks.own.clone();
        own_sorted.sort();
        let want = own_sorted
            .iter()
            .find_map(|b| hosts.iter().filter(|a| b.contains(&IpAddr::V4(**a))).find(|a| free(a)))
            .or_else(|| hosts.iter().filter(|a| !in_any(**a, &blocks.own) && !in_any(**a, &blocks.foreign)).find(|a| free(a)))
            .copied();
        match allocate_site_addresses(&r, &used4, &imbl::OrdSet::new(), &blocks) {
            Ok((a, _)) => {
                prop_assert_eq!(Some(a), want);
                prop_assert!(!in_any(a, &blocks.foreign), "{a} is another organisation's");
            }
            Err(e) => {
                prop_assert_eq!(want, None, "exhausted early: {}", e);
            }
        }
    }
}
