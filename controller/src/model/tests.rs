use super::*;
use proptest::prelude::*;

fn name(s: &str) -> Name {
    s.parse().expect("name")
}

fn site(n: &str, region: &str, state: SiteState, key: Option<u8>, lans: &[IpNet]) -> Site {
    Site {
        inputs: SiteInputs {
            name: name(n),
            region: name(region),
            org: default_org(),
            role: Role::Spoke,
            state,
            agentless: false,
            lan_prefixes: lans.iter().copied().collect(),
            endpoint: None,
            public_key: key.map(|k| PublicKey::from_bytes([k; 32])),
            ipv4: Ipv4Addr::new(100, 64, 0, 1),
            ipv6: None,
            created_at: 0,
            enrolled_at: None,
            renumber: None,
            credential_hash: None,
        },
        revision: 0,
        render_fingerprint: None,
        applied_revision: 0,
        last_seen: None,
        health: None,
    }
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

/// A replica catching up applies a new site that took a deleted site's
/// address before the deletion: the address stays taken.
#[test]
fn an_address_taken_over_stays_taken_whatever_order_the_changes_come_in() {
    let mut m = Model::default();
    m.upsert_site(site("zz", "north", SiteState::Active, Some(1), &[]));
    m.upsert_site(site("aa", "north", SiteState::Active, Some(2), &[]));
    m.remove_site(&name("zz"));
    let (v4, _) = m.region_addresses(&name("north"));
    assert!(v4.contains(&Ipv4Addr::new(100, 64, 0, 1)), "aa holds it");
    m.remove_site(&name("aa"));
    let (v4, _) = m.region_addresses(&name("north"));
    assert!(v4.is_empty(), "free once its holder is gone");
}

#[test]
fn region_lans_count_only_active_sites_and_follow_changes() {
    let mut m = Model::default();
    let lan = [net("10.1.0.0/24")];
    m.upsert_site(site("a", "r", SiteState::Pending, None, &lan));
    assert_eq!(m.region_lans(&name("r")).count(), 0);
    m.upsert_site(site("a", "r", SiteState::Active, Some(1), &lan));
    assert_eq!(m.region_lans(&name("r")).collect::<Vec<_>>(), [&lan[0]]);
    m.upsert_site(site("a", "q", SiteState::Active, Some(1), &lan));
    assert_eq!(m.region_lans(&name("r")).count(), 0);
    assert_eq!(m.region_lans(&name("q")).count(), 1);
    m.upsert_site(site("a", "q", SiteState::Revoked, Some(1), &lan));
    assert_eq!(m.region_lans(&name("q")).count(), 0);
    assert!(m
        .region_addresses(&name("q"))
        .0
        .contains(&Ipv4Addr::new(100, 64, 0, 1)));
    assert!(m.region_addresses(&name("r")).0.is_empty());
    m.remove_site(&name("a"));
    assert!(m.lans.is_empty() && m.by_key.is_empty());
    assert!(m.region_addresses(&name("q")).0.is_empty());
}

#[test]
fn key_index_names_other_holders_of_a_key() {
    let mut m = Model::default();
    m.upsert_site(site("a", "r", SiteState::Active, Some(7), &[]));
    let k = PublicKey::from_bytes([7; 32]);
    assert_eq!(
        m.sites_with_key(&k, &name("b")).collect::<Vec<_>>(),
        [&name("a")]
    );
    assert_eq!(m.sites_with_key(&k, &name("a")).count(), 0);
    m.upsert_site(site("a", "r", SiteState::Active, Some(8), &[]));
    assert_eq!(m.sites_with_key(&k, &name("b")).count(), 0);
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(a & 0xff0f_0f0f | 0x0a00_0000), l).expect("len")
        )),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(a & !(0xffff_u128 << 100)), l).expect("len")
        )),
    ]
}

proptest! {
    /// The indexed overlap lookup finds a conflict exactly when a scan
    /// of every site's LANs does.
    #[test]
    fn lan_overlap_lookup_matches_a_scan(
        lans in proptest::collection::vec(arb_net(), 0..40),
        probe in arb_net(),
    ) {
        let mut m = Model::default();
        for (i, p) in lans.iter().enumerate() {
            m.upsert_site(site(&format!("s{}", i % 7), "r", SiteState::Active, None, &[*p]));
        }
        let me = name("s0");
        let scan = m.sites.values().filter(|s| s.name != me).any(|s| {
            s.lan_prefixes.iter().any(|q| wardnet_common::net::overlaps(&probe, q))
        });
        let found = m.lan_overlapping(&probe, &me);
        prop_assert_eq!(found.is_some(), scan);
        if let Some((other, q)) = found {
            prop_assert!(other != &me);
            prop_assert!(wardnet_common::net::overlaps(&probe, q));
            prop_assert!(m.sites[other].lan_prefixes.contains(q));
        }
    }
}
