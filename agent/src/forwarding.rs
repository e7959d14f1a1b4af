//! IP forwarding, which a hub needs to pass traffic between its spokes.
//!
//! Which network namespace these read and write: the files under
//! `/proc/sys/net` are resolved against the network namespace of the *thread*
//! that opens them (the kernel's sysctl lookup uses `current`'s namespace), not
//! the one `/proc` was mounted from, nor the process's main thread. So a thread
//! that has `setns(CLONE_NEWNET)`-ed into a namespace sees that namespace's
//! values (checked by `agent/tests/netlink.rs`). `/proc/self/net` and
//! `/proc/net`, by contrast, follow the thread-group leader; use
//! `/proc/thread-self/net` for the calling thread. Call these from the thread
//! whose namespace you mean, e.g. inside `spawn_blocking` only when the whole
//! process lives in one namespace (the normal case for the agent).

use std::io;
use std::path::Path;

const V4: &str = "/proc/sys/net/ipv4/ip_forward";
const V6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Why forwarding could not be read or changed; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    #[error("failed to read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to enable IP forwarding by writing 1 to {path} (the agent needs root or CAP_NET_ADMIN for this)")]
    Write {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Whether IPv4 and IPv6 forwarding are on, as `(v4, v6)`. IPv6 counts as off
/// when the kernel has no IPv6 (the file is missing).
pub fn ip_forwarding() -> Result<(bool, bool), ForwardingError> {
    Ok((read_flag(V4)?, read_flag(V6)?))
}

/// Turns IPv4 and IPv6 forwarding on (`sysctl -w net.ipv4.ip_forward=1
/// net.ipv6.conf.all.forwarding=1`). IPv6 is skipped when the kernel has none.
/// This is a runtime change; it does not persist across reboots.
pub fn enable_ip_forwarding() -> Result<(), ForwardingError> {
    std::fs::write(V4, b"1\n").map_err(|source| ForwardingError::Write { path: V4, source })?;
    quiet_redirects()?;
    if Path::new(V6).exists() {
        std::fs::write(V6, b"1\n").map_err(|source| ForwardingError::Write { path: V6, source })?;
    }
    Ok(())
}

const ALL_REDIRECTS: &str = "/proc/sys/net/ipv4/conf/all/send_redirects";

/// Makes sure a hub sends no ICMP redirects: Linux sends one when `all` OR
/// the interface allows it, so the interface's own setting (turned off at
/// start) is not enough while `all` is on, its default. A hub forwards
/// spoke-to-spoke traffic back out of the tunnel it came in on, and each
/// redirect would name a next hop that does not exist on a point-to-point
/// tunnel (and reach the spoke as traffic its filter counts as denied).
/// `Ok(true)` when it was on and is now off.
pub fn quiet_redirects() -> Result<bool, ForwardingError> {
    if !redirects_on()? {
        return Ok(false);
    }
    std::fs::write(ALL_REDIRECTS, b"0\n").map_err(|source| ForwardingError::Write {
        path: ALL_REDIRECTS,
        source,
    })?;
    Ok(true)
}

/// Whether this host sends ICMP redirects on every interface
/// (`net.ipv4.conf.all.send_redirects`), see [`quiet_redirects`].
pub fn redirects_on() -> Result<bool, ForwardingError> {
    read_flag(ALL_REDIRECTS)
}

/// What a hub admin is told while ICMP redirects are on.
pub const REDIRECTS_HELP: &str = "this site is a hub and sends ICMP redirects (net.ipv4.conf.all.send_redirects = 1): \
each names a next hop that does not exist on a tunnel and reaches the spoke as traffic it drops; \
turn them off with `sysctl -w net.ipv4.conf.all.send_redirects=0` (and persist it in /etc/sysctl.d/), \
or set `enable_ip_forwarding = true` in agent.toml";

/// The message for a hub admin when forwarding is off, or `None` when the
/// families in use are forwarded. `uses_v6` says whether the overlay carries
/// IPv6 (IPv6 forwarding then matters too).
pub fn hub_forwarding_help(v4: bool, v6: bool, uses_v6: bool) -> Option<String> {
    forwarding_help(
        "this site is a hub",
        "traffic between its spokes",
        v4,
        v6,
        uses_v6,
    )
}

/// The same for a spoke that routes its LAN through the overlay: without
/// forwarding, what its LAN sends into the tunnels (and what comes back)
/// is dropped at the gateway.
pub fn lan_forwarding_help(lans: &[ipnet::IpNet], v4: bool, v6: bool) -> Option<String> {
    let uses_v4 = lans.iter().any(|p| matches!(p, ipnet::IpNet::V4(_)));
    let uses_v6 = lans.iter().any(|p| matches!(p, ipnet::IpNet::V6(_)));
    let list: Vec<String> = lans.iter().map(ToString::to_string).collect();
    forwarding_help(
        &format!(
            "this site routes its LAN ({}) through the overlay",
            list.join(", ")
        ),
        "its LAN's traffic through the tunnels",
        v4 || !uses_v4,
        v6,
        uses_v6,
    )
}

fn forwarding_help(what: &str, dropped: &str, v4: bool, v6: bool, uses_v6: bool) -> Option<String> {
    let mut off = Vec::new();
    if !v4 {
        off.push(("IPv4", "net.ipv4.ip_forward=1"));
    }
    if uses_v6 && !v6 {
        off.push(("IPv6", "net.ipv6.conf.all.forwarding=1"));
    }
    if off.is_empty() {
        return None;
    }
    let families: Vec<&str> = off.iter().map(|(f, _)| *f).collect();
    let sysctls: Vec<&str> = off.iter().map(|(_, s)| *s).collect();
    Some(format!(
        "{what}: {} forwarding {} off, so {dropped} is dropped; \
         enable it with `sysctl -w {}` (and persist it in /etc/sysctl.d/), \
         or set `enable_ip_forwarding = true` in agent.toml",
        families.join(" and "),
        if off.len() == 1 { "is" } else { "are" },
        sysctls.join(" ")
    ))
}

fn read_flag(path: &'static str) -> Result<bool, ForwardingError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim() != "0"),
        Err(e) if e.kind() == io::ErrorKind::NotFound && path == V6 => Ok(false),
        Err(source) => Err(ForwardingError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spoke with a LAN needs forwarding as a hub does (its LAN's
    /// traffic crosses the gateway into the tunnels): the help names the
    /// LAN, and only the families it uses.
    #[test]
    fn a_site_with_a_lan_is_told_to_forward_too() {
        let v4: Vec<ipnet::IpNet> = vec!["10.1.0.0/24".parse().expect("prefix")];
        assert_eq!(lan_forwarding_help(&v4, true, false), None);
        let msg = lan_forwarding_help(&v4, false, false).expect("v4 off");
        assert!(
            msg.starts_with("this site routes its LAN (10.1.0.0/24) through the overlay: IPv4 forwarding is off")
                && msg.contains("net.ipv4.ip_forward=1")
                && !msg.contains("ipv6")
                && msg.contains("enable_ip_forwarding = true"),
            "{msg}"
        );
        let v6: Vec<ipnet::IpNet> = vec!["2001:db8:1::/64".parse().expect("prefix")];
        let msg = lan_forwarding_help(&v6, false, false).expect("v6 off");
        assert!(
            msg.contains("IPv6 forwarding is off") && !msg.contains("IPv4"),
            "{msg}"
        );
        assert_eq!(lan_forwarding_help(&v6, false, true), None);
    }

    #[test]
    fn help_names_the_sysctl_and_the_config_key() {
        assert_eq!(hub_forwarding_help(true, true, true), None);
        assert_eq!(hub_forwarding_help(true, false, false), None);
        let msg = hub_forwarding_help(false, true, false).expect("v4 off");
        assert_eq!(
            msg,
            "this site is a hub: IPv4 forwarding is off, so traffic between its spokes is dropped; \
             enable it with `sysctl -w net.ipv4.ip_forward=1` (and persist it in /etc/sysctl.d/), \
             or set `enable_ip_forwarding = true` in agent.toml"
        );
        let both = hub_forwarding_help(false, false, true).expect("both off");
        assert!(both.contains("IPv4 and IPv6 forwarding are off"), "{both}");
        assert!(
            both.contains("sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"),
            "{both}"
        );
    }

    #[test]
    fn reads_this_namespace() {
        // Whatever the values, reading them must work on any Linux host.
        ip_forwarding().expect("procfs readable");
    }
}
