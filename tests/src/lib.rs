//! Helpers for wardnet end-to-end tests: network namespaces that clean up
//! after themselves, veth pairs between them, and guarded child processes.
//!
//! Rules these helpers keep (the machine is shared; see docs/design.md):
//! - nothing in the root namespace is touched: veth ends are created directly
//!   inside their namespaces (`ip link add A netns N1 type veth peer name B
//!   netns N2`), sysctls are set with `ip netns exec`;
//! - names carry the process id and a process-wide counter, so parallel tests
//!   and parallel test binaries never collide;
//! - everything is undone on `Drop`, which also runs when a test panics:
//!   [`Child`] kills and reaps its process, [`Netns`] kills whatever still runs
//!   inside it (all ours: the namespace is ours) and deletes it.
//!
//! Typical use:
//! ```no_run
//! use wardnet_e2e::{require_root, veth, Netns};
//! if !require_root("my_test") { return; }
//! let hub = Netns::new("hub").unwrap();
//! let spoke = Netns::new("spoke").unwrap();
//! veth(&hub, &spoke, "198.51.100.1/24".parse().unwrap(), "198.51.100.2/24".parse().unwrap()).unwrap();
//! spoke.exec(&["ping", "-c1", "-W2", "198.51.100.1"]).unwrap();
//! ```
//! Declare [`Child`] guards *after* the namespaces they run in, so they drop
//! first (Rust drops locals in reverse order); the other order works too, the
//! namespace just kills the process itself.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub use ipnet::IpNet;

pub mod container;
pub mod demo;
pub mod fleet;
pub mod prometheus;
pub mod traffic;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// What [`require_root`] decides, as a pure function: `Ok(true)` run,
/// `Ok(false)` skip, `Err(message)` fail (a skip in CI is a failure).
pub fn root_decision(test: &str, euid: u32, ci: bool) -> Result<bool, String> {
    if euid == 0 {
        return Ok(true);
    }
    let msg = format!("SKIPPED {test}: needs root (network namespaces, TUN)");
    if ci {
        Err(format!("{msg}; CI=true, and a skip in CI is a failure"))
    } else {
        Ok(false)
    }
}

/// True when running as root. Otherwise prints `SKIPPED <test>: needs root
/// (network namespaces, TUN)` and returns false — except when `CI=true`, where
/// it panics, because a skipped end-to-end test in CI is a failure.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match root_decision(test, euid, ci) {
        Ok(true) => true,
        Ok(false) => {
            eprintln!("SKIPPED {test}: needs root (network namespaces, TUN)");
            false
        }
        Err(msg) => panic!("{msg}"),
    }
}

/// For tests that need more than root (a tool, an opt-in): true when
/// `ready` is Ok. Otherwise prints `SKIPPED <test>: <why>` and returns
/// false, except when `CI=true`, where it panics: a skip in CI is a failure.
pub fn require(test: &str, ready: Result<(), String>) -> bool {
    let Err(why) = ready else {
        return true;
    };
    let msg = format!("SKIPPED {test}: {why}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; CI=true, and a skip in CI is a failure");
    }
    eprintln!("{msg}");
    false
}

/// A test-unique interface name of at most 15 bytes: `prefix` (at most 6
/// bytes), the process id and a counter in base 36, e.g. `wnv2ugxs-1a`.
pub fn unique_ifname(prefix: &str) -> String {
    assert!(
        prefix.len() <= 6 && prefix.is_ascii(),
        "interface name prefix {prefix:?} is over 6 bytes: names must fit in 15"
    );
    let name = format!(
        "{prefix}{}-{}",
        base36(std::process::id()),
        base36(next_id() % (36 * 36 * 36))
    );
    assert!(name.len() <= 15, "{name} is over 15 bytes");
    name
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// Runs `cmd` to completion; an error (with the command line, exit status and
/// stderr) when it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout_hint(&out)
        );
    }
    Ok(out)
}

fn stdout_hint(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() {
        String::new()
    } else {
        format!("\nstdout: {}", s.trim())
    }
}

/// A network namespace named `wn-<role>-<pid>-<n>`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (`ip netns add`). `role` is a short word such as
    /// `hub` or `spoke1`.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!("wn-{role}-{}-{}", std::process::id(), next_id());
        run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("failed to create network namespace {name}"))?;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`,
    /// which execs it: the child's PID is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args` inside the namespace to completion and returns its stdout;
    /// on failure the error has the command, status and stderr.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("exec needs a program")?;
        let out = run(self.command(program).args(rest))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -n NS ARGS...`, returning stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running `args` inside the namespace; see [`Child`].
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        let (program, rest) = args.split_first().context("spawn needs a program")?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        Child::spawn(&mut cmd)
    }

    /// Brings `lo` up.
    pub fn lo_up(&self) -> anyhow::Result<()> {
        self.ip(&["link", "set", "lo", "up"]).map(drop)
    }

    /// Turns on IPv4 and IPv6 forwarding in this namespace only.
    pub fn enable_forwarding(&self) -> anyhow::Result<()> {
        self.exec(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            // Routers that forward back out of a tunnel should not send
            // ICMP redirects (see wardnet_agent::forwarding).
            "net.ipv4.conf.all.send_redirects=0",
        ])
        .map(drop)
    }

    /// PIDs of the processes whose network namespace this is.
    pub fn pids(&self) -> anyhow::Result<Vec<i32>> {
        let out = run(Command::new("ip").args(["netns", "pids", &self.name]))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Everything inside is ours (we made the namespace); kill by PID.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(pids) = self.pids() {
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "warning: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// A process started by the tests, killed (by PID) and reaped on drop. Its
/// stdout and stderr go to a log file ([`Child::log`]) that is kept when the
/// thread is panicking, for the post-mortem, and removed otherwise.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Starts `cmd` with stdin closed and output to a log file.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "wardnet-e2e-{}-{}.log",
            std::process::id(),
            next_id()
        ));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let err = file.try_clone().context("failed to clone the log file")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .with_context(|| format!("failed to start {cmd:?}"))?;
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL at once (a crash: nothing is cleaned up), and reap it.
    pub fn kill(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL; the status.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = i32::try_from(self.child.id()).context("pid fits in pid_t")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // unreaped child, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Ask nicely first, as systemd would, so daemons remove what they
        // made (sockets, interfaces); then make sure.
        if self.stop(Duration::from_secs(3)).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "log of process {} kept at {}",
                self.child.id(),
                self.log.display()
            );
        }
    }
}

/// The two ends of a veth pair made by [`veth`].
#[derive(Debug, Clone)]
pub struct Veth {
    /// Interface name in the first namespace.
    pub a: String,
    /// Interface name in the second namespace.
    pub b: String,
}

/// A veth pair with one end in each namespace (created there directly, never
/// in the root namespace), `addr_a`/`addr_b` assigned (IPv6 without duplicate
/// address detection, so it is usable at once), the links and both `lo`s up.
pub fn veth(a: &Netns, b: &Netns, addr_a: IpNet, addr_b: IpNet) -> anyhow::Result<Veth> {
    let (name_a, name_b) = (unique_ifname("wnv"), unique_ifname("wnv"));
    run(Command::new("ip").args([
        "link", "add", &name_a, "netns", &a.name, "type", "veth", "peer", "name", &name_b, "netns",
        &b.name,
    ]))
    .with_context(|| {
        format!(
            "failed to create veth {name_a} ({}) <-> {name_b} ({})",
            a.name, b.name
        )
    })?;
    for (ns, name, addr) in [(a, &name_a, addr_a), (b, &name_b, addr_b)] {
        add_address(ns, name, addr)?;
        ns.ip(&["link", "set", name, "up"])?;
        ns.lo_up()?;
    }
    Ok(Veth {
        a: name_a,
        b: name_b,
    })
}

/// `ip addr add ADDR dev IF` inside `ns` (IPv6 with `nodad`).
pub fn add_address(ns: &Netns, ifname: &str, addr: IpNet) -> anyhow::Result<()> {
    let addr = addr.to_string();
    let mut args = vec!["addr", "add", addr.as_str(), "dev", ifname];
    if matches!(addr.parse::<IpNet>(), Ok(IpNet::V6(_))) {
        args.push("nodad");
    }
    ns.ip(&args).map(drop)
}

/// Names of the network namespaces on this host (`ip netns list`).
pub fn netns_list() -> anyhow::Result<Vec<String>> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_decision_skips_or_fails_in_ci() {
        assert_eq!(root_decision("t", 0, true), Ok(true));
        assert_eq!(root_decision("t", 1000, false), Ok(false));
        let err = root_decision("t", 1000, true).expect_err("CI fails");
        assert!(err.starts_with("SKIPPED t: needs root (network namespaces, TUN)"));
    }

    #[test]
    fn ifnames_fit_and_differ() {
        let names: Vec<String> = (0..50).map(|_| unique_ifname("wnxyzw")).collect();
        assert!(names.iter().all(|n| n.len() <= 15), "{names:?}");
        let set: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len());
        assert_eq!(base36(0), "0");
        assert_eq!(base36(4_194_304), "2hwcg");
    }
}
