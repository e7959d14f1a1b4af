//! Addresses and routes of the agent's interface, changed by set difference
//! (never flush-and-rebuild), over rtnetlink.
//!
//! A [`Netlink`] handle owns one rtnetlink socket. The socket belongs to the
//! network namespace of the thread that called [`Netlink::new`] (tests rely on
//! this: they build the handle on a thread that has `setns`-ed into a test
//! namespace). It must be created inside a tokio runtime: the connection task
//! is spawned onto it.
//!
//! What is managed:
//! - addresses: every address on the interface except IPv6 link-local
//!   (`fe80::/10`), which the kernel owns;
//! - routes: unicast routes in the main table whose output interface is ours,
//!   except `proto kernel` ones (the prefix routes the kernel adds for an
//!   address, and IPv6 `fe80::/64`). Routes we add are `proto static`, with
//!   no gateway (`ip route add P dev IF`).
//!
//! Adding something that exists (EEXIST) and deleting something that is gone
//! (ESRCH, EADDRNOTAVAIL) are not errors, so a retried or repeated plan is
//! harmless.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};

/// Why a netlink operation failed. Each variant names the interface (name and
/// index when the name is known) and the address or prefix; the source is the
/// OS error (`File exists (os error 17)` and the like).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("failed to open a netlink route socket")]
    Connect(#[source] io::Error),
    #[error("no network interface named {name:?}")]
    NoSuchLink { name: String },
    #[error("failed to look up network interface {name:?}")]
    LinkLookup {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to {op} on interface {link}")]
    Link {
        op: &'static str,
        link: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to {op} address {addr} on interface {link}")]
    Address {
        op: &'static str,
        addr: IpNet,
        link: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to {op} route {prefix} via interface {link}")]
    Route {
        op: &'static str,
        prefix: IpNet,
        link: String,
        #[source]
        source: io::Error,
    },
}

/// What [`Netlink::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub added_addresses: BTreeSet<IpNet>,
    pub removed_addresses: BTreeSet<IpNet>,
    pub added_routes: BTreeSet<IpNet>,
    pub removed_routes: BTreeSet<IpNet>,
}

impl Applied {
    /// True when nothing had to change.
    pub fn is_empty(&self) -> bool {
        self.added_addresses.is_empty()
            && self.removed_addresses.is_empty()
            && self.added_routes.is_empty()
            && self.removed_routes.is_empty()
    }
}

/// A handle on an rtnetlink socket; cheap to clone.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket in the calling thread's network namespace and spawns
    /// its connection task on the current tokio runtime (panics outside one,
    /// like `tokio::spawn`).
    pub fn new() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The index of the interface called `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetlinkError::NoSuchLink { name: name.into() }),
            Err(e) => {
                let source = to_io(e);
                if source.raw_os_error() == Some(libc::ENODEV) {
                    Err(NetlinkError::NoSuchLink { name: name.into() })
                } else {
                    Err(NetlinkError::LinkLookup {
                        name: name.into(),
                        source,
                    })
                }
            }
        }
    }

    /// `ip link set IF up`.
    pub async fn set_link_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| link_err("bring the link up", index, e))
    }

    /// `ip link set IF mtu MTU`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| link_err("set the MTU", index, e))
    }

    /// The addresses on the interface (IPv4 and IPv6, except IPv6 link-local),
    /// each with its prefix length and host bits kept (`100.64.0.1/10`).
    pub async fn addresses(&self, index: u32) -> Result<BTreeSet<IpNet>, NetlinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = BTreeSet::new();
        loop {
            let msg = match stream.try_next().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => return Err(link_err("list addresses", index, e)),
            };
            if let Some(net) = address_of(&msg) {
                if !is_v6_link_local(&net) {
                    out.insert(net);
                }
            }
        }
        Ok(out)
    }

    /// `ip addr add ADDR dev IF`; an address already there is not an error.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let res = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await;
        tolerate(res, &[libc::EEXIST]).map_err(|source| NetlinkError::Address {
            op: "add",
            addr,
            link: describe_link(index),
            source,
        })
    }

    /// `ip addr del ADDR dev IF`; an address already gone is not an error.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let res = self
            .handle
            .address()
            .del(address_message(index, addr))
            .execute()
            .await;
        tolerate(res, &[libc::EADDRNOTAVAIL, libc::ENOENT, libc::ESRCH]).map_err(|source| {
            NetlinkError::Address {
                op: "delete",
                addr,
                link: describe_link(index),
                source,
            }
        })
    }

    /// Destinations of the non-kernel unicast routes in the main table that go
    /// out through the interface (IPv4 and IPv6), as network prefixes.
    pub async fn routes(&self, index: u32) -> Result<BTreeSet<IpNet>, NetlinkError> {
        let mut out = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let mut stream = self.handle.route().get(query).execute();
            loop {
                let msg = match stream.try_next().await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(e) => return Err(link_err("list routes", index, e)),
                };
                if let Some(net) = managed_route(&msg, index) {
                    out.insert(net);
                }
            }
        }
        Ok(out)
    }

    /// `ip route add PREFIX dev IF proto static` (no gateway). The prefix is
    /// truncated to its network address. A route already there is not an error.
    pub async fn add_route(&self, index: u32, prefix: IpNet) -> Result<(), NetlinkError> {
        let prefix = prefix.trunc();
        let res = self
            .handle
            .route()
            .add(route_message(index, prefix, false))
            .execute()
            .await;
        tolerate(res, &[libc::EEXIST]).map_err(|source| NetlinkError::Route {
            op: "add",
            prefix,
            link: describe_link(index),
            source,
        })
    }

    /// `ip route del PREFIX dev IF` (whatever its protocol); a route already
    /// gone is not an error.
    pub async fn del_route(&self, index: u32, prefix: IpNet) -> Result<(), NetlinkError> {
        let prefix = prefix.trunc();
        let res = self
            .handle
            .route()
            .del(route_message(index, prefix, true))
            .execute()
            .await;
        tolerate(res, &[libc::ESRCH, libc::ENOENT]).map_err(|source| NetlinkError::Route {
            op: "delete",
            prefix,
            link: describe_link(index),
            source,
        })
    }

    /// Makes the interface's addresses and routes equal to the wanted sets by
    /// changing only the difference: adds what is missing, then removes what
    /// is no longer wanted (routes before addresses). Routes are compared as
    /// network prefixes. Returns what changed; on error, what was applied
    /// before the error stays applied and the next call finishes the job.
    pub async fn apply(
        &self,
        index: u32,
        want_addresses: &BTreeSet<IpNet>,
        want_routes: &BTreeSet<IpNet>,
    ) -> Result<Applied, NetlinkError> {
        let have_addresses = self.addresses(index).await?;
        let have_routes = self.routes(index).await?;
        let want_routes: BTreeSet<IpNet> = want_routes.iter().map(IpNet::trunc).collect();
        let plan = plan(&have_addresses, want_addresses, &have_routes, &want_routes);

        for &a in &plan.added_addresses {
            self.add_address(index, a).await?;
        }
        for &r in &plan.added_routes {
            self.add_route(index, r).await?;
        }
        for &r in &plan.removed_routes {
            self.del_route(index, r).await?;
        }
        for &a in &plan.removed_addresses {
            self.del_address(index, a).await?;
        }
        Ok(plan)
    }
}

/// The pure part of [`Netlink::apply`]: the set differences.
pub fn plan(
    have_addresses: &BTreeSet<IpNet>,
    want_addresses: &BTreeSet<IpNet>,
    have_routes: &BTreeSet<IpNet>,
    want_routes: &BTreeSet<IpNet>,
) -> Applied {
    Applied {
        added_addresses: want_addresses.difference(have_addresses).copied().collect(),
        removed_addresses: have_addresses.difference(want_addresses).copied().collect(),
        added_routes: want_routes.difference(have_routes).copied().collect(),
        removed_routes: have_routes.difference(want_routes).copied().collect(),
    }
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    match addr.addr() {
        IpAddr::V4(a) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(a, addr.prefix_len())
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(a, addr.prefix_len())
            .build(),
    }
}

/// A route through `index` to `prefix`, no gateway. For deletion, protocol,
/// type and scope are left as wildcards (as `ip route del` does) so the
/// kernel matches the route whoever added it.
fn route_message(index: u32, prefix: IpNet, for_delete: bool) -> RouteMessage {
    let mut msg = match prefix {
        IpNet::V4(p) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(p.network(), p.prefix_len())
            .output_interface(index)
            // `ip route add P dev IF` gives a v4 device route link scope.
            .scope(RouteScope::Link)
            .build(),
        IpNet::V6(p) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(p.network(), p.prefix_len())
            .output_interface(index)
            .build(),
    };
    if for_delete {
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
    }
    msg
}

/// The address of an `RTM_NEWADDR` message. On a point-to-point link
/// `IFA_LOCAL` is ours and `IFA_ADDRESS` the peer's, so prefer `IFA_LOCAL`.
fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
}

fn managed_route(msg: &RouteMessage, index: u32) -> Option<IpNet> {
    let h = &msg.header;
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || h.kind != RouteType::Unicast
        || h.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let mut oif = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    // A default route carries no destination attribute.
    let dst = dst.unwrap_or(match h.address_family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    });
    IpNet::new(dst, h.destination_prefix_length)
        .ok()
        .map(|n| n.trunc())
}

fn is_v6_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(n) => (n.addr().segments()[0] & 0xffc0) == 0xfe80,
        IpNet::V4(_) => false,
    }
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other),
    }
}

fn tolerate(res: Result<(), rtnetlink::Error>, ok_errnos: &[i32]) -> Result<(), io::Error> {
    match res {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = to_io(e);
            match e.raw_os_error() {
                Some(code) if ok_errnos.contains(&code) => Ok(()),
                _ => Err(e),
            }
        }
    }
}

fn link_err(op: &'static str, index: u32, e: rtnetlink::Error) -> NetlinkError {
    NetlinkError::Link {
        op,
        link: describe_link(index),
        source: to_io(e),
    }
}

/// `wg0 (index 7)`, or `index 7` when the name cannot be found (the name
/// lookup runs in the calling thread's network namespace).
fn describe_link(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` is IF_NAMESIZE bytes, as if_indextoname requires; on
    // success it holds a NUL-terminated name.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("index {index}");
    }
    // SAFETY: if_indextoname succeeded, so `buf` is NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    format!("{} (index {index})", name.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<IpNet> {
        xs.iter().map(|s| s.parse().expect("test prefix")).collect()
    }

    #[test]
    fn plan_changes_only_the_difference() {
        let p = plan(
            &set(&["100.64.0.1/32", "fd7a::1/128"]),
            &set(&["100.64.0.1/32", "fd7a::2/128"]),
            &set(&["100.64.0.0/10", "fd7a::/16"]),
            &set(&["100.64.0.0/10", "100.100.0.0/16"]),
        );
        assert_eq!(p.added_addresses, set(&["fd7a::2/128"]));
        assert_eq!(p.removed_addresses, set(&["fd7a::1/128"]));
        assert_eq!(p.added_routes, set(&["100.100.0.0/16"]));
        assert_eq!(p.removed_routes, set(&["fd7a::/16"]));
        let same = plan(&p.added_routes, &p.added_routes, &set(&[]), &set(&[]));
        assert!(same.is_empty());
    }

    #[test]
    fn link_local_is_not_ours() {
        assert!(is_v6_link_local(&"fe80::1/64".parse().expect("prefix")));
        assert!(!is_v6_link_local(&"fd7a::1/64".parse().expect("prefix")));
        assert!(!is_v6_link_local(&"100.64.0.1/32".parse().expect("prefix")));
    }
}
