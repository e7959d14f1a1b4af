//! rtnetlink against a real kernel, inside a throwaway network namespace
//! (root only; skipped otherwise). The test body runs on a thread that has
//! `setns`-ed into the namespace, with a current-thread tokio runtime, so the
//! netlink socket (and procfs sysctl reads) see only that namespace.

use std::collections::BTreeSet;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;
use wardnet_agent::forwarding::{enable_ip_forwarding, ip_forwarding};
use wardnet_agent::netlink::{Netlink, NetlinkError};

static N: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    wardnet_e2e::require_root("netlink tests")
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace deleted on drop (also on panic).
struct Ns(String);

impl Ns {
    fn new() -> Self {
        let name = format!(
            "wn-nlt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        Self(name)
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.0];
        all.extend_from_slice(args);
        sh(&all)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `f` on a thread inside `ns` with its own current-thread runtime.
fn in_ns<F, Fut>(ns: &Ns, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let file = std::fs::File::open(format!("/run/netns/{}", ns.0)).expect("open netns");
    let result = std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f());
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A persistent TUN device in `ns`, like the agent's (the `dummy` module
/// may not be loadable, e.g. in containers; TUN is what production uses).
fn tun(ns: &Ns) -> String {
    let name = format!(
        "wnt{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    assert!(name.len() <= 15);
    ns.ip(&["tuntap", "add", "dev", &name, "mode", "tun"]);
    name
}

fn set(xs: &[&str]) -> BTreeSet<IpNet> {
    xs.iter().map(|s| s.parse().expect("test prefix")).collect()
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn links_addresses_and_routes() {
    if !is_root() {
        return;
    }
    let ns = Ns::new();
    let ifname = tun(&ns);
    let (ifn, nsname) = (ifname.clone(), ns.0.clone());
    in_ns(&ns, move || async move {
        let nl = Netlink::new().expect("netlink");
        let idx = nl.link_index(&ifn).await.expect("index");
        assert!(matches!(
            nl.link_index("nosuchif0").await,
            Err(NetlinkError::NoSuchLink { .. })
        ));
        nl.set_link_up(idx).await.expect("up");
        nl.set_mtu(idx, 1420).await.expect("mtu");
        let show = sh(&["ip", "-n", &nsname, "link", "show", &ifn]);
        assert!(show.contains("mtu 1420") && show.contains(",UP"), "{show}");

        // Addresses, IPv4 and IPv6, add twice and delete twice.
        let addrs = set(&["100.64.1.1/32", "100.64.2.1/24", "fd7a::1/128"]);
        for &a in &addrs {
            nl.add_address(idx, a).await.expect("add address");
            nl.add_address(idx, a).await.expect("EEXIST tolerated");
        }
        assert_eq!(nl.addresses(idx).await.expect("list"), addrs);
        let gone: IpNet = "100.64.2.1/24".parse().expect("prefix");
        nl.del_address(idx, gone).await.expect("del");
        nl.del_address(idx, gone).await.expect("missing tolerated");
        assert_eq!(
            nl.addresses(idx).await.expect("list"),
            set(&["100.64.1.1/32", "fd7a::1/128"])
        );

        // Routes via the interface; kernel prefix routes are not listed.
        let routes = set(&["100.64.0.0/10", "100.100.7.0/24", "fd7a:1::/48"]);
        for &r in &routes {
            nl.add_route(idx, r).await.expect("add route");
            nl.add_route(idx, r).await.expect("EEXIST tolerated");
        }
        assert_eq!(nl.routes(idx).await.expect("routes"), routes);
        let v4 = sh(&["ip", "-n", &nsname, "route", "show", "100.64.0.0/10"]);
        assert!(
            v4.contains(&format!("dev {ifn}")) && v4.contains("proto static"),
            "{v4}"
        );
        let r: IpNet = "fd7a:1::/48".parse().expect("prefix");
        nl.del_route(idx, r).await.expect("del route");
        nl.del_route(idx, r).await.expect("missing tolerated");
        assert_eq!(
            nl.routes(idx).await.expect("routes"),
            set(&["100.64.0.0/10", "100.100.7.0/24"])
        );

        // Errors name the prefix, the interface and the OS error.
        let err = nl
            .add_route(999_999, "100.64.9.0/24".parse().expect("prefix"))
            .await
            .expect_err("no such interface");
        let msg = format!(
            "{err} / {}",
            std::error::Error::source(&err).expect("source")
        );
        assert!(
            msg.contains("100.64.9.0/24") && msg.contains("999999"),
            "{msg}"
        );
        assert!(msg.contains("os error"), "{msg}");
    });
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn apply_changes_only_the_difference() {
    if !is_root() {
        return;
    }
    let ns = Ns::new();
    let ifname = tun(&ns);
    ns.ip(&["link", "set", &ifname, "up"]);
    // State made by "someone else" with marks a rebuild would erase: a finite
    // address lifetime and a route metric.
    ns.ip(&[
        "addr",
        "add",
        "100.64.3.1/32",
        "dev",
        &ifname,
        "valid_lft",
        "5000",
        "preferred_lft",
        "5000",
    ]);
    ns.ip(&["addr", "add", "fd7a::3/128", "dev", &ifname, "nodad"]);
    ns.ip(&[
        "route",
        "add",
        "100.64.0.0/10",
        "dev",
        &ifname,
        "proto",
        "static",
        "metric",
        "77",
    ]);
    ns.ip(&[
        "route",
        "add",
        "fd7a:2::/48",
        "dev",
        &ifname,
        "proto",
        "static",
    ]);
    let (ifn, nsname) = (ifname.clone(), ns.0.clone());
    in_ns(&ns, move || async move {
        let nl = Netlink::new().expect("netlink");
        let idx = nl.link_index(&ifn).await.expect("index");
        let want_a = set(&["100.64.3.1/32", "fd7a::4/128"]);
        // Host bits in a wanted route are ignored (compared as networks).
        let want_r = set(&["100.64.0.0/10", "fd7a:3::1/48"]);
        let applied = nl.apply(idx, &want_a, &want_r).await.expect("apply");
        assert_eq!(applied.added_addresses, set(&["fd7a::4/128"]));
        assert_eq!(applied.removed_addresses, set(&["fd7a::3/128"]));
        assert_eq!(applied.added_routes, set(&["fd7a:3::/48"]));
        assert_eq!(applied.removed_routes, set(&["fd7a:2::/48"]));
        assert_eq!(nl.addresses(idx).await.expect("list"), want_a);
        assert_eq!(
            nl.routes(idx).await.expect("routes"),
            set(&["100.64.0.0/10", "fd7a:3::/48"])
        );
        // Untouched things were not re-created.
        let a = sh(&["ip", "-n", &nsname, "addr", "show", "dev", &ifn]);
        assert!(
            a.contains("valid_lft 4") || a.contains("valid_lft 50"),
            "{a}"
        );
        let r = sh(&["ip", "-n", &nsname, "route", "show", "100.64.0.0/10"]);
        assert!(r.contains("metric 77"), "{r}");
        // Converged: a second apply changes nothing.
        assert!(nl
            .apply(idx, &want_a, &want_r)
            .await
            .expect("apply")
            .is_empty());
    });
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn forwarding_sysctls_follow_the_thread_namespace() {
    if !is_root() {
        return;
    }
    let root_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    let ns = Ns::new();
    let nsname = ns.0.clone();
    in_ns(&ns, move || async move {
        // A new namespace may inherit IPv4 forwarding from the root one
        // (net.core.devconf_inherit_init_net), so set a known state first.
        sh(&[
            "ip",
            "netns",
            "exec",
            &nsname,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=0",
        ]);
        assert_eq!(ip_forwarding().expect("read"), (false, false));
        sh(&[
            "ip",
            "netns",
            "exec",
            &nsname,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        // The thread sees its namespace's value, not the root's: only this
        // makes the write below safe for the host.
        assert_eq!(ip_forwarding().expect("read"), (true, false));
        enable_ip_forwarding().expect("enable");
        assert_eq!(ip_forwarding().expect("read"), (true, true));
        let inside = sh(&[
            "ip",
            "netns",
            "exec",
            &nsname,
            "cat",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ]);
        assert_eq!(inside.trim(), "1");
    });
    let root_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    assert_eq!(
        root_before, root_after,
        "the root namespace must not change"
    );
}
