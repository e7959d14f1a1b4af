//! The agent speaks systemd's notification protocol the way the unit
//! (`Type=notify`, `WatchdogSec=`) relies on: READY=1 only once a config is
//! applied, WATCHDOG=1 pings from its loop, STOPPING=1 on SIGTERM; and under
//! the journal (`JOURNAL_STREAM`) its log lines carry `<N>` priorities.
//!
//! Needs root (a real agent in a network namespace); skipped otherwise,
//! a failure under CI=true.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wardnet_e2e::fleet::{Fleet, SiteOpts};
use wardnet_e2e::{require_root, Child};

/// Collect notifications until one contains `want` or `timeout` passes.
fn wait_for_message(sock: &UnixDatagram, want: &str, timeout: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == want);
                seen.push(msg);
                if hit {
                    return Ok(seen);
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no {want} within {timeout:?}; got {seen:?}")
}

#[test]
#[cfg_attr(
    not(wardnet_root_tests),
    ignore = "needs root (network namespaces, TUN devices): run the tests as root"
)]
fn agent_notifies_ready_watchdog_and_stopping() -> Result<()> {
    if !require_root("agent_notifies_ready_watchdog_and_stopping") {
        return Ok(());
    }
    let mut f = Fleet::start()?;
    f.region("north", false)?;
    f.add_site("hub-n", "north", true, SiteOpts::default())?;
    // Restart it ourselves, with a notification socket: it comes up from its
    // cached config, as after `systemctl restart`.
    f.stop_agent("hub-n")?;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify.sock");
    // A path socket: reachable from the agent's network namespace (abstract
    // names are per network namespace).
    let sock = UnixDatagram::bind(&path)?;
    let site = f.site("hub-n");
    let mut cmd = site.gw.command(&f.bins.agent);
    cmd.arg("--config")
        .arg(&site.config)
        .arg("run")
        .env("WARDNET_LOG", "info")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .env("JOURNAL_STREAM", "8:12345");
    let child = Child::spawn(&mut cmd)?;
    f.site_mut("hub-n").agent = Some(child);

    let seen = wait_for_message(&sock, "READY=1", Duration::from_secs(20)).with_context(|| {
        f.site("hub-n")
            .agent
            .as_ref()
            .map(Child::log)
            .unwrap_or_default()
    })?;
    let ready = seen.last().context("READY message")?;
    assert!(
        ready.contains("STATUS=tunnels up on"),
        "READY carries a status line: {ready:?}"
    );
    // READY means a config is applied: the status endpoint says so.
    let status = f.agent_status("hub-n")?;
    assert!(
        status["applied_revision"].as_u64().unwrap_or(0) > 0,
        "READY before a config was applied: {status}"
    );
    // Pings every WATCHDOG_USEC/2 = 200 ms from the event loop.
    wait_for_message(&sock, "WATCHDOG=1", Duration::from_secs(2))?;
    wait_for_message(&sock, "WATCHDOG=1", Duration::from_secs(2))?;

    let mut agent = f.site_mut("hub-n").agent.take().context("agent")?;
    let status = agent.stop(Duration::from_secs(10))?;
    assert!(status.success(), "agent exit on SIGTERM: {status}");
    wait_for_message(&sock, "STOPPING=1", Duration::from_secs(2))?;

    // Under the journal: log lines start with a syslog priority and have no
    // timestamp of their own (continuation lines of a multi-line error
    // chain are the exception journald also makes).
    let log = agent.log();
    let events: Vec<&str> = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(char::is_whitespace))
        .filter(|l| !l.starts_with("Caused by") && !l.starts_with("Stack backtrace"))
        .collect();
    assert!(!events.is_empty(), "the agent logged nothing");
    for l in &events {
        let b = l.as_bytes();
        let ok = b.len() > 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[2] == b'>';
        assert!(ok, "not a journal line: {l:?}\n{log}");
        assert!(
            !l[3..].starts_with("20"),
            "timestamp in a journal line: {l:?}"
        );
    }
    Ok(())
}

/// The controller: READY=1 once the store is loaded and the port listens,
/// watchdog pings, STOPPING=1 on SIGTERM; JSON logs when configured. Needs
/// no root (plain HTTP on loopback, port 0).
#[test]
fn controller_notifies_ready_watchdog_and_stopping() -> Result<()> {
    let bins = wardnet_e2e::fleet::Bins::find()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nplain_http = true\nlog_format = \"json\"\ndata_dir = \"{}\"\n\
             [network]\noverlay_ipv4 = \"100.64.0.0/10\"\n",
            dir.path().display()
        ),
    )?;
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path)?;
    let mut cmd = std::process::Command::new(&bins.controller);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000");
    let mut child = Child::spawn(&mut cmd)?;
    let seen =
        wait_for_message(&sock, "READY=1", Duration::from_secs(20)).with_context(|| child.log())?;
    let ready = seen.last().context("READY message")?;
    assert!(ready.contains("STATUS=serving on"), "{ready:?}");
    wait_for_message(&sock, "WATCHDOG=1", Duration::from_secs(2))?;
    let status = child.stop(Duration::from_secs(10))?;
    assert!(status.success(), "controller exit on SIGTERM: {status}");
    wait_for_message(&sock, "STOPPING=1", Duration::from_secs(2))?;
    let log = child.log();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(l)
            .with_context(|| format!("log_format = \"json\" wrote a non-JSON line: {l:?}"))?;
    }
    Ok(())
}
