//! Overlay address management: region blocks inside the overlay prefix and
//! site addresses inside a region's block.
//!
//! Pure functions over what is already used. They do not reserve anything:
//! the store's UNIQUE constraints arbitrate between concurrent callers (and
//! controller replicas); on a conflict the caller adds the losing address to
//! the `skip` set and asks again.

use std::collections::BTreeSet;

use imbl::OrdSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use wardnet_common::Name;

use crate::model::{Model, NetworkSettings, Region};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error(
        "the overlay {overlay} has no free /{prefix_len} block left for a new region; \
         delete an unused region, or configure a larger overlay prefix or a longer region prefix length"
    )]
    RegionBlocksExhausted { overlay: IpNet, prefix_len: u8 },
    #[error(
        "region {region}'s block {block} has no free address; \
         delete revoked sites or create another region"
    )]
    RegionExhausted { region: Name, block: IpNet },
    #[error(
        "region prefix length /{prefix_len} does not fit the overlay {overlay}: \
         it must be at least the overlay's own length and at most {max}"
    )]
    RegionPrefixLen {
        overlay: IpNet,
        prefix_len: u8,
        max: u8,
    },
}

/// The first free IPv4 block of `settings.region_prefix_len_v4` inside the
/// overlay, and (when an IPv6 overlay is configured) the first free IPv6 block
/// of `settings.region_prefix_len_v6`. A block is free when it overlaps no
/// existing region's block, so blocks allocated under other settings are
/// still respected.
pub fn allocate_region_blocks<'a>(
    settings: &NetworkSettings,
    existing: impl IntoIterator<Item = &'a Region>,
) -> Result<(Ipv4Net, Option<Ipv6Net>), IpamError> {
    let mut used_v4 = Vec::new();
    let mut used_v6 = Vec::new();
    for r in existing {
        used_v4.push(span(
            u32::from(r.ipv4_block.network()).into(),
            r.ipv4_block.prefix_len(),
            32,
        ));
        if let Some(b) = r.ipv6_block {
            used_v6.push(span(u128::from(b.network()), b.prefix_len(), 128));
        }
    }

    let overlay = settings.overlay_v4;
    let len = settings.region_prefix_len_v4;
    let v4 = first_free_block(
        u32::from(overlay.network()).into(),
        overlay.prefix_len(),
        32,
        len,
        &mut used_v4,
    )
    .map_err(|e| e.into_error(IpNet::V4(overlay), len))?;
    // `first_free_block` returns an aligned start inside the overlay and `len`
    // was checked against 32, so both conversions hold.
    let v4 = Ipv4Net::new(Ipv4Addr::from(v4 as u32), len).expect("checked prefix length");

    let v6 = match settings.overlay_v6 {
        None => None,
        Some(overlay) => {
            let len = settings.region_prefix_len_v6;
            let start = first_free_block(
                u128::from(overlay.network()),
                overlay.prefix_len(),
                128,
                len,
                &mut used_v6,
            )
            .map_err(|e| e.into_error(IpNet::V6(overlay), len))?;
            Some(Ipv6Net::new(Ipv6Addr::from(start), len).expect("checked prefix length"))
        }
    };
    Ok((v4, v6))
}

/// Where in a region the sites of one organisation take their addresses:
/// the overlay blocks delegated to it (`own`) first; when they are full or
/// there are none, the region's pool, which is what no block delegated to
/// any organisation covers (`foreign`: the others').
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Blocks {
    pub own: Vec<IpNet>,
    pub foreign: Vec<IpNet>,
}

/// The lowest free host address for a site of an organisation with
/// `blocks` in the region's IPv4 block (never its network or broadcast
/// address) and, when the region has an IPv6 block, the same of that (never
/// the subnet-router anycast `::0`).
///
/// `used_*` are the addresses held by the region's sites in any state
/// (revoked sites keep theirs until deleted; see [`used_addresses`]).
pub fn allocate_site_addresses(
    region: &Region,
    used_v4: &OrdSet<Ipv4Addr>,
    used_v6: &OrdSet<Ipv6Addr>,
    blocks: &Blocks,
) -> Result<(Ipv4Addr, Option<Ipv6Addr>), IpamError> {
    allocate_site_addresses_skipping(
        region,
        used_v4,
        used_v6,
        &BTreeSet::new(),
        &BTreeSet::new(),
        blocks,
    )
}

/// [`allocate_site_addresses`] for a retry: `skip_*` are addresses the
/// caller lost to a concurrent writer (a UNIQUE conflict in the store) and
/// wants passed over without having to copy the used sets.
pub fn allocate_site_addresses_skipping(
    region: &Region,
    used_v4: &OrdSet<Ipv4Addr>,
    used_v6: &OrdSet<Ipv6Addr>,
    skip_v4: &BTreeSet<Ipv4Addr>,
    skip_v6: &BTreeSet<Ipv6Addr>,
    blocks: &Blocks,
) -> Result<(Ipv4Addr, Option<Ipv6Addr>), IpamError> {
    let exhausted = |block: IpNet| IpamError::RegionExhausted {
        region: region.name.clone(),
        block,
    };
    let v4 = allocate_v4(region.ipv4_block, used_v4, skip_v4, blocks)
        .ok_or_else(|| exhausted(IpNet::V4(region.ipv4_block)))?;
    let v6 = match region.ipv6_block {
        None => None,
        Some(block) => Some(
            allocate_v6(block, used_v6, skip_v6, blocks)
                .ok_or_else(|| exhausted(IpNet::V6(block)))?,
        ),
    };
    Ok((v4, v6))
}

/// Addresses for a site moving into its organisation's `own` blocks of
/// the region: per family, the lowest free address inside them, or `None`
/// when there is no such block of that family or it is full.
pub fn allocate_in_blocks(
    region: &Region,
    used_v4: &OrdSet<Ipv4Addr>,
    used_v6: &OrdSet<Ipv6Addr>,
    own: &[IpNet],
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    // The whole region is another's: nothing outside `own` is taken.
    let mut everything = vec![IpNet::V4(region.ipv4_block)];
    everything.extend(region.ipv6_block.map(IpNet::V6));
    let blocks = Blocks {
        own: own.to_vec(),
        foreign: everything,
    };
    let v4 = allocate_v4(region.ipv4_block, used_v4, &BTreeSet::new(), &blocks);
    let v6 = region
        .ipv6_block
        .and_then(|b| allocate_v6(b, used_v6, &BTreeSet::new(), &blocks));
    (v4, v6)
}

/// The range of a family's prefixes in `of`.
fn ranges(v4: bool, of: &[IpNet]) -> Vec<(u128, u128)> {
    of.iter()
        .filter_map(|p| match p {
            IpNet::V4(b) if v4 => Some((
                u32::from(b.network()).into(),
                u32::from(b.broadcast()).into(),
            )),
            IpNet::V6(b) if !v4 => Some((b.network().into(), b.broadcast().into())),
            _ => None,
        })
        .collect()
}

/// The IPv4 address for a site of an organisation with `blocks` in the
/// region's IPv4 `block` (never its network or broadcast address).
fn allocate_v4(
    block: Ipv4Net,
    used: &OrdSet<Ipv4Addr>,
    skip: &BTreeSet<Ipv4Addr>,
    blocks: &Blocks,
) -> Option<Ipv4Addr> {
    if block.prefix_len() >= 31 {
        return None;
    }
    let lo = u32::from(block.network()) + 1;
    let hi = u32::from(block.broadcast()) - 1;
    let free_in = |a: u128, b: u128| {
        let (a, b) = (Ipv4Addr::from(a as u32), Ipv4Addr::from(b as u32));
        lowest_free(
            u32::from(a).into(),
            u32::from(b).into(),
            used.range(a..=b).map(|x| u32::from(*x).into()),
            skip.range(a..=b).map(|x| u32::from(*x).into()),
        )
    };
    let own = ranges(true, &blocks.own);
    let foreign = ranges(true, &blocks.foreign);
    place(lo.into(), hi.into(), &own, &foreign, free_in).map(|a| Ipv4Addr::from(a as u32))
}

/// The IPv6 address for a site of an organisation with `blocks` in the
/// region's IPv6 `block` (never the subnet-router anycast `::0`).
fn allocate_v6(
    block: Ipv6Net,
    used: &OrdSet<Ipv6Addr>,
    skip: &BTreeSet<Ipv6Addr>,
    blocks: &Blocks,
) -> Option<Ipv6Addr> {
    if block.prefix_len() >= 128 {
        return None;
    }
    let free_in = |a: u128, b: u128| {
        let (a, b) = (Ipv6Addr::from(a), Ipv6Addr::from(b));
        lowest_free(
            a.into(),
            b.into(),
            used.range(a..=b).map(|x| u128::from(*x)),
            skip.range(a..=b).map(|x| u128::from(*x)),
        )
    };
    let own = ranges(false, &blocks.own);
    let foreign = ranges(false, &blocks.foreign);
    place(
        u128::from(block.network()) + 1,
        block.broadcast().into(),
        &own,
        &foreign,
        free_in,
    )
    .map(Ipv6Addr::from)
}

/// The address for a site in `[lo, hi]`: the lowest free one (`free_in`
/// answers for a sub-range) inside the `own` ranges, else the lowest free
/// one outside both `own` and `foreign`.
fn place(
    lo: u128,
    hi: u128,
    own: &[(u128, u128)],
    foreign: &[(u128, u128)],
    free_in: impl Fn(u128, u128) -> Option<u128>,
) -> Option<u128> {
    let mut own = own.to_vec();
    own.sort_unstable();
    for &(a, b) in &own {
        let (a, b) = (a.max(lo), b.min(hi));
        if a <= b {
            if let Some(x) = free_in(a, b) {
                return Some(x);
            }
        }
    }
    let mut holes: Vec<(u128, u128)> = own.iter().chain(foreign).copied().collect();
    holes.sort_unstable();
    let mut cand = lo;
    for (a, b) in holes {
        if b < cand {
            continue;
        }
        if a > hi {
            break;
        }
        if a > cand {
            if let Some(x) = free_in(cand, a - 1) {
                return Some(x);
            }
        }
        cand = b.checked_add(1)?;
    }
    (cand <= hi).then(|| free_in(cand, hi)).flatten()
}

/// The overlay blocks delegated to organisations inside region `region`'s
/// blocks, as [`Blocks`] for a site of `org`.
pub fn blocks(model: &Model, org: &Name, region: &Region) -> Blocks {
    let mut out = Blocks::default();
    let region_blocks =
        std::iter::once(IpNet::V4(region.ipv4_block)).chain(region.ipv6_block.map(IpNet::V6));
    for b in region_blocks {
        for (p, o) in model.policy.delegated.overlapping(&b) {
            if o == org {
                out.own.push(*p);
            } else {
                out.foreign.push(*p);
            }
        }
    }
    out
}

/// Addresses held by the region's sites, in any state: a revoked site's
/// addresses are only free once the site is deleted.
pub fn used_addresses(model: &Model, region: &Name) -> (OrdSet<Ipv4Addr>, OrdSet<Ipv6Addr>) {
    // The model keeps this index in step with its sites.
    model.region_addresses(region)
}

/// An inclusive address range `[first, last]` of a prefix, in a 128-bit space
/// so IPv4 and IPv6 share one implementation.
fn span(network: u128, prefix_len: u8, bits: u8) -> (u128, u128) {
    (network, network | host_mask(prefix_len, bits))
}

/// Host bits of a prefix of `prefix_len` in a `bits`-wide address.
fn host_mask(prefix_len: u8, bits: u8) -> u128 {
    let host_bits = u32::from(bits.saturating_sub(prefix_len));
    1u128.checked_shl(host_bits).map_or(u128::MAX, |b| b - 1)
}

enum BlockError {
    Exhausted,
    BadLen(u8),
}

impl BlockError {
    fn into_error(self, overlay: IpNet, prefix_len: u8) -> IpamError {
        match self {
            BlockError::Exhausted => IpamError::RegionBlocksExhausted {
                overlay,
                prefix_len,
            },
            BlockError::BadLen(max) => IpamError::RegionPrefixLen {
                overlay,
                prefix_len,
                max,
            },
        }
    }
}

/// Start of the lowest aligned block of `prefix_len` inside the overlay that
/// overlaps none of `used`. Jumps past each used range it meets instead of
/// stepping block by block, so a huge overlay or an oversized old block costs
/// nothing: one pass over the sorted used ranges.
fn first_free_block(
    overlay_network: u128,
    overlay_len: u8,
    bits: u8,
    prefix_len: u8,
    used: &mut [(u128, u128)],
) -> Result<u128, BlockError> {
    if prefix_len < overlay_len || prefix_len > bits {
        return Err(BlockError::BadLen(bits));
    }
    used.sort_unstable();
    let (_, overlay_last) = span(overlay_network, overlay_len, bits);
    let mask = host_mask(prefix_len, bits);
    let mut cand = overlay_network;
    // Ranges are visited by start; every range already visited ends before
    // `cand`, so a range starting after the candidate's end means it is free.
    for &(first, end) in used.iter() {
        if end < cand {
            continue;
        }
        let last = cand.checked_add(mask).ok_or(BlockError::Exhausted)?;
        if first > last {
            break;
        }
        // Next aligned start after the blocking range.
        let next = end.checked_add(1).ok_or(BlockError::Exhausted)?;
        cand = next.checked_add(mask).ok_or(BlockError::Exhausted)? & !mask;
    }
    match cand.checked_add(mask) {
        Some(last) if last <= overlay_last => Ok(cand),
        _ => Err(BlockError::Exhausted),
    }
}

/// The lowest address in `[lo, hi]` that neither ascending iterator yields.
/// Linear in the number of taken addresses inside the range.
fn lowest_free(
    lo: u128,
    hi: u128,
    used: impl Iterator<Item = u128>,
    skip: impl Iterator<Item = u128>,
) -> Option<u128> {
    let mut used = used.peekable();
    let mut skip = skip.peekable();
    let mut cand = lo;
    loop {
        if cand > hi {
            return None;
        }
        while used.next_if(|&a| a < cand).is_some() {}
        while skip.next_if(|&a| a < cand).is_some() {}
        if used.peek() == Some(&cand) || skip.peek() == Some(&cand) {
            cand = cand.checked_add(1)?;
        } else {
            return Some(cand);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, v4: &str, v6: Option<&str>) -> Region {
        Region {
            name: name.parse().expect("name"),
            mesh: false,
            ipv4_block: v4.parse().expect("v4 block"),
            ipv6_block: v6.map(|b| b.parse().expect("v6 block")),
            created_at: 0,
        }
    }

    fn settings(v4_len: u8, v6_len: u8) -> NetworkSettings {
        NetworkSettings {
            overlay_v4: "100.64.0.0/10".parse().expect("overlay"),
            overlay_v6: Some("fd7a:6e65::/48".parse().expect("overlay v6")),
            region_prefix_len_v4: v4_len,
            region_prefix_len_v6: v6_len,
            routed_prefixes: BTreeSet::new(),
            listen_port: 51820,
            mtu: 1420,
            persistent_keepalive: 25,
        }
    }

    fn a4(s: &str) -> Ipv4Addr {
        s.parse().expect("ipv4")
    }

    #[test]
    fn region_blocks_fill_gaps_in_order() {
        let s = settings(20, 64);
        let (v4, v6) = allocate_region_blocks(&s, []).expect("empty overlay");
        assert_eq!(v4.to_string(), "100.64.0.0/20");
        assert_eq!(v6.map(|b| b.to_string()).as_deref(), Some("fd7a:6e65::/64"));

        let regions = [
            region("a", "100.64.0.0/20", Some("fd7a:6e65::/64")),
            region("c", "100.64.32.0/20", Some("fd7a:6e65:0:2::/64")),
        ];
        let (v4, v6) = allocate_region_blocks(&s, &regions).expect("gap");
        assert_eq!(v4.to_string(), "100.64.16.0/20");
        assert_eq!(
            v6.map(|b| b.to_string()).as_deref(),
            Some("fd7a:6e65:0:1::/64")
        );
    }

    #[test]
    fn region_blocks_respect_blocks_of_another_size() {
        // A region made when blocks were /16 covers sixteen /20s.
        let s = settings(20, 64);
        let regions = [region("old", "100.64.0.0/16", None)];
        let (v4, v6) = allocate_region_blocks(&s, &regions).expect("free");
        assert_eq!(v4.to_string(), "100.65.0.0/20");
        assert_eq!(v6.map(|b| b.to_string()).as_deref(), Some("fd7a:6e65::/64"));
    }

    #[test]
    fn region_blocks_exhaustion_names_the_overlay() {
        let mut s = settings(11, 49);
        let regions = [
            region("a", "100.64.0.0/11", None),
            region("b", "100.96.0.0/11", None),
        ];
        let e = allocate_region_blocks(&s, &regions).expect_err("full");
        assert_eq!(
            e,
            IpamError::RegionBlocksExhausted {
                overlay: "100.64.0.0/10".parse().expect("net"),
                prefix_len: 11
            }
        );
        assert!(
            e.to_string()
                .contains("100.64.0.0/10 has no free /11 block"),
            "{e}"
        );

        s.region_prefix_len_v4 = 8;
        let e = allocate_region_blocks(&s, []).expect_err("shorter than overlay");
        assert!(
            matches!(
                e,
                IpamError::RegionPrefixLen {
                    prefix_len: 8,
                    max: 32,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn site_addresses_skip_network_used_and_skipped() {
        let r = region("north", "100.64.0.0/29", Some("fd7a:6e65::/64"));
        let none4 = OrdSet::new();
        let none6 = OrdSet::new();
        let skip6 = BTreeSet::new();
        let (v4, v6) =
            allocate_site_addresses(&r, &none4, &none6, &Blocks::default()).expect("free");
        assert_eq!(v4, a4("100.64.0.1"));
        assert_eq!(v6, Some("fd7a:6e65::1".parse().expect("v6")));

        let used: OrdSet<_> = [a4("100.64.0.1"), a4("100.64.0.3")].into_iter().collect();
        let skip: BTreeSet<_> = [a4("100.64.0.2")].into();
        let (v4, _) =
            allocate_site_addresses_skipping(&r, &used, &none6, &skip, &skip6, &Blocks::default())
                .expect("free");
        assert_eq!(v4, a4("100.64.0.4"));
    }

    #[test]
    fn exhausted_region_says_what_to_do() {
        let r = region("north", "100.64.0.0/30", None);
        let used: OrdSet<_> = [a4("100.64.0.1"), a4("100.64.0.2")].into_iter().collect();
        let e = allocate_site_addresses(&r, &used, &OrdSet::new(), &Blocks::default())
            .expect_err("full");
        assert_eq!(
            e.to_string(),
            "region north's block 100.64.0.0/30 has no free address; delete revoked sites or create another region"
        );
        // /31 and /32 blocks have no address that is neither network nor broadcast.
        let r = region("tiny", "100.64.0.0/31", None);
        let e = allocate_site_addresses(&r, &OrdSet::new(), &OrdSet::new(), &Blocks::default());
        assert!(matches!(e, Err(IpamError::RegionExhausted { .. })));
    }

    #[test]
    fn allocation_in_a_nearly_full_slash20_finds_the_gap() {
        // How fast this is, is the fleet benchmark's business
        // (docs/benchmarks.md); here only the answer is checked.
        let r = region("big", "100.64.0.0/20", Some("fd7a:6e65::/64"));
        let base = u32::from(a4("100.64.0.1"));
        let used4: OrdSet<Ipv4Addr> = (0..4000).map(|i| Ipv4Addr::from(base + i)).collect();
        let used6: OrdSet<Ipv6Addr> = (1..=4000u128)
            .map(|i| Ipv6Addr::from(u128::from("fd7a:6e65::".parse::<Ipv6Addr>().expect("v6")) + i))
            .collect();
        let (v4, v6) =
            allocate_site_addresses(&r, &used4, &used6, &Blocks::default()).expect("free");
        assert_eq!(v4, Ipv4Addr::from(base + 4000));
        assert_eq!(v6, Some("fd7a:6e65::fa1".parse().expect("v6")));
    }
}
